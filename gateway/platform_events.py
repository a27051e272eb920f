"""Things that happened, for the platform's subscribers: webhooks and usage (issue 15).

Publishers (session end, call end, recordings, media jobs) call ``PlatformEvents.publish``; subscribers are
plain callables that must return at once (they queue the work they do). A failing subscriber is logged and
never reaches the publisher: a webhook's trouble must not break a call.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("voxgate.events")

EVENT_TYPES = ("session.ended", "call.completed", "transcript.ready", "recording.ready", "job.finished")


@dataclass(frozen=True)
class PlatformEvent:
    """One event: its JSON ``data`` is what a webhook receives; ``subject`` is the live object, for in-process
    subscribers (a Session, a call, a job record), and is never serialized."""

    type: str
    data: dict[str, Any]
    key_id: str | None = None  # the owning API key, if any
    flow_id: str | None = None
    subject: Any = None
    id: str = field(default_factory=lambda: "evt_" + secrets.token_hex(12))
    created_at: float = field(default_factory=time.time)


Subscriber = Callable[[PlatformEvent], None]


class PlatformEvents:
    """A synchronous fan-out of ``PlatformEvent`` to subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: PlatformEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("a subscriber to %s failed", event.type)
