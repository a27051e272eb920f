"""OpenAI's audio API on the loaded engines: ``/v1/audio/speech``, ``/v1/audio/transcriptions``,
``/v1/audio/translations``, plus ``/v1/audio/vad`` (Silero's speech segments) and ``/v1/models``.

The official ``openai`` SDK and any client of OpenAI's API work against these routes (docs/speech-openai.md),
and another voxgate's remote engines call them: a voxgate is then a model node for other gateways. Every
engine call runs on the runtime's workers (never the event loop); decoding and encoding run in threads.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Generator
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from engines.base import SegmentStreamer, TranscribeOptions, Transcript, TranscriptSegment
from gateway.api_common import app_state, parse_body, validation_detail
from gateway.auth import scoped
from gateway.settings import Settings
from gateway.speech import subtitles
from gateway.speech.decode import form_fields, read_form, upload_audio
from gateway.speech.encode import FORMATS, OPENAI_SAMPLE_RATE, encode_stream, media_type
from gateway.speech.openai_models import model_list, resolve_voice, stt_model_ok, tts_model_ok
from gateway.speech.synth import MAX_SPEED, MIN_SPEED, speak
from gateway.speech.vad_segments import vad
from gateway.usage import meter
from pipeline.runtime import Runtime

log = logging.getLogger("voxgate.speech")

STT_RATE = 16_000
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _runtime(request: Request) -> Runtime:
    runtime = app_state(request).runtime
    if runtime is None:
        raise HTTPException(503, "models are still loading")
    return runtime


# -- /v1/audio/speech -----------------------------------------------------------------------------------------


class VoiceRef(BaseModel):
    """A voice given as an object, as OpenAI's custom voices are: ``{"id": "..."}``."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)


class SpeechRequest(BaseModel):
    """The body of ``POST /v1/audio/speech``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str = Field(min_length=1)
    voice: str | VoiceRef
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"

    @field_validator("input")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input holds no text to speak")
        return value


async def speech(request: Request) -> Response:
    runtime = _runtime(request)
    body = await parse_body(request, SpeechRequest)
    if isinstance(body, JSONResponse):
        return body
    settings = app_state(request).settings
    limit = settings.speech.max_speech_chars
    if len(body.input) > limit:
        raise HTTPException(422, f"input is {len(body.input)} characters; at most {limit} are spoken")
    if not tts_model_ok(runtime, settings, body.model):
        raise HTTPException(
            400, f"model {body.model!r} is not a speech model served here (see GET /v1/models)"
        )
    if body.instructions and body.instructions.strip():
        raise HTTPException(400, f"the TTS engine ({type(runtime.tts).__name__}) cannot follow instructions")
    voice_name = body.voice if isinstance(body.voice, str) else body.voice.id
    voice = resolve_voice(runtime, settings, voice_name)  # 400 for a voice nobody knows
    chunks = speak(runtime, body.input, voice.engine_voice, body.speed).__aiter__()
    # The first sentence is synthesized before the answer starts: an engine that fails outright gets a 500
    # with its reason rather than a 200 with a broken body.
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise HTTPException(422, "input holds nothing speakable (no words, numbers or letters)") from None
    except HTTPException:  # an engine unloaded with load_on_demand off (409) says so itself
        raise
    except Exception as exc:
        log.exception("speech synthesis failed")
        raise HTTPException(500, f"speech synthesis failed: {type(exc).__name__}: {exc}") from None
    meter(request, tts_chars=len(body.input))  # usage per key (gateway/usage)

    async def pcm() -> AsyncIterator[np.ndarray]:
        yield first
        async for chunk in chunks:
            yield chunk

    fmt = body.response_format
    audio = encode_stream(pcm(), fmt, runtime.tts.sample_rate, OPENAI_SAMPLE_RATE)
    headers = {"x-sample-rate": str(OPENAI_SAMPLE_RATE), "x-voice": voice.id}
    if voice.fallback:
        headers["x-voice-fallback"] = "true"
    if body.stream_format == "sse":
        return StreamingResponse(
            _speech_events(audio), media_type="text/event-stream", headers={**headers, **SSE_HEADERS}
        )
    content_type = media_type(fmt) + (f";rate={OPENAI_SAMPLE_RATE}" if fmt == "pcm" else "")
    return StreamingResponse(audio, media_type=content_type, headers=headers)


async def _speech_events(audio: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's ``stream_format=sse``: ``speech.audio.delta`` events carrying base64 audio, then
    ``speech.audio.done`` (without ``usage``: no tokens are counted here)."""
    async for piece in audio:
        yield subtitles.sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()})
    yield subtitles.sse_event({"type": "speech.audio.done"})


