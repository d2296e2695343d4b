"""`X-Request-Id`: a client-given request id is honoured (it names the request on the workers
and in the response's `id`) and echoed on the response; without one the server assigns one
and returns it the same way, so a client can always quote the id of what it got."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.observability.context import new_request_id
from runtime.observability.http_middleware import REQUEST_ID_HEADER


class RequestIdMiddleware:
    """Pure ASGI (a `BaseHTTPMiddleware` would sit between the app and the client's
    disconnect). `check(given)` raises for an id the server refuses (too long, not
    printable); `refuse(message)` is then the ASGI response sent instead (400)."""

    def __init__(self, app: ASGIApp, check: Callable[[str], None], refuse: Callable):
        self.app, self.check, self.refuse = app, check, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = ""
        for name, value in scope["headers"]:
            if name.decode("latin-1").lower() == REQUEST_ID_HEADER:
                given = value.decode("latin-1")
                break
        if given:
            try:
                self.check(given)
            except ValueError as e:
                response = self.refuse(f"the {REQUEST_ID_HEADER} header: {e}")
                return await response(scope, receive, send)
        request_id = given or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
