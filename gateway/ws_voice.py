"""``GET /v1/voice``: the WebSocket transport adapter (binary audio both ways, JSON events)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.agent.flow_agent import FlowNotAvailable, attach_flow, load_stored_flow
from gateway.protocol import (
    InputAudioCommit,
    InputDtmf,
    InputText,
    OutputAudioPlayed,
    ResponseCancel,
    SessionClose,
    SessionUpdate,
    check_audio_format,
    clip,
    flow_request,
    parse_client_event,
    quote,
)
from gateway.settings import session_config
from gateway.state import AppState
from pipeline.events import ErrorEvent, ServerEvent, SessionUpdated
from pipeline.outbox import OutAudio
from pipeline.session import Session, SessionError

log = logging.getLogger("voxgate.ws")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


class Refusal(Exception):
    """The socket cannot get a session: the error event to send and the close code that follows it."""

    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


async def _refuse(ws: WebSocket, code: str, message: str, close_code: int) -> None:
    # The client may already be gone; a refusal must not turn into an unhandled error of its own.
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(ErrorEvent(code, clip(message, 300)).to_wire()))
        await ws.close(close_code, reason=close_reason(message))


def close_reason(message: str) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455), cut on a character boundary."""
    return message.encode()[:120].decode(errors="ignore")


def _int_param(ws: WebSocket, name: str, default: int) -> int | None:
    """An integer query parameter; None when it is not one (ASCII digits: ``int("²")`` raises)."""
    raw = ws.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        return None
    return int(raw)


async def voice_endpoint(ws: WebSocket) -> None:
    state = ws.app.state.voxgate
    await ws.accept()
    try:
        session = await _open_session(ws, state)
    except Refusal as exc:
        await _refuse(ws, exc.code, exc.message, exc.close_code)
        return
    except Exception:
        # A bug or a failing store must not end as a dropped socket (1006) without a word.
        log.exception("setting up a voice session failed")
        await _refuse(ws, "internal_error", "the session could not be set up", CLOSE_INTERNAL_ERROR)
        return
    state.runtime.metrics.active_sessions.labels("websocket").inc()
    try:
        await _serve(ws, session, state.settings.max_message_bytes)
    finally:
        state.runtime.metrics.active_sessions.labels("websocket").dec()
        state.sessions.remove(session)


async def _open_session(ws: WebSocket, state: AppState) -> Session:
    """Check the request and admit a session (added to ``state.sessions``); raises Refusal."""
    if not state.auth.allows_websocket(ws):
        raise Refusal("unauthorized", "missing or wrong API key", CLOSE_POLICY)
    rate = _int_param(ws, "sample_rate", 16000)
    encoding = ws.query_params.get("encoding", "pcm_s16le")
    out_rate = _int_param(ws, "output_sample_rate", rate or 16000)
    try:
        check_audio_format(rate, encoding)
        check_audio_format(out_rate, encoding)
    except SessionError as exc:
        raise Refusal(exc.code, exc.message, CLOSE_UNSUPPORTED) from None
    if not state.ready.is_set():
        raise Refusal("not_ready", "models are still loading; try again shortly", CLOSE_TRY_AGAIN)
    flow = await _load_flow(state, ws.query_params)
    if not state.sessions.try_reserve():
        state.runtime.metrics.sessions_refused.inc()
        raise Refusal("server_busy", "the gateway is at max_sessions; try again later", CLOSE_TRY_AGAIN)
    try:
        config = session_config(
            state.settings, input_rate=rate, output_rate=out_rate, encoding=encoding, transport="websocket"
        )
        session = Session(state.runtime, config, recorder=state.recorder)
        if ws.client is not None:
            session.caller = f"{ws.client.host}:{ws.client.port}"
        if flow is not None:
            attach_flow(session, state, flow)
    except BaseException:
        state.sessions.cancel_reservation()
        raise
    state.sessions.add(session)
    return session


async def _load_flow(state: AppState, params: Any) -> Any:
    try:
        flow_id, version = flow_request(params)
        if flow_id is None:
            return None
        return await load_stored_flow(state, flow_id, version)
    except (SessionError, FlowNotAvailable) as exc:
        raise Refusal(exc.code, exc.message, CLOSE_POLICY) from None


