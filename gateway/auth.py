"""Who may call, and which routes need what (issue 15; docs/security.md).

Every route declares its scope where it is defined, with :func:`scoped`: one of the key scopes
(``realtime``, ``batch``, ``media``, ``flows``, ``calls``, ``admin``), ``key`` (any valid key, whatever its
scopes), ``public`` (health, pages) or ``signed`` (a provider's webhooks, which prove themselves with signatures, never with a key). The edge
(gateway/http_guard.py) reads the declaration, resolves the caller with :meth:`Auth.admit` and refuses
before the route runs: 401 without a valid key, 403 for a key without the scope. A route that declares
nothing needs ``admin``: a forgotten declaration fails closed (and tests/test_auth_table.py fails).

Credentials: ``Authorization: Bearer`` (HTTP and WebSocket) with an API key (``vg_...``), the admin token
or the deprecated static ``api_key``; on a WebSocket also a one-use ``?token=`` from
``POST /v1/sessions/token``; on the Realtime routes an ephemeral ``ek_...`` client secret. Tokens and
client secrets carry the principal that asked for them.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from gateway.principal import OPEN, SCOPE_KEY, SCOPES, Principal, principal_of

if TYPE_CHECKING:
    from gateway.keys.registry import KeyRegistry
    from gateway.settings import Settings

# The query parameter older clients put the key in. It is refused rather than ignored, so that a client that
# still sends it learns why it is turned away.
KEY_QUERY_PARAM = "api_key"
KEY_IN_URL_DETAIL = (
    "an API key in the URL is not accepted (URLs end up in logs): send it as 'Authorization: Bearer KEY', "
    "or open the WebSocket with a one-use ?token= from POST /v1/sessions/token"
)
WRONG_KEY_DETAIL = "missing, wrong or revoked API key: send it as 'Authorization: Bearer KEY'"

PUBLIC = "public"  # anyone: health, pages (which then ask for a token)
SIGNED = "signed"  # a provider's webhooks and media streams: they check the provider's signature themselves
ANY_KEY = "key"  # any valid key, whatever its scopes (its own usage, its own webhooks)
ROUTE_SCOPES = (*SCOPES, ANY_KEY, PUBLIC, SIGNED)
SCOPE_ATTR = "voxgate_scope"
CLIENT_SECRET_ATTR = "voxgate_client_secret"
PUBLIC_IF_ATTR = "voxgate_public_if"
GRANT_KEY = "voxgate.grant"  # where the edge puts a redeemed token or client secret in the ASGI scope
CLIENT_SECRET_PREFIX = "ek_"
# Browsers cannot set headers on a WebSocket: OpenAI's samples send the key as this subprotocol.
KEY_PROTOCOL = "openai-insecure-api-key."

ADMIN = Principal(key_id=None, name="admin", scopes=frozenset(SCOPES))
# Auth on, no credentials, on a public route: no scope at all.
ANONYMOUS = Principal(key_id=None, name="anonymous", scopes=frozenset())

R = TypeVar("R")
log = logging.getLogger("voxgate.auth")


def scoped(route: R, scope: str, *, client_secret: bool = False, public_if: str | None = None) -> R:
    """Declare the scope ``route`` needs (see the module docstring). ``client_secret``: a Realtime route that
    also takes an ephemeral ``ek_`` secret as its credential; ``public_if``: the name of an :class:`Auth`
    flag that opens the route to anyone (``/metrics``: ``metrics_public``). Returns the route."""
    if scope not in ROUTE_SCOPES:
        raise ValueError(f"unknown route scope {scope!r}: one of {', '.join(ROUTE_SCOPES)}")
    setattr(route, SCOPE_ATTR, scope)
    if client_secret:
        setattr(route, CLIENT_SECRET_ATTR, True)
    if public_if is not None:
        setattr(route, PUBLIC_IF_ATTR, public_if)
    return route


def route_scope(route: Any) -> str | None:
    """The scope a route declared, None when it declared none."""
    scope: str | None = getattr(route, SCOPE_ATTR, None)
    return scope


def takes_client_secret(route: Any) -> bool:
    return bool(getattr(route, CLIENT_SECRET_ATTR, False))


def public_if(route: Any) -> str | None:
    flag: str | None = getattr(route, PUBLIC_IF_ATTR, None)
    return flag


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Grant:
    """A redeemed one-use token: who asked for it, and what it carries (a client secret's session)."""

    principal: Principal
    expires_at: float  # epoch seconds
    payload: Any = None


class SessionTokens:
    """One-use tokens that let a browser open a WebSocket without its URL carrying the API key.

    Browsers cannot set headers on a WebSocket, so whatever proves the caller goes in the URL, and URLs end up in
    access logs, proxies and browser history. A token there has lived at most its ttl and was spent on use. A
    token remembers the principal that asked for it: the session it opens is that key's. The Realtime API's
    client secrets are tokens of a second store (prefix ``ek_``, a payload: the session configuration).
    """

    MAX_OUTSTANDING = 1024  # memory stays bounded whatever a key holder asks for: the oldest token goes first

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, prefix: str = "") -> None:
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._clock = clock
        self._grants: dict[str, tuple[float, Grant]] = {}  # token -> (monotonic expiry, grant)

    def issue(
        self, principal: Principal = OPEN, *, payload: Any = None, ttl_s: float | None = None
    ) -> tuple[str, float]:
        """A new token for ``principal`` and when it expires (epoch seconds)."""
        ttl = self.ttl_s if ttl_s is None else ttl_s
        now = self._clock()
        self._drop_expired(now)
        while len(self._grants) >= self.MAX_OUTSTANDING:
            del self._grants[next(iter(self._grants))]
        token = self.prefix + secrets.token_urlsafe(24)
        expires_at = time.time() + ttl
        self._grants[token] = (now + ttl, Grant(principal, expires_at, payload))
        return token, expires_at

    def redeem(self, token: str) -> Grant | None:
        """The grant, once, for a token this store issued that has not expired; it is spent either way."""
        entry = self._grants.pop(token, None)
        return entry[1] if entry is not None and self._clock() < entry[0] else None

    def __len__(self) -> int:
        return len(self._grants)

    def _drop_expired(self, now: float) -> None:
        for token, (expiry, _) in list(self._grants.items()):
            if expiry <= now:
                del self._grants[token]


