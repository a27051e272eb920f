"""Observability and privacy (issue 15): /metrics after real sessions, JSON logs with ids and masked secrets, and
OpenTelemetry spans per turn (the SDK's in-memory exporter) built from a real spoken turn."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from gateway.client import VoiceClient
from gateway.http_metrics import UNMATCHED, HttpMetrics, KeyLogContext, route_template
from gateway.logs import JsonFormatter, log_filters, mask_private
from gateway.principal import SCOPE_KEY, Principal
from gateway.tracing import STAGES, TracingRecorder, TurnTracer
from tests.speech import piper_pcm


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture
def spans(server) -> Iterator[InMemorySpanExporter]:  # type: ignore[no-untyped-def]
    """The server's sessions traced into memory, as app.py wires an exporter (``traced_recorder``)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    state = server.state
    saved, state.recorder = state.recorder, TracingRecorder(state.recorder, TurnTracer(provider))
    try:
        yield exporter
    finally:
        state.recorder = saved


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every record that reaches the root logger, as the served JSON lines (filters included)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for log_filter in log_filters():
        handler.addFilter(log_filter)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.slow
async def test_metrics_and_spans_after_a_typed_and_a_spoken_session(server, spans) -> None:
    http = httpx.AsyncClient(base_url=server.http, timeout=10)
    question = piper_pcm("What is the capital of France?")
    async with VoiceClient(server.url) as client:
        created = await client.wait_for("session.created")
        session_id = created["session_id"]
        # A typed turn, cut by the caller's spoken question while it is being answered (a barge-in); the
        # question is a turn of its own: VAD, end of turn, STT, LLM, TTS and playback.
        await client.send_event({"type": "input_text", "text": "Tell me a long story about a brave knight."})
        await client.stream(question, realtime=False)
        await client.silence(1.2, realtime=False)
        await client.wait_for("response.interrupted", timeout=30)
        spoken = await client.wait_for("transcript.final", count=2, timeout=60)
        deadline = asyncio.get_running_loop().time() + 60
        while not [m for m in client.received.of("metrics") if m["turn_id"] == spoken["turn_id"]]:
            assert asyncio.get_running_loop().time() < deadline, "the spoken turn was never answered"
            await asyncio.sleep(0.05)  # its first audio has left once its metrics event is here
        await client.send_raw("this is not json")  # an error event, counted by its code
        await client.wait_for("error", timeout=10)
        live = _samples((await http.get("/metrics")).text)
        assert (await http.get(f"/v1/sessions/{session_id}")).status_code == 200
    # Closing the session ends the spoken turn (mid-answer): it is traced then.
    assert (await http.get("/no/such/page")).status_code == 404
    samples = _samples((await http.get("/metrics")).text)
    await http.aclose()

    assert spoken["source"] == "voice"
    assert _value(live, "voxgate_active_sessions", transport="websocket") >= 1
    route = {"method": "GET", "route": "/v1/sessions/{session_id}"}
    assert _value(samples, "voxgate_http_requests_total", status="200", **route) >= 1
    assert _value(samples, "voxgate_http_request_duration_seconds_count", **route) >= 1
    assert _value(samples, "voxgate_http_requests_total", route=UNMATCHED, status="404") >= 1
    assert not any(
        n == "voxgate_http_requests_total" and ("route", f"/v1/sessions/{session_id}") in ls
        for n, ls in samples
    )
    for stage in ("voice_to_voice", "stt", "llm_ttft", "tts_ttfb"):
        assert _value(samples, "voxgate_stage_latency_seconds_count", stage=stage) >= 1, stage
    assert _value(samples, "voxgate_interruptions_total", kind="barge_in") >= 1
    assert _value(samples, "voxgate_client_errors_total", code="invalid_json") >= 1
    assert _value(samples, "voxgate_event_loop_lag_max_seconds") > 0
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert _value(samples, name) > 0, name
    assert ("voxgate_job_queue_depth", frozenset({("status", "queued")})) in samples
    assert ("voxgate_active_calls", frozenset()) not in samples  # labelled by provider, never bare

    # The spoken turn's trace: a turn span and one child per stage, on the same clock.
    turn_id = spoken["turn_id"]
    deadline = asyncio.get_running_loop().time() + 10
    while not [s for s in spans.get_finished_spans() if s.attributes.get("voxgate.turn_id") == turn_id]:
        assert asyncio.get_running_loop().time() < deadline, "the spoken turn was never traced"
        await asyncio.sleep(0.05)
    mine = [s for s in spans.get_finished_spans() if s.attributes.get("voxgate.turn_id") == turn_id]
    root = next(s for s in mine if s.name == "voxgate.turn")
    assert root.attributes["voxgate.session_id"] == session_id
    assert root.attributes["voxgate.voice_to_voice_ms"] > 0
    children = {s.name.removeprefix("voxgate."): s for s in mine if s.parent is not None}
    assert set(children) == set(STAGES)
    for child in children.values():
        assert child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    # Stages in pipeline order: the caller stopped, was transcribed, then the LLM, TTS, playback started.
    order = [children[name].start_time for name in STAGES]
    assert order == sorted(order)
    assert (
        root.attributes["voxgate.transport"] == "websocket"
        and root.attributes["voxgate.interrupted"] is False
    )


