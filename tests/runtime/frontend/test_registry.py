"""The worker registry's health rules: a failing poll takes a worker out of routing at once, a
slow one only after SILENT_DOWN_S of silence, and a restarted one comes back re-read."""

import asyncio
import itertools

from ray.exceptions import ActorUnavailableError

from runtime.frontend import registry as registry_module
from runtime.frontend.registry import WorkerRegistry
from runtime.workers.handle import WorkerHandle
from runtime.workers.load import WorkerLoad


class Remote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self):
        return self.fn()


class FakeActor:
    """load() answers as `mode` says: "ok", "slow" (never within the timeout) or "restarting"."""

    def __init__(self, name, role):
        self.name, self.role, self.mode = name, role, "ok"
        self.incarnation, self.port = "first", itertools.count(5000)
        self.load = Remote(self._load)
        self.info = Remote(self._info)

    async def _load(self):
        if self.mode == "slow":
            await asyncio.sleep(60)
        if self.mode == "restarting":
            raise ActorUnavailableError("The actor is restarting.", b"")
        return WorkerLoad(self.name, self.role, incarnation=self.incarnation)

    async def _info(self):
        return {
            "name": self.name,
            "role": self.role,
            "incarnation": self.incarnation,
            "kv_address": f"127.0.0.1:{next(self.port)}",
            "max_model_len": 64,
        }


def registry():
    actors = {
        "prefill-0": FakeActor("prefill-0", "prefill"),
        "decode-0": FakeActor("decode-0", "decode"),
    }
    handles = [WorkerHandle(n, a.role, a, "127.0.0.1:4999", 64, "first") for n, a in actors.items()]
    return WorkerRegistry(handles), actors


def healthy(reg):
    return {w.name: w.healthy for w in asyncio.run(reg.poll())}


def test_a_failing_poll_takes_the_worker_out_at_once_and_its_return_is_re_read(monkeypatch):
    reg, actors = registry()
    assert healthy(reg) == {"decode-0": True, "prefill-0": True} and reg.serving
    actors["decode-0"].mode = "restarting"
    assert healthy(reg)["decode-0"] is False and not reg.serving
    assert reg.missing_roles() == ["decode"]
    actors["decode-0"].mode, actors["decode-0"].incarnation = "ok", "second"
    assert healthy(reg)["decode-0"] is True and reg.serving
    assert reg["decode-0"].incarnation == "second"
    assert reg["decode-0"].kv_address == "127.0.0.1:5000"  # the new process's receiver


def test_a_slow_worker_keeps_serving_until_it_has_been_silent_too_long(monkeypatch):
    monkeypatch.setattr(registry_module, "LOAD_TIMEOUT_S", 0.05)
    reg, actors = registry()
    healthy(reg)
    actors["prefill-0"].mode = "slow"
    assert healthy(reg)["prefill-0"] is True  # slow, not silent for long: still routed
    monkeypatch.setattr(registry_module, "SILENT_DOWN_S", 0.0)
    assert healthy(reg)["prefill-0"] is False and not reg.serving
