"""Helpers of the KV transfer tests: engines, configs, and a prefill/decode pair on loopback
gRPC."""

from __future__ import annotations

import time
from dataclasses import dataclass

import tiny_model

from runtime.engine import Engine, EngineThread, SamplingParams
from runtime.kv_transfer import KVReceiver, KVSender, KVTransferConfig

SECRET = "test-cluster-secret"
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
PROMPTS = [
    [5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [200, 201, 202],
    [9],
    list(range(30, 80)),
    [77, 66, 55, 44, 33, 22, 11, 100, 101, 102, 103, 104],
    list(range(100, 137)),
    [(7 * i) % 300 for i in range(1, 200)],
]


def make_engine(path, role="colocated", **kw) -> Engine:
    return tiny_model.make_engine(path, role=role, num_threads=1, **kw)


def config(**kw) -> KVTransferConfig:
    kw.setdefault("secret", SECRET)
    kw.setdefault("deadline_s", 20.0)
    return KVTransferConfig(**kw)


@dataclass
class Pair:
    """A prefill engine with its sender and a decode engine with its receiver."""

    prefill: Engine
    decode: Engine
    p_thread: EngineThread
    d_thread: EngineThread
    sender: KVSender
    receiver: KVReceiver
    target: str

    def free_blocks(self) -> tuple[int, int]:
        return (
            self.p_thread.call(lambda: self.prefill.block_manager.num_free_blocks),
            self.d_thread.call(lambda: self.decode.block_manager.num_free_blocks),
        )

    def submit(self, prompt, params=GREEDY, target=None):
        rid = self.p_thread.call(self.prefill.add_request, params=params, prompt_token_ids=prompt)
        return rid, self.sender.route(rid, target or self.target)

    def prefill_until(self, futures, timeout_s=60.0) -> None:
        # Bounded by time, not steps: a step with nothing to send returns at once, so a
        # step count says nothing about how long a receiver-side wait has had.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(f.done() for f in futures):
                return
            self.p_thread.call(self.sender.step)
        raise AssertionError(f"handoffs did not settle in {timeout_s} s")

    def decode_all(self) -> dict[str, list[int]]:
        results = {}
        while self.d_thread.call(self.decode.has_unfinished_requests):
            for out in self.d_thread.call(self.decode.step):
                if out.finished:
                    results[out.request_id] = out.token_ids
        return results

    def close(self) -> None:
        self.sender.close()
        self.receiver.stop()
        self.p_thread.close()
        self.d_thread.close()
