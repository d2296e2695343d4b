"""A request's output grammar (JSON schema, JSON object, regex, choice), validated where it enters.

Kept apart from the matcher (runtime/engine/structured_output.py) so that SamplingParams can
hold one without the engine's token-mask machinery: the frontend validates, the engine masks.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import llguidance

# json_schema: the schema as JSON text; json_object: any JSON object (spec empty);
# regex: the pattern the whole output matches; choice: a JSON list of the allowed outputs.
GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "choice")
# Compact JSON: flexible whitespace lets a small model pad the output with newlines forever.
_JSON_OPTIONS: Any = {"whitespace_flexible": False}
# What compiling one grammar may cost (llguidance counts grammar symbols and lexer states);
# past it the grammar is refused as too complex rather than stalling the worker.
MAX_GRAMMAR_SIZE = 200_000
MAX_LEXER_STATES = 50_000


def parser_limits() -> llguidance.LLParserLimits:
    """The bounds every grammar is validated and compiled under."""
    return llguidance.LLParserLimits(
        max_grammar_size=MAX_GRAMMAR_SIZE, max_lexer_states=MAX_LEXER_STATES
    )


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must match, as the user gave it: `kind` one of GRAMMAR_KINDS, `spec`
    its text (see GRAMMAR_KINDS). (What a resumed request already sent is
    `SamplingParams.num_prior_output_tokens`, which the matcher replays.)

    Construction validates the grammar (cached by kind and text) and raises ValueError saying
    what is wrong; `compiled` is the llguidance grammar the engine's matcher is built from.
    """

    kind: str
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise ValueError(f"grammar kind must be one of {GRAMMAR_KINDS}, got {self.kind!r}")
        if not isinstance(self.spec, str):
            raise ValueError(f"the {self.kind} grammar must be given as text, got {self.spec!r}")
        compile_grammar(self.kind, self.spec)

    @property
    def compiled(self) -> str:
        return compile_grammar(self.kind, self.spec)


@functools.lru_cache(maxsize=256)
def compile_grammar(kind: str, spec: str) -> str:
    """The llguidance grammar for `spec`; ValueError (not cached) when it is invalid."""
    if kind == "json_schema":
        try:
            schema = json.loads(spec)
        except ValueError as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ValueError("the JSON schema must be a JSON object")
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    elif kind == "json_object":
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            {"type": "object"}, defaults=_JSON_OPTIONS
        )
    elif kind == "regex":
        if not spec:
            raise ValueError("the regex is empty")
        grammar = llguidance.LLMatcher.grammar_from_regex(spec)
    else:
        grammar = llguidance.LLMatcher.grammar_from_lark(_choice_lark(spec))
    error = llguidance.LLMatcher.validate_grammar(grammar, None, limits=parser_limits())
    if error and not error.startswith("WARNING"):
        raise ValueError(f"invalid {kind}: {error.strip()}")
    return grammar


def _choice_lark(spec: str) -> str:
    try:
        choices = json.loads(spec)
    except ValueError:
        choices = None
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise ValueError("choice must be a non-empty list of non-empty strings")
    # A JSON string literal is a Lark string literal, escapes included.
    return "start: " + " | ".join(json.dumps(c) for c in choices)
