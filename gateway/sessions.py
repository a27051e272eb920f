"""Live sessions, a short memory of ended ones (until storage has them), admission control."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pipeline.session import Session


@dataclass(frozen=True)
class EndedSession:
    """What memory keeps of a session once it ended: its record, never its buffers, tasks or engines."""

    snapshot: dict[str, Any]
    recording_dir: str | None
    ended_at: float  # monotonic
    owner_key: str | None = None  # the API key that opened it: only that key (or admin) may read it


class SessionManager:
    """Admits up to ``max_sessions`` live sessions; remembers ended ones for ``keep_recent_s``.

    Storage has an ended session's rows within a write interval (``storage_write_interval_s``, under a
    second); memory answers for it only until then, so it never pins a session's outbox, responses or
    history (1,000 short sessions once grew RSS by 60 MB while 500 whole sessions were kept).
    """

    def __init__(self, max_sessions: int, keep_recent: int = 200, keep_recent_s: float = 30.0) -> None:
        self.max_sessions = max_sessions
        self.keep_recent = keep_recent
        self.keep_recent_s = keep_recent_s
        self.live: dict[str, Session] = {}
        self.recent: OrderedDict[str, EndedSession] = OrderedDict()
        self._reserved = 0

    @property
    def reserved(self) -> int:
        """Places held for sessions being set up (a socket waiting for its start message, say)."""
        return self._reserved

    def try_reserve(self) -> bool:
        """Hold a place for a session being set up; False when the gateway is full."""
        if len(self.live) + self._reserved >= self.max_sessions:
            return False
        self._reserved += 1
        return True

    def add(self, session: Session) -> None:
        self._reserved = max(0, self._reserved - 1)
        self.live[session.id] = session

    def cancel_reservation(self) -> None:
        self._reserved = max(0, self._reserved - 1)

    def remove(self, session: Session) -> None:
        """The session ended: keep its record a little while, and let go of everything else it held."""
        self.live.pop(session.id, None)
        session.outbox.discard()
        directory = session.recording.directory if session.recording is not None else None
        self.recent[session.id] = EndedSession(
            session.snapshot(), str(directory) if directory else None, time.monotonic(), session.owner_key
        )
        self._prune()

    def _prune(self) -> None:
        horizon = time.monotonic() - self.keep_recent_s
        while self.recent and (
            len(self.recent) > self.keep_recent or next(iter(self.recent.values())).ended_at < horizon
        ):
            self.recent.popitem(last=False)

    def get(self, session_id: str) -> Session | EndedSession | None:
        self._prune()
        return self.live.get(session_id) or self.recent.get(session_id)

    def forget(self, session_id: str) -> bool:
        """Drop a deleted session from memory; True if it was known here."""
        known = session_id in self.live or session_id in self.recent
        self.live.pop(session_id, None)
        self.recent.pop(session_id, None)
        return known
