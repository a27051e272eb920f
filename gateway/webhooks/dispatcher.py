"""The webhook dispatcher: published events become stored deliveries, and due deliveries are sent.

Two loops per app. The recorder takes each event off the in-memory inbox (subscribers must return at once),
matches it against the registrations and stores one ``pending`` delivery per match: from then on the event
survives a restart. The sender reads due deliveries from the database (this replica's and any other's, since
they share it), claims each with a conditional ``UPDATE`` (storage/webhooks.py) and POSTs it, signed, with
httpx; redirects are not followed and the response body is not read. A 2xx delivers; a connection error, a
timeout, a 429 or a 5xx is retried with exponential back-off up to ``webhook_max_attempts``; any other answer
fails the delivery at once (the receiver refused it, and will again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from gateway.platform_events import EVENT_TYPES, PlatformEvent
from gateway.webhooks import publish
from gateway.webhooks.metrics import failures_counter
from gateway.webhooks.signing import headers
from gateway.webhooks.targets import target_problem
from storage.webhooks import DELIVERED, FAILED, PENDING, WebhookStore

log = logging.getLogger("voxgate.webhooks")

HOOKS_TTL_S = 2.0  # registrations are re-read at most this often (another replica's new one counts after it)
INBOX_MAX = 10_000  # events waiting to be stored; past this they are dropped (logged): memory stays bounded
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class DeliveryPolicy:
    """How deliveries are sent and retried (the ``webhook_*`` settings)."""

    max_attempts: int = 6
    retry_base_s: float = 2.0  # the first retry's delay; each next one doubles
    retry_max_s: float = 300.0
    timeout_s: float = 10.0
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()  # the flow http tool's allowlist: these hosts may be private
    retention_days: float | None = None  # settled deliveries older than this are deleted (None: kept)
    retention_interval_s: float = 3600.0
    concurrency: int = 8  # deliveries in flight at once, per app
    poll_s: float = 1.0  # how often due deliveries are looked for when nothing woke the sender

    @classmethod
    def from_settings(cls, settings: Any) -> DeliveryPolicy:
        return cls(
            max_attempts=settings.webhook_max_attempts,
            retry_base_s=settings.webhook_retry_base_s,
            retry_max_s=settings.webhook_retry_max_s,
            timeout_s=settings.webhook_timeout_s,
            allow_private=settings.webhook_allow_private,
            allowed_hosts=tuple(settings.flow_http_allowlist),
            retention_days=settings.retention_days,
            retention_interval_s=settings.retention_interval_s,
        )

    def retry_delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt: base, 2 x base, 4 x base, ... up to the cap."""
        return float(min(self.retry_max_s, self.retry_base_s * 2 ** max(0, attempts - 1)))

    @property
    def lease_s(self) -> float:
        """How long a claim holds: past it, a sender that died is taken to have lost the delivery."""
        return self.timeout_s + 30.0


def matches(hook: dict[str, Any], event: PlatformEvent) -> bool:
    """Whether registration ``hook`` receives ``event``: its type is asked for, the owner (a key's hooks get
    only that key's events; an admin's get all) and the flow (when the hook names one) agree."""
    if event.type not in (hook.get("events") or []):
        return False
    if hook.get("owner_key") is not None and hook["owner_key"] != event.key_id:
        return False
    return hook.get("flow_id") is None or hook["flow_id"] == event.flow_id


def event_body(event: PlatformEvent) -> dict[str, Any]:
    """What a webhook receives (as JSON): the event's id, type, time and data."""
    body = {"id": event.id, "type": event.type, "created_at": event.created_at, "data": event.data}
    # Stored as JSON: whatever a publisher put in data (a path, a datetime) arrives as text, not as an error.
    loaded: dict[str, Any] = json.loads(json.dumps(body, default=str))
    return loaded


