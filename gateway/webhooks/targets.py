"""Which URLs may receive webhooks: the server-side request forgery rules.

A webhook URL is user content that makes this server send requests, so like the flow http tool
(flows/http_tool.py: http(s) only, no redirects followed, bounded time) it must not become a way into the
network the server sits in. The tool calls only the hosts on the operator's allowlist (``flow_http_allowlist``,
checked by its ``host_allowed``); those hosts may receive webhooks too. Any other URL comes from an API key
with no such vouching, so the address decides: no credentials in the URL, and every address the host
resolves to must be public (not loopback, private, link-local, shared, reserved or multicast) unless
``webhook_allow_private`` is set (tests, on-prem receivers). Checked at registration and again before each
attempt (DNS may change between the two).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from flows.http_tool import host_allowed

RESOLVE_TIMEOUT_S = 5.0
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def url_problem(url: str) -> str | None:
    """What is wrong with ``url``'s form (scheme, host, port, credentials), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "the URL must start with http:// or https://"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL may not carry credentials (URLs get logged); check the signature instead"
    return None


def public(address: IpAddress) -> bool:
    """Whether ``address`` is on the public internet (an IPv4-mapped IPv6 address counts as its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def target_problem(url: str, allow_private: bool, allowed_hosts: Iterable[str] = ()) -> str | None:
    """Why webhooks may not be sent to ``url``, or None when they may (``allowed_hosts``: the flow http
    tool's allowlist, whose hosts may be private)."""
    problem = url_problem(url)
    if problem is not None or allow_private or host_allowed(url, allowed_hosts):
        return problem
    parts = urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    try:
        addresses: list[IpAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await _resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, TimeoutError):
            return f"the host {host[:100]!r} does not resolve"
    for address in addresses:
        if not public(address):
            return (
                f"{host[:100]!r} is a private, loopback or reserved address ({address}); "
                "set webhook_allow_private to send webhooks there"
            )
    return None


async def _resolve(host: str, port: int) -> list[IpAddress]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT_S
    )
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
