"""The conversation's items as the Realtime API shows them, and the helpers every Realtime event is built with.

The translator (:mod:`gateway.realtime.translate`) keeps the items here in conversation order: for
``previous_item_id``, ``conversation.item.retrieve`` and ``delete``, and for what each item is in the LLM's
history.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from gateway.realtime.config import RealtimeConfig
from gateway.realtime.session import RealtimeSession

Wire = dict[str, Any]


def event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


def wire(type_: str, **fields: Any) -> Wire:
    return {"type": type_, "event_id": event_id(), **fields}


def user_item(item_id: str, content: list[Wire], status: str = "completed") -> Wire:
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": "user",
            "content": content}  # fmt: skip


class ItemLog:
    """The items of one Realtime session, in order, with the history message each one put there."""

    def __init__(self, session: RealtimeSession, config: RealtimeConfig) -> None:
        self.session = session
        self.config = config
        self.items: dict[str, Wire] = {}  # item id -> the item, in conversation order
        self.history: dict[str, dict[str, Any]] = {}  # item id -> its message in the LLM's history

    def _last_item(self) -> str | None:
        return next(reversed(self.items), None)

    def add_item(self, item: Wire, history: dict[str, Any] | None = None) -> Wire:
        """Record ``item``; the ``conversation.item.added`` event for it."""
        previous = self._last_item()
        self.items[item["id"]] = item
        if history is not None:
            self.history[item["id"]] = history
        return wire("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item))

    def item_done(self, item_id: str) -> Wire:
        keys = list(self.items)
        index = keys.index(item_id)
        previous = keys[index - 1] if index else None
        return wire(
            "conversation.item.done", previous_item_id=previous, item=copy.deepcopy(self.items[item_id])
        )
