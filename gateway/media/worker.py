"""``voxgate worker``: runs media jobs from the Redis queue (``media_queue=redis``) on this machine's engine.

It reads the same settings as the gateway and must share its database (``database_url``; the default SQLite
file only when on the same machine) and its ``data_dir`` (result files are written there and served by the
gateway). It loads the engine, announces the engine's capabilities to the gateway through Redis, then takes
``media_concurrency`` jobs at a time until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys

from gateway.media.queue import CAPABILITIES_TTL_S, CapabilitiesBoard, make_broker
from gateway.media.runner import JobRunner, ResultFiles
from gateway.media.service import load_media_engine
from gateway.platform_events import PlatformEvents
from gateway.settings import Settings
from gateway.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher
from gateway.webhooks.publish import publish_job_end
from pipeline.aio import cancel_and_wait
from storage.jobs import JobStore
from storage.store import Store
from storage.webhooks import WebhookStore

log = logging.getLogger("voxgate.media.worker")
WORKER_FLUSH_S = 5.0  # how long a stopping worker waits to store its last jobs' job.finished deliveries


async def _announce(board: CapabilitiesBoard, runner: JobRunner) -> None:
    assert runner.engine is not None
    while True:
        try:
            await board.announce(runner.engine.capabilities)
        except Exception as exc:
            log.warning("could not announce capabilities: %s", exc)
        await asyncio.sleep(CAPABILITIES_TTL_S / 3)


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Serve jobs until ``stop`` is set."""
    from taskiq.api import run_receiver_task

    store = await Store.open(settings.storage_url(), write_interval_s=settings.storage_write_interval_s)
    jobs = JobStore(store.engine)
    # job.finished: stored as deliveries in the shared database, which the gateways send.
    events = PlatformEvents()
    webhooks = WebhookDispatcher(WebhookStore(store.engine), DeliveryPolicy.from_settings(settings))
    events.subscribe(webhooks.on_event)
    webhooks.start(send=False)
    runner = JobRunner(
        jobs,
        ResultFiles(settings.data_dir / "jobs"),
        settings.media_concurrency,
        ended=functools.partial(publish_job_end, events, jobs),
    )
    board = CapabilitiesBoard(settings)
    broker = make_broker(settings)
    tasks: list[asyncio.Task[None]] = []
    try:
        runner.engine = await asyncio.to_thread(load_media_engine, settings)
        runner.register(broker)
        await broker.startup()
        runner.start()
        tasks.append(asyncio.create_task(_announce(board, runner)))
        tasks.append(
            asyncio.create_task(
                run_receiver_task(broker, max_async_tasks=settings.media_concurrency, max_prefetch=0)
            )
        )
        log.info(
            "media worker ready: %s jobs at a time from %s (stream %s)",
            settings.media_concurrency,
            settings.media_redis_url,
            settings.media_redis_queue,
        )
        await stop.wait()
    finally:
        for task in tasks:
            await cancel_and_wait(task)
        for job_id in await runner.close():
            await publish_job_end(events, jobs, job_id)
        await webhooks.stop(WORKER_FLUSH_S)
        with contextlib.suppress(Exception):
            await broker.shutdown()
        await board.close()
        if runner.engine is not None:
            await asyncio.to_thread(runner.engine.close)
        await store.close()


def _say(message: str) -> None:
    print(f"voxgate worker: {message}", file=sys.stderr)


def main(settings: Settings) -> int:
    """The command: 2 with a message when the settings cannot make a worker."""
    if settings.media_queue != "redis":
        _say(
            "voxgate worker takes jobs from Redis: set VOXGATE_MEDIA_QUEUE=redis (and VOXGATE_MEDIA_REDIS_URL)"
        )
        return 2
    if settings.media_engine == "none":
        _say("voxgate worker needs a media engine: set VOXGATE_MEDIA_ENGINE (diffusers or remote)")
        return 2

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(serve())
    return 0
