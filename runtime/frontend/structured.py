"""Structured-output requests as the APIs spell them, turned into one validated GrammarSpec.

OpenAI's `response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema":
{"schema": ...}}) and vLLM's `guided_json` / `guided_regex` / `guided_choice` all become one
engine grammar; at most one of them may be given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from runtime.engine.grammar import GrammarSpec
from runtime.frontend.requests import InvalidRequest


@dataclass(frozen=True)
class GrammarRequest:
    """A grammar as sent: the request field it came from (for messages), its kind and text."""

    field: str
    kind: str
    spec: str = ""

    def to_spec(self, max_chars: int) -> GrammarSpec:
        """The validated grammar; InvalidRequest naming the field when it is too large or
        invalid (a schema llguidance cannot compile, a bad regex, an empty choice)."""
        if len(self.spec) > max_chars:
            raise InvalidRequest(
                f"{self.field} has {len(self.spec)} characters: at most {max_chars} are allowed"
            )
        try:
            return GrammarSpec(self.kind, self.spec)
        except ValueError as e:
            raise InvalidRequest(f"{self.field}: {e}") from None


def schema_text(field: str, schema) -> str:
    """A JSON schema given as an object or as JSON text, as canonical JSON text."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise InvalidRequest(f"{field} is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{field} must be a JSON schema object")
    return json.dumps(schema, sort_keys=True, ensure_ascii=False)


def one_grammar(*candidates: GrammarRequest | None) -> GrammarRequest | None:
    """The one grammar given, None when none; InvalidRequest when several are."""
    given = [c for c in candidates if c is not None]
    if len(given) > 1:
        names = ", ".join(c.field for c in given)
        raise InvalidRequest(f"give at most one structured-output constraint, got {names}")
    return given[0] if given else None
