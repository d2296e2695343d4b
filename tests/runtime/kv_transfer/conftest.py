"""Fixtures of the KV transfer tests (helpers live in kv_handoff_helpers.py)."""

from __future__ import annotations

import pytest
from kv_handoff_helpers import GREEDY, PROMPTS, Pair, config, make_engine

from runtime.engine import EngineThread
from runtime.kv_transfer import KVReceiver, KVSender


@pytest.fixture
def make_pair(tiny_model_dir):
    pairs = []

    def build(
        prefill_kw=None,
        decode_kw=None,
        sender_cfg=None,
        receiver_cfg=None,
        channel_factory=None,
        decode_model=None,
        tls_address=None,
        faults=None,
    ) -> Pair:
        prefill = make_engine(tiny_model_dir, role="prefill", **(prefill_kw or {}))
        decode = make_engine(
            decode_model or tiny_model_dir, role="decode", **{"block_size": 8, **(decode_kw or {})}
        )
        p_thread, d_thread = EngineThread("prefill"), EngineThread("decode")
        receiver = KVReceiver(decode, d_thread, receiver_cfg or config(), faults=faults)
        port = receiver.start()
        sender = KVSender(
            prefill,
            p_thread,
            sender_cfg or config(),
            channel_factory=channel_factory,
            faults=faults,
        )
        pair = Pair(
            prefill,
            decode,
            p_thread,
            d_thread,
            sender,
            receiver,
            f"{tls_address or '127.0.0.1'}:{port}",
        )
        pairs.append(pair)
        return pair

    yield build
    for pair in pairs:
        pair.close()


@pytest.fixture(scope="session")
def colocated_reference(tiny_model_dir):
    eng = make_engine(tiny_model_dir)
    return [o.token_ids for o in eng.generate(prompt_token_ids=PROMPTS, params=GREEDY)]
