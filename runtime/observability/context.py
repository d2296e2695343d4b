"""The id of the request being served, for every log record written while serving it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("tandem_request_id", default=None)


def current_request_id() -> str | None:
    """The request id of the current context (an asyncio task copies it into what it spawns)."""
    return _request_id.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def request_id_scope(request_id: str) -> Iterator[str]:
    """Log records written inside carry `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        try:
            _request_id.reset(token)
        except ValueError:  # an async generator closed from another context: its own copy
            _request_id.set(None)
