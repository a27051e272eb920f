"""Who is calling: the principal an authenticated request or WebSocket carries (issue 15).

The edge (gateway/http_guard.py) resolves the caller's credentials once and puts a ``Principal`` in the ASGI
scope; routes, limits, usage and webhooks read it with ``principal_of``. With auth off every caller is
``OPEN``: no key, every scope, and no owner filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

SCOPES = ("realtime", "batch", "media", "flows", "calls", "admin")
SCOPE_KEY = "voxgate.principal"  # where the edge puts the principal in the ASGI scope


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits; ``None`` is unlimited."""

    requests_per_minute: int | None = None
    concurrent_sessions: int | None = None
    audio_minutes_per_day: float | None = None
    jobs: int | None = None  # media jobs queued or running at once


@dataclass(frozen=True)
class Principal:
    """The caller: an API key (``key_id``), the admin token, or anyone when auth is off."""

    key_id: str | None
    name: str
    scopes: frozenset[str]
    limits: KeyLimits = field(default_factory=KeyLimits)

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    @property
    def owner(self) -> str | None:
        """The owner label its new resources get, and the filter on what it may see (None: sees all)."""
        return None if self.admin else self.key_id


OPEN = Principal(key_id=None, name="open", scopes=frozenset(SCOPES))


def principal_of(conn: HTTPConnection) -> Principal:
    """The principal the edge resolved for this request or WebSocket (``OPEN`` when auth is off)."""
    principal: Principal = conn.scope.get(SCOPE_KEY, OPEN)
    return principal
