"""Turns live sessions into storage rows, queued on the write queue (never awaited on the audio path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.session import Session, TurnRecord
from storage.writer import WriteQueue


class StoreRecorder:
    """A :class:`pipeline.session.SessionRecorder` that queues full row snapshots for batched writing."""

    def __init__(self, writer: WriteQueue, instance_id: str = "") -> None:
        self.writer = writer
        self.instance_id = instance_id

    def changed(self, session: Session, turn: TurnRecord | None = None) -> None:
        # The session row always goes too: its turn count and end state change with its turns.
        self.writer.upsert("sessions", session_row(session, self.instance_id))
        if turn is not None:
            self.writer.upsert("turns", turn_row(session, turn))
        elif session.recording is not None:  # the session started or closed: where its tracks are
            for file in session.recording.files:
                self.writer.upsert(
                    "recordings",
                    recording_row(session, file.kind, file.path, "wav", file.sample_rate, file.duration_s),
                )


def session_row(session: Session, instance_id: str = "") -> dict[str, Any]:
    return {
        "id": session.id,
        "transport": session.config.transport,
        "created_at": session.created_at,
        "closed_at": session.closed_at,
        "close_reason": session.close_reason,
        "caller": session.caller,
        "flow_id": session.flow_id,
        "flow_version": session.flow_version,
        "outcome": session.outcome,
        "dropped_input_ms": round(session.dropped_input_s * 1000),
        "turn_count": len(session.turns),
        "owner_key": session.owner_key,
        # Which gateway owns the live session: the one that closes it if the process dies under it.
        "extra": {"dtmf": list(session.dtmf_digits), "instance": instance_id},
    }


def turn_row(session: Session, turn: TurnRecord) -> dict[str, Any]:
    try:
        seq = next(i for i, t in enumerate(session.turns) if t is turn)
    except StopIteration:
        seq = len(session.turns)
    return {
        "id": turn.turn_id,
        "session_id": session.id,
        "seq": seq,
        "source": turn.source,
        "started_at": turn.started_at,
        "user_text": turn.user_text,
        "response_id": turn.response_id,
        "response_text": turn.response_text,
        "heard_text": turn.heard_text,
        "interrupted": turn.interrupted,
        "resumed": turn.resumed,
        "timings": dict(turn.timings),
    }


def recording_row(
    session: Session, kind: str, path: Path, fmt: str, sample_rate: int | None, duration_s: float
) -> dict[str, Any]:
    """The row that says where one of a session's recordings is (one per kind)."""
    return {
        "id": f"{session.id}-{kind}",
        "session_id": session.id,
        "path": str(path),
        "kind": kind,
        "format": fmt,
        "sample_rate": sample_rate,
        "duration_s": round(duration_s, 3),
        "created_at": session.created_at,
    }
