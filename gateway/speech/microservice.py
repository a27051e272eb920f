"""The model-microservice TTS API (docs/speech-microservice.md), served from the already loaded engines.

- ``POST /v1/text-to-speech/{voice_id}``: one text in one voice, written to a file under the outputs directory.
- ``POST /v1/text-to-dialogue``: several speakers' lines in order, one file.
- ``POST /api/v1/tts/clone`` and ``/api/v1/tts/design``: served by a TTS engine whose capabilities say it can
  (``Capabilities.extra["cloning"]``, ``extra["design"]``); the shipped engines answer 400 saying so.
- ``GET /v1/outputs/{name}`` (gateway/speech/outputs.py) and ``POST /v1/load-model`` / ``/v1/unload-model``
  (gateway/speech/engine_memory.py) belong to the same API.

A voice is a voice id, or a path to a voice file inside the voices directory; an unknown or missing one falls
back to the default voice and the answer says so (``voice_fallback``), as the API this mirrors does. Generation
parameters the engine has no use for (a seed for Piper) are accepted and listed in ``ignored_parameters``.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engines.base import Voice
from gateway.api_common import parse_body, read_json, unprocessable, validation_detail
from gateway.auth import scoped
from gateway.principal import principal_of
from gateway.settings import Settings
from gateway.speech import engine_memory, outputs
from gateway.speech.synth import MAX_SPEED, MIN_SPEED, speak
from gateway.state import app_state
from gateway.usage import meter
from pipeline.runtime import Runtime

MAX_TEXT_CHARS = 5000
MAX_DIALOGUE_INPUTS = 50
Format = Literal["wav", "mp3", "opus", "aac", "flac", "pcm"]
# The engine-independent parameters: every TTS engine takes a speed.
_ALWAYS_HONOURED = frozenset({"speed"})


class TTSParameters(BaseModel):
    """Generation parameters. ``speed`` is honoured by every engine; the others only by engines that list
    them in ``Capabilities.extra["tts_parameters"]`` (none shipped): the answer names those it ignored.
    Unknown names are accepted and reported as ignored too."""

    model_config = ConfigDict(extra="allow")
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=10)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    max_new_tokens: int | None = Field(None, gt=0)
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("text has nothing to say")
    return value


SpokenText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_text)]


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    output_filepath: str | None = Field(None, max_length=1024)
    parameters: TTSParameters = Field(default_factory=TTSParameters)
    # None: the output path's suffix when it names a format, else wav.
    response_format: Format | None = Field(None, validation_alias=AliasChoices("response_format", "format"))


class TTSRequest(_Output):
    """``POST /v1/text-to-speech/{voice_id}``."""

    text: SpokenText


class DialogueLine(BaseModel):
    """One speaker's turn in a dialogue."""

    model_config = ConfigDict(extra="forbid")
    text: SpokenText
    voice_id: str | None = Field(None, max_length=1024)


class DialogueRequest(_Output):
    """``POST /v1/text-to-dialogue``; ``pause_ms`` of silence go between speakers."""

    inputs: list[DialogueLine] = Field(max_length=MAX_DIALOGUE_INPUTS)
    pause_ms: int = Field(400, ge=0, le=5000)


class DesignRequest(BaseModel):
    """``POST /api/v1/tts/design``: a voice described in words (``instruct``) speaks ``text``."""

    model_config = ConfigDict(extra="forbid")
    text: SpokenText
    instruct: str = Field(min_length=1, max_length=2000)
    output_filepath: str | None = Field(None, max_length=1024)


# -- voices -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceChoice:
    """The voice a request gets, and why when it is not the one asked for."""

    voice: Voice
    fallback: bool = False
    note: str = ""  # why another voice spoke


def default_voice(runtime: Runtime, settings: Settings) -> Voice:
    voices = runtime.tts.voices()
    if not voices:
        raise HTTPException(500, "the tts engine lists no voices")
    by_id = {v.id: v for v in voices}
    for vid in (settings.default_voice, getattr(runtime.tts, "default_voice", None)):
        if isinstance(vid, str) and vid in by_id:
            return by_id[vid]
    return voices[0]


def _looks_like_path(voice_id: str) -> bool:
    return "/" in voice_id or "\\" in voice_id or voice_id.startswith(".") or bool(Path(voice_id).suffix)


