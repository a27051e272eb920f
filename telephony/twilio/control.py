"""Twilio's side of the gateway: who may call the Twilio routes, and live call control over the REST API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from telephony.twilio import twiml
from telephony.twilio.rest import TwilioCalls
from telephony.twilio.signatures import TwilioSignatureChecker

if TYPE_CHECKING:
    from gateway.state import AppState

log = logging.getLogger("voxgate.twilio")

PROVIDER_NAME = "twilio"

SIGNATURE_HEADER = "x-twilio-signature"
# A call this gateway answered or placed gets its media stream within seconds of the webhook (or of being
# answered, for an outbound call that rings and passes machine detection first): an hour is ample.
OWNED_CALL_TTL_S = 3600.0
MAX_OWNED_CALLS = 10_000  # about a megabyte; the oldest go first
MAX_CALL_SID_CHARS = 64  # Twilio's are 34


class OwnedCalls:
    """The call SIDs this gateway answered (served ``/twilio/voice``) or placed (``POST /v1/calls``).

    Only these may be hung up or transferred over the REST API: a media stream's ``start`` names any call
    SID its sender likes, and must not let one stream end somebody else's call. Bounded and expiring.
    """

    def __init__(
        self,
        ttl_s: float = OWNED_CALL_TTL_S,
        max_calls: int = MAX_OWNED_CALLS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_calls = max_calls
        self._clock = clock
        self._expires: OrderedDict[str, float] = OrderedDict()

    def add(self, call_sid: str) -> None:
        if not call_sid or len(call_sid) > MAX_CALL_SID_CHARS:
            return
        self._expire()
        self._expires[call_sid] = self._clock() + self.ttl_s
        self._expires.move_to_end(call_sid)
        while len(self._expires) > self.max_calls:
            self._expires.popitem(last=False)

    def __contains__(self, call_sid: object) -> bool:
        self._expire()
        return call_sid in self._expires

    def __len__(self) -> int:
        self._expire()
        return len(self._expires)

    def _expire(self) -> None:
        # Insertion order is expiry order (one TTL for all), so the expired ones are at the front.
        now = self._clock()
        while self._expires and next(iter(self._expires.values())) <= now:
            self._expires.popitem(last=False)


class TwilioSetup:
    """The Twilio routes' configuration, checked once at start-up."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.checker: TwilioSignatureChecker | None = None
        self.enabled = True
        self.why_disabled = ""
        if settings.twilio_auth_token:
            if not settings.public_url:
                self.enabled = False
                self.why_disabled = (
                    "VOXGATE_PUBLIC_URL is not set: Twilio signs the public URL, so it is needed to check "
                    "X-Twilio-Signature"
                )
            else:
                self.checker = TwilioSignatureChecker(settings.twilio_auth_token, settings.public_url)
        elif settings.twilio_insecure:
            log.warning(
                "Twilio routes are ON WITHOUT SIGNATURE CHECKS (VOXGATE_TWILIO_INSECURE=true): local testing only"
            )
        else:
            self.enabled = False
            self.why_disabled = (
                "Twilio routes are off: set VOXGATE_TWILIO_AUTH_TOKEN and VOXGATE_PUBLIC_URL "
                "(or VOXGATE_TWILIO_INSECURE=true for local testing without signature checks)"
            )
        self.owned = OwnedCalls()
        self.calls: TwilioCalls | None = None
        if settings.twilio_account_sid and settings.twilio_auth_token:
            self.calls = TwilioCalls(
                settings.twilio_account_sid,
                settings.twilio_auth_token,
                api_base_url=settings.twilio_api_base_url,
            )


def twilio_state(state: AppState) -> TwilioSetup:
    """This app's Twilio state, which the provider set up with the app (``AppState.providers``)."""
    setup: TwilioSetup = state.providers[PROVIDER_NAME]
    return setup


def twilio_gate(
    state: AppState, path_and_query: str, headers: Mapping[str, str], form: Mapping[str, Any] | None
) -> str | None:
    """Why this Twilio request must be refused (403), or None to let it in. Never logs the token."""
    setup = twilio_state(state)
    if not setup.enabled:
        return setup.why_disabled
    if setup.checker is None:
        return None  # insecure mode, said loudly at start-up
    signature = headers.get(SIGNATURE_HEADER)
    ok = (
        setup.checker.check_websocket(path_and_query, signature)
        if form is None
        else setup.checker.check_webhook(path_and_query, form, signature)
    )
    if ok:
        return None
    return "missing X-Twilio-Signature" if not signature else "X-Twilio-Signature does not match"


class TwilioCallControl:
    """Hang-up and transfer of one live call through Twilio's REST API (blocking calls run in a thread).

    Only for a call this gateway answered or placed, as known when the control is made (a long call
    outlives its entry in ``OwnedCalls``); for any other call SID every action is refused and logged.
    """

    def __init__(self, state: AppState, call_sid: str) -> None:
        self.state = state
        self.call_sid = call_sid
        self.owned = call_sid in twilio_state(state).owned

    async def transfer(self, target: str) -> None:
        calls = self._calls()
        if calls is not None:
            await asyncio.to_thread(calls.update_call, self.call_sid, twiml.transfer(target))

    async def hang_up(self, say: str | None = None) -> None:
        calls = self._calls()
        if calls is None:
            return
        if say:  # a last message, then the TwiML hangs up
            await asyncio.to_thread(calls.update_call, self.call_sid, twiml.hang_up(say))
        else:
            await asyncio.to_thread(calls.hang_up, self.call_sid)

    def _calls(self) -> TwilioCalls | None:
        if not self.owned:
            log.warning(
                "call %r: not answered or placed by this gateway; not controlling it", self.call_sid[:40]
            )
            return None
        calls = twilio_state(self.state).calls
        if calls is None:
            log.error(
                "call %r: no Twilio account SID configured; cannot control the call", self.call_sid[:40]
            )
        return calls
