"""One app's media jobs: the queue it submits to, the embedded runner and engine (``media_queue=memory``), the
records, the results sweep, and a change signal that waiting requests and event streams listen to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from engines.media_base import MediaCapabilities, MediaEngine, MediaRequest
from gateway.limits import check_job, current_principal
from gateway.media.queue import CapabilitiesBoard, assumed_capabilities, enqueue, make_broker
from gateway.media.runner import JobRunner, ResultFiles, payload_of
from gateway.platform_events import PlatformEvents
from gateway.settings import Settings
from gateway.webhooks.publish import publish_job_end
from pipeline.aio import cancel_and_wait
from storage.jobs import CANCELLED, FAILED, FINAL_STATUSES, QUEUED, JobStore
from storage.store import Store

log = logging.getLogger("voxgate.media")

NO_ENGINE = "no media engine configured; set VOXGATE_MEDIA_ENGINE"
POLL_S = 0.5  # how often a waiter re-reads a job that another process (a worker) moves along


class Changes:
    """A signal set whenever this process changes a job; waiters also re-read on a timer (workers)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


def load_media_engine(settings: Settings) -> MediaEngine:
    """The configured engine (engines/media_registry.py), built in the caller's thread."""
    from engines.media_registry import build_media_engine

    engine = build_media_engine(settings)
    if engine is None:
        raise RuntimeError(NO_ENGINE)
    return engine


