"""The handoff's malloc tuning: applied once per process, a no-op answer off glibc."""

import ctypes
import platform

import pytest

from runtime.kv_transfer import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_tuning_applies_once_on_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_done", [])
    calls = []
    real = allocator._tune
    monkeypatch.setattr(allocator, "_tune", lambda: calls.append(1) or real())
    assert allocator.keep_message_buffers_on_heap() is True
    assert allocator.keep_message_buffers_on_heap() is True
    assert calls == [1]


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert allocator._tune() is False