def resolve_voice(runtime: Runtime, settings: Settings, voice_id: str | None) -> VoiceChoice:
    """``voice_id`` as a voice id, or a path inside ``settings.voices_dir`` (400 when it points outside);
    anything unknown or missing falls back to the default voice, saying why."""
    voices = runtime.tts.voices()
    fallback = default_voice(runtime, settings)
    if not voice_id:
        return VoiceChoice(fallback, True, f"no voice given: the default voice {fallback.id} spoke")
    by_id = {v.id: v for v in voices}
    if voice_id in by_id:
        return VoiceChoice(by_id[voice_id])
    if not _looks_like_path(voice_id):
        return VoiceChoice(
            fallback, True, f"unknown voice {voice_id!r}: the default voice {fallback.id} spoke"
        )
    root = settings.voices_dir.resolve()
    try:
        raw = Path(voice_id)
        path = (raw if raw.is_absolute() else root / raw).resolve()
    except (OSError, RuntimeError, ValueError):
        raise HTTPException(400, f"voice path {voice_id!r} cannot be resolved") from None
    if path != root and root not in path.parents:
        raise HTTPException(400, f"voice path {voice_id!r} is outside the voices directory {root}")
    for voice in voices:
        if voice.path and Path(voice.path).resolve() in (path, path.with_suffix("")):
            return VoiceChoice(voice)
    if not path.is_file():
        why = f"no voice file {voice_id!r} in the voices directory"
    else:  # a reference recording, say: speaking like it is cloning, which the engine would have to declare
        why = f"{voice_id!r} is not one of the tts engine's voices" + (
            ""
            if runtime.tts.capabilities.extra.get("cloning")
            else " (it cannot clone a voice from a recording)"
        )
    return VoiceChoice(fallback, True, f"{why}: the default voice {fallback.id} spoke")


# -- synthesis and files -------------------------------------------------------------------------------------------


def ignored_parameters(runtime: Runtime, parameters: TTSParameters) -> list[str]:
    """The parameters a request set that the TTS engine does not use."""
    honoured = _ALWAYS_HONOURED | set(runtime.tts.capabilities.extra.get("tts_parameters", ()))
    given = parameters.model_dump(exclude_unset=True)
    return sorted(name for name in given if name not in honoured)


async def synthesize(runtime: Runtime, text: str, voice: str, speed: float) -> np.ndarray:
    """The whole of ``text`` in ``voice`` as int16 at ``runtime.tts.sample_rate`` (on the TTS worker)."""
    try:
        chunks = [chunk async for chunk in speak(runtime, text, voice, speed)]
    except HTTPException:
        raise
    except Exception as exc:  # the engine itself failed: the one case for a 500
        raise HTTPException(500, f"the tts engine failed: {type(exc).__name__}: {exc}") from exc
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


async def _answer(
    request: Request, rt: Runtime, body: _Output, audio: np.ndarray, notes: list[str], **fields: Any
) -> Response:
    """Save ``audio`` as the request asked (among the caller's key's outputs) and answer
    ``{status, output_filepath, message, ...}``."""
    rate = rt.tts.sample_rate
    settings, owner = app_state(request).settings, principal_of(request).owner
    saved = await outputs.save_audio(settings, body.output_filepath, body.response_format, audio, rate, owner)
    ignored = ignored_parameters(rt, body.parameters)
    if ignored:
        engine = engine_memory.engine_class_name(rt.tts)
        notes = [*notes, f"The tts engine ({engine}) does not use {', '.join(ignored)}: ignored."]
    message = " ".join([f"Speech saved to {saved['output_filepath']}.", *notes])
    return JSONResponse(
        {"status": "success", **saved, "message": message, **fields, "ignored_parameters": ignored}
    )


async def _runtime(request: Request, role: str = "tts") -> Runtime:
    state = app_state(request)
    if state.runtime is None:
        raise HTTPException(503, "models are still loading")
    await engine_memory.memory_of(state).ensure_loaded(role)
    return state.runtime


# -- routes -------------------------------------------------------------------------------------------------------


async def text_to_speech(request: Request) -> Response:
    body = await parse_body(request, TTSRequest)
    if isinstance(body, Response):
        return body
    state = app_state(request)
    rt = await _runtime(request)
    choice = resolve_voice(rt, state.settings, request.path_params["voice_id"])
    audio = await synthesize(rt, body.text, choice.voice.id, body.parameters.speed)
    meter(request, tts_chars=len(body.text))  # usage per key (gateway/usage)
    notes = [f"{choice.note[:1].upper()}{choice.note[1:]}."] if choice.fallback else []
    return await _answer(
        request, rt, body, audio, notes, voice_id=choice.voice.id, voice_fallback=choice.fallback
    )


