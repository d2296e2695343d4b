"""Configuration of the KV handoff, shared by the sender (prefill) and receiver (decode) sides."""

from __future__ import annotations

from dataclasses import dataclass

ENCODINGS = ("raw", "int8", "fp8")


@dataclass(frozen=True)
class TLSConfig:
    """TLS on the KV channel. The receiver needs `cert_file` + `key_file` (PEM); the sender
    trusts `ca_file` (PEM roots; None takes the system roots). `server_name` overrides the name
    checked against the receiver's certificate (e.g. when dialling an IP address)."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class KVTransferConfig:
    """How KV moves between a prefill and a decode worker.

    - `secret`: the cluster secret every call carries (required; compared in constant time).
    - `encoding`: wire encoding of the KV values, "raw" | "int8" | "fp8" (e4m3), per handoff;
      int8/fp8 carry one float32 scale per (group of `group_tokens` tokens, kv head); 0 takes
      the sender's block size.
    - `chunk_bytes`: target encoded size of one chunk (a layer range by a token range), and
      so of one gRPC message. 4 MiB: each message costs gRPC Python thread wake-ups and
      ~0.1 ms of Python on both sides. On a 2-core host, against the plain-stream ceiling,
      4 MiB chunks beat 1 MiB ones in 6 of 7 `make bench-kv` (shape, concurrency) rows, by 4
      to 23 points (most at 16 concurrent handoffs: 46-55% -> 64-72%), and lost one by 8.
    - `max_inflight_bytes`: sender-wide cap on KV queued but not yet handed to gRPC; the
      prefill forward blocks on it, so a slow link slows the prefill instead of growing memory.
    - `deadline_s`: the deadline of every handoff call, from its first byte to the ack.
    - `block_wait_s`: how long a handoff may wait on a decode side that has no free KV blocks
      for it right now (the prefill side keeps the request's KV meanwhile), and never more
      than half the time left before the call's deadline; then RESOURCE_EXHAUSTED. 0 refuses
      at once.
    - `layerwise_min_tokens`: prompts at least this long stream layer by layer during their
      prefill; shorter ones go as one message after it. None (the default): 512 where the
      prefill runs on a GPU, never on a CPU engine, where the transfer's copies and
      checksums compete with the prefill's matmuls for the same cores (on a 2-core host, four
      `make bench-kv` runs at 7 prompt lengths from 32 to 2048 tokens: layer-wise averaged
      4.7% slower than one message after the prefill; slower in 22 of the 28, by up to 25%).
    - `tls`: None for plaintext (the secret then crosses the network in the clear).
    """

    secret: str
    encoding: str = "raw"
    group_tokens: int = 0
    chunk_bytes: int = 4 << 20
    max_inflight_bytes: int = 64 << 20
    deadline_s: float = 30.0
    block_wait_s: float = 15.0
    layerwise_min_tokens: int | None = None
    max_concurrent_handoffs: int = 64
    tls: TLSConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str) or not self.secret:
            raise ValueError("secret must be a non-empty string: the KV channel requires one")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        for name in ("chunk_bytes", "max_inflight_bytes", "max_concurrent_handoffs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_tokens < 0:
            raise ValueError(f"group_tokens must be >= 0, got {self.group_tokens}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if not self.block_wait_s >= 0:
            raise ValueError(f"block_wait_s must be >= 0, got {self.block_wait_s}")
        if self.layerwise_min_tokens is not None and self.layerwise_min_tokens < 1:
            raise ValueError(f"layerwise_min_tokens must be >= 1, got {self.layerwise_min_tokens}")

    @property
    def max_message_bytes(self) -> int:
        """gRPC message size limit on both sides: a chunk plus room for the prompt's ids."""
        return 2 * self.chunk_bytes + (64 << 20)
