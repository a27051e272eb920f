"""Reading and deleting what was stored; writes go through :class:`storage.writer.WriteQueue`."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import migrate
from storage.engine import open_engine
from storage.keys import KeyStore
from storage.tables import calls, flow_versions, flows, jobs, recordings, sessions, turns
from storage.writer import WriteQueue

log = logging.getLogger("voxgate.storage")


FINAL_CALL_STATUSES = {"completed", "busy", "failed", "no-answer", "canceled"}


class BadCursor(ValueError):
    """A pagination cursor that this server did not hand out."""


@dataclass
class SessionQuery:
    since: float | None = None
    until: float | None = None
    flow_id: str | None = None
    transport: str | None = None
    limit: int = 50
    cursor: str | None = None
    owner_key: str | None = None  # only this API key's sessions (None: everyone's)


class Store:
    """The gateway's database: migrated on open, written in batches, read by the API."""

    def __init__(self, engine: AsyncEngine, write_interval_s: float = 0.2) -> None:
        self.engine = engine
        self.writer = WriteQueue(engine, write_interval_s)
        self.fresh = False  # True when this open created the schema (a new database)
        self.keys = KeyStore(engine)  # API keys and resource owners (storage/keys.py)

    @classmethod
    async def open(cls, url: str, *, write_interval_s: float = 0.2, migrate_schema: bool = True) -> Store:
        engine = open_engine(url)
        fresh = False
        if migrate_schema:
            fresh = await migrate.current_revision(engine) is None
            await migrate.upgrade(engine)
        store = cls(engine, write_interval_s)
        store.fresh = fresh
        store.writer.start()
        return store

    async def close(self) -> None:
        await self.writer.close()
        await self.engine.dispose()

    # -- sessions -------------------------------------------------------------------------------------------

    async def list_sessions(self, query: SessionQuery) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; ``next_cursor`` continues after the last row returned (stable under inserts)."""
        stmt = select(sessions)
        conditions = []
        if query.since is not None:
            conditions.append(sessions.c.created_at >= query.since)
        if query.until is not None:
            conditions.append(sessions.c.created_at < query.until)
        if query.flow_id is not None:
            conditions.append(sessions.c.flow_id == query.flow_id)
        if query.transport is not None:
            conditions.append(sessions.c.transport == query.transport)
        if query.owner_key is not None:
            conditions.append(sessions.c.owner_key == query.owner_key)
        if query.cursor:
            created, last_id = _decode_cursor(query.cursor)
            conditions.append(
                or_(
                    sessions.c.created_at < created,
                    and_(sessions.c.created_at == created, sessions.c.id < last_id),
                )
            )
        stmt = stmt.where(*conditions).order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(stmt.limit(query.limit + 1))]
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        next_cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
        return [session_summary(r) for r in rows], next_cursor

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()
            if row is None:
                return None
            turn_rows = await conn.execute(
                select(turns).where(turns.c.session_id == session_id).order_by(turns.c.seq)
            )
            recording_rows = await conn.execute(
                select(recordings).where(recordings.c.session_id == session_id)
            )
            detail = session_summary(dict(row._mapping))
            detail["turns"] = [turn_detail(dict(t._mapping)) for t in turn_rows]
            detail["recordings"] = [dict(r._mapping) for r in recording_rows]
        return detail

    async def delete_session(self, session_id: str) -> bool:
        """Remove the session, its turns, calls and recordings (rows and files). False if unknown."""
        self.writer.forget_session(session_id)
        async with self.engine.begin() as conn:
            paths = [
                r.path
                for r in await conn.execute(
                    select(recordings.c.path).where(recordings.c.session_id == session_id)
                )
            ]
            result = await conn.execute(delete(sessions).where(sessions.c.id == session_id))
        await asyncio.to_thread(_remove_files, paths)
        return result.rowcount > 0

    async def delete_sessions_before(self, cutoff: float) -> int:
        """Retention: delete every session created before ``cutoff`` (epoch s), with its recordings."""
        async with self.engine.begin() as conn:
            old = select(sessions.c.id).where(sessions.c.created_at < cutoff)
            paths = [
                r.path
                for r in await conn.execute(select(recordings.c.path).where(recordings.c.session_id.in_(old)))
            ]
            result = await conn.execute(delete(sessions).where(sessions.c.created_at < cutoff))
        await asyncio.to_thread(_remove_files, paths)
        return result.rowcount

    async def close_orphaned_sessions(self, instance_id: str = "") -> int:
        """Close the sessions a killed gateway (this ``instance_id``) left open; returns how many.

        Run at start-up, before any session of this process exists. ``closed_at`` is the last sign of life
        on record (the session's last turn, else its start); ``close_reason`` is ``server_lost``. Sessions
        of other instances sharing the database are left alone.
        """
        async with self.engine.begin() as conn:
            open_rows = (
                await conn.execute(
                    select(sessions.c.id, sessions.c.created_at, sessions.c.extra).where(
                        sessions.c.closed_at.is_(None)
                    )
                )
            ).all()
            mine = [r for r in open_rows if (r.extra or {}).get("instance", "") == instance_id]
            if not mine:
                return 0
            last_turns = dict(
                (
                    await conn.execute(
                        select(turns.c.session_id, func.max(turns.c.started_at))
                        .where(turns.c.session_id.in_([r.id for r in mine]))
                        .group_by(turns.c.session_id)
                    )
                ).all()
            )
            for row in mine:
                closed_at = max(row.created_at, last_turns.get(row.id) or 0.0)
                await conn.execute(
                    sessions.update()
                    .where(sessions.c.id == row.id)
                    .values(closed_at=closed_at, close_reason="server_lost")
                )
        return len(mine)

    async def count_sessions(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(sessions))).scalar_one()

    # -- flows ----------------------------------------------------------------------------------------------

    async def save_flow(self, flow_id: str, name: str, document: dict[str, Any]) -> int:
        """Store a new version of a flow (creating it if new); returns the version number."""
        now = time.time()
        async with self.engine.begin() as conn:
            current = (
                await conn.execute(select(flows.c.version).where(flows.c.id == flow_id).with_for_update())
            ).scalar_one_or_none()
            version = 1 if current is None else current + 1
            document = {**document, "version": version}
            if current is None:
                await conn.execute(
                    flows.insert().values(id=flow_id, name=name, version=1, created_at=now, updated_at=now)
                )
            else:
                await conn.execute(
                    flows.update()
                    .where(flows.c.id == flow_id)
                    .values(name=name, version=version, updated_at=now)
                )
            await conn.execute(
                flow_versions.insert().values(
                    flow_id=flow_id, version=version, document=document, created_at=now
                )
            )
        return version

    async def get_flow(self, flow_id: str, version: int | None = None) -> dict[str, Any] | None:
        stmt = select(flow_versions.c.document).where(flow_versions.c.flow_id == flow_id)
        if version is None:
            stmt = stmt.join(flows, flows.c.id == flow_versions.c.flow_id).where(
                flow_versions.c.version == flows.c.version
            )
        else:
            stmt = stmt.where(flow_versions.c.version == version)
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).scalar_one_or_none()

    async def list_flows(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(flows).order_by(flows.c.id))
            return [dict(r._mapping) for r in rows]

    async def flow_versions(self, flow_id: str) -> list[dict[str, Any]]:
        stmt = (
            select(flow_versions.c.version, flow_versions.c.created_at)
            .where(flow_versions.c.flow_id == flow_id)
            .order_by(flow_versions.c.version)
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt)]

    async def delete_flow(self, flow_id: str) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(delete(flow_versions).where(flow_versions.c.flow_id == flow_id))
            result = await conn.execute(delete(flows).where(flows.c.id == flow_id))
        return result.rowcount > 0

    # -- calls ----------------------------------------------------------------------------------------------

    async def record_call_status(
        self,
        call_sid: str,
        status: str,
        *,
        provider: str,
        details: dict[str, str],
        defaults: dict[str, Any],
        now: float,
    ) -> None:
        """A provider's status callback: the call's status now, and its history in ``extra.statuses``.

        ``details`` (Twilio: ``AnsweredBy``, ``CallDuration``) are kept with the status entry; ``defaults``
        (direction, numbers) fill a call not seen before.
        """
        entry = {"status": status, "at": now, **details}
        values: dict[str, Any] = {}
        if status:
            values["status"] = status
        if status in FINAL_CALL_STATUSES:
            values["ended_at"] = now
        await self.merge_call(
            call_sid, values, provider=provider, append={"statuses": entry}, defaults=defaults, now=now
        )

    async def merge_call(
        self,
        call_sid: str,
        values: dict[str, Any],
        *,
        provider: str,
        extra: dict[str, Any] | None = None,
        append: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
        now: float,
    ) -> None:
        """Update a call's columns and merge into its ``extra`` (``append``: add to a list there); a call not
        seen before is created, carried by ``provider`` (the provider's name, as registered). Status callbacks,
        the media stream and the API all write calls this way."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(calls).where(calls.c.id == call_sid))).first()
            merged = dict(row.extra or {}) if row is not None else {}
            merged.update(extra or {})
            for key, item in (append or {}).items():
                merged[key] = [*merged.get(key, []), item]
            if row is None:
                base = {"provider": provider, "direction": "inbound", "created_at": now, **(defaults or {})}
                await conn.execute(calls.insert().values(id=call_sid, **{**base, **values, "extra": merged}))
            else:
                await conn.execute(
                    calls.update().where(calls.c.id == call_sid).values(**values, extra=merged)
                )

    async def list_calls(self, limit: int = 50, owner_key: str | None = None) -> list[dict[str, Any]]:
        """Newest first; ``owner_key``: only that API key's calls."""
        stmt = select(calls).order_by(calls.c.created_at.desc()).limit(limit)
        if owner_key is not None:
            stmt = stmt.where(calls.c.owner_key == owner_key)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt)]

    async def get_call(self, call_sid: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(calls).where(calls.c.id == call_sid))).first()
        return dict(row._mapping) if row is not None else None

    # -- jobs -----------------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return dict(row._mapping) if row is not None else None


