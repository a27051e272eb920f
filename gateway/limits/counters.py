"""Where the limit counters live: in this process, or in Redis so that several replicas share them.

Two kinds of counter are kept:

- a fixed one-minute window per key (requests per minute): ``hit`` adds one and says how many this window holds;
- a count of things held at once per key (concurrent sessions): ``acquire`` takes one place if the total is below
  the limit, ``release`` gives it back.

In Redis every operation is one Lua script, so two replicas checking the same key at the same moment never both
take the last place. A replica's held places are a field of its own in a hash per key; they count only while the
replica's heartbeat key lives (``HEARTBEAT_TTL_S``, refreshed every third of it), so a replica that is killed
with sessions open stops holding their places within that time: the counters heal themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("voxgate.limits")

WINDOW_S = 60
HEARTBEAT_TTL_S = 30

# KEYS[1]: the window's counter. ARGV[1]: its expiry. Returns the count after this hit.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return n
"""

# KEYS[1]: the key's hash of places per replica. ARGV: limit, this replica, heartbeat key prefix, heartbeat ttl.
# Fields of replicas whose heartbeat expired are dropped (they died holding places). Returns -1 when full.
_ACQUIRE = """
local limit, me, alive, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('SET', alive .. me, '1', 'EX', ttl)
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] == me or redis.call('EXISTS', alive .. fields[i]) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if total >= limit then return -1 end
redis.call('HINCRBY', KEYS[1], me, 1)
redis.call('EXPIRE', KEYS[1], 86400)
return total + 1
"""

_RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""


def replica_id(instance_id: str = "") -> str:
    """This process among the replicas: its instance id (or host name), pid and a random part, so that a
    restarted replica never inherits the places its previous life held."""
    return f"{instance_id or socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def window_of(now: float) -> tuple[int, float]:
    """The current one-minute window's number and the seconds left in it."""
    index = int(now // WINDOW_S)
    return index, (index + 1) * WINDOW_S - now


class Counters(Protocol):
    """The counter store a :class:`~gateway.limits.limiter.Limiter` uses."""

    async def hit(self, key: str) -> tuple[int, int]:
        """One more request in ``key``'s current minute: (requests this minute, whole seconds left in it)."""

    async def acquire(self, key: str, limit: int) -> bool:
        """Take one of ``limit`` places for ``key``; False when all are taken."""

    async def release(self, key: str) -> None:
        """Give back a place ``acquire`` took."""

    async def held(self, key: str) -> int:
        """Places held for ``key`` now (all replicas)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryCounters:
    """Counters in this process: one replica, or tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window, count)
        self._held: dict[str, int] = {}

    async def hit(self, key: str) -> tuple[int, int]:
        index, left = window_of(self._clock())
        window, count = self._windows.get(key, (index, 0))
        count = count + 1 if window == index else 1
        self._windows[key] = (index, count)
        if len(self._windows) > 100_000:  # keys that went quiet: keep memory bounded
            self._windows = {k: v for k, v in self._windows.items() if v[0] == index}
        return count, max(1, math.ceil(left))

    async def acquire(self, key: str, limit: int) -> bool:
        if self._held.get(key, 0) >= limit:
            return False
        self._held[key] = self._held.get(key, 0) + 1
        return True

    async def release(self, key: str) -> None:
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)

    async def held(self, key: str) -> int:
        return self._held.get(key, 0)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisCounters:
    """Counters in Redis, shared by every replica that names the same ``redis_url`` and ``prefix``."""

    def __init__(self, url: str, prefix: str = "voxgate:limits", replica: str | None = None) -> None:
        import redis.asyncio as redis

        self.client: Any = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.prefix = prefix
        self.replica = replica or replica_id()
        self._hit = self.client.register_script(_HIT)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)
        self._heartbeat: asyncio.Task[None] | None = None

    def _alive_prefix(self) -> str:
        return f"{self.prefix}:alive:"

    async def hit(self, key: str) -> tuple[int, int]:
        index, left = window_of(time.time())
        count = await self._hit(keys=[f"{self.prefix}:rpm:{key}:{index}"], args=[WINDOW_S * 2])
        return int(count), max(1, math.ceil(left))

    async def acquire(self, key: str, limit: int) -> bool:
        args = [limit, self.replica, self._alive_prefix(), HEARTBEAT_TTL_S]
        return int(await self._acquire(keys=[f"{self.prefix}:sessions:{key}"], args=args)) >= 0

    async def release(self, key: str) -> None:
        await self._release(keys=[f"{self.prefix}:sessions:{key}"], args=[self.replica])

    async def held(self, key: str) -> int:
        fields = await self.client.hgetall(f"{self.prefix}:sessions:{key}")
        total = 0
        for replica, count in fields.items():
            name = replica.decode() if isinstance(replica, bytes) else replica
            if name == self.replica or await self.client.exists(self._alive_prefix() + name):
                total += int(count)
        return total

    async def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._beat(), name="limits-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        with contextlib.suppress(Exception):  # a clean stop gives its places back at once
            await self.client.delete(self._alive_prefix() + self.replica)
        await self.client.aclose()

    async def _beat(self) -> None:
        while True:
            try:
                await self.client.set(self._alive_prefix() + self.replica, "1", ex=HEARTBEAT_TTL_S)
            except Exception as exc:
                log.warning("limits: Redis heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_TTL_S / 3)