async def text_to_dialogue(request: Request) -> Response:
    body = await parse_body(request, DialogueRequest)
    if isinstance(body, Response):
        return body
    if len(body.inputs) < 2:
        raise HTTPException(400, f"a dialogue needs at least 2 inputs, got {len(body.inputs)}")
    state = app_state(request)
    rt = await _runtime(request)
    rate = rt.tts.sample_rate
    pause = np.zeros(rate * body.pause_ms // 1000, np.int16)
    pieces: list[np.ndarray] = []
    segments: list[dict[str, Any]] = []
    notes: list[str] = []
    for index, line in enumerate(body.inputs):
        choice = resolve_voice(rt, state.settings, line.voice_id)
        if choice.fallback:
            notes.append(f"Input {index}: {choice.note}.")
        audio = await synthesize(rt, line.text, choice.voice.id, body.parameters.speed)
        if index:
            pieces.append(pause)
        at = sum(len(p) for p in pieces)
        pieces.append(audio)
        segments.append(
            {
                "index": index,
                "voice_id": choice.voice.id,
                "voice_fallback": choice.fallback,
                "start_s": round(at / rate, 3),
                "end_s": round((at + len(audio)) / rate, 3),
            }
        )
    fallback = any(s["voice_fallback"] for s in segments)
    meter(request, tts_chars=sum(len(line.text) for line in body.inputs))  # usage per key
    return await _answer(
        request, rt, body, np.concatenate(pieces), notes, segments=segments, voice_fallback=fallback
    )


async def _fields(request: Request) -> dict[str, Any] | JSONResponse:
    """A form (multipart or urlencoded) or a JSON object, as a dict; 422 for anything else."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if media in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return dict((await request.form(max_files=1, max_fields=10)).items())
        data = await read_json(request)
    except Exception as exc:  # a malformed form or JSON (a body over the edge's limit is its 413, not this)
        return unprocessable([{"loc": ["body"], "msg": f"not a form or JSON object: {exc}", "type": "body"}])
    if not isinstance(data, dict):
        return unprocessable([{"loc": ["body"], "msg": "expected an object", "type": "dict_type"}])
    return data


def _decode_reference(data: bytes) -> np.ndarray:
    from faster_whisper.audio import decode_audio  # PyAV underneath; the STT engine loaded it already

    return np.asarray(decode_audio(io.BytesIO(data), sampling_rate=16000), dtype=np.float32)


async def _capable_speech(
    request: Request,
    capability: str,
    what: str,
    make: Callable[[Any], Iterator[np.ndarray]],
    path: str | None,
) -> Response:
    """Speech from a TTS engine that declares ``capability`` (``Capabilities.extra``), else 400 saying so."""
    state = app_state(request)
    if state.runtime is None:
        raise HTTPException(503, "models are still loading")
    if not state.runtime.tts.capabilities.extra.get(capability):
        engine = engine_memory.engine_class_name(state.runtime.tts)
        raise HTTPException(
            400,
            f"the tts engine ({engine}) cannot {what}: it lacks the {capability!r} capability "
            f"(Capabilities.extra[{capability!r}])",
        )
    rt = await _runtime(request)
    try:
        chunks = [chunk async for chunk in rt.tts_worker.stream(lambda: make(rt.tts))]
    except Exception as exc:
        raise HTTPException(500, f"the tts engine failed: {type(exc).__name__}: {exc}") from exc
    audio = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    return await _answer(request, rt, _Output(output_filepath=path), audio, [])


async def clone(request: Request) -> Response:
    """``POST /api/v1/tts/clone`` (multipart: text, ref_audio file, ref_text, output_filepath)."""
    fields = await _fields(request)
    if isinstance(fields, Response):
        return fields
    text, audio, ref_text = fields.get("text"), fields.get("ref_audio"), fields.get("ref_text")
    path = fields.get("output_filepath")
    errors: list[dict[str, Any]] = []

    def error(field: str, msg: str) -> None:
        errors.append({"loc": ["body", field], "msg": msg, "type": "value_error"})

    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
        error("text", f"text to speak is required (at most {MAX_TEXT_CHARS} characters)")
    for name, value in (("ref_text", ref_text), ("output_filepath", path)):
        if value is not None and not isinstance(value, str):
            error(name, f"{name} must be text")
    reference = np.zeros(0, np.float32)
    if not isinstance(audio, UploadFile):
        error("ref_audio", "a reference audio file is required")
    else:
        try:
            reference = await asyncio.to_thread(_decode_reference, await audio.read())
        except Exception as exc:
            error("ref_audio", f"not audio that can be decoded: {exc}")
        else:
            if not reference.size:
                error("ref_audio", "the reference recording holds no audio")
    if errors:
        return unprocessable(errors)
    # An engine with extra["cloning"] takes synthesize_clone(text, reference: 16 kHz mono float32, ref_text)
    # and yields int16 chunks at its sample rate (docs/speech-microservice.md).
    return await _capable_speech(
        request,
        "cloning",
        "clone a voice from a reference recording",
        lambda tts: tts.synthesize_clone(text, reference, ref_text),
        path if isinstance(path, str) else None,
    )


async def design(request: Request) -> Response:
    """``POST /api/v1/tts/design`` (text, instruct, output_filepath; JSON or a form)."""
    fields = await _fields(request)
    if isinstance(fields, Response):
        return fields
    try:
        body = DesignRequest.model_validate(fields)
    except ValidationError as exc:
        return validation_detail(exc)
    # An engine with extra["design"] takes synthesize_design(text, instruct) and yields int16 chunks.
    return await _capable_speech(
        request,
        "design",
        "design a voice from a description",
        lambda tts: tts.synthesize_design(body.text, body.instruct),
        body.output_filepath,
    )


routes: list[BaseRoute] = [
    scoped(Route("/v1/text-to-speech/{voice_id:path}", text_to_speech, methods=["POST"]), "batch"),
    scoped(Route("/v1/text-to-dialogue", text_to_dialogue, methods=["POST"]), "batch"),
    scoped(Route("/api/v1/tts/clone", clone, methods=["POST"]), "batch"),
    scoped(Route("/api/v1/tts/design", design, methods=["POST"]), "batch"),
    *outputs.routes,
    *engine_memory.routes,
]