def session_summary(row: dict[str, Any]) -> dict[str, Any]:
    extra = row.get("extra") or {}
    return {
        "session_id": row["id"],
        "transport": row["transport"],
        "created_at": row["created_at"],
        "closed_at": row["closed_at"],
        "close_reason": row["close_reason"],
        "live": False,
        "caller": row["caller"],
        "flow_id": row["flow_id"],
        "flow_version": row["flow_version"],
        "outcome": row["outcome"],
        "dropped_input_ms": row["dropped_input_ms"],
        "turn_count": row["turn_count"],
        "dtmf": extra.get("dtmf", []),
    }


def turn_detail(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "turn_id": row["id"],
        "source": row["source"],
        "user_text": row["user_text"],
        "started_at": row["started_at"],
        "response_id": row["response_id"],
        "response_text": row["response_text"],
        "heard_text": row["heard_text"],
        "interrupted": row["interrupted"],
        "resumed": row["resumed"],
        "timings": row["timings"],
    }


def _encode_cursor(created_at: float, session_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{session_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, session_id = raw.split("|", 1)
        return float(created), session_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor("cursor is not one this server returned") from exc


def _remove_files(paths: list[str]) -> None:
    for path in map(Path, paths):
        try:
            path.unlink(missing_ok=True)
            if path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()  # a session's own recordings folder, now empty
        except OSError:
            log.warning("could not remove recording %s", path, exc_info=True)
