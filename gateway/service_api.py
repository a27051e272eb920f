"""The service's own routes: health, metrics, and the pages (playground, flow builder, static files).

GET /v1/voices lives with the speech endpoints (gateway/speech/voices.py)."""

from __future__ import annotations

import functools
import importlib.util
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.auth import scoped
from gateway.speech.engine_memory import engine_class_name, memory_of
from gateway.state import app_state
from storage.jobs import QUEUED, RUNNING

STATIC = Path(__file__).parent / "static"
VERSION = "0.1.0"


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state = app_state(request)
    if state.draining:  # a load balancer stops sending new callers here (gateway/drain.py)
        return JSONResponse({"status": "draining"}, status_code=503)
    if state.ready.is_set():
        return JSONResponse({"status": "ready"})
    if state.load_error:
        return JSONResponse({"status": "failed", "detail": state.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


# What the engines need, by import name (or binary): /health says which are installed, without importing them.
_DEPENDENCIES = ("faster_whisper", "ctranslate2", "llama_cpp", "onnxruntime", "piper", "av", "soxr")


@functools.cache
def dependencies_available() -> dict[str, bool]:
    found = {name: importlib.util.find_spec(name) is not None for name in _DEPENDENCIES}
    found["espeak-ng"] = shutil.which("espeak-ng") is not None
    return found


async def health(request: Request) -> Response:
    """healthy: every engine loaded; loading: starting, or an engine reloading; degraded: an engine was
    unloaded (POST /v1/unload-model); failed: the engines did not load."""
    state = app_state(request)
    rt = state.runtime
    engine_state = memory_of(state).status() if rt is not None and state.ready.is_set() else {}
    if not state.ready.is_set():
        status = "failed" if state.load_error else "loading"
    elif "loading" in engine_state.values():
        status = "loading"
    else:
        status = "degraded" if "unloaded" in engine_state.values() else "healthy"
    body: dict[str, Any] = {
        "status": status,
        "model_loaded": status == "healthy",
        "device": rt.stt.capabilities.device if rt else None,
        "dependencies_available": dependencies_available(),
        "version": VERSION,
        "active_sessions": len(state.sessions.live),
        "max_sessions": state.settings.max_sessions,
    }
    if state.load_error:
        body["detail"] = state.load_error
    if rt is not None:
        body["engines"] = {
            role: engine_class_name(getattr(rt, role)) for role in ("vad", "stt", "llm", "tts")
        }
        body["engine_state"] = engine_state
        body["load_on_demand"] = state.settings.speech.load_on_demand
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
    jobs = getattr(request.app.state, "media_jobs", None)  # the shared database's count: every replica's
    if jobs is not None:
        for status in (QUEUED, RUNNING):
            m.job_queue_depth.labels(status).set(await jobs.jobs.count(status))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


async def index(request: Request) -> Response:
    """The playground for browsers; for ``Accept: application/json``, what this server is and runs."""
    if "application/json" not in request.headers.get("accept", ""):
        return FileResponse(STATIC / "index.html")
    state = app_state(request)
    settings = state.settings
    models = {role: settings.engine_name(role) for role in ("vad", "stt", "llm", "tts", "turn")}
    voice = settings.default_voice
    return JSONResponse(
        {
            "message": "voxgate: a realtime voice-agent gateway and speech service",
            "model": f"{models['tts']}:{voice}" if voice else models["tts"],
            "models": models,
            "name": "voxgate",
            "version": VERSION,
            "ready": state.ready.is_set(),
            "endpoints": {
                "voice": "/v1/voice",
                "health": "/health",
                "metrics": "/metrics",
                "text_to_speech": "/v1/text-to-speech/{voice_id}",
                "text_to_dialogue": "/v1/text-to-dialogue",
                "outputs": "/v1/outputs/{name}",
                "load_model": "/v1/load-model",
                "unload_model": "/v1/unload-model",
            },
        }
    )


async def flows_page(request: Request) -> Response:
    return FileResponse(STATIC / "flows.html")


async def studio_page(request: Request) -> Response:
    return FileResponse(STATIC / "studio.html")


routes: list[BaseRoute] = [
    scoped(Route("/health/live", live), "public"),
    scoped(Route("/health/ready", ready), "public"),
    scoped(Route("/health", health), "public"),
    scoped(Route("/metrics", metrics), "admin", public_if="metrics_public"),
]

pages: list[BaseRoute] = [
    scoped(Route("/", index), "public"),
    scoped(Route("/flows", flows_page), "public"),
    scoped(Route("/studio", studio_page), "public"),
    scoped(Mount("/static", StaticFiles(directory=STATIC), name="static"), "public"),
]
