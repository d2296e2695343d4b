"""The engine: requests in, tokens out, one scheduled forward per step.

Roles: `colocated` runs requests to the end; `prefill` stops each request after its first
token and holds its KV blocks for export; a decode engine admits requests through
`import_kv` (in phases: `begin_import` reserves blocks, `write_kv` places KV as it arrives,
`commit_import` admits the request).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from runtime.config import EngineConfig
from runtime.engine.batch_scheduler import BatchScheduler, ScheduledBatch
from runtime.engine.block_manager import BlockManager
from runtime.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from runtime.engine.kv_port import KVPort
from runtime.engine.outputs import KVHandle, RequestOutput, RequestTimings, StepStats
from runtime.engine.prompt_logprobs import prompt_logprob_spans
from runtime.engine.runners import make_runner
from runtime.engine.sampler import Sampler, rank_logprobs
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.sequence import Sequence, SequenceStatus
from runtime.engine.structured_output import GrammarMatcher, StructuredOutput
from runtime.engine.weights import read_generation_eos


class NoFreeBlocksError(RuntimeError):
    """The cache cannot hold the request's KV right now (retry later or elsewhere).
    `ever` is False when not even the whole, empty cache could (only elsewhere then)."""

    def __init__(self, message: str, ever: bool = True):
        super().__init__(message)
        self.ever = ever


class PromptSpan(NamedTuple):
    """Prompt tokens [start, end) of one request that the running step computes."""

    request_id: str
    block_table: tuple[int, ...]
    start: int
    end: int
    num_prompt_tokens: int


@dataclass
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer
    timings: RequestTimings
    text: str = ""
    sent_tokens: int = 0  # output tokens already reported
    sent_chars: int = 0
    last_token_time: float | None = None  # when this engine sampled the latest token
    # Per token sampled since the last output: seconds since the previous one sampled here.
    unsent_gaps: list[float | None] = field(default_factory=list)
    matcher: GrammarMatcher | None = None  # built at the first sample (structured output)


@dataclass(eq=False)
class _Import:
    """A handed-off request's KV being received: reserved blocks, no sequence yet."""

    blocks: list[int]
    num_tokens: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: bool = True
    table: torch.Tensor = field(init=False)  # the blocks as a tensor, built once for writes

    def __post_init__(self) -> None:
        self.table = torch.tensor(self.blocks, dtype=torch.long)


