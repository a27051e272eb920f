"""``GET /v1/voice``: the WebSocket transport (binary audio both ways, JSON events).

Admission, the serve loop and the close come from :class:`WebSocketTransport`; this module says what the
voice protocol's messages mean (docs/protocol.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute

from gateway.agent.flow_agent import FlowNotAvailable, attach_flow, load_stored_flow
from gateway.auth import principal_of, scoped
from gateway.protocol import (
    InputAudioCommit,
    InputDtmf,
    InputText,
    OutputAudioPlayed,
    ResponseCancel,
    SessionClose,
    SessionUpdate,
    check_audio_format,
    flow_request,
    parse_client_event,
    quote,
)
from gateway.settings import session_config
from gateway.state import AppState
from gateway.transports.base import CLOSE_POLICY, CLOSE_UNSUPPORTED, Refusal, require_ready
from gateway.transports.websocket import WebSocketTransport, close_reason, int_param
from pipeline.events import ServerEvent, SessionUpdated
from pipeline.outbox import OutAudio
from pipeline.session import Session, SessionError

__all__ = ["VoiceSocket", "close_reason", "dispatch_client_event", "handle_text", "routes"]

log = logging.getLogger("voxgate.ws")


class BinaryAudio:
    """Agent audio as binary WebSocket messages. Nothing to flush: clients drop what they buffered on
    ``response.interrupted``; nothing reported: a client's ``output_audio.played`` goes to the session."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, frame: OutAudio) -> None:
        await self.ws.send_bytes(frame.payload)

    async def flush(self) -> None:
        return None


class VoiceSocket(WebSocketTransport):
    """``/v1/voice``: PCM16 or mu-law binary frames in and out, JSON events both ways."""

    name = "websocket"

    async def open_session(self) -> Session:
        ws, state = self.ws, self.state
        rate = int_param(ws, "sample_rate", 16000)
        encoding = ws.query_params.get("encoding", "pcm_s16le")
        out_rate = int_param(ws, "output_sample_rate", rate or 16000)
        try:
            check_audio_format(rate, encoding)
            check_audio_format(out_rate, encoding)
        except SessionError as exc:
            raise Refusal(exc.code, exc.message, CLOSE_UNSUPPORTED) from None
        require_ready(state)
        flow = await _load_flow(state, ws.query_params, principal_of(ws).owner)
        self.place.reserve()
        config = session_config(
            state.settings, input_rate=rate, output_rate=out_rate, encoding=encoding, transport=self.name
        )
        session = Session(state.runtime, config, recorder=state.recorder)
        session.owner_key = principal_of(ws).owner  # the key that opened it (the edge checked it)
        if ws.client is not None:
            session.caller = f"{ws.client.host}:{ws.client.port}"
        if flow is not None:
            attach_flow(session, state, flow)
        self.sink = BinaryAudio(ws)
        self._max_bytes = state.settings.max_message_bytes
        self._sample_bytes = 1 if encoding == "mulaw" else 2
        return session

    async def send_event(self, event: ServerEvent) -> None:
        await self.ws.send_text(json.dumps(event.to_wire()))

    async def handle(self, message: dict[str, Any]) -> str | None:
        session, max_bytes = self.session, self._max_bytes
        assert session is not None
        data: bytes | None = message.get("bytes")
        text: str | None = message.get("text")
        size = len(data) if data is not None else len((text or "").encode())
        if size > max_bytes:
            await session.error("message_too_large", f"messages are limited to {max_bytes} bytes")
            return "message_too_large"
        if data is not None:
            if len(data) % self._sample_bytes:
                await session.error(
                    "invalid_audio", "PCM16 audio must have an even number of bytes; frame dropped"
                )
            else:
                session.push_audio(data)
        elif text is not None and await handle_text(session, text) == "close":
            return "client_closed"
        return None


async def _load_flow(state: AppState, params: Any, owner: str | None) -> Any:
    try:
        flow_id, version = flow_request(params)
        if flow_id is None:
            return None
        return await load_stored_flow(state, flow_id, version, owner=owner)
    except (SessionError, FlowNotAvailable) as exc:
        raise Refusal(exc.code, exc.message, CLOSE_POLICY) from None


async def handle_text(session: Session, text: str) -> str | None:
    """One JSON event from the client (WebSocket or data channel); a refusal is an error event.

    Returns "close" when the client asked to end the session.
    """
    try:
        return await dispatch_client_event(session, parse_client_event(text))
    except SessionError as exc:
        await session.error(exc.code, exc.message)
    return None


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


voice_endpoint = VoiceSocket.endpoint

routes: list[BaseRoute] = [scoped(WebSocketRoute("/v1/voice", voice_endpoint), "realtime")]
