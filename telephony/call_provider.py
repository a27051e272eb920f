"""What a telephony provider package gives the gateway: its routes, its stream format and its call control.

A provider package (``telephony/twilio/`` is the one there is) exports one object implementing
`TelephonyProvider`; `telephony.registry.PROVIDERS` lists them, and the app mounts every provider's routes.
The provider-neutral code (the media-stream call, the calls API, storage) only ever sees this contract and
the provider's `name`, which labels metrics, the session's transport and the stored call records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from starlette.routing import BaseRoute
from starlette.websockets import WebSocket

from telephony.provider import MediaStreamProvider

if TYPE_CHECKING:  # the app state sits above telephony; only its type is named here
    from gateway.settings import Settings
    from gateway.state import AppState


@runtime_checkable
class CallControl(Protocol):
    """A provider's hold on one live call: hang it up or move it elsewhere.

    `owned` says whether this gateway answered or placed the call; a control for any other call refuses every
    action (a media stream's start may name any call id its sender likes).
    """

    owned: bool

    async def transfer(self, target: str) -> None: ...

    async def hang_up(self, say: str | None = None) -> None: ...


@dataclass(frozen=True)
class OutboundCall:
    """A call to place (``POST /v1/calls``): the stream it opens runs ``flow``."""

    to: str
    from_: str
    flow: str
    machine_detection: bool = False
    time_limit_s: int | None = None


class OutboundRefused(Exception):
    """The provider was asked to place the call and refused it (or could not be reached)."""


@runtime_checkable
class TelephonyProvider(Protocol):
    """One telephony provider, as the gateway uses it. Implementations are stateless singletons; anything
    per-app (signature checker, REST client, owned calls) lives on the app state, set up by the provider."""

    name: str  # lower case: metrics labels ("<name>_<code>"), the session's transport, calls.provider
    title: str  # for people: "Twilio"
    stream: MediaStreamProvider  # parses inbound frames, builds outbound ones

    def routes(self) -> list[BaseRoute]:
        """Every route the provider needs (webhooks, its media WebSocket), at their public paths."""
        ...

    def create_state(self, settings: Settings) -> Any:
        """This provider's state for one app (``AppState.providers[name]``): clients, checkers, owned calls."""
        ...

    def start_timeout_s(self, settings: Settings) -> float:
        """How long an accepted media socket may take to start its stream before it is closed."""
        ...

    def check_socket(self, state: AppState, ws: WebSocket) -> str | None:
        """Why this media socket upgrade must be refused (signature, routes off), or None to let it in."""
        ...

    def call_control(self, state: AppState, call_id: str) -> CallControl:
        """Control of the live call `call_id` (from the stream's start)."""
        ...

    def outbound_unavailable(self, state: AppState) -> str | None:
        """Why this gateway cannot place calls through the provider (settings missing), or None."""
        ...

    async def place_call(self, state: AppState, call: OutboundCall) -> str:
        """Place an outbound call whose media stream comes back to this gateway; returns the call id.

        Raises OutboundRefused; the call is owned (may be hung up or transferred) once this returns.
        """
        ...
