"""Live sessions, recently ended ones (served from memory until storage has them), admission control."""

from __future__ import annotations

from collections import OrderedDict

from pipeline.session import Session


class SessionManager:
    """Admits up to ``max_sessions`` live sessions and remembers the last ``keep_recent`` that ended."""

    def __init__(self, max_sessions: int, keep_recent: int = 500) -> None:
        self.max_sessions = max_sessions
        self.keep_recent = keep_recent
        self.live: dict[str, Session] = {}
        self.recent: OrderedDict[str, Session] = OrderedDict()
        self._reserved = 0

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
        self.live.pop(session.id, None)
        self.recent[session.id] = session
        while len(self.recent) > self.keep_recent:
            self.recent.popitem(last=False)

    def get(self, session_id: str) -> Session | None:
        return self.live.get(session_id) or self.recent.get(session_id)

    def forget(self, session_id: str) -> bool:
        """Drop a deleted session from memory; True if it was known here."""
        known = session_id in self.live or session_id in self.recent
        self.live.pop(session_id, None)
        self.recent.pop(session_id, None)
        return known