async def _serve(ws: WebSocket, session: Session, max_bytes: int) -> None:
    writer = asyncio.create_task(_write_loop(ws, session), name=f"{session.id}-writer")
    reader: asyncio.Task[str] | None = None
    closed = asyncio.create_task(session.closed.wait())
    try:
        await session.start()
        reader = asyncio.create_task(_read_loop(ws, session, max_bytes), name=f"{session.id}-reader")
        await asyncio.wait({reader, closed, writer}, return_when=asyncio.FIRST_COMPLETED)
    except Exception:
        log.exception("session %s: starting failed", session.id)
    finally:
        reason = _end_reason(session, reader, writer)
        await session.close(reason)
        if reader is not None:
            reader.cancel()
        closed.cancel()
        # Let the writer deliver session.closed (bounded: a client that stopped reading gets cut off).
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(writer), timeout=2.0)
        writer.cancel()
        with contextlib.suppress(Exception):
            await ws.close(_CLOSE_CODES.get(reason, CLOSE_NORMAL))


_CLOSE_CODES = {"message_too_large": CLOSE_TOO_BIG, "internal_error": CLOSE_INTERNAL_ERROR}


def _end_reason(session: Session, reader: asyncio.Task[str] | None, writer: asyncio.Task[None]) -> str:
    """Why the session ends, from whichever of its tasks finished; a failure is logged, never silent."""
    if reader is None:  # session.start() failed (logged by the caller)
        return "internal_error"
    if reader.done() and not reader.cancelled():
        exc = reader.exception()
        if exc is None:
            return reader.result()
        log.error("session %s: the read loop failed", session.id, exc_info=exc)
        return "internal_error"
    if writer.done() and not writer.cancelled() and writer.exception() is not None:
        # Sending fails once the client is gone; the reader usually notices first.
        log.info("session %s: sending failed: %r", session.id, writer.exception())
        return "client_disconnected"
    return "client_closed"


async def _write_loop(ws: WebSocket, session: Session) -> None:
    while True:
        item = await session.outbox.get()
        if item is None:
            return
        if isinstance(item, OutAudio):
            await ws.send_bytes(item.payload)
        elif isinstance(item, ServerEvent):
            await ws.send_text(json.dumps(item.to_wire()))
        # A Flush needs nothing here: clients drop their buffered audio on response.interrupted.


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
        try:
            reason = await _handle_message(session, message, max_bytes, sample_bytes)
        except Exception:
            log.exception("session %s: handling a client message failed", session.id)
            await session.error("internal_error", "the message could not be handled; the session goes on")
            continue
        if reason is not None:
            return reason


async def _handle_message(
    session: Session, message: dict[str, Any], max_bytes: int, sample_bytes: int
) -> str | None:
    """One WebSocket message into the session; a close reason when it ends the session."""
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
        else:
            session.push_audio(data)
    elif text is not None and await handle_text(session, text) == "close":
        return "client_closed"
    return None


async def handle_text(session: Session, text: str) -> str | None:
    """One JSON event from the client (WebSocket or data channel); a refusal is an error event.

    Returns "close" when the client asked to end the session.
    """
    try:
        return await dispatch_client_event(session, parse_client_event(text))
    except SessionError as exc:
        await session.error(exc.code, exc.message)
    return None


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
        await session.emit(SessionUpdated(event.session.model_dump(exclude_none=True)))
    elif isinstance(event, SessionClose):
        return "close"
    return None


def apply_session_update(session: Session, event: SessionUpdate) -> None:
    fields = event.session
    if fields.voice is not None:
        known = {v.id for v in session.rt.tts.voices()}
        if fields.voice not in known:
            raise SessionError(
                "unknown_voice", f"unknown voice {quote(fields.voice)}; known: {', '.join(sorted(known))}"
            )
    if fields.output_sample_rate is not None:
        check_audio_format(fields.output_sample_rate, session.config.output_encoding)
    session.update(
        instructions=fields.instructions,
        voice=fields.voice,
        output_rate=fields.output_sample_rate,
        vad=fields.vad.model_dump(exclude_none=True) if fields.vad else None,
    )


routes: list[BaseRoute] = [WebSocketRoute("/v1/voice", voice_endpoint)]
