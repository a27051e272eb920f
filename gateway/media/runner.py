"""Runs media jobs on one engine: the body of the taskiq task, in the gateway (embedded queue) or a worker.

A job is taken only if its record is still ``queued`` (a job cancelled while it waited is skipped), then runs
in one of ``concurrency`` threads, never on the event loop. The engine reports progress from its thread; a
ticker on the loop writes it to the record (at most every ``TICK_S``) and reads back which running jobs someone
asked to cancel, which the engine sees through ``cancelled()`` between its steps. In the gateway a cancel also
sets the flag at once. The result files go under ``<data_dir>/jobs/<id>/``; a failure of any kind ends the
job ``failed`` with its reason, and the next job runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from taskiq import AsyncBroker

from engines.media_base import MediaCancelled, MediaEngine, MediaEngineError, MediaRequest, MediaResult
from gateway.media.queue import TASK_NAME
from pipeline.aio import cancel_and_wait
from storage.jobs import CANCELLED, FAILED, HEARTBEAT_S, SUCCEEDED, JobStore

log = logging.getLogger("voxgate.media")

TICK_S = 0.2
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a job: in its result


class ResultFiles:
    """Where a job's results live: ``<root>/<job id>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, job_id: str, name: str) -> Path:
        return self.root / job_id / name

    def write(self, job_id: str, result: MediaResult) -> list[str]:
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i, png in enumerate(result.images):
            names.append(f"image-{i}.png")
            (folder / names[-1]).write_bytes(png)
        if result.video is not None:
            names.append("video.mp4")
            (folder / names[-1]).write_bytes(result.video)
        return names

    def remove(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            shutil.rmtree(self.root / job_id, ignore_errors=True)


@dataclass
class _Running:
    """One job in its thread: the flag its engine polls, and the progress it last reported."""

    cancel: threading.Event = field(default_factory=threading.Event)
    progress: float = 0.0
    written: float = 0.0
    beat: float = field(default_factory=time.time)  # when the record was last written


def payload_of(request: MediaRequest, n: int) -> dict[str, Any]:
    """A request as the JSON a queue message carries (input images as base64)."""
    data = {k: v for k, v in request.__dict__.items() if k not in ("image", "mask")}
    for name in ("image", "mask"):
        raw = getattr(request, name)
        data[name] = base64.b64encode(raw).decode() if raw is not None else None
    return {"request": data, "n": n}


def request_of(payload: dict[str, Any]) -> tuple[MediaRequest, int]:
    data = dict(payload["request"])
    for name in ("image", "mask"):
        data[name] = base64.b64decode(data[name]) if data.get(name) else None
    return MediaRequest(**data), int(payload.get("n", 1))


class JobRunner:
    """Takes jobs off the queue and runs them on ``engine`` (set once it has loaded)."""

    def __init__(
        self,
        jobs: JobStore,
        files: ResultFiles,
        concurrency: int,
        notify: Callable[[], None] | None = None,
        ended: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.jobs = jobs
        self.ended = ended  # told each job that ended here (job.finished, gateway/media/service.py)
        self.files = files
        self.engine: MediaEngine | None = None
        self.notify = notify or (lambda: None)
        self.concurrency = concurrency
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="media-job")
        self._slots: asyncio.Semaphore | None = None
        self._running: dict[str, _Running] = {}
        self._ticker: asyncio.Task[None] | None = None

    def register(self, broker: AsyncBroker) -> None:
        async def run_media_job(job_id: str, payload: dict[str, Any]) -> None:
            await self.run(job_id, payload)

        broker.register_task(run_media_job, task_name=TASK_NAME)

    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)
        self._ticker = asyncio.create_task(self._tick(), name="media-job-ticker")

    async def close(self, reason: str = "the process running the job shut down") -> list[str]:
        """Stop: the running jobs' engines are told to stop, and their records end ``failed``; returns the ids
        of the jobs it stopped (each may have ended just before: the caller reads them back)."""
        await cancel_and_wait(self._ticker)
        for running in self._running.values():
            running.cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        stopped = list(self._running)
        with contextlib.suppress(Exception):
            await self.jobs.fail_open(stopped, reason, time.time())
        return stopped

    def cancel_now(self, job_id: str) -> float | None:
        """Set a running job's cancel flag in this process; its progress at that moment (None: not here)."""
        running = self._running.get(job_id)
        if running is None:
            return None
        running.cancel.set()
        return running.progress

    async def run(self, job_id: str, payload: dict[str, Any]) -> None:
        """The task: wait for a slot, run the job, record how it ended. Never raises for a job's failure."""
        assert self._slots is not None, "JobRunner.start() first"
        async with self._slots:
            if not await self.jobs.start(job_id, time.time()):
                return  # cancelled while queued, or deleted
            running = self._running[job_id] = _Running()
            self.notify()
            try:
                status, values = await self._execute(job_id, payload, running)
            finally:
                del self._running[job_id]
            finished = await self.jobs.finish(job_id, status, time.time(), **values)
            self.notify()
            if finished and self.ended is not None:
                await self.ended(job_id)

    async def _execute(
        self, job_id: str, payload: dict[str, Any], running: _Running
    ) -> tuple[str, dict[str, Any]]:
        try:
            request, n = request_of(payload)
            if self.engine is None:
                raise MediaEngineError("the media engine is not loaded")
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._generate, request, n, running)
            names = await asyncio.to_thread(self._write, job_id, results)
        except MediaCancelled:
            return CANCELLED, {"progress": running.progress, "error": "cancelled"}
        except MediaEngineError as exc:
            return FAILED, {"error": str(exc) or type(exc).__name__, "progress": running.progress}
        except Exception as exc:  # a model or encoder failure: the job says why, the queue goes on
            log.exception("media job %s failed", job_id)
            return FAILED, {"error": f"{type(exc).__name__}: {exc}"[:2000], "progress": running.progress}
        first = results[0]
        result = {
            "files": names,
            "seed": first.seed,
            "seeds": [r.seed for r in results],
            "width": request.width,
            "height": request.height,
            "frames": first.frames,
            "fps": first.fps,
            "media_type": first.media_type,
            "worker": WORKER_ID,
        }
        return SUCCEEDED, {"result": result, "progress": 1.0}

    def _generate(self, request: MediaRequest, n: int, running: _Running) -> list[MediaResult]:
        """In a job thread: ``n`` generations with seeds ``seed``, ``seed + 1``, ... (one for video)."""
        assert self.engine is not None
        results = []
        for i in range(n):
            if running.cancel.is_set():
                raise MediaCancelled
            one = replace(request, seed=None if request.seed is None else request.seed + i)

            def progress(fraction: float, done: int = i) -> None:
                running.progress = min(1.0, max(0.0, (done + fraction) / n))

            results.append(self.engine.generate(one, progress, running.cancel.is_set))
        return results

    def _write(self, job_id: str, results: list[MediaResult]) -> list[str]:
        merged = replace(results[0], images=[png for r in results for png in r.images])
        return self.files.write(job_id, merged)

    async def _tick(self) -> None:
        """Write the running jobs' progress; read back the cancels asked for elsewhere (another process)."""
        while True:
            await asyncio.sleep(TICK_S)
            if not self._running:
                continue
            try:
                changed = False
                now = time.time()
                for job_id, running in list(self._running.items()):
                    # Progress when it moved, and a heartbeat while a long step runs: a record not written
                    # for STALE_S is taken for a dead runner's (storage/jobs.py).
                    if running.progress != running.written or now - running.beat >= HEARTBEAT_S:
                        running.written, running.beat = running.progress, now
                        changed = await self.jobs.set_progress(job_id, running.written, now) or changed
                for job_id in await self.jobs.cancel_requested(list(self._running)):
                    with contextlib.suppress(KeyError):
                        self._running[job_id].cancel.set()
                if changed:
                    self.notify()
            except Exception:
                log.exception("media job progress update failed")
