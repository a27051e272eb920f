"""Storage on SQLite and PostgreSQL: migrations, batched writes, queries, deletion, retention, flows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect

from storage import migrate
from storage.engine import open_engine
from storage.store import BadCursor, SessionQuery, Store
from storage.tables import metadata

TABLES = {
    "sessions", "turns", "calls", "recordings", "flows", "flow_versions", "jobs",
    "api_keys", "webhooks", "webhook_deliveries", "usage",
}  # fmt: skip


def session_row(session_id: str, created_at: float, **fields):  # type: ignore[no-untyped-def]
    row = {
        "id": session_id,
        "transport": "websocket",
        "created_at": created_at,
        "closed_at": None,
        "close_reason": None,
        "caller": "127.0.0.1:5555",
        "flow_id": None,
        "flow_version": None,
        "outcome": None,
        "dropped_input_ms": 0,
        "turn_count": 0,
        "extra": {},
    }
    row.update(fields)
    return row


def turn_row(turn_id: str, session_id: str, seq: int, **fields):  # type: ignore[no-untyped-def]
    row = {
        "id": turn_id,
        "session_id": session_id,
        "seq": seq,
        "source": "voice",
        "started_at": 1000.0 + seq,
        "user_text": f"question {seq}",
        "response_id": f"resp_{turn_id}",
        "response_text": "",
        "heard_text": "",
        "interrupted": False,
        "resumed": False,
        "timings": {},
    }
    row.update(fields)
    return row


async def _tables(engine) -> set[str]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    return names - {"alembic_version"}


async def test_migrations_up_and_down(db_url: str) -> None:
    engine = open_engine(db_url)
    try:
        await migrate.upgrade(engine)
        assert await _tables(engine) == TABLES
        assert await migrate.current_revision(engine) == migrate.head_revision()
        # The migration and the table definitions the code uses describe the same columns.
        async with engine.connect() as conn:
            for name in TABLES:
                columns = await conn.run_sync(
                    lambda sync, n=name: {c["name"] for c in inspect(sync).get_columns(n)}
                )
                assert columns == {c.name for c in metadata.tables[name].columns}, name
        await migrate.downgrade(engine)
        assert await _tables(engine) == set()
        assert await migrate.current_revision(engine) is None
        await migrate.upgrade(engine)
        assert await _tables(engine) == TABLES
    finally:
        await engine.dispose()


async def test_batched_writes_coalesce_and_keep_parent_order(db_url: str) -> None:
    store = await Store.open(db_url, write_interval_s=0.05)
    try:
        writer = store.writer
        # A turn queued before its session still lands (parents are written first in a batch).
        writer.upsert("turns", turn_row("t1", "s1", 0))
        for n in range(5):  # the same turn, spoken on: only the last snapshot needs writing
            writer.upsert("turns", turn_row("t1", "s1", 0, response_text="word " * (n + 1)))
        writer.upsert("sessions", session_row("s1", 100.0, turn_count=1))
        assert writer.pending == 2
        await writer.flush()
        detail = await store.get_session("s1")
        assert detail is not None
        assert [t["response_text"] for t in detail["turns"]] == ["word " * 5]
        writer.upsert("turns", turn_row("t1", "s1", 0, heard_text="word word", interrupted=True))
        await asyncio.sleep(0.3)  # the background loop flushes on its own
        detail = await store.get_session("s1")
        assert detail["turns"][0]["heard_text"] == "word word" and detail["turns"][0]["interrupted"] is True
    finally:
        await store.close()


async def test_failed_write_is_kept_and_retried(tmp_path: Path) -> None:
    # No schema yet: the write fails, the rows stay queued, and land once the tables exist.
    url = f"sqlite+aiosqlite:///{tmp_path / 'late.db'}"
    store = await Store.open(url, migrate_schema=False, write_interval_s=0.05)
    try:
        store.writer.upsert("sessions", session_row("s1", 1.0))
        await asyncio.sleep(0.3)
        assert store.writer.failures >= 1 and store.writer.pending == 1
        await migrate.upgrade(store.engine)
        # Rows leave `pending` when a write starts, so wait for the row itself (the retry backs off).
        deadline = time.monotonic() + 15
        while await store.get_session("s1") is None:
            assert time.monotonic() < deadline, (store.writer.pending, store.writer.failures)
            await asyncio.sleep(0.1)
    finally:
        await store.close()


async def test_writes_do_not_stall_the_event_loop(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        for s in range(50):
            store.writer.upsert("sessions", session_row(f"s{s}", float(s)))
            for t in range(40):
                store.writer.upsert("turns", turn_row(f"t{s}-{t}", f"s{s}", t, response_text="x" * 200))
        worst = 0.0
        stop = asyncio.Event()

        async def probe() -> None:
            nonlocal worst
            while not stop.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(0.005)
                worst = max(worst, time.perf_counter() - t0 - 0.005)

        task = asyncio.create_task(probe())
        await store.writer.flush()
        stop.set()
        await task
        assert store.writer.written == 50 + 50 * 40
        # 2,050 rows in one batch; the loop is never held for long (20 ms is one audio frame).
        assert worst < 0.05, worst
    finally:
        await store.close()


async def test_list_filters_and_pagination(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        for n in range(12):
            store.writer.upsert(
                "sessions",
                session_row(
                    f"s{n:02d}",
                    1000.0 + n // 2,  # pairs share a creation time: the cursor must still be exact
                    transport="twilio" if n % 3 == 0 else "websocket",
                    flow_id="booking" if n % 2 else None,
                ),
            )
        await store.writer.flush()
        seen, cursor = [], None
        while True:
            rows, cursor = await store.list_sessions(SessionQuery(limit=5, cursor=cursor))
            seen += [r["session_id"] for r in rows]
            if cursor is None:
                break
        assert seen == [f"s{n:02d}" for n in reversed(range(12))]
        rows, _ = await store.list_sessions(SessionQuery(transport="twilio"))
        assert {r["session_id"] for r in rows} == {"s00", "s03", "s06", "s09"}
        rows, _ = await store.list_sessions(SessionQuery(flow_id="booking", since=1002.0, until=1005.0))
        assert {r["session_id"] for r in rows} == {"s05", "s07", "s09"}
        with pytest.raises(BadCursor):
            await store.list_sessions(SessionQuery(cursor="not-a-cursor"))
    finally:
        await store.close()


async def test_delete_removes_turns_and_recordings(db_url: str, tmp_path: Path) -> None:
    store = await Store.open(db_url)
    try:
        recording = tmp_path / "rec.wav"
        recording.write_bytes(b"RIFF....")
        store.writer.upsert("sessions", session_row("s1", 1.0))
        store.writer.upsert("sessions", session_row("s2", 2.0))
        store.writer.upsert("turns", turn_row("t1", "s1", 0))
        store.writer.upsert("turns", turn_row("t2", "s2", 0))
        store.writer.upsert(
            "recordings",
            {
                "id": "r1",
                "session_id": "s1",
                "path": str(recording),
                "kind": "caller",
                "format": "wav",
                "sample_rate": 16000,
                "duration_s": 1.0,
                "created_at": 1.0,
            },
        )
        await store.writer.flush()
        assert await store.delete_session("s1") is True
        assert await store.get_session("s1") is None
        assert not recording.exists()
        assert (await store.get_session("s2"))["turns"][0]["turn_id"] == "t2"
        # A late snapshot of the deleted session (its socket was still closing) must not bring it back.
        store.writer.upsert("turns", turn_row("t1", "s1", 0))
        store.writer.upsert("sessions", session_row("s1", 1.0))
        await store.writer.flush()
        assert await store.get_session("s1") is None
        assert await store.delete_session("s1") is False
    finally:
        await store.close()


async def test_sessions_left_open_by_a_killed_gateway_are_closed_by_its_next_start(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        store.writer.upsert("sessions", session_row("a-open", 10.0, extra={"instance": "a"}))
        store.writer.upsert("turns", turn_row("t1", "a-open", 0, started_at=25.0))
        store.writer.upsert("sessions", session_row("a-quiet", 30.0, extra={"instance": "a"}))
        store.writer.upsert(
            "sessions",
            session_row(
                "a-done", 5.0, closed_at=9.0, close_reason="client_disconnected", extra={"instance": "a"}
            ),
        )
        store.writer.upsert("sessions", session_row("b-open", 40.0, extra={"instance": "b"}))
        store.writer.upsert("sessions", session_row("legacy-open", 50.0))  # written before instances existed
        await store.writer.flush()
        assert await store.close_orphaned_sessions("a") == 2
        closed = await store.get_session("a-open")
        assert closed["closed_at"] == 25.0 and closed["close_reason"] == "server_lost"  # its last turn
        quiet = await store.get_session("a-quiet")
        assert quiet["closed_at"] == 30.0 and quiet["close_reason"] == "server_lost"  # no turn: its start
        done = await store.get_session("a-done")
        assert done["closed_at"] == 9.0 and done["close_reason"] == "client_disconnected"
        assert (await store.get_session("b-open"))["closed_at"] is None, "another gateway's live session"
        assert (await store.get_session("legacy-open"))["closed_at"] is None
        assert await store.close_orphaned_sessions("") == 1  # the default instance owns rows without one
        assert await store.close_orphaned_sessions("a") == 0
    finally:
        await store.close()


async def test_retention_deletes_only_old_sessions(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        now = time.time()
        store.writer.upsert("sessions", session_row("old", now - 10 * 86400))
        store.writer.upsert("turns", turn_row("t-old", "old", 0))
        store.writer.upsert("sessions", session_row("new", now - 3600))
        await store.writer.flush()
        assert await store.delete_sessions_before(now - 7 * 86400) == 1
        assert await store.get_session("old") is None
        assert await store.get_session("new") is not None
    finally:
        await store.close()


async def test_flow_versions(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        doc = {"id": "booking", "name": "Booking", "start": "a", "nodes": []}
        assert await store.save_flow("booking", "Booking", doc) == 1
        assert await store.save_flow("booking", "Booking v2", {**doc, "name": "Booking v2"}) == 2
        assert (await store.get_flow("booking"))["name"] == "Booking v2"
        assert (await store.get_flow("booking", 1))["version"] == 1
        assert [v["version"] for v in await store.flow_versions("booking")] == [1, 2]
        assert [f["id"] for f in await store.list_flows()] == ["booking"]
        assert await store.delete_flow("booking") is True
        assert await store.get_flow("booking") is None
    finally:
        await store.close()


async def test_close_lets_a_periodic_write_in_progress_finish(db_url: str) -> None:
    """A shutdown's close() must not cut the periodic write short: its rows were taken off the queue (lost if
    cancelled), and a cancelled SQLite write kept the database locked against the final flush."""
    import contextlib

    store = await Store.open(db_url, write_interval_s=0.05)
    engine = store.writer.engine
    entered, release = asyncio.Event(), asyncio.Event()

    class StallingEngine:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(engine, name)

        @contextlib.asynccontextmanager
        async def begin(self):  # type: ignore[no-untyped-def]
            async with engine.begin() as conn:
                if not entered.is_set():
                    entered.set()
                    await release.wait()
                yield conn

    store.writer.engine = StallingEngine()
    store.writer.upsert(
        "sessions", session_row("s-cut", 100.0, close_reason="server_shutdown", closed_at=101.0)
    )
    await asyncio.wait_for(entered.wait(), 5)  # the periodic write took the row and is mid-transaction
    closing = asyncio.create_task(store.close())
    store.writer.upsert("sessions", session_row("s-late", 102.0))  # queued while the write is in progress
    await asyncio.sleep(0.3)
    assert not closing.done()  # it waits for the write rather than cancelling it
    release.set()
    await asyncio.wait_for(closing, 10)
    again = await Store.open(db_url)
    try:
        cut, late = await again.get_session("s-cut"), await again.get_session("s-late")
    finally:
        await again.close()
    assert cut is not None and cut["close_reason"] == "server_shutdown" and late is not None
