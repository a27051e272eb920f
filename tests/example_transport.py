"""A worked example of a transport: the whole of it is this file, plus one line that adds its ``routes``
to ``gateway/app.py``'s ``all_routes()`` (tests/test_example_transport.py does that line for its own app).

JSON over a WebSocket at ``/test/json-voice``: every message is a JSON object, both ways. The client sends
``{"text": "..."}`` for a typed turn and ``{"audio": "<base64 PCM16 16 kHz>"}`` for caller audio; the server
sends the session's events as docs/protocol.md shows them, and agent audio as
``{"type": "audio", "audio": "<base64>"}``. Admission, the serve loop and the close come from
:class:`WebSocketTransport`; only what a message means and how audio travels are written here.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from gateway.settings import session_config
from gateway.transports.base import require_ready
from gateway.transports.websocket import WebSocketTransport
from pipeline.events import ServerEvent
from pipeline.outbox import OutAudio
from pipeline.session import Session


class JsonAudio:
    """The audio sink: each agent frame as a JSON message. Nothing buffered here, so nothing to flush."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send(self, frame: OutAudio) -> None:
        await self.ws.send_text(
            json.dumps({"type": "audio", "audio": base64.b64encode(frame.payload).decode()})
        )

    async def flush(self) -> None:
        return None


class JsonVoice(WebSocketTransport):
    """A session whose audio travels as base64 inside JSON messages."""

    name = "json-voice"

    async def open_session(self) -> Session:
        require_ready(self.state)
        self.place.reserve()
        config = session_config(self.state.settings, transport=self.name)
        self.sink = JsonAudio(self.ws)
        return Session(self.state.engines, config, recorder=self.state.recorder)

    async def send_event(self, event: ServerEvent) -> None:
        await self.ws.send_text(json.dumps(event.to_wire()))

    async def handle(self, message: dict[str, Any]) -> str | None:
        session = self.session
        assert session is not None
        try:
            data = json.loads(message.get("text") or "")
            if "text" in data:
                await session.submit_text(str(data["text"]))
            elif "audio" in data:
                session.push_audio(base64.b64decode(data["audio"], validate=True))
            elif data.get("type") == "close":
                return "client_closed"
        except (ValueError, TypeError, binascii.Error):
            await session.error("invalid_event", "send a JSON object with text, audio or type close")
        return None


routes: list[BaseRoute] = [WebSocketRoute("/test/json-voice", JsonVoice.endpoint)]
