"""Outbound calls and live call control over Twilio's REST API (the Calls resource), with the twilio SDK.

The SDK's HTTP client is `requests`: every method here BLOCKS for a network round trip (up to `timeout`).
From asyncio code, run them in a thread: `await asyncio.to_thread(calls.place_call, ...)`.

`api_base_url` replaces https://api.twilio.com (tests point it at a local HTTP server); the SDK then sends
the same requests, form fields and Basic auth to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.rest.api.v2010.account.call import CallList

T = TypeVar("T")

# The call progress events reported to status_callback (Twilio sends only `completed` when none is named).
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


class TwilioApiError(Exception):
    """A Calls API request failed: Twilio answered an error (`status`, Twilio `code`) or was unreachable."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TwilioCalls:
    """Places calls and updates live ones for one Twilio account. Thread-safe: one instance can be shared.

    All methods block (see the module docstring): call them through `asyncio.to_thread`.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base_url: str | None = None,
        timeout: float = 10.0,
        edge: str | None = None,
        region: str | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("a Twilio account SID and auth token are required")
        # environment={} keeps the SDK from reading TWILIO_* variables behind the settings' back (an edge or
        # region from the environment would also rewrite a custom base URL's host).
        self._client = Client(
            account_sid,
            auth_token,
            http_client=TwilioHttpClient(timeout=timeout),
            environment={},
            edge=None if api_base_url else edge,
            region=None if api_base_url else region,
        )
        if api_base_url:
            self._client.api.base_url = api_base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"TwilioCalls(account_sid={self._client.account_sid!r})"  # never the auth token

    @property
    def _calls(self) -> CallList:
        return self._client.api.v2010.account.calls

    def place_call(
        self,
        to: str,
        from_: str,
        twiml: str,
        status_callback: str,
        machine_detection: bool = False,
        *,
        time_limit_s: int | None = None,
    ) -> str:
        """Start an outbound call that runs `twiml` when answered; returns the call SID ("CA...").

        `status_callback` receives the call's progress (initiated, ringing, answered, completed). With
        `machine_detection`, answering machine detection runs asynchronously (the stream starts at once) and
        its verdict (`AnsweredBy`) is POSTed to `status_callback` too: with inline TwiML there is no webhook
        that synchronous detection could report to.
        """
        kwargs: dict[str, object] = {
            "to": to,
            "from_": from_,
            "twiml": twiml,
            "status_callback": status_callback,
            "status_callback_event": STATUS_EVENTS,
            "status_callback_method": "POST",
        }
        if machine_detection:
            kwargs |= {
                "machine_detection": "Enable",
                "async_amd": "true",
                "async_amd_status_callback": status_callback,
                "async_amd_status_callback_method": "POST",
            }
        if time_limit_s is not None:
            kwargs["time_limit"] = time_limit_s
        call = self._request("create call", lambda: self._calls.create(**kwargs))
        if not call.sid:
            raise TwilioApiError("Twilio's answer to create call has no sid")
        return call.sid

    def update_call(self, call_sid: str, twiml: str) -> None:
        """Replace a live call's instructions (e.g. `twiml.transfer(...)`): Twilio runs them at once.

        This ends the call's Media Stream: `<Connect><Stream>` gives way to the new TwiML.
        """
        self._request("update call", lambda: self._calls(call_sid).update(twiml=twiml))

    def hang_up(self, call_sid: str) -> None:
        """End a live call (Status=completed)."""
        self._request("hang up", lambda: self._calls(call_sid).update(status="completed"))

    @staticmethod
    def _request(what: str, send: Callable[[], T]) -> T:
        try:
            return send()
        except TwilioRestException as exc:
            raise TwilioApiError(
                f"{what}: Twilio answered {exc.status}: {exc.msg}", status=exc.status, code=exc.code
            ) from exc
        except (TwilioException, OSError) as exc:
            raise TwilioApiError(f"{what}: {type(exc).__name__}: {exc}") from exc
