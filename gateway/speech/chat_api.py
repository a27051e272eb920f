"""The Piper+LLM gateway's chat over HTTP, on voxgate's own sessions (see :mod:`gateway.speech.conversations`).

- ``POST /v1/chat`` {message, conversation_id?, flow?, flow_version?, stream?}: the agent's reply as JSON, or
  Server-Sent Events (``conversation``, ``delta``..., ``done``) with ``stream: true``.
- ``POST /v1/voice-chat``: the same turn from typed text (``message``) or speech (``audio``: base64 in JSON,
  or a multipart ``file``; any format ffmpeg reads), answered with the reply's text and audio (base64, timed).
- ``GET /v1/chat/{id}``: the conversation's history; ``DELETE /v1/chat/{id}`` ends it.

A new conversation's id is its session's id: ``GET /v1/sessions/{id}`` shows its stored turns. A turn's
conversation, its run and its JSON are :mod:`gateway.speech.chat_turns`'. On SIGTERM a turn in progress
finishes within the drain, and new ones are refused (503, ``server_draining``; :mod:`gateway.drain`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.api_common import app_state, parse_body, validation_detail
from gateway.auth import principal_of, scoped
from gateway.drain import Drained
from gateway.keys.ownership import owns
from gateway.speech import piper_api
from gateway.speech.chat_turns import failure, open_conversation, reply_json, run_turn, turn_timeout
from gateway.speech.conversations import ChatConversation, TurnResult, registry
from gateway.speech.decode import (
    AudioTooLong,
    UndecodableAudio,
    decode_audio,
    form_fields,
    read_form,
    upload_audio,
)
from pipeline.events import ErrorEvent, FlowEvent, ResponseStarted, ResponseTextDelta
from pipeline.runtime import Runtime

MAX_MESSAGE_CHARS = 4000
MAX_AUDIO_S = 60.0  # a voice turn longer than a minute is not a turn


class ChatRequest(BaseModel):
    """Body of ``POST /v1/chat``."""

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    conversation_id: str | None = Field(None, max_length=64, description="continue this conversation")
    flow: str | None = Field(None, max_length=128, description="a new conversation runs this stored flow")
    flow_version: int | None = Field(None, ge=1, le=2**31 - 1, description="default: the latest")
    stream: bool = Field(False, description="answer as Server-Sent Events")

    model_config = {"extra": "forbid"}

    @field_validator("message")
    @classmethod
    def _has_words(cls, message: str) -> str:
        if not message.strip():
            raise ValueError("message is empty")
        return message.strip()


class VoiceChatRequest(BaseModel):
    """Body of ``POST /v1/voice-chat``: ``message`` (typed) or ``audio`` (spoken), not both."""

    message: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)
    audio: str | None = Field(None, description="base64 of an audio file (WAV, FLAC, MP3, Ogg, WebM...)")
    conversation_id: str | None = Field(None, max_length=64)
    flow: str | None = Field(None, max_length=128)
    flow_version: int | None = Field(None, ge=1, le=2**31 - 1)
    voice: str | None = Field(None, max_length=200, description="the reply's voice (default: the engine's)")
    language: str | None = Field(None, max_length=35, description="the reply's voice by language")
    speed: piper_api.SpeedName = "normal"
    format: str | None = Field(None, max_length=10, description="wav (default), mp3, opus, aac, flac or pcm")
    response_format: str | None = Field(None, max_length=10, description="the same, OpenAI's spelling")

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _one_input(self, info: ValidationInfo) -> VoiceChatRequest:
        has_text = bool(self.message and self.message.strip())
        has_audio = bool(self.audio) or bool(info.context and info.context.get("upload"))
        if has_text == has_audio:
            raise ValueError("send exactly one of message (text) or audio (base64, or a multipart file)")
        return self


# -- POST /v1/chat ------------------------------------------------------------------------------------------


async def chat(request: Request) -> Response:
    started = time.perf_counter()
    body = await parse_body(request, ChatRequest)
    if isinstance(body, JSONResponse):
        return body
    conversation, greeting = await open_conversation(
        request, body.conversation_id, body.flow, body.flow_version
    )
    message, timeout = body.message, turn_timeout(request)

    async def act() -> None:
        await conversation.session.submit_text(message)

    if body.stream:
        return StreamingResponse(
            _sse(conversation, greeting, act, timeout, started),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    result = await run_turn(conversation, act, timeout)
    failed = failure(result)
    if failed is not None:
        raise failed
    return JSONResponse(reply_json(conversation, result, greeting, started))


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def _sse(
    conversation: ChatConversation,
    greeting: TurnResult | None,
    act: Callable[[], Awaitable[None]],
    timeout: float,
    started: float,
) -> AsyncIterator[bytes]:
    """``conversation`` first, a ``delta`` per piece of reply text as the LLM writes it (a space between two
    answers of one turn), ``flow`` and ``error`` events as they happen, then ``done`` with the whole reply
    (the JSON answer's fields)."""
    opening = {"conversation_id": conversation.id, "flow_id": conversation.flow_id}
    if greeting is not None:
        opening["greeting"] = greeting.reply
    yield _event("conversation", opening)
    result = TurnResult()
    try:
        async with contextlib.aclosing(conversation.exchange(act, timeout)) as events:
            async for event in events:
                had_text = bool(result.texts)
                result.add(event)
                if isinstance(event, ResponseStarted) and had_text:
                    yield _event("delta", {"delta": " ", "response_id": event.response_id})
                elif isinstance(event, ResponseTextDelta) and event.delta:
                    yield _event("delta", {"delta": event.delta, "response_id": event.response_id})
                elif isinstance(event, FlowEvent):
                    yield _event("flow", event.to_wire())
                elif isinstance(event, ErrorEvent):
                    yield _event("error", {"detail": event.message, "code": event.code})
    except TimeoutError:
        yield _event("error", {"detail": f"the agent produced nothing for {timeout:g} s", "code": "timeout"})
        return
    yield _event("done", reply_json(conversation, result, greeting, started))


# -- POST /v1/voice-chat ------------------------------------------------------------------------------------


def _is_multipart(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


async def _voice_chat_request(request: Request) -> tuple[VoiceChatRequest, np.ndarray | None] | JSONResponse:
    """The body (JSON, or a multipart form whose ``file`` is the audio) and the audio's samples, if any."""
    if not _is_multipart(request.headers.get("content-type", "")):
        body = await parse_body(request, VoiceChatRequest)
        if isinstance(body, JSONResponse) or body.audio is None:
            return body if isinstance(body, JSONResponse) else (body, None)
        try:
            data = base64.b64decode(body.audio, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(422, "audio must be base64 (standard alphabet, padded)") from None
        try:
            return body, await asyncio.to_thread(decode_audio, data, 16_000, MAX_AUDIO_S)
        except UndecodableAudio as exc:
            raise HTTPException(400, f"could not read the audio: {exc}") from None
        except AudioTooLong as exc:
            raise HTTPException(413, str(exc)) from None
    form = await read_form(request)
    fields = form_fields(form)
    has_file = form.get("file") is not None
    try:
        body = VoiceChatRequest.model_validate(fields, context={"upload": has_file})
    except ValidationError as exc:
        return validation_detail(exc)
    return body, (await upload_audio(form, MAX_AUDIO_S) if has_file else None)


async def _transcribe(runtime: Runtime, samples: np.ndarray) -> tuple[str, str | None, float]:
    """The words in 16 kHz audio, the language heard, and the STT time; 422 when it holds no words."""
    begin = time.perf_counter()
    transcript = await runtime.stt_worker.run(runtime.stt.transcribe, samples)
    stt_ms = round((time.perf_counter() - begin) * 1000, 1)
    if not transcript.text.strip():
        raise HTTPException(422, "no words were heard in the audio; nothing was sent to the agent")
    return transcript.text.strip(), transcript.language, stt_ms


async def voice_chat(request: Request) -> Response:
    started = time.perf_counter()
    state = app_state(request)
    if not state.ready.is_set() or state.runtime is None:
        raise HTTPException(503, "models are still loading; try again shortly")
    runtime = state.runtime
    parsed = await _voice_chat_request(request)
    if isinstance(parsed, JSONResponse):
        return parsed
    body, samples = parsed
    try:  # the reply's audio is checked before the turn: a bad voice must not cost an LLM answer
        fmt = piper_api.parse_format(body.format or body.response_format)
        voice = piper_api.pick_voice(runtime, body.voice, body.language)
    except piper_api.PiperError as exc:
        raise HTTPException(exc.status, exc.message) from None
    transcript = heard_language = stt_ms = None
    if samples is not None:
        transcript, heard_language, stt_ms = await _transcribe(runtime, samples)
        if body.voice is None and body.language is None and heard_language:
            with contextlib.suppress(piper_api.PiperError):  # a language with no voice keeps the default
                voice = piper_api.voice_for_language(runtime, heard_language)
    message = transcript or (body.message or "").strip()
    conversation, greeting = await open_conversation(
        request, body.conversation_id, body.flow, body.flow_version
    )

    async def act() -> None:
        await conversation.session.submit_text(message)

    result = await run_turn(conversation, act, turn_timeout(request))
    failed = failure(result)
    if failed is not None:
        raise failed
    answer = reply_json(conversation, result, greeting, started)
    answer["transcript"] = transcript
    answer["timings"]["stt_ms"] = stt_ms
    answer["audio"] = None
    spoken = " ".join(p for p in ((greeting.reply if greeting else ""), result.reply) if p)
    if spoken:
        try:
            utterance = await piper_api.synthesize(
                runtime, spoken, voice.id if voice else None, piper_api.SPEEDS[body.speed]
            )
        except Exception as exc:
            raise HTTPException(500, f"synthesis failed: {exc}") from exc
        answer["audio"] = await piper_api.utterance_json(utterance, fmt, voice)
    answer["timings"]["total_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return JSONResponse(answer)


# -- GET/DELETE /v1/chat/{id} -------------------------------------------------------------------------------


def _known(request: Request) -> ChatConversation:
    conversation_id = request.path_params["conversation_id"]
    conversation = registry(request).get(conversation_id)
    if conversation is None or not owns(principal_of(request), conversation.session.owner_key):
        raise HTTPException(404, f"no open conversation {conversation_id[:64]!r}")
    return conversation


async def get_conversation(request: Request) -> Response:
    """The history the LLM draws on (instructions first), and how many turns the conversation has had."""
    conversation = _known(request)
    session = conversation.session
    return JSONResponse(
        {
            "conversation_id": conversation.id,
            "flow_id": conversation.flow_id,
            "turn_count": len(session.turns),
            "history": session.history,
            "idle_s": round(time.monotonic() - conversation.last_used, 1),
        }
    )


async def end_conversation(request: Request) -> Response:
    conversation = _known(request)
    await conversation.close("client_closed")
    return Response(status_code=204)


routes: list[BaseRoute] = [
    # A drain lets a turn in progress finish, and refuses new ones (gateway/drain.py).
    scoped(Route("/v1/chat", Drained(chat), methods=["POST"]), "batch"),
    scoped(Route("/v1/voice-chat", Drained(voice_chat), methods=["POST"]), "batch"),
    scoped(Route("/v1/chat/{conversation_id}", get_conversation), "batch"),
    scoped(Route("/v1/chat/{conversation_id}", end_conversation, methods=["DELETE"]), "batch"),
]
