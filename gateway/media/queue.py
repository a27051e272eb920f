"""The job queue on taskiq: which broker, the one task it carries, and what workers tell the gateway.

- ``media_queue=memory`` (default): taskiq's ``InMemoryBroker``; a submitted job runs as a task on this
  gateway's own event loop (its engine work in a thread), nothing else to run.
- ``media_queue=redis``: taskiq-redis's ``RedisStreamBroker``. The gateway only adds messages to the stream;
  ``voxgate worker`` processes read them in one consumer group (each message goes to one worker; one that is not
  acknowledged because its worker died is handed out again after ``idle_timeout``).

A message carries the job id and its request, input images included (base64), so a worker needs no file
from the gateway. Status, progress and cancellation go through the job record in the shared database.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from taskiq import AsyncBroker, InMemoryBroker
from taskiq.kicker import AsyncKicker

from engines.media_base import MEDIA_TASKS, MediaCapabilities

log = logging.getLogger("voxgate.media")

TASK_NAME = "voxgate.media.run_job"
CAPABILITIES_TTL_S = 60  # a worker refreshes its announcement every third of this
CAPABILITIES_CACHE_S = 2.0


def make_broker(settings: Any) -> AsyncBroker:
    """The broker for ``settings.media_queue``."""
    if settings.media_queue == "redis":
        from taskiq_redis import RedisStreamBroker

        return RedisStreamBroker(
            settings.media_redis_url,
            queue_name=settings.media_redis_queue,
            consumer_group_name=settings.media_redis_queue,
            # A message a worker took and never acknowledged (it died) goes to another worker this much later;
            # the lock workers take to reclaim such messages expires, so a worker killed holding it blocks none.
            idle_timeout=int(settings.media_redelivery_s * 1000),
            unacknowledged_lock_timeout=30,
            socket_connect_timeout=5,
        )
    # Tasks are coroutines that hand the engine work to their own threads: taskiq's pool stays small.
    return InMemoryBroker(sync_tasks_pool_size=1, max_async_tasks=10_000, max_stored_results=10)


async def enqueue(broker: AsyncBroker, job_id: str, payload: dict[str, Any]) -> None:
    """Send one job to whoever runs ``TASK_NAME`` on this broker."""
    await AsyncKicker(TASK_NAME, broker, {}).kiq(job_id=job_id, payload=payload)


def capabilities_json(caps: MediaCapabilities) -> str:
    data = dataclasses.asdict(caps)
    data["tasks"] = sorted(caps.tasks)
    return json.dumps(data)


def capabilities_from_json(text: str | bytes) -> MediaCapabilities:
    data = json.loads(text)
    data["tasks"] = frozenset(data["tasks"])
    fields = {f.name for f in dataclasses.fields(MediaCapabilities)}
    return MediaCapabilities(**{k: v for k, v in data.items() if k in fields})


def assumed_capabilities(settings: Any) -> MediaCapabilities:
    """What the gateway assumes before any worker has said what its engine does: every task, the settings'
    limits. A job the worker's engine cannot do then fails with the engine's reason."""
    return MediaCapabilities(
        tasks=frozenset(MEDIA_TASKS),
        max_width=settings.media_max_width,
        max_height=settings.media_max_height,
        max_steps=settings.media_max_steps,
        max_frames=settings.media_max_frames,
    )


class CapabilitiesBoard:
    """A Redis key where workers announce what their engine does (with a TTL), read by the gateway."""

    def __init__(self, settings: Any) -> None:
        from redis.asyncio import Redis

        self.key = f"{settings.media_redis_queue}:capabilities"
        self.redis = Redis.from_url(settings.media_redis_url, socket_connect_timeout=5, socket_timeout=5)
        self._cached: tuple[float, MediaCapabilities | None] | None = None

    async def announce(self, caps: MediaCapabilities) -> None:
        await self.redis.set(self.key, capabilities_json(caps), ex=CAPABILITIES_TTL_S)

    async def read(self) -> MediaCapabilities | None:
        """The latest announcement (cached for a moment: it is read on every submission); None without one."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CAPABILITIES_CACHE_S:
            return self._cached[1]
        try:
            raw = await self.redis.get(self.key)
            caps = capabilities_from_json(raw) if raw else None
        except Exception as exc:  # Redis down: submissions will say so when they enqueue
            log.warning("could not read the media workers' capabilities: %s", exc)
            caps = None
        self._cached = (now, caps)
        return caps

    async def close(self) -> None:
        await self.redis.aclose()