def key_in_url(conn: HTTPConnection) -> bool:
    return KEY_QUERY_PARAM in conn.query_params


def bearer(conn: HTTPConnection) -> str:
    """The ``Authorization: Bearer`` value, or on a WebSocket the key a browser offered as a subprotocol."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    offered = conn.scope.get("subprotocols") or []
    return next((p.removeprefix(KEY_PROTOCOL) for p in offered if p.startswith(KEY_PROTOCOL)), "")


@dataclass(frozen=True)
class Denied:
    """Why the edge turns a caller away: HTTP status, the WebSocket ``error`` code, and the text."""

    status: int
    code: str
    detail: str


def find_route(scope: MutableMapping[str, Any]) -> Any:
    """The route the router will pick (the first full match, else the first partial: a wrong method)."""
    partial = None
    for route in getattr(scope.get("app"), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
        if match == Match.PARTIAL and partial is None:
            partial = route
    return partial


def _same(offered: str, expected: str | None) -> bool:
    return bool(expected) and hmac.compare_digest(offered.encode(), str(expected).encode())


class Auth:
    """Whether auth is on, and who a credential is: the admin token, the deprecated static ``api_key`` (an
    admin-equivalent), an API key (``keys``), a one-use token or a client secret.

    Auth is on with ``auth=on``, or with ``auth=auto`` when the server listens beyond loopback or an admin
    token or ``api_key`` is set. Off, everyone is ``OPEN``. ``api_key`` and ``admin_token`` are read on every
    request: tests and operators may change them while serving.
    """

    def __init__(
        self,
        api_key: str | None,
        token_ttl_s: float = 60.0,
        *,
        admin_token: str | None = None,
        mode: str = "auto",
        loopback: bool = True,
        keys: KeyRegistry | None = None,
        metrics_public: bool | None = None,
    ) -> None:
        self.api_key = api_key
        # /metrics without a key: by default only on loopback, where auth is normally off anyway.
        self.metrics_public = loopback if metrics_public is None else metrics_public
        self.admin_token = admin_token
        self.mode = mode
        self.loopback = loopback
        self.keys = keys
        self.tokens = SessionTokens(token_ttl_s)
        self.client_secrets = SessionTokens(600.0, prefix=CLIENT_SECRET_PREFIX)

    @classmethod
    def for_settings(cls, settings: Settings, keys: KeyRegistry | None = None) -> Auth:
        return cls(
            settings.api_key,
            token_ttl_s=settings.session_token_ttl_s,
            admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
            mode=settings.auth,
            loopback=is_loopback(settings.host),
            keys=keys,
            metrics_public=settings.metrics_public,
        )

    @property
    def enabled(self) -> bool:
        if self.mode == "on":
            return True
        if self.mode == "off":
            return False
        return not self.loopback or bool(self.api_key) or bool(self.admin_token)

    async def admit(self, scope: MutableMapping[str, Any], *, api_path: bool) -> Denied | None:
        """Resolve the caller of the route ``scope`` names and check the route's declared scope; when admitted,
        put the principal (and a redeemed token's grant) in ``scope``. ``api_path``: an API path, where a key
        in the URL is refused even on a public route."""
        route = find_route(scope)
        conn = HTTPConnection(scope)
        needed = (route_scope(route) or "admin") if route is not None else PUBLIC  # None: the router's 404
        flag = public_if(route) if route is not None else None
        is_public = needed in (PUBLIC, SIGNED) or (flag is not None and bool(getattr(self, flag, False)))
        if key_in_url(conn) and (scope["type"] == "websocket" or api_path or not is_public):
            return Denied(401, "unauthorized", KEY_IN_URL_DETAIL)
        if is_public:
            scope[SCOPE_KEY] = ANONYMOUS if self.enabled else OPEN
            return None
        grant = self._redeem(scope, conn, route)
        if grant is not None:
            scope[GRANT_KEY] = grant
            principal = grant.principal
        elif not self.enabled:
            principal = OPEN
        else:
            found = await self.principal_for(bearer(conn))
            if found is None:
                return Denied(401, "unauthorized", WRONG_KEY_DETAIL)
            principal = found
        if needed != ANY_KEY and not principal.allows(needed):
            path = str(scope["path"])[:80]
            return Denied(403, "forbidden", f"this key may not use {path}: it needs the {needed!r} scope")
        scope[SCOPE_KEY] = principal
        return None

    def _redeem(self, scope: MutableMapping[str, Any], conn: HTTPConnection, route: Any) -> Grant | None:
        """Spend the one-use token (WebSocket ``?token=``) or client secret (``ek_`` bearer) presented."""
        if scope["type"] == "websocket":
            token = conn.query_params.get("token", "")
            if token:
                # Spent even when another credential would do, so that a token works once whatever else.
                grant = self.tokens.redeem(token)
                if grant is not None:
                    return grant
        credential = bearer(conn)
        if route is not None and takes_client_secret(route) and credential.startswith(CLIENT_SECRET_PREFIX):
            return self.client_secrets.redeem(credential)
        return None

    async def principal_for(self, credential: str) -> Principal | None:
        """The principal a bearer credential names; None for a wrong, unknown or revoked one."""
        if not credential:
            return None
        if _same(credential, self.admin_token) or _same(credential, self.api_key):
            return ADMIN
        if self.keys is not None and credential.startswith("vg_"):
            return await self.keys.resolve(credential)
        return None


def start_up_problem(settings: Settings) -> str | None:
    """Why ``voxgate serve`` must not start with these settings (auth on without an admin token), or None."""
    auth = Auth.for_settings(settings)
    if auth.enabled and not (auth.admin_token or auth.api_key):
        where = "auth=on" if settings.auth == "on" else f"host {settings.host} is not loopback"
        return (
            f"auth is on ({where}) but no admin token is set: set VOXGATE_ADMIN_TOKEN to a long random "
            "secret (it creates API keys with POST /v1/keys), or listen on 127.0.0.1 with VOXGATE_AUTH=auto"
        )
    return None


def log_auth_mode(settings: Settings) -> None:
    """Say at start-up whether auth is on, so that nobody runs an open server without knowing."""
    auth = Auth.for_settings(settings)
    if not auth.enabled:
        log.warning(
            "auth is off: every caller may use every route (host %s is loopback; VOXGATE_AUTH=on turns it on)",
            settings.host,
        )
        return
    log.info("auth is on: routes need an API key with their scope (admin token: POST /v1/keys)")
    if settings.api_key:
        log.warning("VOXGATE_API_KEY is deprecated: it works as an admin key; use VOXGATE_ADMIN_TOKEN")


async def issue_session_token(request: Request) -> Response:
    """``POST /v1/sessions/token``: a one-use token for a WebSocket URL; the session it opens is the caller's
    (the edge checked the key and put its principal in the request)."""
    auth: Auth = request.app.state.voxgate.auth
    token, expires_at = auth.tokens.issue(principal_of(request))
    return JSONResponse(
        {"token": token, "expires_at": round(expires_at, 3)},
        status_code=201,
        headers={"cache-control": "no-store"},
    )


def grant_of(conn: HTTPConnection) -> Grant | None:
    """The token or client secret the edge redeemed for this connection, if it presented one."""
    grant: Grant | None = conn.scope.get(GRANT_KEY)
    return grant


__all__ = ["SCOPE_KEY", "Auth", "Grant", "SessionTokens", "scoped", "route_scope", "principal_of"]