# -- /v1/audio/transcriptions and /v1/audio/translations ------------------------------------------------------


class TranscriptionForm(BaseModel):
    """The fields of ``POST /v1/audio/transcriptions`` (``/v1/audio/translations`` takes only model, prompt,
    response_format and temperature); the file is read separately."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=list)
    stream: bool = False
    include: list[str] = Field(default_factory=list)
    chunking_strategy: str | None = None

    @field_validator("timestamp_granularities", "include", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # sent as "name" rather than "name[]"


_TRANSLATION_FIELDS = frozenset({"model", "prompt", "response_format", "temperature"})


async def transcriptions(request: Request) -> Response:
    return await _transcribe(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _transcribe(request, "translate")


def _parse_transcription(fields: dict[str, Any], task: str) -> TranscriptionForm | JSONResponse:
    if task == "translate":  # OpenAI's translations take no language, granularities or stream
        extra = [name for name in fields if name not in _TRANSLATION_FIELDS]
        if extra:
            msg = "not a field of /v1/audio/translations"
            detail = [{"loc": ["body", n], "msg": msg, "type": "extra_forbidden"} for n in extra]
            return JSONResponse({"detail": detail}, status_code=422)
    try:
        return TranscriptionForm.model_validate(fields)
    except ValidationError as exc:
        return validation_detail(exc)


def _check_request(runtime: Runtime, settings: Settings, form: TranscriptionForm, task: str) -> None:
    """400 for what the loaded STT engine cannot do, naming the capability it lacks."""
    caps = runtime.stt.capabilities
    model = caps.extra.get("model")
    name = f"{type(runtime.stt).__name__} ({model})" if model else type(runtime.stt).__name__
    words = "word" in form.timestamp_granularities
    refusal = None
    if not stt_model_ok(runtime, settings, form.model):
        refusal = f"model {form.model!r} is not a transcription model served here (see GET /v1/models)"
    elif task == "translate" and not caps.translates:
        refusal = (
            f"the STT engine {name} cannot translate (an English-only model): load a multilingual Whisper "
            "(stt_model=base) for /v1/audio/translations"
        )
    elif form.language is not None and "*" not in caps.languages and form.language not in caps.languages:
        known = ", ".join(caps.languages[:20]) + (", ..." if len(caps.languages) > 20 else "")
        refusal = f"the STT engine {name} does not transcribe language {form.language!r} (it knows: {known})"
    elif form.timestamp_granularities and form.response_format != "verbose_json":
        refusal = "timestamp_granularities needs response_format=verbose_json"
    elif words and not caps.word_timestamps:
        refusal = f"the STT engine {name} gives no word timestamps: ask for segment only"
    elif (form.prompt or form.temperature or words or task == "translate") and not caps.transcribe_options:
        refusal = f"the STT engine {name} takes no prompt, temperature, task or word timestamps"
    elif form.stream and form.response_format not in ("json", "text"):
        refusal = "stream=true streams text: use response_format json or text"
    elif form.include:
        refusal = f"include {form.include} is not supported: the engines give no token logprobs"
    elif form.chunking_strategy is not None:
        refusal = (
            "chunking_strategy is not supported: the file is decoded whole, in Whisper's own 30 s windows"
        )
    if refusal is not None:
        raise HTTPException(400, refusal)


async def _transcribe(request: Request, task: Literal["transcribe", "translate"]) -> Response:
    runtime = _runtime(request)
    settings = app_state(request).settings
    form_data = await read_form(request)
    try:
        parsed = _parse_transcription(form_fields(form_data), task)
        if isinstance(parsed, JSONResponse):
            return parsed
        _check_request(runtime, settings, parsed, task)
        audio = await upload_audio(form_data, settings.speech.max_upload_seconds, STT_RATE)
    finally:
        await form_data.close()
    meter(request, stt_s=len(audio) / STT_RATE)  # usage per key: the audio sent to STT
    options = TranscribeOptions(
        task=task,
        prompt=parsed.prompt or None,
        temperature=parsed.temperature,
        word_timestamps="word" in parsed.timestamp_granularities,
    )
    steps = _steps(runtime, audio, parsed.language, options)
    if parsed.stream:
        return StreamingResponse(
            _transcript_events(steps), media_type="text/event-stream", headers=SSE_HEADERS
        )
    transcript = None
    try:
        async for item in steps:
            transcript = item if isinstance(item, Transcript) else transcript
    except HTTPException:  # an engine unloaded with load_on_demand off (409) says so itself
        raise
    except Exception as exc:
        log.exception("transcription failed")
        raise HTTPException(500, f"transcription failed: {type(exc).__name__}: {exc}") from None
    assert transcript is not None
    granularities = frozenset(parsed.timestamp_granularities)
    body, content_type = subtitles.render(transcript, parsed.response_format, task, granularities)
    return Response(body, media_type=content_type)


async def _steps(
    runtime: Runtime, audio: np.ndarray, language: str | None, options: TranscribeOptions
) -> AsyncIterator[TranscriptSegment | Transcript]:
    """The transcript's segments as they are decoded, then the whole ``Transcript``.

    An engine that decodes step by step (Whisper's seek loop) runs each step as its own job on the STT worker:
    a long file then holds the engine for one 30 s window at a time, and live calls' turns queued meanwhile
    are transcribed between its windows instead of after the whole file."""
    stt = runtime.stt
    if not isinstance(stt, SegmentStreamer):
        plain = options == TranscribeOptions()
        args = (audio, language) if plain else (audio, language, options)
        yield await runtime.stt_worker.run(stt.transcribe, *args)
        return
    generator = stt.transcribe_segments(audio, language, options)
    while True:
        item = await runtime.stt_worker.run(_step, generator)
        yield item
        if isinstance(item, Transcript):
            return


def _step(generator: Generator[TranscriptSegment, None, Transcript]) -> TranscriptSegment | Transcript:
    try:
        return next(generator)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _transcript_events(steps: AsyncIterator[TranscriptSegment | Transcript]) -> AsyncIterator[bytes]:
    """OpenAI's transcription stream: a ``transcript.text.delta`` per decoded segment, then
    ``transcript.text.done`` whose text is the deltas joined; an engine failure is an ``error`` event (the
    status line has long gone)."""
    parts: list[str] = []
    try:
        async for item in steps:
            if isinstance(item, Transcript):
                if not item.segments and item.text:  # an engine that gives its text whole
                    parts.append(item.text)
                    yield subtitles.sse_event({"type": "transcript.text.delta", "delta": item.text})
                break
            delta = item.text if not parts else " " + item.text
            parts.append(delta)
            yield subtitles.sse_event({"type": "transcript.text.delta", "delta": delta})
    except Exception as exc:
        log.exception("streamed transcription failed")
        message = f"transcription failed: {type(exc).__name__}: {exc}"
        yield subtitles.sse_event({"type": "error", "error": {"message": message, "type": "server_error"}})
        return
    yield subtitles.sse_event({"type": "transcript.text.done", "text": "".join(parts)})


# -- /v1/models -------------------------------------------------------------------------------------------------


async def models(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"object": "list", "data": model_list(_runtime(request), state.settings)})


routes: list[BaseRoute] = [
    scoped(Route("/v1/audio/speech", speech, methods=["POST"]), "batch"),
    scoped(Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]), "batch"),
    scoped(Route("/v1/audio/translations", translations, methods=["POST"]), "batch"),
    scoped(Route("/v1/audio/vad", vad, methods=["POST"]), "batch"),
    scoped(Route("/v1/models", models, methods=["GET"]), "batch"),
]

__all__ = ["FORMATS", "routes"]
