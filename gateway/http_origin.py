"""Which browsers' requests the edge answers: the ``Host`` and ``Origin`` policies, and CORS answers.

The edge (gateway/http_guard.py) asks :class:`HostPolicy` whether a ``Host`` header names this server (against
DNS rebinding), and :class:`OriginPolicy` whether a page's ``Origin`` is this server's own or one of
``allowed_origins``. A page from an allowed foreign origin gets a preflight answer and CORS headers from here.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Message, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type"


class Origin(NamedTuple):
    """A web origin as browsers compare it: scheme, lower-case host and port (the default one filled in)."""

    scheme: str
    host: str
    port: int

    def serialize(self) -> str:
        """The origin as an ``Origin`` header writes it (no default port)."""
        default = DEFAULT_PORTS.get(self.scheme)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def parse_origin(value: str) -> Origin | None:
    """``https://App.example.com`` -> ('https', 'app.example.com', 443); None for ``null`` or junk."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header as (lower-case name, port): ``[::1]:8000`` -> ('::1', 8000); None when malformed."""
    try:
        parts = urlsplit(f"//{value.strip()}")
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def _is_loopback(bind_host: str) -> bool:
    if bind_host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind_host.strip("[]")).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """Which ``Host`` names are answered: ``allowed_hosts``, else on a loopback bind only loopback names (plus
    ``public_url``'s, for a tunnel that keeps the public name), else any."""

    def __init__(self, allowed_hosts: list[str], bind_host: str, public_url: str | None) -> None:
        names = {name.strip().lower() for name in allowed_hosts if name.strip()}
        if not names and _is_loopback(bind_host):
            names = set(LOOPBACK_NAMES)
        public = parse_origin(public_url) if public_url else None
        if names and public is not None:
            names.add(public.host)
        self.any = not names or "*" in names
        self.names = frozenset(n.strip("[]") for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))

    def allows(self, host_header: str | None) -> bool:
        if self.any or host_header is None:  # no Host: not a browser, so not DNS rebinding
            return True
        parsed = split_host(host_header)
        if parsed is None:
            return False
        name = parsed[0]
        return name in self.names or name.endswith(self.suffixes)


class OriginPolicy:
    """Which web pages may call: this server's own origin, ``public_url``'s, and ``allowed_origins``."""

    def __init__(self, allowed_origins: list[str], public_url: str | None) -> None:
        self.any = "*" in allowed_origins
        listed = {parse_origin(o) for o in allowed_origins if o != "*"}
        self.listed = frozenset(o for o in listed if o is not None)
        public = parse_origin(public_url) if public_url else None
        self.own = frozenset({public} if public is not None else set())

    def is_same_origin(self, origin: Origin, host_header: str | None) -> bool:
        if origin in self.own:
            return True
        host = split_host(host_header) if host_header else None
        if host is None:
            return False
        # A Host without a port names the scheme's default: behind a TLS proxy the page is https, we see http.
        return host[0] == origin.host and (host[1] or DEFAULT_PORTS[origin.scheme]) == origin.port

    def allows_cross_origin(self, origin: Origin) -> bool:
        return self.any or origin in self.listed


def is_preflight(scope: Scope, headers: Headers) -> bool:
    """A browser's CORS preflight: ``OPTIONS`` asking which method it may send."""
    return scope["method"] == "OPTIONS" and "access-control-request-method" in headers


def preflight_answer(origin: Origin) -> Response:
    """The preflight's answer for an allowed ``origin``: the methods and headers it may send."""
    return Response(
        status_code=204,
        headers={
            "access-control-allow-origin": origin.serialize(),
            "access-control-allow-methods": CORS_METHODS,
            "access-control-allow-headers": CORS_HEADERS,
            "access-control-max-age": "600",
            "vary": "Origin",
        },
    )


def with_cors(send: Send, origin: Origin) -> Send:
    """``send`` that lets a page from ``origin`` read the answer (no cookies are used, so no credentials)."""

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            extra = [
                (b"access-control-allow-origin", origin.serialize().encode("latin-1")),
                (b"vary", b"Origin"),
            ]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return cors_send
