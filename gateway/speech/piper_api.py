"""The Piper streaming server's API, served by voxgate's own TTS engine (on its worker, never on the loop).

- ``GET /tts/stream?text=...&speed=...&voice=...&format=...``: chunked audio, the WAV header and the first
  sentence leaving while the later sentences are still being synthesized.
- ``POST /tts`` {text, language?, voice?, speed?, format?}: the whole utterance as base64 audio, with its
  timing (synthesis time, time to first audio, each sentence's offset).
- ``GET /stream/{lang}/{text}``: progressive audio in a voice of that language.

Speeds are named as that API names them (:data:`SPEEDS`); each maps to a factor the engines understand (Piper
divides its length scale by it, espeak-ng multiplies its words per minute). Errors of this API carry both the
Piper server's ``error`` and voxgate's ``detail``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from engines.base import Voice
from gateway.api_common import BadJson, app_state, read_json
from gateway.auth import scoped
from gateway.speech import encode
from gateway.speech.synth import find_voice, speak
from gateway.usage import meter
from pipeline.runtime import Runtime
from pipeline.text import ClauseSplitter

# Speed names -> speed factors. Piper's length scale is its voice's own divided by the factor, so these are
# the length scales 1.5, 1.2, 1, 0.8 and 0.6 that Piper servers commonly offer; espeak-ng speaks
# 140 words a minute times the factor (93 to 233).
SPEEDS: dict[str, float] = {
    "very_slow": 1 / 1.5,
    "slow": 1 / 1.2,
    "normal": 1.0,
    "fast": 1 / 0.8,
    "very_fast": 1 / 0.6,
}
SpeedName = Literal["very_slow", "slow", "normal", "fast", "very_fast"]
MAX_TEXT_CHARS = 5000  # a longer text ties the shared TTS worker up for everyone else
_LISTED = 40  # error messages name at most this many voices or languages


class PiperError(Exception):
    """A request this API refuses: answered ``status`` with ``{"error", "detail"}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def error_response(exc: PiperError) -> JSONResponse:
    return JSONResponse({"error": exc.message, "detail": exc.message}, status_code=exc.status)


# -- what a request asks for -------------------------------------------------------------------------------


def require_runtime(request: Request) -> Runtime:
    runtime = app_state(request).runtime
    if runtime is None or not app_state(request).ready.is_set():
        raise PiperError("models are still loading; try again shortly", 503)
    return runtime


def check_text(text: str | None) -> str:
    if text is None or not text.strip():
        raise PiperError("text is empty: give the words to speak")
    if len(text) > MAX_TEXT_CHARS:
        raise PiperError(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS} per request")
    return text.strip()


def parse_speed(raw: str | None) -> float:
    name = (raw or "normal").strip().lower()
    if name not in SPEEDS:
        raise PiperError(f"speed must be one of {', '.join(SPEEDS)}, not {name[:40]!r}")
    return SPEEDS[name]


def parse_format(raw: str | None) -> str:
    fmt = (raw or "wav").strip().lower()
    if fmt not in encode.FORMATS:
        raise PiperError(f"format must be one of {', '.join(encode.FORMATS)}, not {fmt[:40]!r}")
    return fmt


def _language_family(language: str) -> str:
    return language.strip().lower().replace("_", "-").split("-")[0]


def known_languages(runtime: Runtime) -> list[str]:
    return sorted({_language_family(v.language) for v in runtime.tts.voices()})


def voice_for_language(runtime: Runtime, language: str) -> Voice:
    """The engine's voice for ``language`` ("en", "en-US", "de"...): its default voice when that speaks the
    language, else the first voice that does; PiperError naming the languages it has otherwise. An engine that
    knows its own default per language (``default_voice_for``, the composite voices engine) chooses first."""
    family = _language_family(language)
    chooser = getattr(runtime.tts, "default_voice_for", None)
    chosen = chooser(family) if family and callable(chooser) else None
    found = find_voice(runtime, chosen) if chosen else None
    if found is not None:
        return found
    voices = [v for v in runtime.tts.voices() if _language_family(v.language) == family]
    if not family or not voices:
        languages = known_languages(runtime)
        shown = ", ".join(languages[:_LISTED]) + (" ..." if len(languages) > _LISTED else "")
        raise PiperError(f"no voice speaks language {language[:40]!r}; known languages: {shown}")
    default = getattr(runtime.tts, "default_voice", None)
    return next((v for v in voices if v.id == default), voices[0])


