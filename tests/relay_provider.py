"""Relay: a made-up telephony provider, small enough to read in one go, used by tests/test_telephony_provider.py.

It shows what a provider package holds (docs/telephony.md, "The provider layer"): a stateless stream format
(`RelayStream`: text frames in, neutral events out, outbound frames built), call control, and the
`TelephonyProvider` object with its routes. Registering it is one line in `telephony.registry.PROVIDERS`.

The Relay protocol, one JSON object per text frame:

- in: ``{"type": "start", "stream": S, "call": C, "params": {...}}``, ``{"type": "audio", "stream": S,
  "ms": T, "audio": base64 mu-law}``, ``{"type": "digit", "stream": S, "digit": D}``, ``{"type": "played",
  "stream": S, "name": N}``, ``{"type": "hangup", "stream": S}``;
- out: ``{"type": "audio", "audio": ...}``, ``{"type": "mark", "name": N}``, ``{"type": "clear"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from types import MappingProxyType
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from telephony.call_provider import CallControl, OutboundCall, OutboundRefused
from telephony.media_call import serve_media_socket
from telephony.provider import (
    BAD_PAYLOAD,
    INVALID_EVENT,
    INVALID_JSON,
    MULAW_ENCODING,
    MULAW_RATE,
    UNKNOWN_EVENT,
    DtmfDigit,
    InboundEvent,
    MarkEchoed,
    MediaChunk,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)

MEDIA_PATH = "/relay/media"


class RelayStream:
    """Relay's MediaStreamProvider: parses its frames into neutral events, builds its outbound frames."""

    name = "relay"

    def parse(self, text: str) -> InboundEvent:
        try:
            msg = json.loads(text)
        except ValueError:
            raise ProtocolError(INVALID_JSON, "frame is not JSON") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("stream"), str):
            raise ProtocolError(INVALID_EVENT, "a frame is an object with a string 'stream'")
        kind, stream = msg.get("type"), msg["stream"]
        if kind == "start":
            params = {str(k): str(v) for k, v in (msg.get("params") or {}).items()}
            return StreamStarted(
                stream_id=stream,
                call_id=str(msg.get("call", "")),
                account_id="",
                custom_parameters=MappingProxyType(params),
                encoding=MULAW_ENCODING,  # Relay only ever streams mu-law 8 kHz mono
                sample_rate=MULAW_RATE,
                channels=1,
                tracks=("inbound",),
            )
        if kind == "audio":
            try:
                audio = base64.b64decode(str(msg.get("audio")), validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(BAD_PAYLOAD, "audio is not base64") from None
            ms = msg.get("ms")
            return MediaChunk(audio, ms if isinstance(ms, int) else None, None, "inbound", stream_id=stream)
        if kind == "digit":
            return DtmfDigit(digit=str(msg.get("digit")), stream_id=stream)
        if kind == "played":
            return MarkEchoed(name=str(msg.get("name")), stream_id=stream)
        if kind == "hangup":
            return StreamStopped(stream_id=stream, call_id="")
        raise ProtocolError(UNKNOWN_EVENT, f"unknown type {str(kind)[:40]!r}")

    def media(self, stream_id: str, mulaw: bytes) -> str:
        return json.dumps({"type": "audio", "audio": base64.b64encode(mulaw).decode("ascii")})

    def mark(self, stream_id: str, name: str) -> str:
        return json.dumps({"type": "mark", "name": name})

    def clear(self, stream_id: str) -> str:
        return json.dumps({"type": "clear"})


class RelayCallControl:
    """Relay has no REST API: the control records what a flow asked of the call."""

    def __init__(self, call_id: str, actions: list[tuple[str, str, str | None]]) -> None:
        self.call_id = call_id
        self.owned = True
        self._actions = actions

    async def transfer(self, target: str) -> None:
        self._actions.append((self.call_id, "transfer", target))

    async def hang_up(self, say: str | None = None) -> None:
        self._actions.append((self.call_id, "hang_up", say))


class RelayProvider:
    """The Relay provider: one WebSocket route, no webhooks, no outbound calls."""

    name = "relay"
    title = "Relay"
    stream = RelayStream()

    def __init__(self) -> None:
        self.actions: list[tuple[str, str, str | None]] = []  # what flows asked of calls, in order

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute(MEDIA_PATH, self._media_socket)]

    def create_state(self, settings: Any) -> None:
        return None  # Relay keeps nothing per app

    async def _media_socket(self, ws: WebSocket) -> None:
        await serve_media_socket(ws, self)

    def start_timeout_s(self, settings: Any) -> float:
        return 5.0

    def check_socket(self, state: Any, ws: WebSocket) -> str | None:
        return None if ws.headers.get("x-relay-key") == "relay-test-key" else "wrong X-Relay-Key"

    def call_control(self, state: Any, call_id: str) -> CallControl:
        return RelayCallControl(call_id, self.actions)

    def outbound_unavailable(self, state: Any) -> str | None:
        return "Relay does not place calls"

    async def place_call(self, state: Any, call: OutboundCall) -> str:
        raise OutboundRefused("Relay does not place calls")


PROVIDER = RelayProvider()
