"""Per-request sampling parameters, validated once at the boundary (vLLM semantics)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from runtime.engine.grammar import GrammarSpec

# Temperatures below this are treated as greedy, as in vLLM: dividing by them would overflow.
SAMPLING_EPS = 1e-5
MAX_LOGPROBS = 20
# What the KV handoff's wire (proto/kv_transfer.proto SamplingParams) holds: a value past these
# would overflow there after the prompt was computed, so it is refused here, before any work.
UINT32_MAX = 2**32 - 1  # max_tokens, stop_token_ids
INT32_MAX = 2**31 - 1  # top_k (past the vocabulary it filters nothing anyway)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seed
# OpenAI's ranges: presence/frequency penalties in [-2, 2], a logit bias in [-100, 100].
MAX_ABS_PENALTY = 2.0
MAX_ABS_LOGIT_BIAS = 100.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _quoted(value: object, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def lone_surrogate_at(text: str) -> int | None:
    """The index of the first lone surrogate (U+D800-U+DFFF) in `text`, or None.

    JSON's \\ud800 escapes and Python strings can hold one; UTF-8, protobuf and the
    tokenizers cannot, so text carrying one is refused where it enters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


@dataclass(frozen=True)
class SamplingParams:
    """How one request turns logits into tokens and text, and when it stops.

    - `temperature` 0 means greedy (argmax); `top_k` 0 or -1, `top_p` 1 and `min_p` 0 disable
      their filters. Filters apply in the order temperature, top-k, top-p, min-p.
    - `seed` makes sampling reproducible: the token at output index i depends only on
      (seed, i) and the logits, never on the batch or on which engine runs the step.
    - `stop` strings end generation when they appear in the output text; `stop_token_ids`
      end it when sampled (the token is kept in the output ids). `ignore_eos` keeps going
      past the model's EOS token.
    - Penalties (OpenAI/vLLM semantics) change the logits before temperature and filters:
      `presence_penalty` p and `frequency_penalty` f (each in [-2, 2]) subtract
      `f * count + p * (count > 0)` from each token's logit, counting the token in the output
      so far; `repetition_penalty` r (> 0, 1 is off) divides the positive logits and multiplies
      the negative ones of every token in the prompt or the output; `logit_bias` adds a bias
      in [-100, 100] to the logit of each token id it names (given as a mapping or (id, bias)
      pairs, stored as pairs sorted by id). `min_tokens` (<= max_tokens) keeps EOS (unless
      `ignore_eos`) and `stop_token_ids` from being sampled until that many tokens were
      generated. `num_prior_output_tokens` N says the prompt's last N tokens were generated
      by an earlier attempt of this request (a resumed one): the presence and frequency
      penalties count them as output too.
    - `logprobs` N returns the sampled token's logprob and the top-N logprobs per token,
      taken from the raw logits (before temperature and filters). `prompt_logprobs` N does
      the same for each prompt token after the first (vLLM's `prompt_logprobs`); such a
      request computes its whole prompt (no prefix-cache hits), as its logits are needed.
    - `grammar` constrains the output to a JSON schema, any JSON object, a regex or a choice
      (structured output); the request stops as soon as the grammar is complete.

    Invalid values raise ValueError naming the field, the value and what is allowed. Integers
    are bounded by what the KV handoff's wire holds (max_tokens and stop_token_ids uint32,
    top_k int32, seed int64), and stop strings must be valid Unicode (no lone surrogates).
    `stop` accepts a str or list and `stop_token_ids` a list; both are stored as tuples.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    num_prior_output_tokens: int = 0
    grammar: GrammarSpec | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or not 1 <= self.max_tokens <= UINT32_MAX:
            raise ValueError(
                f"max_tokens must be an int >= 1 and <= {UINT32_MAX}, got {self.max_tokens!r}"
            )
        if not _is_real(self.temperature) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or not (1 <= self.top_k <= INT32_MAX or self.top_k in (0, -1)):
            raise ValueError(
                f"top_k must be an int >= 1 and <= {INT32_MAX}, or 0 or -1 to "
                f"disable, got {self.top_k!r}"
            )
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_real(self.min_p) or not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if self.seed is not None and (
            not _is_int(self.seed) or not INT64_MIN <= self.seed <= INT64_MAX
        ):
            raise ValueError(
                f"seed must be None or an int in [{INT64_MIN}, {INT64_MAX}], got {self.seed!r}"
            )
        self._normalise_stop()
        self._normalise_stop_token_ids()
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        if self.grammar is not None and not isinstance(self.grammar, GrammarSpec):
            raise ValueError(f"grammar must be None or a GrammarSpec, got {self.grammar!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value <= MAX_LOGPROBS):
                raise ValueError(
                    f"{name} must be None or an int in [0, {MAX_LOGPROBS}], got {value!r}"
                )
        self._check_penalties()
        self._normalise_logit_bias()

    def _normalise_stop(self) -> None:
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)):
            raise ValueError(f"stop must be a str or a list of str, got {stop!r}")
        for s in stop:
            # An empty stop string would match at every position and end every request at once.
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must contain only non-empty strings, got {s!r} in {stop!r}")
            at = lone_surrogate_at(s)
            if at is not None:
                raise ValueError(
                    f"stop strings must be valid Unicode: {s!r} has a lone surrogate at index {at}"
                )
        object.__setattr__(self, "stop", tuple(stop))

    def _normalise_stop_token_ids(self) -> None:
        ids = self.stop_token_ids
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"stop_token_ids must be a list of ints, got {ids!r}")
        for t in ids:
            if not _is_int(t) or not 0 <= t <= UINT32_MAX:
                raise ValueError(
                    f"stop_token_ids must contain only ints >= 0 and <= "
                    f"{UINT32_MAX}, got {t!r} in {ids!r}"
                )
        object.__setattr__(self, "stop_token_ids", tuple(ids))

    def _check_penalties(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value) or not -MAX_ABS_PENALTY <= value <= MAX_ABS_PENALTY:
                raise ValueError(
                    f"{name} must be a number in [{-MAX_ABS_PENALTY}, {MAX_ABS_PENALTY}], "
                    f"got {value!r}"
                )
        r = self.repetition_penalty
        if not _is_real(r) or not math.isfinite(r) or r <= 0:
            raise ValueError(
                f"repetition_penalty must be a finite number > 0 (1 is off), got {r!r}"
            )
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be an int >= 0 and <= max_tokens ({self.max_tokens}), "
                f"got {self.min_tokens!r}"
            )
        n = self.num_prior_output_tokens
        if not _is_int(n) or not 0 <= n <= UINT32_MAX:
            raise ValueError(
                f"num_prior_output_tokens must be an int >= 0 and <= {UINT32_MAX}, got {n!r}"
            )

    def _normalise_logit_bias(self) -> None:
        bias = self.logit_bias
        pairs = list(bias.items()) if isinstance(bias, Mapping) else bias
        if not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs
        ):
            raise ValueError(f"logit_bias must map token ids to biases, got {_quoted(bias)}")
        for token, value in pairs:
            if not _is_int(token) or not 0 <= token <= UINT32_MAX:
                raise ValueError(
                    f"logit_bias keys must be token ids (ints >= 0 and <= {UINT32_MAX}), "
                    f"got {token!r}"
                )
            if not _is_real(value) or not -MAX_ABS_LOGIT_BIAS <= value <= MAX_ABS_LOGIT_BIAS:
                raise ValueError(
                    f"logit_bias values must be numbers in [{-MAX_ABS_LOGIT_BIAS}, "
                    f"{MAX_ABS_LOGIT_BIAS}], got {value!r} for token {token}"
                )
        normalised = tuple(sorted((int(t), float(v)) for t, v in pairs))
        if len({t for t, _ in normalised}) != len(normalised):
            raise ValueError("logit_bias names a token id more than once")
        object.__setattr__(self, "logit_bias", normalised)

    def resumed(self, num_sent: int) -> SamplingParams:
        """These params for what is left of the request after `num_sent` output tokens went
        out, when it resumes with them appended to its prompt: max_tokens (to 1 at least) and
        min_tokens shrink by as many, and the presence and frequency penalties go on counting
        them as output."""
        max_tokens = max(self.max_tokens - num_sent, 1)
        return replace(
            self,
            max_tokens=max_tokens,
            min_tokens=min(max(self.min_tokens - num_sent, 0), max_tokens),
            num_prior_output_tokens=self.num_prior_output_tokens + num_sent,
        )

    @property
    def has_penalties(self) -> bool:
        """True when some penalty, bias or min_tokens changes this request's logits."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
            or self.min_tokens
        )

    @property
    def is_greedy(self) -> bool:
        """True when the request takes the argmax token (temperature 0, or below 1e-5)."""
        return self.temperature < SAMPLING_EPS
