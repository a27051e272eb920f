"""X-Twilio-Signature checks for the voice webhooks and the Media Streams WebSocket upgrade.

Twilio signs each request with HMAC-SHA1 over the URL it requested (plus, for form POSTs, every parameter
name and value sorted by name), keyed with the account's auth token
(https://www.twilio.com/docs/usage/webhooks/webhooks-security). The URL must be the one Twilio used, not the
one the server sees behind a proxy or TLS terminator, so it is rebuilt from the `public_url` setting.

The WebSocket upgrade is a GET without parameters, signed over the `wss://` URL written in the `<Stream>`
TwiML; a server that validates the `https://` URL it sees fails (twilio-labs/twilio-aspnet#162). Twilio's
docs note the header then arrives lowercase (`x-twilio-signature`), which HTTP header lookups ignore anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "X-Twilio-Signature"


def public_ws_url(public_url: str, path_and_query: str) -> str:
    """The wss:// (ws:// for an http public URL) URL of `path_and_query` under the public URL.

    Use it both to write the `<Stream url>` and to check the upgrade's signature, so the two always agree.
    """
    return _join(_ws_base(public_url), path_and_query)


def _ws_base(public_url: str) -> str:
    parts = urlsplit(public_url)
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError("public_url must be an absolute http(s) URL, e.g. https://voice.example.com")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _http_base(public_url: str) -> str:
    parts = urlsplit(public_url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("public_url must be an absolute http(s) URL, e.g. https://voice.example.com")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _join(base: str, path_and_query: str) -> str:
    if not path_and_query.startswith("/"):
        path_and_query = "/" + path_and_query
    return base + path_and_query


class TwilioSignatureChecker:
    """Validates X-Twilio-Signature against URLs rebuilt from the public URL setting.

    The auth token is held only by the SDK's validator; it is never logged and never in repr().
    """

    def __init__(self, auth_token: str, public_url: str) -> None:
        if not auth_token:
            raise ValueError("a Twilio auth token is required to check signatures")
        self._validator = RequestValidator(auth_token)
        self.http_base = _http_base(public_url)
        self.ws_base = _ws_base(public_url)

    def __repr__(self) -> str:
        return f"TwilioSignatureChecker(public_url={self.http_base!r})"

    def webhook_url(self, path_and_query: str) -> str:
        """The URL Twilio signed for a webhook at `path_and_query` (e.g. "/twilio/voice")."""
        return _join(self.http_base, path_and_query)

    def websocket_url(self, path_and_query: str) -> str:
        """The URL Twilio signed for the Media Streams upgrade at `path_and_query`."""
        return _join(self.ws_base, path_and_query)

    def check_webhook(
        self, path_and_query: str, form_params: Mapping[str, Any], signature: str | None
    ) -> bool:
        """A form POST webhook: True when `signature` matches the URL and every form parameter.

        `form_params` may be a plain dict or a multi-dict with `getlist` (Starlette's FormData).
        """
        if not signature:
            return False
        return self._validator.validate(self.webhook_url(path_and_query), form_params, signature)

    def check_websocket(self, path_and_query: str, signature: str | None) -> bool:
        """The Media Streams WebSocket upgrade: a GET of the wss:// URL, signed with no parameters."""
        if not signature:
            return False
        return self._validator.validate(self.websocket_url(path_and_query), {}, signature)
