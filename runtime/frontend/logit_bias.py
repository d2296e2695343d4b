"""A request's logit_bias as it arrives (JSON: string token ids; gRPC: int ones), checked."""

from __future__ import annotations

from collections.abc import Mapping


def _quoted(value, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_logit_bias(bias, max_entries: int) -> dict[int, float] | None:
    """`bias` as {token id: bias}, or ValueError saying what to fix.

    Keys are ints or, as OpenAI's JSON sends them, strings of decimal digits ("50256"); the
    entry count is checked first, against `max_entries` (RequestLimits.max_logit_bias), so an
    oversized map is refused before its keys are read. The values' range is SamplingParams'
    to check. None and an empty mapping give None (no bias).
    """
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise ValueError(
            f"logit_bias must be an object mapping token ids to biases, got {_quoted(bias)}"
        )
    if len(bias) > max_entries:
        raise ValueError(f"logit_bias has {len(bias)} entries: at most {max_entries} are allowed")
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        token = _token_id(key)
        if token in parsed:
            raise ValueError(f"logit_bias names token id {token} more than once")
        parsed[token] = value
    return parsed or None


def _token_id(key) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    # str.isdigit also takes other scripts' digits and superscripts; token ids are ASCII.
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10:
        return int(key)
    raise ValueError(
        f'logit_bias keys must be token ids written as decimal strings, like "50256", '
        f"got {_quoted(key)}"
    )
