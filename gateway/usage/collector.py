"""Turns what sessions, media jobs and metered requests used into ``usage`` rows (issue 15).

Sessions are counted when they end, from the ``session.ended`` platform event (its subject is the Session and
its counters, :class:`pipeline.usage.UsageCounters`); jobs when they are accepted; the speech and chat endpoints
per request. Every write is a queued upsert on the storage write queue: no I/O on the caller's path.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from gateway.platform_events import PlatformEvent
from gateway.usage.store import usage_row

log = logging.getLogger("voxgate.usage")


class UsageCollector:
    """Queues usage rows on the app's write queue (``state.store.writer``)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def install(self) -> None:
        self.state.events.subscribe(self.on_event)

    def on_event(self, event: PlatformEvent) -> None:
        if event.type == "session.ended" and event.subject is not None:
            self.session_ended(event.subject, event.key_id)

    def session_ended(self, session: Any, key_id: str | None = None) -> None:
        used = session.usage
        if key_id is None:  # the session's owner is None for an admin-scoped key: the key it was opened with
            key_id = used.key_id if used.key_id is not None else session.owner_key
        self._write(
            usage_row(
                session.id,
                key_id,
                "session",
                session.created_at,
                sessions=1,
                audio_in_s=used.audio_in_s,
                audio_out_s=used.audio_out_s,
                stt_s=used.stt_s,
                llm_tokens=used.llm_tokens,
                tts_chars=used.tts_chars,
            )
        )

    def job(self, job_id: str, key_id: str | None, created_at: float) -> None:
        self._write(usage_row(job_id, key_id, "job", created_at, jobs=1))

    def request(self, key_id: str | None, **counts: float) -> None:
        """One metered HTTP request (speech, transcription, chat)."""
        row_id = "req_" + secrets.token_hex(12)
        self._write(usage_row(row_id, key_id, "request", time.time(), **counts))

    def _write(self, row: dict[str, Any]) -> None:
        store = self.state.store
        if store is None:
            log.warning("usage row %s not stored: storage is not open", row["id"])
            return
        store.writer.upsert("usage", row)


def usage_of(conn: Any) -> UsageCollector | None:
    """The app's collector, for routes that meter a request (None before start-up)."""
    collector: UsageCollector | None = getattr(conn.app.state, "usage", None)
    return collector


def meter(conn: Any, **counts: float) -> None:
    """Count one HTTP request's use (``tts_chars=``, ``stt_s=``...) for the key that made it."""
    from gateway.principal import principal_of

    collector = usage_of(conn)
    if collector is not None:
        collector.request(principal_of(conn).key_id, **counts)
