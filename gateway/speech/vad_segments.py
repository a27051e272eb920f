"""Where a whole file holds speech (``POST /v1/audio/vad``): the live calls' Silero engine, through the shared
VAD batcher, and their turn-taking rules (``pipeline.turns.TurnDetector``: the threshold with its hysteresis,
the shortest speech that counts, the silence that ends an utterance), so a file is cut as a call would be.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api_common import app_state, validation_detail
from gateway.speech.decode import form_fields, read_form, upload_audio
from pipeline.audio import float_to_pcm16
from pipeline.runtime import Runtime
from pipeline.turns import CHUNK_MS, TurnDetector

log = logging.getLogger("voxgate.speech")

RATE = 16_000
_CHUNK = RATE * CHUNK_MS // 1000  # 512 samples: Silero's 32 ms
# TurnDetector ends an utterance at 28 s (Whisper's window); a file's long speech is joined up again.
_JOIN_GAP_S = 0.1


class VadParams(BaseModel):
    """The knobs of ``/v1/audio/vad``; their defaults are the server's own turn-taking settings."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0.05, le=0.95, description="speech probability that starts speech")
    min_silence_ms: int = Field(ge=100, le=10_000, description="silence that ends a segment")
    min_speech_ms: int = Field(ge=0, le=10_000, description="shorter speech is dropped as a click")
    speech_pad_ms: int = Field(0, ge=0, le=2000, description="widen each segment by this much on each side")


async def speech_segments(
    runtime: Runtime, audio: np.ndarray, params: VadParams
) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of speech in 16 kHz mono float ``audio``, in order."""
    detector = TurnDetector(
        threshold=params.threshold,
        end_of_turn_ms=params.min_silence_ms,
        min_interrupt_ms=0,
        min_speech_ms=params.min_speech_ms,
    )
    state = runtime.vad.new_state(RATE)
    found: list[tuple[float, float]] = []
    start_ms = 0
    chunks = -(-len(audio) // _CHUNK)
    padded = np.zeros(chunks * _CHUNK, np.float32)
    padded[: len(audio)] = audio
    for i in range(chunks):
        chunk = padded[i * _CHUNK : (i + 1) * _CHUNK]
        prob = await runtime.vad_batcher.speech_prob(state, chunk)
        was_open = detector.in_speech
        events = detector.feed(float_to_pcm16(chunk), prob)
        if not was_open and detector.in_speech:
            # The detector counts the chunks of the onset it already passed (speech_ms so far).
            start_ms = (i + 1) * CHUNK_MS - detector.speech_ms
        found += [(start_ms, start_ms + e.speech_ms) for e in events if e.kind == "ended"]
    last = detector.commit()
    if last is not None and last.kind == "ended":
        found.append((start_ms, start_ms + last.speech_ms))
    return _padded(found, params.speech_pad_ms, len(audio) / RATE)


def _padded(found: list[tuple[int, int]], pad_ms: int, duration: float) -> list[tuple[float, float]]:
    segments: list[tuple[float, float]] = []
    for start_ms, end_ms in found:
        start = max(0.0, (start_ms - pad_ms) / 1000)
        end = min(duration, (end_ms + pad_ms) / 1000)
        if segments and start - segments[-1][1] < _JOIN_GAP_S:
            segments[-1] = (segments[-1][0], max(end, segments[-1][1]))
        else:
            segments.append((start, end))
    return segments


async def vad(request: Request) -> Response:
    """``POST /v1/audio/vad``: a multipart ``file`` (and the knobs of :class:`VadParams`) -> its segments."""
    state = app_state(request)
    runtime = state.runtime
    if runtime is None:
        raise HTTPException(503, "models are still loading")
    defaults = state.settings.vad
    form = await read_form(request)
    try:
        try:
            params = VadParams.model_validate(
                {
                    "threshold": defaults.threshold,
                    "min_silence_ms": defaults.end_of_turn_ms,
                    "min_speech_ms": defaults.min_speech_ms,
                    **form_fields(form),
                }
            )
        except ValidationError as exc:
            return validation_detail(exc)
        audio = await upload_audio(form, state.settings.speech.max_upload_seconds, RATE)
    finally:
        await form.close()
    try:
        segments = await speech_segments(runtime, audio, params)
    except Exception as exc:
        log.exception("voice activity detection failed")
        raise HTTPException(500, f"voice activity detection failed: {type(exc).__name__}: {exc}") from None
    return JSONResponse(
        {
            "object": "vad",
            "duration": round(len(audio) / RATE, 3),
            "sample_rate": RATE,
            "threshold": params.threshold,
            "segments": [{"start": round(s, 3), "end": round(e, 3)} for s, e in segments],
        }
    )
