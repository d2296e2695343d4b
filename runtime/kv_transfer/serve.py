"""A standalone decode worker for the KV handoff: a decode engine, its receiver, a decode loop.

    TANDEM_KV_SECRET=... python -m runtime.kv_transfer.serve --model DIR [--port 0] ...

Prints `port N` once serving, then one JSON line per finished request ({"request_id",
"token_ids", "text", "finish_reason"}) on stdout; stops when stdin closes. Used by the
two-process test and the benchmark; the Ray decode worker embeds the same pieces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from runtime.engine import Engine, EngineThread
from runtime.kv_transfer.config import KVTransferConfig
from runtime.kv_transfer.receiver import KVReceiver


def decode_loop(engine: Engine, thread: EngineThread, stop: threading.Event, emit) -> None:
    """Step the engine on its thread while it has work; imports land between the steps."""
    while not stop.is_set():
        outputs = thread.call(lambda: engine.step() if engine.has_unfinished_requests() else None)
        if outputs is None:
            time.sleep(0.002)
            continue
        for out in outputs:
            if out.finished:
                emit(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=None)
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    secret = os.environ.get("TANDEM_KV_SECRET")
    if not secret:
        print("set TANDEM_KV_SECRET to the cluster secret", file=sys.stderr)
        return 2
    engine = Engine(
        EngineConfig(
            model=ModelConfig(path=args.model, dtype=args.dtype),
            cache=CacheConfig(block_size=args.block_size, num_blocks=args.num_blocks),
            scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs),
            role="decode",
            num_threads=args.threads,
        )
    )
    thread = EngineThread("decode")
    receiver = KVReceiver(engine, thread, KVTransferConfig(secret=secret))
    port = receiver.start(f"{args.host}:{args.port}")
    lock = threading.Lock()

    def emit(out) -> None:
        line = json.dumps(
            {
                "request_id": out.request_id,
                "token_ids": out.token_ids,
                "text": out.text,
                "finish_reason": out.finish_reason,
            }
        )
        with lock:
            print(line, flush=True)

    stop = threading.Event()
    loop = threading.Thread(target=decode_loop, args=(engine, thread, stop, emit), daemon=True)
    loop.start()
    with lock:
        print(f"port {port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    stop.set()
    loop.join()
    receiver.stop(grace=1.0)
    thread.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
