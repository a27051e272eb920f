"""Twilio as a `TelephonyProvider`: its routes, its Media Streams format, its call control, outbound calls.

The per-app pieces (signature checker, REST client, owned calls) are a `TwilioSetup` that `create_state` makes
for each app (``AppState.providers["twilio"]``); this object is stateless and reads them from the state it is
given.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from gateway.auth import scoped
from telephony.call_provider import CallControl, OutboundCall, OutboundRefused
from telephony.media_call import serve_media_socket
from telephony.provider import MediaStreamProvider
from telephony.twilio import twiml
from telephony.twilio.control import PROVIDER_NAME, TwilioCallControl, TwilioSetup, twilio_gate, twilio_state
from telephony.twilio.rest import TwilioApiError
from telephony.twilio.signatures import public_ws_url
from telephony.twilio.stream import TWILIO
from telephony.twilio.webhooks import (
    MEDIA_PATH,
    STATUS_PATH,
    VOICE_PATH,
    call_status,
    incoming_call,
)

if TYPE_CHECKING:
    from gateway.settings import Settings
    from gateway.state import AppState

log = logging.getLogger("voxgate.twilio")


class TwilioProvider:
    """Twilio: ``POST /twilio/voice``, ``POST /twilio/status``, ``WS /twilio/media``, calls over its REST API."""

    name = PROVIDER_NAME
    title = "Twilio"
    stream: MediaStreamProvider = TWILIO

    def create_state(self, settings: Settings) -> TwilioSetup:
        setup = TwilioSetup(settings)
        if not setup.enabled:
            log.info(setup.why_disabled)
        return setup

    def routes(self) -> list[BaseRoute]:
        return [
            scoped(Route(VOICE_PATH, incoming_call, methods=["POST"]), "signed"),
            scoped(Route(STATUS_PATH, call_status, methods=["POST"]), "signed"),
            scoped(WebSocketRoute(MEDIA_PATH, self._media_socket), "signed"),
        ]

    async def _media_socket(self, ws: WebSocket) -> None:
        await serve_media_socket(ws, self)

    def start_timeout_s(self, settings: Settings) -> float:
        return float(settings.twilio_start_timeout_s)

    def check_socket(self, state: AppState, ws: WebSocket) -> str | None:
        # Twilio signs the upgrade over the URL it requested, query included.
        path = ws.url.path + (f"?{ws.url.query}" if ws.url.query else "")
        return twilio_gate(state, path, ws.headers, None)

    def call_control(self, state: AppState, call_id: str) -> CallControl:
        return TwilioCallControl(state, call_id)

    def outbound_unavailable(self, state: AppState) -> str | None:
        if twilio_state(state).calls is None or not state.settings.public_url:
            return (
                "outbound calls need VOXGATE_TWILIO_ACCOUNT_SID, VOXGATE_TWILIO_AUTH_TOKEN and "
                "VOXGATE_PUBLIC_URL"
            )
        return None

    async def place_call(self, state: AppState, call: OutboundCall) -> str:
        public_url = state.settings.public_url
        parameters = {"flow": call.flow, "from": call.from_, "to": call.to, "direction": "outbound"}
        stream = twiml.connect_stream(public_ws_url(public_url, MEDIA_PATH), parameters)
        status_url = public_url.rstrip("/") + STATUS_PATH
        try:
            sid = await asyncio.to_thread(
                twilio_state(state).calls.place_call,
                call.to,
                call.from_,
                stream,
                status_url,
                call.machine_detection,
                time_limit_s=call.time_limit_s,
            )
        except TwilioApiError as exc:
            raise OutboundRefused(str(exc)) from exc
        twilio_state(state).owned.add(sid)  # placed here: its media stream may hang it up (see OwnedCalls)
        return sid


PROVIDER = TwilioProvider()
