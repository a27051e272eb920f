"""``GET /v1/voice``: the WebSocket transport adapter (binary audio both ways, JSON events)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.flow_agent import FlowNotAvailable, attach_flow, load_stored_flow
from gateway.protocol import (
    InputAudioCommit,
    InputDtmf,
    InputText,
    OutputAudioPlayed,
    ResponseCancel,
    SessionClose,
    SessionUpdate,
    check_audio_format,
    parse_client_event,
)
from gateway.settings import session_config
from pipeline.outbox import OutAudio
from pipeline.session import Session, SessionError

log = logging.getLogger("voxgate.ws")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


async def _refuse(ws: WebSocket, code: str, message: str, close_code: int) -> None:
    await ws.send_text(json.dumps({"type": "error", "code": code, "message": message}))
    await ws.close(close_code, reason=message[:120])


def _int_param(ws: WebSocket, name: str, default: int) -> int | None:
    raw = ws.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


async def voice_endpoint(ws: WebSocket) -> None:
    state = ws.app.state.voxgate
    await ws.accept()
    if not state.auth.allows_websocket(ws):
        await _refuse(ws, "unauthorized", "missing or wrong API key", CLOSE_POLICY)
        return
    rate = _int_param(ws, "sample_rate", 16000)
    encoding = ws.query_params.get("encoding", "pcm_s16le")
    out_rate = _int_param(ws, "output_sample_rate", rate or 16000)
    try:
        check_audio_format(rate, encoding)
        check_audio_format(out_rate, encoding)
    except SessionError as exc:
        await _refuse(ws, exc.code, exc.message, CLOSE_UNSUPPORTED)
        return
    if not state.ready.is_set():
        await _refuse(ws, "not_ready", "models are still loading; try again shortly", CLOSE_TRY_AGAIN)
        return
    flow = None
    if ws.query_params.get("flow"):
        try:
            flow = await load_stored_flow(state, ws.query_params["flow"], ws.query_params.get("flow_version"))
        except FlowNotAvailable as exc:
            await _refuse(ws, exc.code, exc.message, CLOSE_POLICY)
            return
    if not state.sessions.try_reserve():
        state.runtime.metrics.sessions_refused.inc()
        await _refuse(ws, "server_busy", "the gateway is at max_sessions; try again later", CLOSE_TRY_AGAIN)
        return
    config = session_config(
        state.settings, input_rate=rate, output_rate=out_rate, encoding=encoding, transport="websocket"
    )
    session = Session(state.runtime, config, recorder=state.recorder)
    if ws.client is not None:
        session.caller = f"{ws.client.host}:{ws.client.port}"
    if flow is not None:
        attach_flow(session, state, flow)
    state.sessions.add(session)
    state.runtime.metrics.active_sessions.labels("websocket").inc()
    try:
        await _serve(ws, session, state.settings.max_message_bytes)
    finally:
        state.runtime.metrics.active_sessions.labels("websocket").dec()
        state.sessions.remove(session)


async def _serve(ws: WebSocket, session: Session, max_bytes: int) -> None:
    await session.start()
    writer = asyncio.create_task(_write_loop(ws, session), name=f"{session.id}-writer")
    reader = asyncio.create_task(_read_loop(ws, session, max_bytes), name=f"{session.id}-reader")
    closed = asyncio.create_task(session.closed.wait())
    try:
        await asyncio.wait({reader, closed, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reason = "client_closed"
        if reader.done() and not reader.cancelled() and reader.exception() is None:
            reason = reader.result()
        await session.close(reason)
        reader.cancel()
        closed.cancel()
        # Let the writer deliver session.closed (bounded: a client that stopped reading gets cut off).
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(writer), timeout=2.0)
        writer.cancel()
        with contextlib.suppress(Exception):
            await ws.close(CLOSE_TOO_BIG if reason == "message_too_large" else CLOSE_NORMAL)


async def _write_loop(ws: WebSocket, session: Session) -> None:
    while True:
        item = await session.outbox.get()
        if item is None:
            return
        if isinstance(item, OutAudio):
            await ws.send_bytes(item.payload)
        else:
            await ws.send_text(json.dumps(item))


async def _read_loop(ws: WebSocket, session: Session, max_bytes: int) -> str:
    """Feed the session until the client leaves; returns the close reason."""
    sample_bytes = 1 if session.config.input_encoding == "mulaw" else 2
    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect as exc:
            return _disconnect_reason(exc.code)
        except RuntimeError:
            return "client_disconnected"
        if message["type"] == "websocket.disconnect":
            return _disconnect_reason(message.get("code"))
        data: bytes | None = message.get("bytes")
        text: str | None = message.get("text")
        size = len(data) if data is not None else len((text or "").encode())
        if size > max_bytes:
            await session.error("message_too_large", f"messages are limited to {max_bytes} bytes")
            return "message_too_large"
        if data is not None:
            if len(data) % sample_bytes:
                await session.error(
                    "invalid_audio", "PCM16 audio must have an even number of bytes; frame dropped"
                )
                continue
            session.push_audio(data)
        elif text is not None:
            try:
                if await dispatch_client_event(session, parse_client_event(text)) == "close":
                    return "client_closed"
            except SessionError as exc:
                await session.error(exc.code, exc.message)


def _disconnect_reason(code: int | None) -> str:
    # uvicorn closes every socket with 1012 (service restart) when the server is told to stop.
    return "server_shutdown" if code == CLOSE_SERVICE_RESTART else "client_disconnected"


async def dispatch_client_event(session: Session, event: Any) -> str | None:
    if isinstance(event, InputText):
        await session.submit_text(event.text)
    elif isinstance(event, InputAudioCommit):
        await session.commit_input()
    elif isinstance(event, InputDtmf):
        await session.dtmf(event.digit)
    elif isinstance(event, OutputAudioPlayed):
        session.ack_played(event.response_id, event.ms)
    elif isinstance(event, ResponseCancel):
        await session.cancel_response()
    elif isinstance(event, SessionUpdate):
        apply_session_update(session, event)
        await session.emit("session.updated", session=event.session.model_dump(exclude_none=True))
    elif isinstance(event, SessionClose):
        return "close"
    return None


def apply_session_update(session: Session, event: SessionUpdate) -> None:
    fields = event.session
    if fields.voice is not None:
        known = {v.id for v in session.rt.tts.voices()}
        if fields.voice not in known:
            raise SessionError(
                "unknown_voice", f"unknown voice {fields.voice!r}; known: {', '.join(sorted(known))}"
            )
    if fields.output_sample_rate is not None:
        check_audio_format(fields.output_sample_rate, session.config.output_encoding)
    session.update(
        instructions=fields.instructions,
        voice=fields.voice,
        output_rate=fields.output_sample_rate,
        vad=fields.vad.model_dump(exclude_none=True) if fields.vad else None,
    )
