"""The telephony providers this gateway serves: one line each. A new provider is its package plus a line here.

The app mounts every provider's routes (`routes()`); the calls API and the media-stream call look providers
up here by name, so neutral code never imports a provider package.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from telephony import twilio
from telephony.call_provider import TelephonyProvider

PROVIDERS: dict[str, TelephonyProvider] = {
    "twilio": twilio.PROVIDER,
}

# Places the calls of POST /v1/calls.
OUTBOUND_PROVIDER = "twilio"


def provider(name: str) -> TelephonyProvider:
    """The registered provider called `name` (KeyError if there is none)."""
    return PROVIDERS[name]


def outbound_provider() -> TelephonyProvider:
    """The provider that places outbound calls."""
    return PROVIDERS[OUTBOUND_PROVIDER]


def routes() -> list[BaseRoute]:
    """Every registered provider's routes, for the app to mount."""
    return [route for p in PROVIDERS.values() for route in p.routes()]
