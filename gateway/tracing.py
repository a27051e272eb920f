"""OpenTelemetry traces per turn (setting ``otel_exporter``; docs/observability.md).

The pipeline already stamps each answer with when each stage started and produced its first output (the
timestamps behind ``voice_to_voice_ms`` and the stage histograms). Rather than thread spans through the
pipeline, a turn's spans are built from those stamps once the turn is over: a ``voxgate.turn`` span with one
child per stage (endpoint, stt, llm, tts, playback). The hook is the session recorder: every session already
reports each change of a turn to it (gateway/records.py), so :class:`TracingRecorder` wraps the store's.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

if TYPE_CHECKING:
    from gateway.settings import Settings
    from pipeline.answer import Answer
    from pipeline.conversation import TurnRecord
    from pipeline.session import Session
    from pipeline.session_config import SessionRecorder

log = logging.getLogger("voxgate.tracing")

STAGES = ("endpoint", "stt", "llm", "tts", "playback")


def tracer_provider(settings: Settings) -> TracerProvider | None:
    """The provider ``otel_exporter`` asks for: OTLP over HTTP to ``otel_endpoint``, the console, or None."""
    if settings.otel_exporter == "none":
        return None
    exporter: SpanExporter
    if settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Without an endpoint the exporter reads OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.
        endpoint = settings.otel_endpoint
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    # Its own provider, not the global one: an embedding application keeps its tracing as it set it up.
    provider = TracerProvider(resource=Resource.create({"service.name": "voxgate"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # exported off the event loop, in batches
    return provider


class TurnTracer:
    """Builds one turn's spans from its answer's timestamps (monotonic seconds, turned into wall-clock ns)."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("voxgate")

    def trace_turn(self, session: Session, turn: TurnRecord, answer: Answer, end: float) -> None:
        r = answer.response
        offset_ns = time.time_ns() - time.monotonic_ns()

        def ns(t: float) -> int:
            return int(t * 1e9) + offset_ns

        stt_ms = turn.timings.get("stt_ms")
        stt_start = r.t_created - stt_ms / 1000 if stt_ms is not None else None
        speech_end = answer.speech_end
        spans: dict[str, tuple[float | None, float | None]] = {
            # From the caller's last speech to the transcription's start: the end-of-turn silence (VAD).
            "endpoint": (speech_end, max(stt_start, speech_end) if stt_start and speech_end else None),
            "stt": (stt_start, r.t_created if stt_start is not None else None),
            "llm": (r.t_llm_start, r.t_first_token),  # to the first token
            "tts": (r.t_first_tts_request, r.t_first_tts_audio),  # to the first audio
            "playback": (r.t_first_release, end if r.t_first_release is not None else None),
        }
        starts = [s for s, e in spans.values() if s is not None and e is not None]
        start = min([*starts, speech_end or r.t_created, r.t_created])
        attributes: dict[str, Any] = {
            "voxgate.session_id": session.id,
            "voxgate.turn_id": turn.turn_id,
            "voxgate.response_id": r.id,
            "voxgate.transport": session.config.transport,
            "voxgate.turn_source": turn.source,
            "voxgate.interrupted": turn.interrupted,
        }
        if session.owner_key is not None:
            attributes["voxgate.key_id"] = session.owner_key
        for name, value in turn.timings.items():
            if value is not None:
                attributes[f"voxgate.{name}"] = float(value)
        root = self.tracer.start_span("voxgate.turn", start_time=ns(start), attributes=attributes)
        parent = trace.set_span_in_context(root)
        for stage, (s, e) in spans.items():
            if s is not None and e is not None:
                child = self.tracer.start_span(
                    f"voxgate.{stage}",
                    context=parent,
                    start_time=ns(s),
                    attributes={"voxgate.session_id": session.id, "voxgate.turn_id": turn.turn_id},
                )
                child.end(end_time=ns(max(s, e)))
        root.end(end_time=ns(max(start, end)))


class TracingRecorder:
    """A session recorder that passes every change on to ``inner`` (storage) and traces each turn once it is
    over: heard to the end, cut by a barge-in, answered in text only, or its session closed."""

    def __init__(self, inner: SessionRecorder | None, tracer: TurnTracer) -> None:
        self.inner = inner
        self.tracer = tracer
        # Response ids traced, per session; gone with the session (its close records every turn again).
        self._traced: weakref.WeakKeyDictionary[Session, set[str]] = weakref.WeakKeyDictionary()

    def changed(self, session: Session, turn: TurnRecord | None = None) -> None:
        if self.inner is not None:
            self.inner.changed(session, turn)
        try:
            if turn is not None:
                self._maybe_trace(session, turn, closing=session.closed_at is not None)
        except Exception:  # tracing must never break a conversation
            log.exception("tracing turn failed")

    def _maybe_trace(self, session: Session, turn: TurnRecord, closing: bool) -> None:
        answer = session.answers.get(turn.response_id) if turn.response_id else None
        if answer is None:
            return
        r = answer.response
        over = r.audio_done_sent or r.interrupted or (not answer.speak and r.llm_done) or closing
        traced = self._traced.setdefault(session, set())
        if not over or r.id in traced or (r.t_llm_start is None and r.t_first_release is None):
            return
        traced.add(r.id)
        self.tracer.trace_turn(session, turn, answer, time.monotonic())


def traced_recorder(recorder: SessionRecorder | None, settings: Settings) -> SessionRecorder | None:
    """``recorder`` itself, or wrapped in a :class:`TracingRecorder` when an exporter is configured."""
    provider = tracer_provider(settings)
    if provider is None:
        return recorder
    log.info("tracing turns to %s", settings.otel_exporter)
    return TracingRecorder(recorder, TurnTracer(provider))
