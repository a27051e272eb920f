"""``WS /v1/realtime?model=...``: the OpenAI Realtime API over a WebSocket, on an ordinary voxgate session.

Admission, the serve loop and the close come from :class:`WebSocketTransport`, as for ``/v1/voice``; this
module admits the caller (the API key as ``Authorization: Bearer``, or a one-use token), builds a
:class:`RealtimeSession`, hands each client event to :class:`Handlers` and writes what the
:class:`Translator` makes of the session's events and audio (docs/realtime.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from flows.schema import SLUG
from gateway.agent.flow_agent import FlowNotAvailable, attach_flow, load_stored_flow
from gateway.auth import principal_of, scoped
from gateway.protocol import clip
from gateway.realtime.config import (
    RealtimeConfig,
    apply_session,
    apply_turn_detection,
    initial_turn_detection,
)
from gateway.realtime.formats import LISTEN_RATE, PCM24
from gateway.realtime.handlers import Handlers
from gateway.realtime.schema import RealtimeError
from gateway.realtime.secrets import redeem_from
from gateway.realtime.session import RealtimeSession
from gateway.realtime.translate import Translator, event_id
from gateway.settings import session_config
from gateway.state import AppState
from gateway.transports.base import CLOSE_POLICY, Refusal, require_ready
from gateway.transports.websocket import WebSocketTransport, close_reason
from pipeline.events import ServerEvent
from pipeline.outbox import OutAudio
from pipeline.session import Session

log = logging.getLogger("voxgate.realtime")

DEFAULT_MODEL = "voxgate"

MAX_MODEL_CHARS = 128


class RealtimeAudio:
    """Agent audio as ``response.output_audio.delta`` events; the client drops what it buffered when it
    sees the response cancelled, so there is nothing to flush here."""

    def __init__(self, transport: RealtimeSocket) -> None:
        self.transport = transport

    async def send(self, frame: OutAudio) -> None:
        await self.transport.write(self.transport.translator.audio(frame))

    async def flush(self) -> None:
        return None


class RealtimeSocket(WebSocketTransport):
    """One Realtime API connection: JSON events both ways, audio as base64 inside them."""

    name = "realtime"
    translator: Translator
    handlers: Handlers

    def __init__(self, ws: WebSocket, state: AppState) -> None:
        super().__init__(ws, state)
        # Browsers cannot set headers on a WebSocket: OpenAI's samples offer the subprotocols "realtime" and
        # "openai-insecure-api-key.<key>" (the edge reads the key), and fail unless the server picks "realtime".
        offered = ws.scope.get("subprotocols") or []
        if "realtime" in offered:
            ws.accept = functools.partial(ws.accept, subprotocol="realtime")  # type: ignore[method-assign]

    async def open_session(self) -> Session:
        ws, state = self.ws, self.state
        # An ephemeral key from POST /v1/realtime/client_secrets, as the bearer or in the subprotocol: the edge
        # checked the caller's key or redeemed the secret (gateway/http_guard.py).
        secret = redeem_from(ws, state)
        model = ws.query_params.get("model") or DEFAULT_MODEL
        if len(model) > MAX_MODEL_CHARS:
            raise Refusal(
                "invalid_value", f"model names are at most {MAX_MODEL_CHARS} characters", CLOSE_POLICY
            )
        require_ready(state)
        flow = await flow_for(state, model, principal_of(ws).owner)
        self.place.reserve()
        settings = state.settings
        # The session hears 16 kHz PCM16 whatever the client sends (decoded here) and speaks the client's
        # output format, which session.update may change between responses.
        config = session_config(
            settings,
            input_rate=LISTEN_RATE,
            output_rate=PCM24.rate,
            encoding="pcm_s16le",
            transport=self.name,
        )
        session = RealtimeSession(state.runtime, config, recorder=state.recorder)
        if ws.client is not None:
            session.caller = f"{ws.client.host}:{ws.client.port}"
        session.owner_key = principal_of(ws).owner
        if flow is not None:
            attach_flow(session, state, flow)
        rt_config = RealtimeConfig(
            id=session.id,
            model=model,
            instructions=config.instructions,
            voice=config.voice or "default",
            default_tokens=config.max_tokens,
            default_voice=config.voice,
            schema_format=settings.llm_schema_format,
        )
        rt_config.turn_detection = initial_turn_detection(config.vad)
        rt_config.finished_ms = config.vad.end_of_turn_ms
        apply_turn_detection(rt_config, session)
        if secret is not None and secret.session is not None:
            try:
                apply_session(rt_config, session, secret.session)
            except RealtimeError as exc:
                raise Refusal(exc.code, exc.message, CLOSE_POLICY) from None
        self.translator = Translator(session, rt_config)
        self.handlers = Handlers(session, rt_config, self.translator)
        self.sink = RealtimeAudio(self)
        self._max_bytes = settings.max_message_bytes
        return session

    async def refuse(self, code: str, message: str, close_code: int) -> None:
        # Before a session exists, in the Realtime API's error shape (the SDK reads error.code).
        error = RealtimeError(code, clip(message, 300))
        with contextlib.suppress(Exception):
            await self.ws.send_text(
                json.dumps({"type": "error", "event_id": event_id(), "error": error.to_error()})
            )
            await self.ws.close(close_code, reason=close_reason(message))

    async def write(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            await self.ws.send_text(json.dumps(event))

    async def send_event(self, event: ServerEvent) -> None:
        await self.write(self.translator.translate(event))

    async def handle(self, message: dict[str, Any]) -> str | None:
        session = self.session
        assert session is not None
        text: str | None = message.get("text")
        if text is None:
            if message.get("bytes") is not None:
                error = RealtimeError(
                    "invalid_event", "send audio as input_audio_buffer.append events (JSON text)"
                )
                await self.handlers.send_error(error)
            return None
        if len(text) > self._max_bytes:
            await self.handlers.send_error(
                RealtimeError("message_too_large", f"messages are limited to {self._max_bytes} bytes")
            )
            return "message_too_large"
        await self.handlers.handle_text(text)
        return None


async def flow_for(state: AppState, model: str, owner: str | None = None) -> Any:
    """The stored flow the model name names, if one does (and ``owner``, an API key, may run it): it then runs
    the conversation (docs/flows.md)."""
    if state.store is None or not re.match(SLUG, model):
        return None
    try:
        return await load_stored_flow(state, model, owner=owner)
    except FlowNotAvailable as exc:
        if exc.code == "unknown_flow":
            return None  # any other model name is accepted as is
        raise Refusal(exc.code, exc.message, CLOSE_POLICY) from None


realtime_endpoint = RealtimeSocket.endpoint

routes: list[BaseRoute] = [
    scoped(WebSocketRoute("/v1/realtime", realtime_endpoint), "realtime", client_secret=True)
]