class Engine:
    """A paged-KV LLM engine over one model. Not thread-safe: drive it from one thread
    (`write_kv` into a KV import is the one exception)."""

    def __init__(self, config: EngineConfig, tokenizer=None):
        from transformers import AutoTokenizer

        self.config = config
        self.runner = make_runner(
            config.model, config.cache, config.num_threads, config.scheduler.max_num_seqs
        )
        self.kv = KVPort(self.runner, config)  # all the KV transfer uses of the runner
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model.path)
        g = self.runner.geometry
        self.max_model_len = min(
            config.model.max_model_len or g.max_position_embeddings, g.max_position_embeddings
        )
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.cache.block_size, config.cache.enable_prefix_caching
        )
        self.scheduler = BatchScheduler(config.scheduler, self.block_manager)
        self.eos_token_ids = read_generation_eos(config.model.path, self.runner.hf_config)
        self.sampler = Sampler(config.seed, self.eos_token_ids)
        self.structured_output = StructuredOutput(
            self.tokenizer, self.runner.geometry.vocab_size, self.eos_token_ids
        )
        self.requests: dict[str, _Request] = {}
        self._imports: dict[str, _Import] = {}  # KV imports being received (decode role)
        self._ids = itertools.count()
        # The batch of the step in progress (for scheduled_prompt_spans).
        self._batch: ScheduledBatch | None = None
        self.last_step = StepStats()  # what the latest step did

    # -- requests -------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | None = None,
        params: SamplingParams | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a request (text or token ids); returns its id. Raises ValueError on bad input."""
        params = params or SamplingParams()
        if prompt_token_ids is None:
            if not isinstance(prompt, str) or not prompt:
                raise ValueError("prompt is empty: give a non-empty prompt or prompt_token_ids")
            prompt_token_ids = self.tokenizer.encode(prompt)
        ids = self._validate_prompt(list(prompt_token_ids))
        self._validate_params(params, len(ids))
        request_id = self._new_id(request_id)
        seq = Sequence(request_id, ids, params)
        self.requests[request_id] = self._track(seq)
        self.scheduler.add(seq)
        return request_id

    def _validate_prompt(self, ids: list[int]) -> list[int]:
        vocab = self.runner.geometry.vocab_size
        if not ids:
            raise ValueError("prompt is empty: give a non-empty prompt or prompt_token_ids")
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {vocab}); got {bad[:5]}")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(ids)} tokens but the context holds "
                f"{self.max_model_len} (max_model_len) including at least one "
                f"generated token: shorten the prompt"
            )
        if self.block_manager.blocks_needed(len(ids) + 1) > self.block_manager.num_blocks:
            raise ValueError(
                f"prompt of {len(ids)} tokens exceeds the whole KV cache "
                f"({self.block_manager.num_blocks} blocks of "
                f"{self.block_manager.block_size})"
            )
        sc = self.config.scheduler
        if not sc.enable_chunked_prefill and len(ids) > sc.max_num_batched_tokens:
            raise ValueError(
                f"prompt of {len(ids)} tokens exceeds max_num_batched_tokens="
                f"{sc.max_num_batched_tokens} and chunked prefill is off"
            )
        return ids

    def _validate_params(self, params: SamplingParams, num_prompt_tokens: int) -> None:
        # What SamplingParams cannot check alone: the vocabulary and the prompt's length.
        vocab = self.runner.geometry.vocab_size
        bad = [t for t, _ in params.logit_bias if t >= vocab]
        if bad:
            raise ValueError(f"logit_bias token ids must be in [0, {vocab}); got {bad[:5]}")
        if params.num_prior_output_tokens > num_prompt_tokens:
            raise ValueError(
                f"num_prior_output_tokens={params.num_prior_output_tokens} exceeds the "
                f"prompt's {num_prompt_tokens} tokens"
            )

    def _new_id(self, request_id: str | None) -> str:
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        return request_id

    def _track(self, seq: Sequence) -> _Request:
        detok = IncrementalDetokenizer(
            self.tokenizer, seq.prompt_token_ids, seq.params.skip_special_tokens
        )
        return _Request(seq, detok, RequestTimings(arrival=time.monotonic()))

    def abort(self, request_id: str) -> bool:
        """Cancel a request (or a KV import in progress) at once, freeing its blocks. False
        when it is not known."""
        imp = self._imports.pop(request_id, None)
        if imp is not None:
            with imp.lock:  # a write in flight on a receiver's thread finishes first
                imp.open = False
            self.block_manager.release(imp.blocks)
            return True
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        self.scheduler.remove(req.seq)
        self.block_manager.free(req.seq)
        req.seq.status = SequenceStatus.FINISHED
        req.seq.finish_reason = "abort"
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work

    # -- the step -------------------------------------------------------------------------
    def step(self, layer_done=None) -> list[RequestOutput]:
        """Schedule, run one forward, sample; outputs of the requests that advanced."""
        self.last_step = StepStats()
        batch = self.scheduler.schedule()
        if not batch:
            return []
        now = time.monotonic()
        for seq in batch.seqs:
            timings = self.requests[seq.request_id].timings
            timings.first_scheduled = timings.first_scheduled or now
        self._batch = batch
        # Taken before the step advances num_computed_tokens; rows relative to each sequence.
        spans = prompt_logprob_spans(batch, [0] * len(batch.seqs))
        try:
            sampled, logits = self.runner.execute(batch, layer_done)
        finally:
            self._batch = None
        prompt_tokens = decode_seqs = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            in_prompt = max(min(n, seq.num_prompt_tokens - seq.num_computed_tokens), 0)
            prompt_tokens += in_prompt
            decode_seqs += in_prompt < n
            seq.num_computed_tokens += n
            self.block_manager.commit(seq)
        self.last_step = StepStats(prompt_tokens, decode_seqs, time.monotonic() - now)
        if spans:
            self._record_prompt_logprobs(batch, spans, logits[len(sampled) :])
        if not sampled:
            return []
        result = self.sampler(
            logits[: len(sampled)],
            [s.params for s in sampled],
            [s.num_output_tokens for s in sampled],
            [s.token_ids for s in sampled],
            matchers=[self._matcher(self.requests[s.request_id]) for s in sampled],
        )
        outputs = []
        for i, seq in enumerate(sampled):
            self._append_token(seq, result.token_ids[i], result.logprobs[i], result.top_logprobs[i])
            outputs.append(self._output(self.requests[seq.request_id]))
        return outputs

    def _matcher(self, req: _Request) -> GrammarMatcher | None:
        """The request's grammar matcher, built on first use from what it generated so far
        (so a request imported from a prefill worker or resumed elsewhere continues)."""
        seq = req.seq
        if req.matcher is None and seq.params.grammar is not None:
            req.matcher = self.structured_output.matcher(
                seq.params.grammar,
                seq.prompt_token_ids,
                seq.output_token_ids,
                seq.params.num_prior_output_tokens,
            )
        return req.matcher

    def _record_prompt_logprobs(self, batch: ScheduledBatch, spans, logits: torch.Tensor) -> None:
        """Logprobs of the prompt tokens that `spans`' positions predict, from their rows."""
        targets, num_top = [], []
        for span in spans:
            seq = batch.seqs[span.seq_index]
            targets += seq.token_ids[span.start + 1 : span.end + 1]
            num_top += [seq.params.prompt_logprobs] * (span.end - span.start)
        chosen, tops = rank_logprobs(logits, torch.tensor(targets), num_top)
        at = 0
        for span in spans:
            seq, n = batch.seqs[span.seq_index], span.end - span.start
            seq.prompt_logprobs += chosen[at : at + n]
            seq.prompt_top_logprobs += tops[at : at + n]
            at += n

    def _append_token(self, seq: Sequence, token: int, logprob, top) -> None:
        req = self.requests[seq.request_id]
        if req.matcher is not None:
            req.matcher.accept(token)
        seq.token_ids.append(token)
        seq.logprobs.append(logprob)
        seq.top_logprobs.append(top)
        now = time.monotonic()
        req.timings.first_token = req.timings.first_token or now
        last, req.last_token_time = req.last_token_time, now
        req.unsent_gaps.append(None if last is None else now - last)
        delta = req.detok.add_token(token)
        req.text += delta
        p = seq.params
        if token in p.stop_token_ids or (token in self.eos_token_ids and not p.ignore_eos):
            self._finish(req, "stop")
        elif (
            p.stop
            and (
                cut := find_stop_string(req.text, len(delta), p.stop, p.include_stop_str_in_output)
            )
            is not None
        ):
            req.text = req.text[:cut]
            self._finish(req, "stop")
        elif req.matcher is not None and req.matcher.is_stopped:
            self._finish(req, "stop")  # the grammar is complete: only EOS could follow
        elif seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            self._finish(req, "length")
        elif self.config.role == "prefill":
            self.scheduler.remove(seq)
            seq.status = SequenceStatus.PREFILLED

    def _finish(self, req: _Request, reason: str) -> None:
        seq = req.seq
        self.scheduler.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        req.timings.finished = time.monotonic()

    def _output(self, req: _Request) -> RequestOutput:
        seq = req.seq
        new_ids = seq.output_token_ids[req.sent_tokens :]
        delta = req.text[req.sent_chars :]
        req.sent_tokens, req.sent_chars = seq.num_output_tokens, len(req.text)
        gaps, req.unsent_gaps = tuple(req.unsent_gaps), []
        want_lp = seq.params.logprobs is not None
        # Complete once the first token exists (never on a decode engine, which got the KV).
        want_prompt = (
            seq.params.prompt_logprobs is not None
            and len(seq.prompt_logprobs) == seq.num_prompt_tokens - 1
        )
        handle = None
        if seq.status is SequenceStatus.PREFILLED:
            handle = KVHandle(
                seq.request_id,
                tuple(seq.prompt_token_ids),
                tuple(seq.output_token_ids),
                seq.params,
                seq.num_computed_tokens,
                tuple(seq.logprobs),
                tuple(seq.top_logprobs),
            )
        if seq.is_finished:
            del self.requests[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=seq.output_token_ids,
            text=req.text,
            new_token_ids=new_ids,
            delta_text=delta,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            logprobs=list(seq.logprobs) if want_lp else None,
            top_logprobs=list(seq.top_logprobs) if want_lp else None,
            prompt_logprobs=[None, *seq.prompt_logprobs] if want_prompt else None,
            prompt_top_logprobs=[None, *seq.prompt_top_logprobs] if want_prompt else None,
            num_cached_tokens=seq.num_cached_tokens,
            kv_handle=handle,
            timings=req.timings,
            token_gaps_s=gaps,
        )

    # -- offline API ----------------------------------------------------------------------
    def generate(
        self,
        prompts: str | list[str] | None = None,
        params: SamplingParams | list[SamplingParams] | None = None,
        *,
        prompt_token_ids: list[list[int]] | None = None,
    ) -> list[RequestOutput]:
        """Run a batch of requests to completion; outputs in input order."""
        if isinstance(prompts, str):
            prompts = [prompts]
        n = len(prompt_token_ids) if prompt_token_ids is not None else len(prompts or [])
        plist = params if isinstance(params, list) else [params or SamplingParams()] * n
        if len(plist) != n:
            raise ValueError(f"got {len(plist)} SamplingParams for {n} prompts")
        ids = []
        try:
            for i in range(n):
                if prompt_token_ids is not None:
                    ids.append(
                        self.add_request(params=plist[i], prompt_token_ids=prompt_token_ids[i])
                    )
                else:
                    assert prompts is not None  # n == len(prompts) > i
                    ids.append(self.add_request(prompts[i], plist[i]))
        except ValueError:
            for rid in ids:
                self.abort(rid)
            raise
        final: dict[str, RequestOutput] = {}
        while len(final) < n and self.has_unfinished_requests():
            for out in self.step():
                if out.finished or out.kv_handle is not None:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]

    def stream(
        self,
        prompt: str | None = None,
        params: SamplingParams | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
    ) -> Iterator[RequestOutput]:
        """Yield one request's outputs as it advances (other requests advance too).

        Closing the iterator early aborts the request and frees its blocks.
        """
        rid = self.add_request(prompt, params, prompt_token_ids=prompt_token_ids)
        done = False
        try:
            while not done:
                for out in self.step():
                    if out.request_id == rid:
                        done = out.finished or out.kv_handle is not None
                        yield out
        finally:
            if not done:
                self.abort(rid)

    def apply_chat_template(self, messages: list[dict]) -> str:
        """The model's chat template applied to `messages`, ready for generation."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert isinstance(text, str), "tokenize=False gives the text"
        return text

    # -- disaggregation split points ------------------------------------------------------
    def _held(self, request_id: str, status: SequenceStatus) -> Sequence:
        req = self.requests.get(request_id)
        if req is None or req.seq.status is not status:
            raise KeyError(f"no {status.value} request {request_id!r}")
        return req.seq

    def export_kv(self, request_id: str) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(layer, k, v) for each layer of a prefilled request, k/v [tokens, kv_heads, dim]."""
        seq = self._held(request_id, SequenceStatus.PREFILLED)
        for layer in range(self.runner.geometry.num_layers):
            k, v = self.runner.read_kv(seq.block_table, seq.num_computed_tokens, layer)
            yield layer, k, v

    def scheduled_prompt_spans(self) -> list[PromptSpan]:
        """Inside `step(layer_done=...)`: the prompt tokens each sequence computes this step.

        Once `layer_done(i)` fires, layer i's KV of tokens [0, end) of each span is in the
        cache (tokens before `start` from earlier steps or prefix-cache hits), so a KV sender
        can ship it while later layers compute. `end == num_prompt_tokens` means the prompt
        completes this step. Empty outside a step.
        """
        if self._batch is None:
            return []
        spans = []
        for seq, n in zip(self._batch.seqs, self._batch.num_new_tokens):
            start = seq.num_computed_tokens
            end = min(start + n, seq.num_prompt_tokens)
            if start < end:
                spans.append(
                    PromptSpan(
                        seq.request_id, tuple(seq.block_table), start, end, seq.num_prompt_tokens
                    )
                )
        return spans

    def block_table(self, request_id: str) -> tuple[int, ...]:
        """The KV block ids of a prefilled request; held, never rewritten, until release/abort."""
        return tuple(self._held(request_id, SequenceStatus.PREFILLED).block_table)

    def release(self, request_id: str) -> None:
        """Prefill side: the decode side has the KV; free the held blocks."""
        seq = self._held(request_id, SequenceStatus.PREFILLED)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = "handed_off"
        del self.requests[request_id]

    # -- KV import (decode role) -----------------------------------------------------------
    def begin_import(self, request_id: str, num_kv_tokens: int) -> None:
        """Decode side: reserve blocks for a handed-off request's KV of `num_kv_tokens` tokens
        (and a slot for its first output token), before any of it arrives.

        The blocks belong to no sequence until `commit_import`; `abort` gives them back.
        NoFreeBlocksError when the free blocks cannot hold it (with `ever` False when the
        whole cache is smaller: another decode worker may be larger); ValueError when the id
        is in use or the KV is longer than the context.
        """
        if request_id in self.requests or request_id in self._imports:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not 1 <= num_kv_tokens < self.max_model_len:
            raise ValueError(
                f"KV of {num_kv_tokens} tokens: need 1 to {self.max_model_len - 1} "
                f"(max_model_len {self.max_model_len} includes a generated token)"
            )
        bm = self.block_manager
        need = bm.blocks_needed(num_kv_tokens + 1)
        if need > bm.num_free_blocks:  # also when the whole cache is smaller: try elsewhere
            raise NoFreeBlocksError(
                f"KV of {num_kv_tokens} tokens needs {need} blocks; "
                f"{bm.num_free_blocks} free KV blocks (of {bm.num_blocks} "
                f"of {bm.block_size} tokens)",
                ever=need <= bm.num_blocks,
            )
        self._imports[request_id] = _Import(bm.reserve(num_kv_tokens + 1), num_kv_tokens)

    def write_kv(self, request_id: str, layer_start: int, kv: torch.Tensor, start: int = 0) -> None:
        """Decode side: place KV of an import, layers [layer_start, layer_start + L) by tokens
        [start, start + T); kv is [L, 2 (k, v), T, kv_heads, head_dim].

        The one engine call that may run off the engine's thread, so a receiver can write
        chunks as they land: an import's blocks belong to no sequence, so no step reads or
        writes them. Calls for one import must not overlap each other; an `abort` from the
        engine thread waits for the write in progress, after which writes raise KeyError.
        """
        imp = self._imports.get(request_id)
        if imp is None:
            raise KeyError(f"no KV import {request_id!r} in progress")
        num_tokens = kv.shape[2] if kv.dim() == 5 else 0
        if start < 0 or start + num_tokens > imp.num_tokens:
            raise ValueError(
                f"KV tokens [{start}, {start + num_tokens}) outside the import's {imp.num_tokens}"
            )
        with imp.lock:
            if not imp.open:
                raise KeyError(f"KV import {request_id!r} was aborted")
            self.runner.write_kv(imp.table, layer_start, kv, start)

    def commit_import(self, handle: KVHandle) -> None:
        """Decode side: every layer's KV of `handle.request_id`'s import is in place; admit
        the request with the handle's state (prompt, first tokens, params) and decode it.

        KeyError when no such import is in progress (never begun, or aborted); ValueError
        when the handle does not match it (the import stays reserved: abort it).
        """
        rid = handle.request_id
        imp = self._imports.get(rid)
        if imp is None:
            raise KeyError(f"no KV import {rid!r} in progress")
        prompt = self._validate_prompt(list(handle.prompt_token_ids))
        self._validate_params(handle.params, len(prompt))
        if not handle.output_token_ids or handle.num_kv_tokens != len(prompt):
            raise ValueError("a KV handle carries the prompt's KV and at least the first token")
        if len(prompt) != imp.num_tokens:
            raise ValueError(
                f"the handle's prompt has {len(prompt)} tokens; the import "
                f"reserved KV of {imp.num_tokens}"
            )
        with imp.lock:  # no write can be in flight past this point
            imp.open = False
        del self._imports[rid]
        seq = Sequence(rid, prompt, handle.params)
        req = self._track(seq)
        for tok in handle.output_token_ids:
            seq.token_ids.append(tok)
            req.text += req.detok.add_token(tok)
        seq.logprobs, seq.top_logprobs = list(handle.logprobs), list(handle.top_logprobs)
        seq.block_table = imp.blocks
        seq.num_computed_tokens = seq.num_prompt_tokens
        req.sent_tokens, req.sent_chars = seq.num_output_tokens, len(req.text)
        self.requests[rid] = req
        self.block_manager.commit(seq)
        self.scheduler.add_running(seq)

    def import_kv(
        self, handle: KVHandle, layers: Iterable[tuple[int, torch.Tensor, torch.Tensor]]
    ) -> str:
        """begin_import + write_kv for every layer + commit_import; aborts on any failure."""
        self.begin_import(handle.request_id, handle.num_kv_tokens)
        try:
            seen = set()
            for layer, k, v in layers:
                self.write_kv(handle.request_id, layer, torch.stack([k, v])[None])
                seen.add(layer)
            missing = set(range(self.runner.geometry.num_layers)) - seen
            if missing:
                raise ValueError(f"KV import is missing layers {sorted(missing)[:8]}")
            self.commit_import(handle)
        except BaseException:
            self.abort(handle.request_id)
            raise
        return handle.request_id
