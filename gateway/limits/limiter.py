"""Per-key limits (issue 15): requests per minute, concurrent sessions, audio minutes per day, media jobs.

A key's limits come with its :class:`~gateway.principal.Principal` (``KeyLimits``; ``None`` is unlimited). A
principal without a key (auth off, the admin token) is never limited. The counters live in Redis when
``redis_url`` is set, so every replica sees the same totals, and in this process otherwise
(:mod:`gateway.limits.counters`). When Redis cannot be reached the limits are not enforced (logged): a counter
store's outage must not take every caller down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.limits.counters import Counters, MemoryCounters, RedisCounters, replica_id
from gateway.principal import Principal
from gateway.usage.store import audio_seconds_on
from pipeline.session import Session
from storage.tables import jobs

log = logging.getLogger("voxgate.limits")

RATE_LIMITED = "rate_limited"  # requests per minute
LIMIT_EXCEEDED = "limit_exceeded"  # a quota: concurrent sessions, audio minutes, jobs
AUDIO_CHECK_S = 1.0  # how often a live session's audio is held against its key's daily allowance


@dataclass(frozen=True)
class Over:
    """A limit the caller is over: the error code, what to tell them, and when to try again (seconds)."""

    code: str
    detail: str
    retry_after: int


def seconds_to_midnight_utc(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, math.ceil(86400 - now % 86400))


def today_utc(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


class Limiter:
    """Checks a principal's requests, sessions and jobs against its key's limits."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.engine: AsyncEngine | None = None  # the database: the day's stored usage, open jobs
        self._live: dict[str, set[Session]] = {}  # key -> its sessions admitted here (audio watchdogs)
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Any) -> Limiter:
        if settings.redis_url:
            replica = replica_id(settings.instance_id)
            return cls(RedisCounters(settings.redis_url, settings.limits_redis_prefix, replica))
        return cls(MemoryCounters())

    async def start(self, engine: AsyncEngine | None) -> None:
        self.engine = engine
        await self.counters.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.counters.close()

    # -- requests --------------------------------------------------------------------------------------------

    async def check_request(self, principal: Principal) -> Over | None:
        limit = principal.limits.requests_per_minute
        if principal.key_id is None or limit is None:
            return None
        try:
            count, left = await self.counters.hit(principal.key_id)
        except Exception as exc:
            log.warning("limits: counting a request failed (not enforced): %s", exc)
            return None
        if count <= limit:
            return None
        detail = f"this key may make {limit} requests per minute; try again in {left} s"
        return Over(RATE_LIMITED, detail, left)

    # -- sessions --------------------------------------------------------------------------------------------

    async def admit_session(self, principal: Principal, session: Session) -> Over | None:
        """Hold a place for ``session`` in its key's concurrent sessions and check the day's audio. Once
        admitted, the place is given back when the session ends, and a session whose key runs out of audio
        minutes is told (``limit_exceeded``) and closed."""
        key, limits = principal.key_id, principal.limits
        if key is None or (limits.concurrent_sessions is None and limits.audio_minutes_per_day is None):
            return None
        stored = 0.0
        if limits.audio_minutes_per_day is not None:
            stored = await self._audio_used(key)
            live = sum(s.usage.audio_s for s in self._live.get(key, ()))
            if stored + live >= limits.audio_minutes_per_day * 60:
                detail = f"this key has used its {limits.audio_minutes_per_day:g} audio minutes for today"
                return Over(LIMIT_EXCEEDED, detail, seconds_to_midnight_utc())
        held = False
        if limits.concurrent_sessions is not None:
            try:
                held = await self.counters.acquire(key, limits.concurrent_sessions)
            except Exception as exc:
                log.warning("limits: counting a session failed (not enforced): %s", exc)
            else:
                if not held:
                    n = limits.concurrent_sessions
                    detail = f"this key may hold {n} session{'s' if n != 1 else ''} at once"
                    return Over(LIMIT_EXCEEDED, detail, 5)
        self._watch(key, principal, session, stored, held)
        return None

    def _watch(self, key: str, principal: Principal, session: Session, stored: float, held: bool) -> None:
        self._live.setdefault(key, set()).add(session)
        task = asyncio.create_task(
            self._follow(key, principal, session, stored, held), name=f"{session.id}-limits"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(
        self, key: str, principal: Principal, session: Session, stored: float, held: bool
    ) -> None:
        minutes = principal.limits.audio_minutes_per_day
        try:
            while not session.closed.is_set():
                if minutes is not None:
                    live = sum(s.usage.audio_s for s in self._live.get(key, ()))
                    if stored + live >= minutes * 60:
                        detail = f"this key has used its {minutes:g} audio minutes for today"
                        await session.error(LIMIT_EXCEEDED, detail)
                        await session.close(LIMIT_EXCEEDED)
                        break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.closed.wait(), AUDIO_CHECK_S)
        finally:
            sessions = self._live.get(key)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._live[key]
            if held:
                try:
                    await asyncio.shield(self.counters.release(key))
                except Exception as exc:  # Redis: the heartbeat's expiry frees it in the end
                    log.warning("limits: giving back a session place failed: %s", exc)

    async def _audio_used(self, key: str) -> float:
        """Audio seconds the key's ended sessions stored today (its live ones are counted by the caller)."""
        stored = 0.0
        if self.engine is not None:
            try:
                stored = await audio_seconds_on(self.engine, key, today_utc())
            except Exception as exc:
                log.warning("limits: reading today's usage failed (not enforced): %s", exc)
        return stored

    # -- media jobs ------------------------------------------------------------------------------------------

    async def check_job(self, principal: Principal) -> Over | None:
        """A new media job for ``principal``: refused while its key has ``jobs`` queued or running."""
        limit = principal.limits.jobs
        if principal.key_id is None or limit is None or self.engine is None:
            return None
        stmt = select(func.count()).where(
            jobs.c.owner_key == principal.key_id, jobs.c.status.in_(("queued", "running"))
        )
        async with self.engine.connect() as conn:
            open_jobs = int((await conn.execute(stmt)).scalar_one())
        if open_jobs < limit:
            return None
        detail = f"this key may have {limit} media job{'s' if limit != 1 else ''} queued or running at once"
        return Over(LIMIT_EXCEEDED, detail, 5)
