"""Per-key limits (issue 15): see :mod:`gateway.limits.limiter`; requests per minute in
:mod:`gateway.limits.middleware`; the counters, in memory or Redis, in :mod:`gateway.limits.counters`."""

from __future__ import annotations

from typing import Any

from gateway.limits.limiter import LIMIT_EXCEEDED, RATE_LIMITED, Limiter, Over
from gateway.limits.middleware import RateLimit, current_principal, too_many

__all__ = [
    "LIMIT_EXCEEDED",
    "RATE_LIMITED",
    "Limiter",
    "Over",
    "RateLimit",
    "admit_session",
    "check_job",
    "current_principal",
    "limiter_of",
    "owned_session_over",
    "session_over",
    "too_many",
]


def limiter_of(conn: Any) -> Limiter | None:
    """The app's limiter (None in an app built without one)."""
    limiter: Limiter | None = getattr(conn.app.state, "limiter", None)
    return limiter


async def session_over(conn: Any, session: Any) -> Over | None:
    """Admit ``session`` under its key's concurrent sessions and audio minutes (see
    :meth:`Limiter.admit_session`); the limit it is over, if any."""
    from gateway.principal import principal_of

    return await _admit(limiter_of(conn), principal_of(conn), session)


async def owned_session_over(conn: Any, state: Any, session: Any) -> Over | None:
    """Admit a session a key owns without having opened it itself (a phone call the key placed: the media
    stream is Twilio's, signed, with no key of its own) under that key's limits, read from storage."""
    from gateway.keys.registry import principal_from_row

    limiter = limiter_of(conn)
    if limiter is None or session.owner_key is None or state.store is None:
        return None
    row = await state.store.keys.get(session.owner_key)
    if row is None:
        return None
    return await _admit(limiter, principal_from_row(row), session)


async def _admit(limiter: Limiter | None, principal: Any, session: Any) -> Over | None:
    """Bill ``session`` to ``principal``'s key, then admit it under that key's limits (none without a
    limiter); the limit it is over, if any."""
    session.usage.key_id = principal.key_id  # usage goes to the key, an admin-scoped key's too
    return None if limiter is None else await limiter.admit_session(principal, session)


async def admit_session(conn: Any, session: Any) -> None:
    """A WebSocket transport's session, checked against its key's concurrent sessions and audio minutes;
    raises the transport's ``Refusal`` (the limit's code, close 1008) when over."""
    from gateway.transports.base import CLOSE_POLICY, Refusal

    over = await session_over(conn, session)
    if over is not None:
        raise Refusal(over.code, over.detail, CLOSE_POLICY)


async def check_job(limiter: Limiter | None) -> None:
    """A media job is being submitted for the current request's principal: a 429 when its key already has its
    ``jobs`` queued or running."""
    from starlette.exceptions import HTTPException

    if limiter is None:
        return
    over = await limiter.check_job(current_principal())
    if over is not None:
        raise HTTPException(429, over.detail, headers={"retry-after": str(over.retry_after)})
