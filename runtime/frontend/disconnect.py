"""A non-streaming HTTP request whose client goes away is cancelled on the workers, as a
streaming one is (there the failed write ends the stream)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Coroutine

from starlette.requests import Request

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def until_disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (call after the body is read:
    ASGI then has nothing else to deliver but the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # a server that answers at once must not spin the loop


async def unless_disconnected(request: Request, work: Coroutine, stream: AsyncGenerator):
    """`await work`, unless the client disconnects first: then `work` is cancelled, `stream`
    (the request's chunks, which `work` consumes) closed, which aborts the request on every
    worker that holds it and frees its KV blocks, and ClientGone raised."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if not task.cancelled() and task.done():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await stream.aclose()
    log.info("%s %s: the client went away; request cancelled", request.method, request.url.path)
    raise ClientGone()
