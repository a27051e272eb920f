"""HTTP request counts and latency by route template, and the ids a request's logs carry (docs/observability.md).

A pure ASGI middleware, outermost, so that it also counts what the edge refuses (401, 413, 429). Requests are
labelled by the *template* of the route they matched (``/v1/sessions/{session_id}``), never by their raw path:
ids in paths would give every request its own time series. A path no route matches is ``unmatched``.

It also binds the log context (gateway/logs.py) for the request: the ``session_id`` and ``call_id`` its path
names. The key id is bound by :class:`KeyLogContext`, which runs inside the edge that resolves the caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import bind_log_context, reset_log_context
from gateway.principal import principal_of

UNMATCHED = "unmatched"
# Path parameters that name what a request serves, as its log lines' ids.
_ID_PARAMS = {"session_id": "session_id", "call_id": "call_id", "call_sid": "call_id"}


def route_template(routes: Iterable[BaseRoute], scope: Scope, prefix: str = "") -> tuple[str, dict[str, str]]:
    """The template of the route ``scope`` reaches, and its path parameters: ``/v1/sessions/{session_id}``.

    Matched as the router does (a full match first, else a method-only match, which answers 405); a mount's
    inner routes are matched below it, and a mount without routes (static files) is ``/static/{path}``."""
    partial: tuple[str, dict[str, str]] | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        params = {k: str(v) for k, v in child.get("path_params", {}).items()}
        if isinstance(route, Mount):
            inner = route.routes
            if not inner:
                found: tuple[str, dict[str, str]] | None = (f"{prefix}{route.path}/{{path}}", params)
            else:
                template, inner_params = route_template(inner, {**scope, **child}, prefix + route.path)
                found = None if template == UNMATCHED else (template, {**params, **inner_params})
        else:
            found = (prefix + str(getattr(route, "path", UNMATCHED)), params)
        if found is None:
            continue
        if match is Match.FULL:
            return found
        partial = partial or found
    return partial or (UNMATCHED, {})


class HttpMetrics:
    """Counts each HTTP request and times it to the end of its response, by method, route template and status;
    binds the ids its path names to the log context of HTTP requests and WebSockets alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        router = scope.get("app")
        template, params = route_template(getattr(router, "routes", ()), scope)
        ids = {_ID_PARAMS[name]: value for name, value in params.items() if name in _ID_PARAMS}
        token = bind_log_context(**ids)
        try:
            if scope["type"] == "http":
                await self._timed(template, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            reset_log_context(token)

    async def _timed(self, template: str, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500  # what the client gets when the app raises before it answers

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            state = getattr(getattr(scope.get("app"), "state", None), "voxgate", None)
            runtime = getattr(state, "runtime", None)
            if runtime is not None:  # before the engines load there is no registry to count in
                method = scope["method"]
                runtime.metrics.http_requests.labels(method, template, str(status)).inc()
                runtime.metrics.http_latency.labels(method, template).observe(time.perf_counter() - start)


class KeyLogContext:
    """Binds the caller's key id to the log context; placed inside the edge, which resolves the principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = bind_log_context(key_id=principal_of(HTTPConnection(scope)).key_id)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_log_context(token)
