"""The engine thread: calls run in order between steps on one thread; idle costs no steps."""

import threading
import time

import pytest

from runtime.engine import EngineThread


def test_calls_and_steps_share_one_thread_and_stop_cleanly():
    work, seen, threads, errors = [], [], set(), []

    def step():
        threads.add(threading.get_ident())
        seen.append(work.pop(0))
        if seen[-1] == "boom":
            raise RuntimeError("boom")
        return [seen[-1]]

    outputs = []
    loop = EngineThread("t", step, lambda: bool(work), outputs.extend, errors.append)
    loop.call(work.extend, ["a", "b"])
    time.sleep(0.2)
    assert outputs == ["a", "b"] and not work
    assert loop.call(threading.get_ident) in threads and len(threads) == 1
    loop.call(work.append, "boom")  # a failing step is reported, the loop goes on
    time.sleep(0.1)
    assert [str(e) for e in errors] == ["boom"]
    assert loop.call(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        loop.call(lambda: 1 / 0)
    loop.close()
    with pytest.raises(RuntimeError, match="stopped"):
        loop.call(lambda: 1)


def test_idle_loop_does_not_step():
    steps = []
    loop = EngineThread(
        "idle", lambda: steps.append(1), lambda: False, lambda o: None, lambda e: None
    )
    time.sleep(0.1)
    loop.close()
    assert steps == []