def test_route_templates_never_raw_paths() -> None:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({})

    routes = [
        Route("/v1/sessions/{session_id}", ok),
        Route("/v1/calls/{call_sid}", ok, methods=["GET"]),
        Mount("/api", routes=[Route("/items/{item_id:int}", ok)]),
    ]

    def scope(path: str, method: str = "GET") -> dict:
        return {"type": "http", "path": path, "method": method, "root_path": ""}

    assert route_template(routes, scope("/v1/sessions/sess_1")) == (
        "/v1/sessions/{session_id}",
        {"session_id": "sess_1"},
    )
    assert route_template(routes, scope("/v1/calls/CA1", "DELETE"))[0] == "/v1/calls/{call_sid}"  # a 405
    assert route_template(routes, scope("/api/items/7"))[0] == "/api/items/{item_id:int}"
    assert route_template(routes, scope("/api/items/x"))[0] == UNMATCHED
    assert route_template(routes, scope("/elsewhere"))[0] == UNMATCHED


async def test_json_logs_carry_request_ids_and_mask_numbers_and_keys(json_logs) -> None:
    log = logging.getLogger("voxgate.test")

    async def lookup(request: Request) -> JSONResponse:
        log.warning(
            "caller %s asked with %s (%s)",
            "+15551234567",
            "Bearer vg_abcdefgh12345",
            {"key": "sk-abcdef123456"},
        )
        return JSONResponse({})

    class Edge:  # what the edge does: resolve the caller and put the principal in the scope
        def __init__(self, app):  # type: ignore[no-untyped-def]
            self.app = app

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            scope[SCOPE_KEY] = Principal(key_id="key_7", name="seven", scopes=frozenset({"calls"}))
            await self.app(scope, receive, send)

    app = Starlette(
        routes=[Route("/v1/calls/{call_sid}/sessions/{session_id}", lookup)],
        middleware=[Middleware(HttpMetrics), Middleware(Edge), Middleware(KeyLogContext)],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/v1/calls/CA42/sessions/sess_9")).status_code == 200
    log.warning("after the request, +442071838750 called")
    first, after = [line for line in json_lines(json_logs) if line["logger"] == "voxgate.test"]
    assert (first["session_id"], first["call_id"], first["key_id"]) == ("sess_9", "CA42", "key_7")
    assert first["level"] == "warning" and first["ts"].endswith("Z")
    assert "+1555***4567" in first["msg"] and "5551234567" not in first["msg"]
    assert "Bearer ***" in first["msg"] and "abcdefgh12345" not in first["msg"]
    assert "sk-***" in first["msg"] and "abcdef123456" not in first["msg"]
    assert "session_id" not in after and "key_id" not in after  # the context ended with the request
    assert after["msg"] == "after the request, +4420***8750 called"


def test_masking_keeps_what_is_not_secret() -> None:
    assert mask_private("+15551234567") == "+1555***4567"
    assert mask_private("from +4930123456 to 12345678901") == "from +49***56 to 12345678901"
    assert mask_private("key vg_Abc-123_xyz9 and ek_token0123 ok") == "key vg_*** and ek_*** ok"
    assert mask_private("session sess_1a2b turn turn_99 key_7") == "session sess_1a2b turn turn_99 key_7"
    assert mask_private("2+2 = 4, v1.2+3") == "2+2 = 4, v1.2+3"


def test_otlp_exporter_posts_spans_to_the_configured_endpoint(tmp_path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from gateway.settings import Settings
    from gateway.tracing import TracingRecorder, traced_recorder

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_port}/v1/traces"
        assert traced_recorder(None, Settings(data_dir=tmp_path)) is None  # otel_exporter=none: nothing wraps
        recorder = traced_recorder(
            None, Settings(data_dir=tmp_path, otel_exporter="otlp", otel_endpoint=endpoint)
        )
        assert isinstance(recorder, TracingRecorder)
        recorder.tracer.tracer.start_span("voxgate.turn").end()
        provider = recorder.tracer.provider
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        collector.shutdown()
    path, content_type, body = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    assert b"voxgate.turn" in body and b"voxgate" in body
