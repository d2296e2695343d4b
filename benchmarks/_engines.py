"""One engine's side of benchmarks/offline.py: runs in its own subprocess.

    python benchmarks/_engines.py SPEC.json RESULT.json

SPEC names the engine (`tandem`, `hf`, `vllm`), the model, dtype, the prompts (token ids) and
the mode. The child loads the engine, warms it up on prompts of its own, times the run and writes
RESULT: `{"status": "ok", ...figures}`, `{"status": "skipped", "reason": ...}` when the engine
cannot be imported, or `{"status": "failed", "reason": ...}`.

Every runner has the same contract: `generate(prompts, output_len)` runs all `prompts` (lists of
token ids) greedily to exactly `output_len` new tokens each (EOS ignored) and returns the number
of tokens each one produced, so the caller can check that every engine did the same work.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class TandemRunner:
    """Our engine: paged KV cache, continuous batching, chunked prefill."""

    def __init__(self, spec: dict) -> None:
        from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
        from runtime.engine import Engine, SamplingParams

        self._params = SamplingParams
        self.engine = Engine(
            EngineConfig(
                model=ModelConfig(path=spec["model"], dtype=spec["dtype"]),
                cache=CacheConfig(memory_gib=spec["kv_cache_gib"]),
                scheduler=SchedulerConfig(
                    max_num_seqs=spec["max_num_seqs"],
                    max_num_batched_tokens=spec["max_num_batched_tokens"],
                ),
                num_threads=spec["threads"],
            )
        )

    def generate(self, prompts: list[list[int]], output_len: int) -> list[int]:
        params = self._params(max_tokens=output_len, ignore_eos=True, temperature=0.0)
        outs = self.engine.generate(prompt_token_ids=prompts, params=params)
        return [len(o.token_ids) for o in outs]


class HFRunner:
    """Hugging Face transformers: batched `generate`, left padding, greedy, sdpa attention.

    `min_new_tokens = max_new_tokens = output_len` stands in for ignore_eos (EOS is masked).
    Prompts run `hf_batch_size` at a time (all at once by default); each chunk is padded to its
    longest prompt, so with mixed lengths HF also computes the padding.
    """

    def __init__(self, spec: dict) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            spec["model"], dtype=getattr(torch, spec["dtype"]), attn_implementation="sdpa"
        ).eval()
        cfg = self.model.generation_config
        self.pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        self.batch_size = spec.get("hf_batch_size") or None

    def generate(self, prompts: list[list[int]], output_len: int) -> list[int]:
        torch, counts = self.torch, []
        step = self.batch_size or len(prompts)
        for start in range(0, len(prompts), step):
            chunk = prompts[start : start + step]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, prompt in enumerate(chunk):
                ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=output_len,
                    min_new_tokens=output_len,
                    pad_token_id=self.pad_id,
                )
            counts += [out.shape[1] - width] * len(chunk)
        return counts


class VLLMRunner:
    """vLLM's CPU backend through the offline `LLM` API, prompts given as token ids.

    Runs with vLLM's own OpenMP binding (VLLM_CPU_OMP_THREADS_BIND=auto unless set): it keeps
    one core for vLLM's busy scheduler process, so on a 2-core host the model runs on one
    thread. That is still vLLM's best setting there (2-core Xeon): binding both cores ("0,1")
    ran no faster at 32 prompts x 256/128 tokens and half as fast at 4 x 32/64; "nobind" ran
    over ten times slower.
    """

    def __init__(self, spec: dict) -> None:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        self._params, self._prompt = SamplingParams, TokensPrompt
        self.llm = LLM(
            model=spec["model"],
            dtype=spec["dtype"],
            seed=0,
            kv_cache_memory_bytes=int(spec["kv_cache_gib"] * (1 << 30)),
            max_num_seqs=spec["max_num_seqs"],
            max_num_batched_tokens=spec["max_num_batched_tokens"],
        )

    def generate(self, prompts: list[list[int]], output_len: int) -> list[int]:
        params = self._params(max_tokens=output_len, ignore_eos=True, temperature=0.0)
        outs = self.llm.generate(
            [self._prompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        return [len(o.outputs[0].token_ids) for o in outs]


RUNNERS = {"tandem": TandemRunner, "hf": HFRunner, "vllm": VLLMRunner}
IMPORTS = {"tandem": "runtime.engine", "hf": "transformers", "vllm": "vllm"}


def _timed(runner, prompts: list[list[int]], output_len: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    counts = runner.generate(prompts, output_len)
    return time.perf_counter() - start, counts


def run_throughput(runner, spec: dict) -> dict:
    """Warm up, then one timed `generate` over all prompts: its wall time and token counts."""
    runner.generate(spec["warmup_prompts"], spec["warmup_output_len"])
    wall, counts = _timed(runner, spec["prompts"], spec["output_len"])
    return {
        "wall_s": wall,
        "num_prompt_tokens": sum(map(len, spec["prompts"])),
        "num_output_tokens": sum(counts),
        "output_lens": sorted(set(counts)),
    }


def run_decode(runner, spec: dict) -> dict:
    """Single-stream decode speed, from the difference of two runs of one request.

    T(1) is prompt + first token, T(n) the whole n-token request; TPOT = (T(n) - T(1)) / (n - 1)
    is the per-token time of the decode phase alone (vLLM's TPOT excludes the first token the
    same way). Each repeat uses fresh prompts so no prefix cache serves them; medians reported.
    """
    n, prompts = spec["output_len"], spec["prompts"]
    runner.generate(spec["warmup_prompts"], spec["warmup_output_len"])
    first, full = [], []
    for i in range(0, len(prompts), 2):
        first.append(_timed(runner, [prompts[i]], 1)[0])
        wall, counts = _timed(runner, [prompts[i + 1]], n)
        if counts != [n]:
            raise RuntimeError(f"asked for {n} tokens, got {counts}")
        full.append(wall)
    t1, tn = statistics.median(first), statistics.median(full)
    tpot = (tn - t1) / (n - 1)
    return {"first_token_s": t1, "request_s": tn, "tpot_s": tpot, "decode_tok_s": 1.0 / tpot}


def main(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, str(REPO))
    name = spec["engine"]
    try:
        __import__(IMPORTS[name])
    except Exception as exc:  # an optional engine that is absent or broken is skipped, not fatal
        result = {"status": "skipped", "reason": f"cannot import {IMPORTS[name]}: {exc!r}"}
    else:
        try:
            import torch

            torch.set_num_threads(spec["threads"])
            runner = RUNNERS[name](spec)
            run = run_decode if spec["mode"] == "decode" else run_throughput
            result = {"status": "ok", **run(runner, spec)}
        except Exception:
            result = {"status": "failed", "reason": traceback.format_exc(limit=4)}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
