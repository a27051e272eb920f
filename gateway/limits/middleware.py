"""Requests per minute per key: a pure ASGI middleware placed after the edge (which resolved the principal).

Every HTTP request and WebSocket upgrade of a key with a ``requests_per_minute`` limit counts. Over it: HTTP 429
with ``Retry-After`` and ``{"detail": ...}``; a WebSocket is accepted, sent an ``error`` event with code
``rate_limited`` and closed with 1008, as the edge's other refusals are (a browser sees no HTTP status on a failed
upgrade). It also makes the request's principal known to the code it calls (:func:`current_principal`), so a
check deep in a route (a media job's limit) needs no principal passed down every call.
"""

from __future__ import annotations

import json
from contextvars import ContextVar

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.limits.limiter import Limiter, Over
from gateway.principal import OPEN, SCOPE_KEY, Principal

CLOSE_POLICY = 1008

_PRINCIPAL: ContextVar[Principal] = ContextVar("voxgate_principal", default=OPEN)


def current_principal() -> Principal:
    """The principal of the request being served (``OPEN`` outside one, or with auth off)."""
    return _PRINCIPAL.get()


def too_many(over: Over) -> JSONResponse:
    """The HTTP answer to a caller over a limit."""
    return JSONResponse(
        {"detail": over.detail}, status_code=429, headers={"retry-after": str(over.retry_after)}
    )


class RateLimit:
    """Counts each request against its key's ``requests_per_minute``; see the module docstring."""

    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        principal: Principal = scope.get(SCOPE_KEY, OPEN)
        token = _PRINCIPAL.set(principal)
        try:
            over = await self.limiter.check_request(principal)
            if over is None:
                await self.app(scope, receive, send)
            elif scope["type"] == "http":
                await too_many(over)(scope, receive, send)
            else:
                await _refuse_websocket(over, receive, send)
        finally:
            _PRINCIPAL.reset(token)


async def _refuse_websocket(over: Over, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    event = {"type": "error", "code": over.code, "message": over.detail, "retry_after": over.retry_after}
    await send({"type": "websocket.send", "text": json.dumps(event)})
    await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": over.detail[:120]})
