"""The Starlette application: health, metrics, sessions API, the voice WebSocket and static pages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from gateway import calls_api, flows_api, realtime, service_api, sessions_api, webrtc, ws_voice
from gateway.engines import build_runtime
from gateway.http_guard import edge_middleware
from gateway.http_metrics import HttpMetrics, KeyLogContext
from gateway.keys import api as keys_api
from gateway.limits import Limiter, RateLimit
from gateway.media import routes as media
from gateway.service_api import VERSION as VERSION
from gateway.settings import Settings
from gateway.speech import routes as speech
from gateway.speech.outputs import retention_loop as outputs_retention
from gateway.state import AppState
from gateway.tracing import traced_recorder
from gateway.usage import UsageCollector
from gateway.usage import api as usage_api
from gateway.webhooks import api as webhooks_api
from gateway.webhooks import service as webhooks
from pipeline.runtime import Runtime
from telephony import registry as telephony

log = logging.getLogger("voxgate.app")
# How long a shutdown waits for a session a transport is already closing (uvicorn gives tasks 5 s first).
SESSION_CLOSE_WAIT_S = 5.0


def all_routes() -> list[BaseRoute]:
    """Every module's routes: the API, the transports, each telephony provider's, then the pages."""
    return [
        *service_api.routes,
        *sessions_api.routes,
        *flows_api.routes,
        *calls_api.routes,
        *keys_api.routes,
        *ws_voice.routes,
        *webrtc.routes,
        *realtime.routes,
        *speech.routes,
        *media.routes,
        *webhooks_api.routes,
        *telephony.routes(),
        *usage_api.routes,
        *usage_api.pages,
        *service_api.pages,
    ]


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Starlette:
    """Build the app. Without ``runtime`` the engines load in a thread at start-up (see /health/ready)."""
    settings = settings or Settings()
    state = AppState(settings, runtime, telephony.PROVIDERS)
    webrtc.configure(settings)
    limiter = Limiter.from_settings(settings)  # per-key limits: counters in Redis (redis_url) or in memory
    usage = UsageCollector(state)  # usage rows from session ends, jobs and metered requests
    usage.install()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        await state.open_store()
        state.recorder = traced_recorder(state.recorder, settings)  # OpenTelemetry per turn, when set
        await limiter.start(state.store.engine if state.store is not None else None)
        await webhooks.start(app)  # the dispatcher: platform events to stored deliveries (jobs' too, from here)
        await media.start(app)  # the job queue, and the embedded media engine (loading in a thread)
        retention = asyncio.create_task(_retention_loop(state)) if settings.retention_days else None
        outputs_sweep = asyncio.create_task(outputs_retention(settings))
        state.lag.start()
        loader: asyncio.Task[None] | None = None
        if state.runtime is None:
            loader = asyncio.create_task(_load(state))
        else:
            _ready(state)
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
            outputs_sweep.cancel()
            if retention is not None:
                retention.cancel()
            for session in list(state.sessions.live.values()):
                await session.close("server_shutdown")
                # A transport may be closing it already (on the server's 1012): storage closes after it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.wait_closed(), SESSION_CLOSE_WAIT_S)
            conversations = getattr(app.state, "chat_conversations", None)  # gateway/speech/conversations.py
            if conversations is not None:
                await conversations.close_all("server_shutdown")
            for call in list(state.webrtc_calls):
                await call.end("server_shutdown")
            await media.stop(app)
            await webhooks.stop(app)  # bounded: sends what is due, the rest stays stored
            await limiter.close()
            await state.close_store()
            await state.lag.stop()
            if state.runtime is not None and runtime is None:
                await state.runtime.close()
            if state.ready.is_set():  # this app froze the heap at start-up
                _HEAP.release()

    app = Starlette(
        routes=all_routes(),
        lifespan=lifespan,
        # The rate limit after the edge: it counts the principal the edge resolved.
        middleware=[
            Middleware(HttpMetrics),  # outermost: it counts what the edge refuses too
            *edge_middleware(settings, state.auth),
            Middleware(KeyLogContext),  # inside the edge, which resolves the caller's key
            Middleware(RateLimit, limiter=limiter),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.voxgate = state
    app.state.limiter, app.state.usage = limiter, usage
    return app


async def _load(state: AppState) -> None:
    try:
        state.runtime = await asyncio.to_thread(build_runtime, state.settings)
    except Exception as exc:
        log.exception("loading engines failed")
        state.load_error = f"{type(exc).__name__}: {exc}"
        return
    _ready(state)


def _ready(state: AppState) -> None:
    assert state.runtime is not None
    state.lag.metrics = state.runtime.metrics
    # Everything loaded so far (modules, engines, ~190k objects) lives as long as the process. Frozen, it is
    # no longer scanned by the collector: a full collection otherwise stalls the event loop for ~100 ms,
    # which every call hears as a gap (bench/telephony.py caught it as 120-180 ms jitter spikes).
    _HEAP.freeze()
    state.ready.set()


class _FrozenHeap:
    """``gc.freeze()`` is process-wide: several apps in one process (tests, embedding) share it, so it is
    released (for a clean interpreter shutdown: native modules check) only when the last app that froze
    it stops; one app stopping must not put the others' start-up heap back under collection."""

    def __init__(self) -> None:
        self.holders = 0

    def freeze(self) -> None:
        gc.collect()
        gc.freeze()
        self.holders += 1

    def release(self) -> None:
        if self.holders:
            self.holders -= 1
            if self.holders == 0:
                gc.unfreeze()


_HEAP = _FrozenHeap()


async def _retention_loop(state: AppState) -> None:
    """Delete sessions (and their recordings) older than ``retention_days``, every ``retention_interval_s``."""
    assert state.store is not None and state.settings.retention_days
    while True:
        cutoff = time.time() - state.settings.retention_days * 86400
        try:
            removed = await state.store.delete_sessions_before(cutoff)
            if removed:
                log.info(
                    "retention: deleted %d sessions older than %s days",
                    removed,
                    state.settings.retention_days,
                )
        except Exception:
            log.exception("retention sweep failed")
        await asyncio.sleep(state.settings.retention_interval_s)
