"""Who may call: the optional API key, and one-use session tokens for browsers' WebSockets."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

# The query parameter older clients put the key in. It is refused rather than ignored, so that a client that
# still sends it learns why it is turned away.
KEY_QUERY_PARAM = "api_key"
KEY_IN_URL_DETAIL = (
    "an API key in the URL is not accepted (URLs end up in logs): send it as 'Authorization: Bearer KEY', "
    "or open the WebSocket with a one-use ?token= from POST /v1/sessions/token"
)
WRONG_KEY_DETAIL = "missing or wrong API key: send it as 'Authorization: Bearer KEY'"


class SessionTokens:
    """One-use tokens that let a browser open a WebSocket without its URL carrying the API key.

    Browsers cannot set headers on a WebSocket, so whatever proves the caller goes in the URL, and URLs end up in
    access logs, proxies and browser history. A token there has lived at most ``ttl_s`` and was spent on use.
    """

    MAX_OUTSTANDING = 1024  # memory stays bounded whatever a key holder asks for: the oldest token goes first

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._expiry: dict[str, float] = {}  # insertion order is expiry order: every token gets the same ttl

    def issue(self) -> tuple[str, float]:
        """A new token and when it expires (epoch seconds)."""
        now = self._clock()
        self._drop_expired(now)
        while len(self._expiry) >= self.MAX_OUTSTANDING:
            del self._expiry[next(iter(self._expiry))]
        token = secrets.token_urlsafe(24)
        self._expiry[token] = now + self.ttl_s
        return token, time.time() + self.ttl_s

    def redeem(self, token: str) -> bool:
        """True once for a token this store issued that has not expired; it is spent either way."""
        expiry = self._expiry.pop(token, None)
        return expiry is not None and self._clock() < expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def _drop_expired(self, now: float) -> None:
        for token, expiry in list(self._expiry.items()):
            if expiry > now:
                break
            del self._expiry[token]


def key_in_url(conn: HTTPConnection) -> bool:
    return KEY_QUERY_PARAM in conn.query_params


class Auth:
    """The optional API key: ``Authorization: Bearer KEY`` on HTTP and WebSockets, or on a WebSocket a one-use
    ``?token=`` from ``POST /v1/sessions/token``. A key in the URL is never accepted, set or not."""

    def __init__(self, api_key: str | None, token_ttl_s: float = 60.0) -> None:
        self.api_key = api_key
        self.tokens = SessionTokens(token_ttl_s)

    def _bearer_ok(self, conn: HTTPConnection) -> bool:
        assert self.api_key
        scheme, _, offered = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(offered.strip().encode(), self.api_key.encode())

    def allows_request(self, conn: HTTPConnection) -> bool:
        if key_in_url(conn):
            return False
        return not self.api_key or self._bearer_ok(conn)

    def allows_websocket(self, conn: HTTPConnection) -> bool:
        if key_in_url(conn):
            return False
        token = conn.query_params.get("token", "")
        # Spent even when no key is set, so that a token works once whatever the configuration.
        redeemed = bool(token) and self.tokens.redeem(token)
        return not self.api_key or redeemed or self._bearer_ok(conn)


async def issue_session_token(request: Request) -> Response:
    """``POST /v1/sessions/token``: a one-use token for a WebSocket URL (the edge guard checked the key)."""
    auth: Auth = request.app.state.voxgate.auth
    token, expires_at = auth.tokens.issue()
    return JSONResponse(
        {"token": token, "expires_at": round(expires_at, 3)},
        status_code=201,
        headers={"cache-control": "no-store"},
    )