class WebhookDispatcher:
    """Stores and sends one app's webhook deliveries (see the module docstring)."""

    def __init__(
        self,
        store: WebhookStore,
        policy: DeliveryPolicy,
        registry: Callable[[], CollectorRegistry | None] = lambda: None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.registry = registry
        self._client = client
        self._own_client = client is None
        self._inbox: asyncio.Queue[PlatformEvent] = asyncio.Queue(INBOX_MAX)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._next_retry = float("inf")  # the earliest retry this dispatcher scheduled (epoch s)
        self._sending = True
        self._hooks: tuple[float, list[dict[str, Any]]] | None = None  # (read at, monotonic), registrations

    # -- the subscriber ---------------------------------------------------------------------------------------

    def on_event(self, event: PlatformEvent) -> None:
        """``PlatformEvents`` subscriber: queue the event for storing (returns at once)."""
        if event.type not in EVENT_TYPES:
            return
        try:
            # Without its live subject: a queued (or last-handled) event must not keep an ended session alive.
            self._inbox.put_nowait(dataclasses.replace(event, subject=None))
        except asyncio.QueueFull:
            log.error("webhook inbox full (%d events): %s %s dropped", INBOX_MAX, event.type, event.id)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, *, send: bool = True) -> None:
        """Start storing published events, and (``send``) sending due deliveries. A ``voxgate worker`` only
        stores its jobs' events: the gateways, which share its database, send them."""
        self._sending = send
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._loops = [asyncio.create_task(self._record_loop(), name="webhooks-record")]
        if send:
            self._loops.append(asyncio.create_task(self._send_loop(), name="webhooks-send"))
            if self.policy.retention_days:
                self._loops.append(asyncio.create_task(self._retention_loop(), name="webhooks-retention"))

    async def stop(self, flush_s: float) -> None:
        """Store the events still queued, send what is due and wait for deliveries in flight, all within
        ``flush_s``; what is left stays stored (pending, or claimed until its lease ends) for the next start
        or another replica."""
        deadline = time.monotonic() + flush_s
        await publish.flush_pending(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._inbox.join(), max(0.0, deadline - time.monotonic()))
        while self._sending and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send_due(), left)
            if not self._inflight:
                break
            await asyncio.wait(set(self._inflight), timeout=max(0.0, deadline - time.monotonic()))
            if not await self.store.due(time.time(), 1) and not self._inflight:
                break
        for task in [*self._loops, *self._inflight]:
            task.cancel()
        for task in [*self._loops, *self._inflight]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._own_client and self._client is not None:
            await self._client.aclose()

    # -- storing ------------------------------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            event = await self._inbox.get()
            try:
                await self.record(event)
            except Exception:
                log.exception("storing webhook deliveries for %s %s failed", event.type, event.id)
            finally:
                self._inbox.task_done()

    def registrations_changed(self) -> None:
        """A registration was added or removed here: the next event reads them afresh."""
        self._hooks = None

    async def _registrations(self) -> list[dict[str, Any]]:
        # Every session end publishes up to three events: they must not each cost a read of the table.
        now = time.monotonic()
        if self._hooks is None or now - self._hooks[0] > HOOKS_TTL_S:
            self._hooks = (now, await self.store.active())
        return self._hooks[1]

    async def record(self, event: PlatformEvent) -> int:
        """One pending delivery per registration that receives ``event``; returns how many were new."""
        hooks = [h for h in await self._registrations() if matches(h, event)]
        if not hooks:
            return 0
        now, body = time.time(), event_body(event)
        rows = [
            {
                "id": "whd_" + secrets.token_hex(12),
                "webhook_id": hook["id"],
                "event_id": event.id,
                "event_type": event.type,
                "payload": body,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for hook in hooks
        ]
        added = await self.store.enqueue(rows)
        if added:
            self._wake.set()
        return added

    # -- sending ------------------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            self._metrics()
            try:
                started = await self.send_due()
            except Exception:
                log.exception("looking for due webhook deliveries failed")
                started = 0
            if not started:
                # Until woken (a new delivery), a retry of ours falls due, or the poll for other replicas'.
                wait_s = min(self.policy.poll_s, max(0.0, self._next_retry - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
                self._wake.clear()
                if self._next_retry <= time.time():
                    self._next_retry = float("inf")

    async def send_due(self) -> int:
        """Claim and start sending the deliveries due now; returns how many this call started."""
        started = 0
        for delivery_id in await self.store.due(time.time(), self.policy.concurrency * 4):
            await self._slots.acquire()
            try:
                delivery = await self.store.claim(delivery_id, time.time(), self.policy.lease_s)
            except BaseException:
                self._slots.release()
                raise
            if delivery is None:  # another sender (a replica, the other loop) has it
                self._slots.release()
                continue
            task = asyncio.create_task(self._deliver(delivery), name=f"webhook-{delivery_id}")
            self._inflight.add(task)
            task.add_done_callback(self._done)
            started += 1
        return started

    async def wait_inflight(self) -> None:
        """Until the deliveries this dispatcher is sending now have settled."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("a webhook delivery failed unexpectedly", exc_info=task.exception())

    async def _deliver(self, delivery: dict[str, Any]) -> None:
        """One attempt at one claimed delivery, and what it leads to."""
        attempt = int(delivery["attempts"])
        code, error, retry = await self._attempt(delivery)
        now = time.time()
        if error is None:
            await self.store.settle(delivery["id"], attempt, DELIVERED, now, status_code=code)
            return
        error = error[:MAX_ERROR_CHARS]
        if retry and attempt < self.policy.max_attempts:
            due = now + self.policy.retry_delay(attempt)
            await self.store.settle(
                delivery["id"], attempt, PENDING, now, status_code=code, error=error, next_attempt_at=due
            )
            self._next_retry = min(self._next_retry, due)
            self._wake.set()  # the sender's wait is recomputed: it may be shorter than its poll now
            self._count("retrying")
        else:
            await self.store.settle(delivery["id"], attempt, FAILED, now, status_code=code, error=error)
            self._count("failed")
        log.warning(
            "webhook delivery %s (%s) attempt %d: %s", delivery["id"], delivery["event_type"], attempt, error
        )

    async def _attempt(self, delivery: dict[str, Any]) -> tuple[int | None, str | None, bool]:
        """POST it: (status code, error or None when delivered, whether another attempt may succeed)."""
        if delivery.get("disabled_at") is not None:
            return None, "the webhook was disabled", False
        url = str(delivery["url"])
        problem = await target_problem(url, self.policy.allow_private, self.policy.allowed_hosts)
        if problem is not None:
            return None, f"target refused: {problem}", False
        body = json.dumps(delivery["payload"], separators=(",", ":"), ensure_ascii=False).encode()
        sent = headers(delivery["secret"], body, delivery["event_type"], delivery["id"], time.time())
        assert self._client is not None
        try:
            request = self._client.build_request(
                "POST", url, content=body, headers=sent, timeout=self.policy.timeout_s
            )
            # Streamed and closed unread: a receiver's answer body is never taken into memory.
            response = await self._client.send(request, stream=True, follow_redirects=False)
            await response.aclose()
        except httpx.TimeoutException:
            return None, f"timed out after {self.policy.timeout_s:g} s", True
        except httpx.HTTPError as exc:
            return None, f"request failed: {type(exc).__name__}: {exc}", True
        except ValueError as exc:  # a URL or header httpx cannot send
            return None, f"request not sent: {type(exc).__name__}: {exc}", False
        code = response.status_code
        if 200 <= code < 300:
            return code, None, False
        if code == 429 or code >= 500:
            return code, f"HTTP {code}", True
        if 300 <= code < 400:
            return code, f"HTTP {code} (redirects are not followed)", False
        return code, f"HTTP {code}", False

    async def _retention_loop(self) -> None:
        """Deliveries follow the sessions' retention (``retention_days``), on the same interval."""
        assert self.policy.retention_days
        while True:
            cutoff = time.time() - self.policy.retention_days * 86400
            try:
                removed = await self.store.delete_settled_before(cutoff)
                if removed:
                    log.info("retention: deleted %d webhook deliveries", removed)
            except Exception:
                log.exception("webhook retention sweep failed")
            await asyncio.sleep(self.policy.retention_interval_s)

    # -- metrics ------------------------------------------------------------------------------------------------

    def _metrics(self) -> None:
        registry = self.registry()
        if registry is not None:
            failures_counter(registry)  # exported at 0 from the start, not only after the first failure

    def _count(self, outcome: str) -> None:
        registry = self.registry()
        if registry is not None:
            failures_counter(registry).labels(outcome).inc()
