"""The Starlette application: health, metrics, sessions API, the voice WebSocket and static pages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from flows import HttpTool, example_flows
from gateway import calls_api, flows_api
from gateway.auth import Auth, issue_session_token
from gateway.engines import build_runtime
from gateway.http_guard import edge_middleware
from gateway.records import StoreRecorder
from gateway.sessions import SessionManager
from gateway.sessions_api import delete_session, get_session, list_sessions
from gateway.settings import Settings
from gateway.webrtc import restrict_ice_host_addresses, webrtc_offer
from gateway.ws_voice import voice_endpoint
from pipeline.metrics import LoopLagMonitor
from pipeline.runtime import Runtime
from storage.store import Store
from telephony import registry as telephony
from telephony.twilio.control import TwilioSetup

log = logging.getLogger("voxgate.app")
STATIC = Path(__file__).parent / "static"
VERSION = "0.1.0"


class AppState:
    """Everything the routes share; one per app instance (tests run several side by side)."""

    def __init__(self, settings: Settings, runtime: Runtime | None) -> None:
        self.settings = settings
        self.runtime: Runtime | None = runtime
        self.sessions = SessionManager(settings.max_sessions)
        self.auth = Auth(settings.api_key, token_ttl_s=settings.session_token_ttl_s)
        self.ready = asyncio.Event()
        self.load_error: str | None = None
        self.lag = LoopLagMonitor()
        self.store: Store | None = None
        self.flow_http = HttpTool(settings.flow_http_allowlist, settings.flow_secrets)
        self.twilio = TwilioSetup(settings)
        self.webrtc_calls: set[Any] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        if settings.webrtc_host_addresses:
            restrict_ice_host_addresses(
                [a.strip() for a in settings.webrtc_host_addresses.split(",") if a.strip()]
            )
        if not self.twilio.enabled:
            log.info(self.twilio.why_disabled)
        self.recorder: StoreRecorder | None = None

    async def open_store(self) -> None:
        self.store = await Store.open(
            self.settings.storage_url(), write_interval_s=self.settings.storage_write_interval_s
        )
        self.recorder = StoreRecorder(self.store.writer, self.settings.instance_id)
        orphans = await self.store.close_orphaned_sessions(self.settings.instance_id)
        if orphans:
            log.warning("closed %d sessions left open by a previous run that did not shut down", orphans)
        if self.store.fresh and self.settings.load_example_flows:
            for document in example_flows():
                await self.store.save_flow(document["id"], document["name"], document)

    async def close_store(self) -> None:
        if self.store is not None:
            await self.store.close()  # flushes every queued write: a normal shutdown loses no turn


def _state(request: Request) -> AppState:
    return request.app.state.voxgate  # type: ignore[no-any-return]


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state = _state(request)
    if state.ready.is_set():
        return JSONResponse({"status": "ready"})
    if state.load_error:
        return JSONResponse({"status": "failed", "detail": state.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


async def health(request: Request) -> Response:
    state = _state(request)
    rt = state.runtime
    body: dict[str, Any] = {
        "status": "ok" if state.ready.is_set() else ("failed" if state.load_error else "loading"),
        "model_loaded": state.ready.is_set(),
        "device": rt.stt.capabilities.device if rt else None,
        "version": VERSION,
        "active_sessions": len(state.sessions.live),
        "max_sessions": state.settings.max_sessions,
    }
    if rt is not None:
        body["engines"] = {
            "vad": type(rt.vad).__name__,
            "stt": type(rt.stt).__name__,
            "llm": type(rt.llm).__name__,
            "tts": type(rt.tts).__name__,
        }
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    state = _state(request)
    rt = state.runtime
    if rt is None:
        return Response(b"", media_type=CONTENT_TYPE_LATEST)
    live_sessions = list(state.sessions.live.values())
    m = rt.metrics
    totals: dict[str, float] = {}
    for session in live_sessions:
        for name, depth in session.queue_depths().items():
            totals[name] = totals.get(name, 0.0) + depth
    for name in ("input_backlog_seconds", "outbox", "pacer_ms", "response_stage"):
        m.queue_depth.labels(name).set(totals.get(name, 0.0))
    for worker in rt.workers():
        m.queue_depth.labels(f"engine_{worker.name}").set(worker.pending)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


async def list_voices(request: Request) -> Response:
    rt = _state(request).runtime
    if rt is None:
        raise HTTPException(503, "models are still loading")
    voices = [
        {
            "id": v.id,
            "engine": v.engine,
            "language": v.language,
            "sample_rate": v.sample_rate,
            "licence": v.licence,
        }
        for v in rt.tts.voices()
    ]
    return JSONResponse({"voices": voices})


async def index(request: Request) -> Response:
    if "application/json" in request.headers.get("accept", ""):
        state = _state(request)
        return JSONResponse(
            {
                "name": "voxgate",
                "version": VERSION,
                "ready": state.ready.is_set(),
                "endpoints": {"voice": "/v1/voice", "health": "/health", "metrics": "/metrics"},
            }
        )
    return FileResponse(STATIC / "index.html")


async def flows_page(request: Request) -> Response:
    return FileResponse(STATIC / "flows.html")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Starlette:
    """Build the app. Without ``runtime`` the engines load in a thread at start-up (see /health/ready)."""
    settings = settings or Settings()
    state = AppState(settings, runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        await state.open_store()
        retention = asyncio.create_task(_retention_loop(state)) if settings.retention_days else None
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
            if retention is not None:
                retention.cancel()
            for session in list(state.sessions.live.values()):
                await session.close("server_shutdown")
            for call in list(state.webrtc_calls):
                await call.end("server_shutdown")
            await state.close_store()
            await state.lag.stop()
            if state.runtime is not None and runtime is None:
                await state.runtime.close()
            if state.ready.is_set():  # this app froze the heap at start-up
                _HEAP.release()

    routes = [
        Route("/", index),
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/sessions", list_sessions),
        Route("/v1/sessions/token", issue_session_token, methods=["POST"]),
        Route("/v1/sessions/{session_id}", get_session),
        Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
        Route("/v1/voices", list_voices),
        Route("/v1/flows", flows_api.list_flows),
        Route("/v1/flows", flows_api.create_flow, methods=["POST"]),
        Route("/v1/flows/schema", flows_api.flow_schema),
        Route("/v1/flows/validate", flows_api.validate_flow_document, methods=["POST"]),
        Route("/v1/flows/generate", flows_api.generate_flow, methods=["POST"]),
        Route("/v1/flows/{flow_id}", flows_api.get_flow),
        Route("/v1/flows/{flow_id}", flows_api.update_flow, methods=["PUT"]),
        Route("/v1/flows/{flow_id}", flows_api.delete_flow, methods=["DELETE"]),
        Route("/v1/flows/{flow_id}/versions", flows_api.flow_versions),
        WebSocketRoute("/v1/voice", voice_endpoint),
        *calls_api.routes,
        Route("/v1/webrtc/offer", webrtc_offer, methods=["POST"]),
        Route("/flows", flows_page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *telephony.routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=edge_middleware(settings, state.auth),
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.voxgate = state
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
