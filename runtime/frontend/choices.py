"""Several choices for one request (OpenAI's `n` and `best_of`), each run as its own request.

Choice i of a seeded request samples with seed + i (wrapped to int64, as vLLM derives its
child requests' seeds), so `n` seeded choices are reproducible and differ from each other;
choice 0 is what the same request with n = 1 gives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace

from runtime.frontend.requests import InvalidRequest, PreparedRequest, RequestLimits
from runtime.frontend.results import GenerationChunk

_INT64 = 1 << 64


def check_choices(limits: RequestLimits, n: int, best_of: int | None, stream: bool) -> int:
    """The number of sequences to run (`best_of`, default `n`); InvalidRequest past the
    limits, for best_of < n, or for best_of > n with streaming (the best are known only
    once all have ended)."""
    top = limits.max_choices
    if not 1 <= n <= top:
        raise InvalidRequest(f"n must be an int in [1, {top}], got {n}")
    if best_of is None:
        return n
    if not n <= best_of <= top:
        raise InvalidRequest(f"best_of must be an int in [n={n}, {top}], got {best_of}")
    if stream and best_of > n:
        raise InvalidRequest("best_of > n cannot be streamed: set stream to false or best_of = n")
    return best_of


def check_num_logprobs(limits: RequestLimits, name: str, value: int | None) -> None:
    """InvalidRequest unless `value` (top logprobs per token) is None or in [0, the limit]."""
    top = limits.max_logprobs
    if value is not None and not 0 <= value <= top:
        raise InvalidRequest(f"{name} must be an int in [0, {top}], got {value}")


def choice_request(req: PreparedRequest, index: int) -> PreparedRequest:
    """Choice `index` of `req`: its seed is seed + index (unseeded stays unseeded)."""
    seed = req.params.seed
    if seed is None or not index:
        return req
    wrapped = (seed + index + (1 << 63)) % _INT64 - (1 << 63)
    return replace(req, params=replace(req.params, seed=wrapped))


async def generate_choices(
    generate, req: PreparedRequest, n: int, best_of: int | None = None
) -> AsyncGenerator[GenerationChunk, None]:
    """The chunks of `n` choices of `req`, each with its `index`, as they come.

    `generate(req)` runs one request (the dispatcher's `generate`, bound to the client).
    With `best_of` > n, that many run to the end first and the n with the highest cumulative
    logprob of their tokens are yielded, each choice's chunks together, best first (their
    logprobs stripped unless the request asked for them). Whatever way the consumer stops,
    every request still running is cancelled, which frees it on the workers.
    """
    runs = best_of or n
    if runs == 1:
        async for chunk in generate(req):
            yield chunk
        return
    if runs == n:
        async for chunk in _merged([generate(choice_request(req, i)) for i in range(n)]):
            yield chunk
        return
    ranked = replace(req, params=replace(req.params, logprobs=req.params.logprobs or 0))
    by_run: dict[int, list[GenerationChunk]] = {i: [] for i in range(runs)}
    async for chunk in _merged([generate(choice_request(ranked, i)) for i in range(runs)]):
        by_run[chunk.index].append(chunk)
    best = sorted(by_run, key=lambda i: -_cumulative_logprob(by_run[i]))[:n]
    keep = req.params.logprobs is not None
    for index, run in enumerate(best):
        for chunk in by_run[run]:
            yield replace(chunk, index=index, logprobs=chunk.logprobs if keep else None)


def _cumulative_logprob(chunks: list[GenerationChunk]) -> float:
    return sum(lp.logprob for c in chunks for lp in c.logprobs or ())


async def _merged(streams: list) -> AsyncIterator[GenerationChunk]:
    """The streams' chunks interleaved as they arrive, chunk.index = the stream's position.
    The first error any stream raises ends them all and is raised here."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream) -> None:
        try:
            async for chunk in stream:
                await queue.put(replace(chunk, index=index))
            await queue.put(index)
        except Exception as e:  # raised to the consumer, which cancels the other streams
            await queue.put(e)
        finally:
            await stream.aclose()

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        ended = 0
        while ended < len(tasks):
            item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, int):
                ended += 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
