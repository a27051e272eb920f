"""The service's own routes: health, metrics, voices, and the pages (playground, flow builder, static files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.state import app_state

STATIC = Path(__file__).parent / "static"
VERSION = "0.1.0"


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state = app_state(request)
    if state.ready.is_set():
        return JSONResponse({"status": "ready"})
    if state.load_error:
        return JSONResponse({"status": "failed", "detail": state.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


async def health(request: Request) -> Response:
    state = app_state(request)
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
    state = app_state(request)
    rt = state.runtime
    if rt is None:
        return Response(b"", media_type=CONTENT_TYPE_LATEST)
    m = rt.metrics
    totals: dict[str, float] = {}
    for session in list(state.sessions.live.values()):
        for name, depth in session.queue_depths().items():
            totals[name] = totals.get(name, 0.0) + depth
    for name in ("input_backlog_seconds", "outbox", "pacer_ms", "response_stage"):
        m.queue_depth.labels(name).set(totals.get(name, 0.0))
    for worker in rt.workers():
        m.queue_depth.labels(f"engine_{worker.name}").set(worker.pending)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


async def list_voices(request: Request) -> Response:
    rt = app_state(request).runtime
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
        state = app_state(request)
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


routes: list[BaseRoute] = [
    Route("/health/live", live),
    Route("/health/ready", ready),
    Route("/health", health),
    Route("/metrics", metrics),
    Route("/v1/voices", list_voices),
]

pages: list[BaseRoute] = [
    Route("/", index),
    Route("/flows", flows_page),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