class MediaJobs:
    """Submits, waits for, cancels and sweeps one app's media jobs."""

    def __init__(self, settings: Settings, store: Store, events: PlatformEvents | None = None) -> None:
        self.settings = settings
        self.events = events  # job.finished goes here (webhooks)
        self.jobs = JobStore(store.engine)
        self.files = ResultFiles(settings.data_dir / "jobs")
        self.changes = Changes()
        self.broker: Any = None
        self.runner: JobRunner | None = None
        self.board: CapabilitiesBoard | None = None
        self.engine_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Per-key job limits (gateway/limits) and usage rows (gateway/usage), set by start().
        self.limiter: Any = None
        self.usage: Any = None

    @property
    def embedded(self) -> bool:
        return self.settings.media_queue == "memory"

    async def start(self) -> None:
        s = self.settings
        if s.media_engine != "none":
            self.broker = make_broker(s)
            if self.embedded:
                await self._fail_orphans("the server restarted before the job finished")
                self.runner = JobRunner(
                    self.jobs, self.files, s.media_concurrency, self.changes.notify, ended=self.ended
                )
                self.runner.register(self.broker)
                self.runner.start()
                self._tasks.append(asyncio.create_task(self._load_engine(), name="media-engine-load"))
            else:
                self.board = CapabilitiesBoard(s)
            await self.broker.startup()
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="media-results-sweep"))

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        if self.runner is not None:
            for job_id in await self.runner.close():
                await self.ended(job_id)
            await self._fail_orphans("the server shut down before the job finished")
            if self.runner.engine is not None:
                await asyncio.to_thread(self.runner.engine.close)
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.shutdown()
        if self.board is not None:
            await self.board.close()

    async def _load_engine(self) -> None:
        assert self.runner is not None
        try:
            self.runner.engine = await asyncio.to_thread(load_media_engine, self.settings)
        except Exception as exc:
            log.exception("loading the media engine failed")
            self.engine_error = f"{type(exc).__name__}: {exc}"[:500]

    async def _fail_orphans(self, reason: str) -> None:
        ids = await self.jobs.open_ids("memory", self.settings.instance_id)
        if await self.jobs.fail_open(ids, reason, time.time()):
            log.warning("media jobs ended failed: %s (%d)", reason, len(ids))
            for job_id in ids:
                await self.ended(job_id)

    # -- what the routes use -----------------------------------------------------------------------------------

    async def capabilities(self) -> MediaCapabilities:
        """The engine's capabilities; 400 without an engine, 503 while it loads or when it failed to."""
        if self.broker is None:
            raise HTTPException(400, NO_ENGINE)
        if self.board is not None:
            return await self.board.read() or assumed_capabilities(self.settings)
        assert self.runner is not None
        if self.runner.engine is not None:
            return self.runner.engine.capabilities
        if self.engine_error is not None:
            raise HTTPException(503, f"the media engine failed to load: {self.engine_error}")
        raise HTTPException(503, "the media engine is still loading; try again shortly")

    async def submit(self, kind: str, request: MediaRequest, *, n: int = 1, api: str) -> dict[str, Any]:
        """Record a job and queue it; the request's seed is fixed here (one the engine would pick is not known
        until it ends, and a job should say from the start what it makes)."""
        await check_job(self.limiter)  # 429 while the caller's key has its limit of jobs queued or running
        waiting = await self.jobs.count(QUEUED)
        if waiting >= self.settings.media_max_waiting:
            detail = f"{waiting} media jobs are waiting already (media_max_waiting); try again later"
            raise HTTPException(429, detail)
        if request.seed is None:
            request = MediaRequest(**{**request.__dict__, "seed": secrets.randbelow(2**31)})
        record = {k: v for k, v in request.__dict__.items() if k not in ("image", "mask")}
        record.update(
            n=n,
            api=api,
            has_image=request.image is not None,
            has_mask=request.mask is not None,
            queue=self.settings.media_queue,
            owner=self.settings.instance_id,
        )
        job_id = f"job_{uuid.uuid4().hex}"
        owner = current_principal().owner  # the key's own job (issue 15): it alone sees it; admin all
        row = await self.jobs.create(
            job_id, kind=kind, task=request.task, request=record, now=time.time(), owner_key=owner
        )
        try:
            await enqueue(self.broker, job_id, payload_of(request, n))
        except Exception as exc:
            log.error("could not queue media job %s: %s", job_id, exc)
            await self.jobs.finish(job_id, FAILED, time.time(), error=f"the job queue is unreachable: {exc}")
            await self.ended(job_id)
            raise HTTPException(503, "the media job queue is unreachable (media_redis_url)") from None
        self.changes.notify()
        if self.usage is not None:
            self.usage.job(job_id, current_principal().key_id, row["created_at"])
        return row

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """The job once it has ended, or as it stands after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            row = await self.jobs.get(job_id)
            left = deadline - time.monotonic()
            if row is None or row["status"] in FINAL_STATUSES or left <= 0:
                return row
            await self.changes.wait(min(POLL_S, left))

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        row = await self.jobs.request_cancel(job_id, time.time())
        if row is not None and self.runner is not None:
            live = self.runner.cancel_now(job_id)
            if live is not None:  # running here: its progress as the flag went up, not as last written
                row["progress"] = live
        self.changes.notify()
        # A queued job ends here; a running one ends in its runner, which tells ended() itself.
        if row is not None and row["status"] == CANCELLED:
            await self.ended(job_id)
        return row

    async def ended(self, job_id: str) -> None:
        """A job ended in this process: ``job.finished`` for the webhooks (never fails the caller)."""
        if self.events is not None:
            await publish_job_end(self.events, self.jobs, job_id)

    # -- retention ---------------------------------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> int:
        """Delete the jobs that ended more than ``media_results_retention_hours`` ago, with their files."""
        cutoff = (now or time.time()) - self.settings.media_results_retention_hours * 3600
        ids = await self.jobs.delete_finished_before(cutoff)
        await asyncio.to_thread(self.files.remove, ids)
        return len(ids)

    async def _sweep_loop(self) -> None:
        interval = min(600.0, max(1.0, self.settings.media_results_retention_hours * 3600 / 4))
        while True:
            try:
                removed = await self.sweep()
                if removed:
                    log.info("media retention: deleted %d finished jobs", removed)
            except Exception:
                log.exception("media results sweep failed")
            await asyncio.sleep(interval)


async def start(app: Starlette) -> None:
    """App start-up (after the store opened): the media jobs of this app."""
    state = app.state.voxgate
    assert state.store is not None
    jobs = MediaJobs(state.settings, state.store, state.events)
    jobs.limiter, jobs.usage = getattr(app.state, "limiter", None), getattr(app.state, "usage", None)
    await jobs.start()
    app.state.media_jobs = jobs


async def stop(app: Starlette) -> None:
    jobs: MediaJobs | None = getattr(app.state, "media_jobs", None)
    if jobs is not None:
        await jobs.stop()


def media_jobs(conn: HTTPConnection) -> MediaJobs:
    jobs: MediaJobs | None = getattr(conn.app.state, "media_jobs", None)
    if jobs is None:
        raise HTTPException(503, "the server is starting")
    return jobs