def pick_voice(runtime: Runtime, voice: str | None, language: str | None = None) -> Voice | None:
    """The voice asked for by name, else by language, else the engine's default (None: it has no list)."""
    if voice:
        found = find_voice(runtime, voice)
        if found is None:
            ids = sorted(v.id for v in runtime.tts.voices())
            shown = ", ".join(ids[:_LISTED]) + (" ..." if len(ids) > _LISTED else "")
            raise PiperError(f"unknown voice {voice[:80]!r}; known voices: {shown}")
        return found
    if language:
        return voice_for_language(runtime, language)
    default = getattr(runtime.tts, "default_voice", None)
    return find_voice(runtime, default) if default else None  # None: the engine speaks its own default


# -- streaming ----------------------------------------------------------------------------------------------


async def _synthesized_ahead(chunks: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
    """``chunks`` pulled as fast as the engine makes them, whatever the client's pace, with the first one
    already in hand: a failure before any audio is still an HTTP error.

    The TTS worker is shared with live calls (and holds the CPU gate the LLM yields to): it must never wait
    for a slow reader, so synthesized audio waits here instead (at most MAX_TEXT_CHARS of speech, a few MB).
    A client that goes away stops the synthesis.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pull() -> None:
        try:
            async for chunk in chunks:
                queue.put_nowait(("item", chunk))
            queue.put_nowait(("end", None))
        except Exception as exc:
            queue.put_nowait(("error", exc))

    puller = asyncio.create_task(pull())
    kind, first = await queue.get()
    if kind != "item":
        puller.cancel()
        if kind == "error":  # the engine failed before any byte left: a real engine failure
            raise PiperError(f"synthesis failed: {first}", 500) from first
        raise PiperError("the text has nothing to speak (no letters or digits)")

    async def rest() -> AsyncIterator[np.ndarray]:
        try:
            yield first
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    raise value
                if kind == "end":
                    return
                yield value
        finally:
            puller.cancel()

    return rest()


async def stream_speech(
    runtime: Runtime, text: str, voice: Voice | None, speed: float, fmt: str
) -> StreamingResponse:
    """Audio for ``text`` as it is synthesized; raises PiperError if no audio can come of it."""
    chunks = await _synthesized_ahead(speak(runtime, text, voice.id if voice else None, speed))
    body = encode.encode_stream(chunks, fmt, runtime.tts.sample_rate)
    headers = {
        "Cache-Control": "no-store",
        "X-Sample-Rate": str(encode.output_rate(fmt, runtime.tts.sample_rate)),
    }
    if voice is not None:
        headers["X-Voice"] = voice.id
    return StreamingResponse(body, media_type=encode.media_type(fmt), headers=headers)


async def tts_stream(request: Request) -> Response:
    """``GET /tts/stream``: see the module docstring."""
    params = request.query_params
    try:
        text = check_text(params.get("text"))
        speed = parse_speed(params.get("speed"))
        fmt = parse_format(params.get("format") or params.get("response_format"))
        runtime = require_runtime(request)
        voice = pick_voice(runtime, params.get("voice"), params.get("language"))
        response = await stream_speech(runtime, text, voice, speed, fmt)
        meter(request, tts_chars=len(text))  # usage per key (gateway/usage)
        return response
    except PiperError as exc:
        return error_response(exc)


async def stream_language(request: Request) -> Response:
    """``GET /stream/{lang}/{text}``: progressive audio in a voice of ``lang``."""
    params = request.query_params
    try:
        text = check_text(request.path_params["text"])
        speed = parse_speed(params.get("speed"))
        fmt = parse_format(params.get("format") or params.get("response_format"))
        runtime = require_runtime(request)
        voice = voice_for_language(runtime, request.path_params["lang"])
        response = await stream_speech(runtime, text, voice, speed, fmt)
        meter(request, tts_chars=len(text))  # usage per key (gateway/usage)
        return response
    except PiperError as exc:
        return error_response(exc)


# -- a whole utterance with its timing ---------------------------------------------------------------------


class TTSRequest(BaseModel):
    """Body of ``POST /tts``."""

    text: str = Field(max_length=MAX_TEXT_CHARS)
    language: str | None = Field(None, max_length=35, description="picks a voice of this language")
    voice: str | None = Field(None, max_length=200, description="a voice id (wins over language)")
    speed: SpeedName = "normal"
    format: str | None = Field(None, max_length=10, description="wav (default), mp3, opus, aac, flac or pcm")
    response_format: str | None = Field(None, max_length=10, description="the same, OpenAI's spelling")

    model_config = {"extra": "forbid"}

    @field_validator("text")
    @classmethod
    def _has_words(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty: give the words to speak")
        return text


@dataclass
class Utterance:
    """Synthesized speech and when each part of it came."""

    pcm: bytes
    sample_rate: int
    synthesis_s: float
    first_audio_s: float | None
    sentences: list[dict[str, Any]]

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


def sentences_of(text: str) -> list[str]:
    """``text`` cut at sentence ends (and line breaks) only, never at commas."""
    splitter = ClauseSplitter(min_words=10**6, first_min_words=10**6, max_chars=400)
    parts = splitter.push(text)
    rest = splitter.flush()
    return [*parts, rest] if rest else parts


async def synthesize(runtime: Runtime, text: str, voice: str | None, speed: float) -> Utterance:
    """All of ``text``'s speech, sentence by sentence, timing each (offsets are in the returned audio)."""
    rate = runtime.tts.sample_rate
    parts: list[bytes] = []
    sentences: list[dict[str, Any]] = []
    samples = 0
    start = time.perf_counter()
    first: float | None = None
    for sentence in sentences_of(text):
        begin = samples
        async for chunk in speak(runtime, sentence, voice, speed):
            if first is None:
                first = time.perf_counter() - start
            parts.append(chunk.astype("<i2", copy=False).tobytes())
            samples += len(chunk)
        if samples > begin:
            sentences.append(
                {
                    "text": sentence,
                    "start_s": round(begin / rate, 3),
                    "duration_s": round((samples - begin) / rate, 3),
                }
            )
    return Utterance(b"".join(parts), rate, time.perf_counter() - start, first, sentences)


async def tts(request: Request) -> Response:
    """``POST /tts``: base64 audio of the whole text, with its timing metadata."""
    try:
        try:
            data = await read_json(request)
        except BadJson as exc:
            raise PiperError(f"the body is not valid JSON: {exc}", 422) from None
        try:
            body = TTSRequest.model_validate(data)
        except ValidationError as exc:  # which field is wrong, as the other routes say it
            detail = [{"loc": list(e["loc"]), "msg": e["msg"][:300], "type": e["type"]} for e in exc.errors()]
            return JSONResponse({"error": "invalid request body", "detail": detail}, status_code=422)
        fmt = parse_format(body.format or body.response_format)
        runtime = require_runtime(request)
        voice = pick_voice(runtime, body.voice, body.language)
        try:
            utterance = await synthesize(runtime, body.text, voice.id if voice else None, SPEEDS[body.speed])
        except Exception as exc:
            raise PiperError(f"synthesis failed: {exc}", 500) from exc
        if not utterance.pcm:
            raise PiperError("the text has nothing to speak (no letters or digits)")
    except PiperError as exc:
        return error_response(exc)
    meter(request, tts_chars=len(body.text))  # usage per key (gateway/usage)
    return JSONResponse(await utterance_json(utterance, fmt, voice))


async def utterance_json(utterance: Utterance, fmt: str, voice: Voice | None) -> dict[str, Any]:
    """The ``POST /tts`` answer for ``utterance`` encoded as ``fmt`` (encoded off the event loop)."""
    audio = await asyncio.to_thread(encode.encode_all, utterance.pcm, fmt, utterance.sample_rate)
    duration = utterance.duration_s
    return {
        "audio": base64.b64encode(audio).decode("ascii"),
        "format": fmt,
        "media_type": encode.media_type(fmt),
        "sample_rate": encode.output_rate(fmt, utterance.sample_rate),
        "duration_s": round(duration, 3),
        "voice": voice.id if voice else None,
        "language": voice.language if voice else None,
        "synthesis_s": round(utterance.synthesis_s, 3),
        "time_to_first_audio_s": None
        if utterance.first_audio_s is None
        else round(utterance.first_audio_s, 3),
        "real_time_factor": round(utterance.synthesis_s / duration, 3) if duration else None,
        "sentences": utterance.sentences,
    }


routes: list[BaseRoute] = [
    scoped(Route("/tts/stream", tts_stream), "batch"),
    scoped(Route("/tts", tts, methods=["POST"]), "batch"),
    scoped(Route("/stream/{lang}/{text:path}", stream_language), "batch"),
]
