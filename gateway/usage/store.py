"""Usage rows: one per session, media job or metered request, written through the batched write queue, and
summed per day for ``GET /v1/usage`` and the daily audio allowance."""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.tables import usage

COUNTS = ("sessions", "audio_in_s", "audio_out_s", "stt_s", "llm_tokens", "tts_chars", "jobs")
FLOATS = frozenset({"audio_in_s", "audio_out_s", "stt_s"})
MAX_DAYS = 366


def day_of(when: float) -> str:
    """The UTC day (YYYY-MM-DD) a row counts for."""
    return time.strftime("%Y-%m-%d", time.gmtime(when))


def usage_row(
    row_id: str, key_id: str | None, kind: str, created_at: float, **counts: float
) -> dict[str, Any]:
    """A full ``usage`` row (the write queue upserts whole rows): counts not given are zero."""
    unknown = set(counts) - set(COUNTS)
    if unknown:
        raise ValueError(f"unknown usage counts: {sorted(unknown)}")
    row: dict[str, Any] = {
        "id": row_id,
        "key_id": key_id,
        "kind": kind,
        "created_at": created_at,
        "day": day_of(created_at),
    }
    for name in COUNTS:
        value = counts.get(name, 0)
        row[name] = round(float(value), 3) if name in FLOATS else int(value)
    return row


async def audio_seconds_on(engine: AsyncEngine, key_id: str, day: str) -> float:
    """Audio both ways stored for ``key_id`` on ``day``."""
    stmt = select(func.coalesce(func.sum(usage.c.audio_in_s + usage.c.audio_out_s), 0.0)).where(
        usage.c.key_id == key_id, usage.c.day == day
    )
    async with engine.connect() as conn:
        return float((await conn.execute(stmt)).scalar_one())


def days_between(first: date, last: date) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


async def per_day(engine: AsyncEngine, first: date, last: date, key_id: str | None) -> list[dict[str, Any]]:
    """Sums per UTC day from ``first`` to ``last`` (both included), every day listed (zeros where nothing was
    used); ``key_id`` None: every key together."""
    sums = [func.coalesce(func.sum(usage.c[name]), 0).label(name) for name in COUNTS]
    stmt = select(usage.c.day, *sums).where(usage.c.day >= first.isoformat(), usage.c.day <= last.isoformat())
    if key_id is not None:
        stmt = stmt.where(usage.c.key_id == key_id)
    stmt = stmt.group_by(usage.c.day)
    async with engine.connect() as conn:
        found = {row.day: row for row in await conn.execute(stmt)}
    days = []
    for day in days_between(first, last):
        row = found.get(day)
        entry: dict[str, Any] = {"day": day}
        for name in COUNTS:
            value = getattr(row, name) if row is not None else 0
            entry[name] = round(float(value), 3) if name in FLOATS else int(value)
        days.append(entry)
    return days
