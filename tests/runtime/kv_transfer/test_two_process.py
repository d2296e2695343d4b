"""A real handoff between two engines in separate processes over loopback gRPC."""

import json
import os
import subprocess
import sys
from pathlib import Path

from kv_handoff_helpers import GREEDY, PROMPTS, SECRET, config, make_engine

from runtime.engine import EngineThread
from runtime.kv_transfer import KVSender

REPO = Path(__file__).resolve().parents[3]


def test_handoff_to_a_decode_process_equals_colocated(tiny_model_dir, colocated_reference):
    env = {**os.environ, "TANDEM_KV_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.kv_transfer.serve",
            "--model",
            str(tiny_model_dir),
            "--block-size",
            "8",
            "--num-blocks",
            "128",
            "--threads",
            "1",
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    thread = EngineThread("prefill")
    sender = None
    try:
        line = proc.stdout.readline()
        assert line.startswith("port "), line
        target = f"127.0.0.1:{int(line.split()[1])}"
        prefill = make_engine(tiny_model_dir, role="prefill", block_size=4, budget=64)
        sender = KVSender(prefill, thread, config(layerwise_min_tokens=40, chunk_bytes=4096))
        free = prefill.block_manager.num_free_blocks
        ids, futures = [], []
        for prompt in PROMPTS:
            rid = thread.call(prefill.add_request, params=GREEDY, prompt_token_ids=prompt)
            ids.append(rid)
            futures.append(sender.route(rid, target))
        while not all(f.done() for f in futures):
            thread.call(sender.step)
        results = [f.result(timeout=30) for f in futures]
        assert [r.layerwise for r in results] == [len(p) >= 40 for p in PROMPTS]
        assert thread.call(lambda: prefill.block_manager.num_free_blocks) == free
        outputs = {}
        while len(outputs) < len(ids):
            out = json.loads(proc.stdout.readline())
            outputs[out["request_id"]] = out["token_ids"]
        assert [outputs[rid] for rid in ids] == colocated_reference
    finally:
        if sender is not None:
            sender.close()
        thread.close()
        proc.stdin.close()
        proc.wait(timeout=30)
