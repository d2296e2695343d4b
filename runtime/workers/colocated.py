"""The colocated worker: one engine runs each request from prompt to last token."""

from __future__ import annotations

from collections.abc import Iterator

from runtime.engine import SamplingParams
from runtime.workers.base import Worker
from runtime.workers.events import TokenEvent


class ColocatedWorker(Worker):
    """Prefill and decode in one engine, as one vLLM instance would: the baseline."""

    role = "colocated"

    def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> Iterator[list[TokenEvent]]:
        """Stream batches of `TokenEvent`s until the request finishes (or is aborted).

        Raises ValueError, before any event, when the engine refuses the prompt.
        """
        self.streams.open(request_id)
        try:
            self.loop.call(
                self.engine.add_request,
                params=params,
                prompt_token_ids=list(prompt_token_ids),
                request_id=request_id,
            )
        except BaseException:
            self.streams.discard(request_id)
            raise
        yield from self.streams.drain(request_id, lambda ev: ev.finished)
