"""benchmarks/serve.py's targets: one coroutine per request that streams the answer and
records when each chunk came (`RequestOutput`), as vLLM's `bench serve` request functions do:
every streamed chunk with a choice is a token (its text may be empty), except that the chat
stream's first, role-only chunk is not (vLLM 0.32 takes it as the first token).

- openai: POST {base_url}{endpoint} (/v1/completions) with the prompt as token ids;
- openai-chat: POST {base_url}{endpoint} (/v1/chat/completions) with the prompt as one
  user message of text;
- tandem-grpc: Tandem's gRPC Generate stream at base_url (host:port or grpc[s]://host:port).

Each streams with `temperature` if given (else the server's default, as vLLM's client does),
`max_tokens` = the sample's output length, `ignore_eos` when asked, and counts output tokens
from the usage the server reports (OpenAI: stream_options include_usage; gRPC: the last
message's usage), else from the chunks. A failure never raises:
it is recorded in `error`, and the run goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import httpx
from _serve_datasets import Sample
from _serve_metrics import RequestOutput

from runtime.client.aio import AsyncClient

BACKENDS = ("openai", "openai-chat", "tandem-grpc")


class _Clock:
    """TTFT at the first chunk that carries output, then one ITL per later chunk."""

    def __init__(self, out: RequestOutput):
        self.out, self.start = out, time.perf_counter()
        out.start_time = self.start
        self.last = self.start
        self.chunks = 0

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.chunks == 0:
            self.out.ttft = now - self.start
        else:
            self.out.itl.append(now - self.last)
        self.last, self.chunks = now, self.chunks + 1

    def finish(self) -> None:
        self.out.latency = self.last - self.start
        self.out.success = self.chunks > 0
        if not self.out.success and not self.out.error:
            self.out.error = "the stream carried no output"


class OpenAITarget:
    """Streams OpenAI completions or chat completions over one shared HTTP connection pool."""

    def __init__(
        self,
        base_url: str,
        endpoint: str,
        model: str,
        chat: bool,
        ignore_eos: bool,
        temperature: float | None = None,
    ):
        self.url = base_url.rstrip("/") + endpoint
        self.model, self.chat, self.ignore_eos = model, chat, ignore_eos
        self.temperature = temperature
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(6 * 3600), limits=limits)

    def body(self, sample: Sample, prompt_text: str | None) -> dict:
        body: dict = {
            "model": self.model,
            "max_tokens": sample.output_len,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt_text}]
        else:
            body["prompt"] = sample.prompt_token_ids
        return body

    async def __call__(self, sample: Sample, prompt_text: str | None = None) -> RequestOutput:
        out = RequestOutput(prompt_len=sample.prompt_len)
        clock = _Clock(out)
        texts: list[str] = []
        try:
            async with self.http.stream("POST", self.url, json=self.body(sample, prompt_text)) as r:
                if r.status_code != 200:
                    out.error = f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}"
                    return out
                async for line in r.aiter_lines():
                    data = line.removeprefix("data:").strip()
                    if not line.startswith("data:") or data == "[DONE]":
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        out.error = str(event["error"].get("message", event["error"]))
                        return out
                    if event.get("usage"):
                        usage = event["usage"]
                        out.output_tokens = usage.get("completion_tokens", 0)
                        out.prompt_len = usage.get("prompt_tokens", out.prompt_len)
                    choices = event.get("choices") or [{}]
                    if self.chat:  # the role-only first chunk carries no token
                        delta = choices[0].get("delta")
                        if delta is None or ("role" in delta and not delta.get("content")):
                            continue
                        text = delta.get("content") or ""
                    elif "text" not in choices[0]:
                        continue
                    else:  # as vLLM: a chunk whose text is still empty (a partial
                        text = choices[0]["text"]  # UTF-8 character) is a token too
                    clock.chunk()
                    texts.append(text)
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            out.error = f"{type(e).__name__}: {e}"
            return out
        clock.finish()
        out.generated_text = "".join(texts)
        if not out.output_tokens:
            out.output_tokens = clock.chunks
        return out

    async def close(self) -> None:
        await self.http.aclose()


class GrpcTarget:
    """Streams Tandem's gRPC Generate with the prompt as token ids."""

    def __init__(
        self, base_url: str, model: str, ignore_eos: bool, temperature: float | None = None
    ):
        self.client = AsyncClient(base_url, timeout=6 * 3600)
        self.model, self.ignore_eos, self.temperature = model, ignore_eos, temperature

    async def __call__(self, sample: Sample, prompt_text: str | None = None) -> RequestOutput:
        out = RequestOutput(prompt_len=sample.prompt_len)
        clock = _Clock(out)
        texts: list[str] = []
        tokens = 0
        try:
            async for chunk in self.client.stream(
                prompt_token_ids=sample.prompt_token_ids,
                model=self.model,
                max_tokens=sample.output_len,
                temperature=self.temperature,
                ignore_eos=self.ignore_eos,
            ):
                if chunk.token_ids:
                    clock.chunk()
                    tokens += len(chunk.token_ids)
                    texts.append(chunk.text)
                if chunk.usage is not None:
                    out.output_tokens = chunk.usage.completion_tokens
        except Exception as e:  # the SDK's typed errors; the run records and goes on
            out.error = f"{type(e).__name__}: {e}"
            return out
        clock.finish()
        out.generated_text = "".join(texts)
        out.output_tokens = out.output_tokens or tokens
        return out

    async def close(self) -> None:
        await self.client.close()


Target = Callable[[Sample, "str | None"], Awaitable[RequestOutput]]


def make_target(
    backend: str,
    base_url: str,
    endpoint: str,
    model: str,
    ignore_eos: bool,
    temperature: float | None = None,
):
    """The request function of `backend` (one of BACKENDS); it has an async `close()`.
    `temperature` None leaves it to the server's default, as vLLM's client does."""
    if backend == "tandem-grpc":
        return GrpcTarget(base_url, model, ignore_eos, temperature)
    if backend in ("openai", "openai-chat"):
        chat = backend == "openai-chat"
        return OpenAITarget(base_url, endpoint, model, chat, ignore_eos, temperature)
    raise ValueError(f"--backend {backend!r}: choose one of {BACKENDS}")
