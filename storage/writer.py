"""Batched, coalesced writes that never make the audio path wait."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.aio import cancel_and_wait
from storage.engine import dialect_insert
from storage.tables import UPSERT_KEYS, row_key, table

log = logging.getLogger("voxgate.storage")

# Parents before children, so a batch never writes a turn before its session (foreign keys).
WRITE_ORDER = ("sessions", "calls", "turns", "recordings", "jobs", "usage")
CHUNK_ROWS = 200


class WriteQueue:
    """Collects row snapshots from sessions and writes them every ``interval_s`` in one transaction.

    ``upsert`` is a plain method call: no await, no I/O, so a session can record a turn from the middle of
    its audio handling. A later snapshot of the same row replaces a pending one (a turn changes several
    times while it is spoken), which keeps the queue bounded by the number of distinct rows in flight.
    A failed write keeps its rows and is retried, so a database restart loses nothing that was queued.
    With ``interval_s`` at 0.2 a SIGKILL loses at most the last ~0.2 s of writes; ``close`` flushes all.
    """

    def __init__(self, engine: AsyncEngine, interval_s: float = 0.2, max_pending: int = 100_000) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.max_pending = max_pending
        self._pending: dict[str, OrderedDict[tuple[Any, ...], dict[str, Any]]] = {
            name: OrderedDict() for name in WRITE_ORDER
        }
        self._deleted: OrderedDict[str, None] = OrderedDict()  # sessions deleted: drop their late writes
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._insert = dialect_insert(engine)
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_flush_s = 0.0

    @property
    def pending(self) -> int:
        """Rows waiting for the next write (rows being written right now are not counted)."""
        return sum(len(rows) for rows in self._pending.values())

    def upsert(self, name: str, row: dict[str, Any]) -> None:
        """Queue a full row; it is inserted, or replaces the stored row with the same key."""
        session_id = row.get("session_id") if name != "sessions" else row.get("id")
        if session_id is not None and session_id in self._deleted:
            return
        rows = self._pending[name]
        key = row_key(name, row)
        if key not in rows and self.pending >= self.max_pending:
            self.dropped += 1  # the database has been unreachable for a long time; say so in /metrics
            log.error("storage write queue full (%d rows); dropping a %s row", self.max_pending, name)
            return
        rows[key] = row
        rows.move_to_end(key)

    def forget_session(self, session_id: str) -> None:
        """A deleted session's queued and future rows must not bring it back."""
        self._deleted[session_id] = None
        while len(self._deleted) > 10_000:
            self._deleted.popitem(last=False)
        for name, rows in self._pending.items():
            column = "id" if name == "sessions" else "session_id"
            for key in [k for k, r in rows.items() if r.get(column) == session_id]:
                del rows[key]

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="storage-writer")

    async def flush(self) -> None:
        """Write everything queued so far (and wait for it)."""
        async with self._lock:
            batch = {name: list(rows.values()) for name, rows in self._pending.items() if rows}
            if not batch:
                return
            for rows in self._pending.values():
                rows.clear()
            started = time.perf_counter()
            try:
                async with self.engine.begin() as conn:
                    for name in WRITE_ORDER:
                        rows = batch.get(name, [])
                        # SQLAlchemy prepares parameters on the event loop: small chunks keep each step short.
                        for start in range(0, len(rows), CHUNK_ROWS):
                            await conn.execute(self._upsert_statement(name), rows[start : start + CHUNK_ROWS])
            except BaseException as exc:
                # Cancelled too (close() waits for a write in progress, but a task may be cancelled by others):
                # the batch was taken off the queue, so it goes back rather than being lost.
                if isinstance(exc, Exception):
                    self.failures += 1
                self._requeue(batch)
                raise
            self.written += sum(len(rows) for rows in batch.values())
            self.last_flush_s = time.perf_counter() - started

    async def close(self) -> None:
        # The periodic write is never cut mid-transaction: a cancelled aiosqlite write leaves its connection
        # holding SQLite's lock, and the final flush then failed with "database is locked" for 30 s.
        async with self._lock:
            await cancel_and_wait(self._task)
        self._task = None
        for attempt in range(3):
            try:
                await self.flush()
                return
            except Exception:
                log.exception("final storage flush failed (attempt %d)", attempt + 1)
                await asyncio.sleep(0.5)

    def _upsert_statement(self, name: str):  # type: ignore[no-untyped-def]
        target = table(name)
        keys = UPSERT_KEYS[name]
        stmt = self._insert(target)
        updates = {c.name: stmt.excluded[c.name] for c in target.columns if c.name not in keys}
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=updates)

    def _requeue(self, batch: dict[str, list[dict[str, Any]]]) -> None:
        # Newer snapshots queued during the failed write win over the ones being put back.
        for name, rows in batch.items():
            pending = self._pending[name]
            for row in rows:
                pending.setdefault(row_key(name, row), row)

    async def _loop(self) -> None:
        backoff = self.interval_s
        while True:
            await asyncio.sleep(backoff)
            try:
                await self.flush()
                backoff = self.interval_s
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storage write failed; %d rows kept for retry", self.pending)
                backoff = min(backoff * 2, 5.0)
