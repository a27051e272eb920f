"""Media job records (issue 14): one row per job, written directly rather than through the batched
:class:`storage.writer.WriteQueue`, because a job's status changes are decisions several processes race for
(a gateway cancels while a worker finishes): each transition is one conditional ``UPDATE``, and whoever's
``WHERE`` still matches wins.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.tables import jobs

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})
_OPEN = (QUEUED, RUNNING)
HEARTBEAT_S = 5.0  # a runner writes each running job's record at least this often
STALE_S = 30.0  # a running job not written for this long lost its runner (a killed worker)


class JobStore:
    """Creates, reads, moves along and deletes job rows; every method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self,
        job_id: str,
        *,
        kind: str,
        task: str,
        request: dict[str, Any],
        now: float,
        owner_key: str | None = None,
    ) -> dict[str, Any]:
        row = {
            "id": job_id,
            "kind": kind,
            "task": task,
            "status": QUEUED,
            "request": request,
            "result": None,
            "error": None,
            "progress": 0.0,
            "cancel_requested": False,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "updated_at": now,
            "owner_key": owner_key,  # the API key that asked (None: admin, or auth off)
        }
        async with self.engine.begin() as conn:
            await conn.execute(jobs.insert().values(**row))
        return row

    async def get(self, job_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return dict(row._mapping) if row is not None else None

    async def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        owner_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``owner_key``: only that API key's jobs."""
        stmt = select(jobs)
        if owner_key is not None:
            stmt = stmt.where(jobs.c.owner_key == owner_key)
        if status is not None:
            stmt = stmt.where(jobs.c.status == status)
        if kind is not None:
            stmt = stmt.where(jobs.c.kind == kind)
        stmt = stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt)]

    async def count(self, status: str) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).where(jobs.c.status == status))).scalar_one())

    async def start(self, job_id: str, now: float) -> bool:
        """queued -> running; False when the job is gone or no longer queued (cancelled while it waited).

        A job ``running`` whose runner has not written for ``STALE_S`` (runners write at least every
        ``HEARTBEAT_S``) lost its process: the queue handing its message out again may start it afresh."""
        values = {"status": RUNNING, "started_at": now, "updated_at": now, "progress": 0.0}
        if await self._update(job_id, (QUEUED,), **values):
            return True
        stmt = (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.status == RUNNING,
                jobs.c.updated_at < now - STALE_S,
                jobs.c.cancel_requested.is_(False),
            )
            .values(**values)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def set_progress(self, job_id: str, progress: float, now: float) -> bool:
        return await self._update(job_id, (RUNNING,), progress=progress, updated_at=now)

    async def finish(
        self,
        job_id: str,
        status: str,
        now: float,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        progress: float | None = None,
    ) -> bool:
        """An open job ends ``status``; False when it had already ended (a cancel got there first)."""
        assert status in FINAL_STATUSES
        values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, "error": error}
        if result is not None:
            values["result"] = result
        if progress is not None:
            values["progress"] = progress
        return await self._update(job_id, _OPEN, **values)

    async def request_cancel(self, job_id: str, now: float) -> dict[str, Any] | None:
        """A queued job ends ``cancelled`` here; a running one is flagged for its runner, which stops at the
        next step and ends it. Returns the row as it then stands (None: no such job)."""
        ended = {"status": CANCELLED, "finished_at": now, "updated_at": now}
        await self._update(job_id, (QUEUED,), **ended)
        stale = update(jobs).where(
            jobs.c.id == job_id, jobs.c.status == RUNNING, jobs.c.updated_at < now - STALE_S
        )
        async with self.engine.begin() as conn:  # its runner is gone: nobody else would end it
            await conn.execute(stale.values(**ended, error="cancelled; its runner had stopped answering"))
        await self._update(job_id, (RUNNING,), cancel_requested=True)
        return await self.get(job_id)

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Of these jobs, the ones someone asked to cancel (or that ended meanwhile)."""
        if not job_ids:
            return set()
        stmt = select(jobs.c.id).where(
            jobs.c.id.in_(job_ids), (jobs.c.cancel_requested.is_(True)) | (jobs.c.status.not_in(_OPEN))
        )
        async with self.engine.connect() as conn:
            return {r.id for r in await conn.execute(stmt)}

    async def fail_open(self, job_ids: list[str], error: str, now: float) -> int:
        """End these jobs ``failed`` if they are still open (an embedded queue that died with its process)."""
        if not job_ids:
            return 0
        stmt = (
            update(jobs)
            .where(jobs.c.id.in_(job_ids), jobs.c.status.in_(_OPEN))
            .values(status=FAILED, error=error, finished_at=now, updated_at=now)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount

    async def open_ids(self, queue: str, owner: str) -> list[str]:
        """Open jobs that ``owner``'s ``queue`` was given (recorded in the request at submission)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(jobs.c.id, jobs.c.request).where(jobs.c.status.in_(_OPEN)))
            return [
                r.id
                for r in rows
                if (r.request or {}).get("queue") == queue and (r.request or {}).get("owner") == owner
            ]

    async def delete_finished_before(self, cutoff: float) -> list[str]:
        """Retention: delete the jobs that ended before ``cutoff`` (epoch s); returns their ids (for files)."""
        async with self.engine.begin() as conn:
            ids = [
                r.id
                for r in await conn.execute(
                    select(jobs.c.id).where(jobs.c.status.in_(FINAL_STATUSES), jobs.c.finished_at < cutoff)
                )
            ]
            if ids:
                await conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
        return ids

    async def _update(self, job_id: str, when: tuple[str, ...], **values: Any) -> bool:
        stmt = update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(when)).values(**values)
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1
