"""What the platform's events carry, and the one-line publish calls the transports, telephony and media use.

Event ids are derived from what the event is about (``session.ended`` of session X has one id wherever and
however often it is published): a delivery is stored once per (webhook, event), so an event that two places or
two replicas publish (a call's end seen by its media stream and by the provider's status callback) reaches
each webhook once. Phone numbers go into the events in full (the webhook owner's own data); they are never
logged here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import weakref
from typing import Any

from gateway.platform_events import PlatformEvent, PlatformEvents
from pipeline.session import Session
from storage.jobs import FINAL_STATUSES, JobStore
from storage.store import FINAL_CALL_STATUSES, Store

log = logging.getLogger("voxgate.webhooks")

# How long a published session end waits for a close another task is still running (a transport letting go
# of a session that its idle watchdog or the shutdown is closing): the event then has the final turns.
CLOSE_WAIT_S = 10.0
# Session ends being published, per event loop (tests run several apps, each on its own loop and thread).
_pending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[asyncio.Task[None]]] = (
    weakref.WeakKeyDictionary()
)


def event_id(event_type: str, subject_id: str) -> str:
    """The stable id of ``event_type`` about ``subject_id`` (see the module docstring)."""
    return "evt_" + hashlib.sha256(f"{event_type}:{subject_id}".encode()).hexdigest()[:24]


# -- sessions ---------------------------------------------------------------------------------------------------


def publish_session_end(events: PlatformEvents, session: Session) -> None:
    """``session.ended``, then ``transcript.ready`` (turns) and ``recording.ready`` (audio tracks), once the
    session's close has finished; called once per session, where its transport lets go of it."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(_after_close(events, session), name=f"{session.id}-events")
    pending = _pending.setdefault(loop, set())
    pending.add(task)
    task.add_done_callback(pending.discard)


async def flush_pending(timeout_s: float) -> None:
    """Wait (bounded) for session ends still being published on this loop: a shutdown does this before
    webhooks flush."""
    pending = _pending.get(asyncio.get_running_loop())
    if pending:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*list(pending), return_exceptions=True), timeout_s)


async def _after_close(events: PlatformEvents, session: Session) -> None:
    try:
        await asyncio.wait_for(session.wait_closed(), CLOSE_WAIT_S)
    except TimeoutError:
        log.warning(
            "session %s: its close did not finish in %.0f s; publishing its end", session.id, CLOSE_WAIT_S
        )
    for event in session_end_events(session):
        events.publish(event)


def session_end_events(session: Session) -> list[PlatformEvent]:
    """The events a finished session publishes (``transcript.ready`` only with turns, ``recording.ready`` only
    with recorded audio)."""
    common = {"session_id": session.id, "transport": session.config.transport, "flow_id": session.flow_id}
    closed_at = session.closed_at or session.created_at
    ended = PlatformEvent(
        "session.ended",
        {
            **common,
            "flow_version": session.flow_version,
            "created_at": session.created_at,
            "closed_at": closed_at,
            "duration_s": round(closed_at - session.created_at, 3),
            "close_reason": session.close_reason,
            "turn_count": len(session.turns),
            "outcome": session.outcome,
            "caller": session.caller,
            "dtmf": list(session.dtmf_digits),
        },
        key_id=session.owner_key,
        flow_id=session.flow_id,
        subject=session,
        id=event_id("session.ended", session.id),
    )
    found = [ended]
    if session.turns:
        turns = [
            {
                "turn_id": t.turn_id,
                "source": t.source,
                "started_at": t.started_at,
                "user_text": t.user_text,
                "heard_text": t.heard_text,
                "interrupted": t.interrupted,
            }
            for t in session.turns
        ]
        found.append(_about(session, "transcript.ready", session.id, {**common, "turns": turns}))
    if session.recording is not None:
        files = [
            recording_entry(session.id, f.kind, "wav", f.sample_rate, f.duration_s)
            for f in session.recording.files
        ]
        found.append(_about(session, "recording.ready", session.id, {**common, "recordings": files}))
    return found


def recording_entry(
    session_id: str, kind: str, fmt: str, sample_rate: int | None, duration_s: float, url: str | None = None
) -> dict[str, Any]:
    """One recording as an event shows it: its id (the stored row's), never its path on this server."""
    return {
        "id": f"{session_id}-{kind}",
        "kind": kind,
        "format": fmt,
        "sample_rate": sample_rate,
        "duration_s": round(duration_s, 3),
        "url": url,
    }


def _about(session: Session, event_type: str, subject_id: str, data: dict[str, Any]) -> PlatformEvent:
    return PlatformEvent(
        event_type,
        data,
        key_id=session.owner_key,
        flow_id=session.flow_id,
        subject=session,
        id=event_id(event_type, subject_id),
    )


# -- telephony --------------------------------------------------------------------------------------------------


def publish_call_recording(
    events: PlatformEvents, session: Session, call_sid: str, duration_s: float, kinds: list[tuple[str, str]]
) -> None:
    """``recording.ready`` for a phone call's own keepsakes (``kinds``: (kind, format)), written after its
    session closed; the stereo WAV can be fetched at ``/v1/calls/{sid}/recording``."""
    files = [
        recording_entry(
            session.id,
            kind,
            fmt,
            8000 if fmt == "wav" else None,
            duration_s,
            f"/v1/calls/{call_sid}/recording" if kind == "stereo" else None,
        )
        for kind, fmt in kinds
    ]
    data = {"session_id": session.id, "transport": session.config.transport, "flow_id": session.flow_id}
    data.update(call_id=call_sid, recordings=files)
    events.publish(_about(session, "recording.ready", f"{session.id}:call", data))


def publish_call_completed(
    events: PlatformEvents,
    *,
    provider: str,
    call: dict[str, Any],
    status: str,
    session: Session | None = None,
    duration_s: float | None = None,
    key_id: str | None = None,
    flow_id: str | None = None,
) -> None:
    """``call.completed`` for a call that ended (``call``: a stored call row, or the media stream's own record
    with ``sid``, ``from``, ``to``, ``direction``)."""
    sid = str(call.get("sid") or call.get("id"))
    started = session.created_at if session is not None else call.get("created_at")
    ended = session.closed_at if session is not None else call.get("ended_at")
    if duration_s is None and started is not None and ended is not None:
        duration_s = round(ended - started, 3)
    data = {
        "provider": provider,
        "call_id": sid,
        "session_id": session.id if session is not None else call.get("session_id"),
        "direction": call.get("direction"),
        "from": call.get("from", call.get("from_number")),
        "to": call.get("to", call.get("to_number")),
        "status": status,
        "started_at": started,
        "ended_at": ended,
        "duration_s": duration_s,
    }
    if session is not None:
        key_id, flow_id = key_id or session.owner_key, flow_id or session.flow_id
    events.publish(
        PlatformEvent(
            "call.completed",
            data,
            key_id=key_id,
            flow_id=flow_id,
            subject=session,
            id=event_id("call.completed", sid),
        )
    )


async def publish_call_status(
    events: PlatformEvents, store: Store, *, provider: str, sid: str, status: str, call_duration: str | None
) -> None:
    """``call.completed`` when a provider's status callback says the call ended (completed, busy, no-answer,
    failed, canceled): calls that never streamed audio end only here. A streamed call's end was published
    already, under the same event id, so each webhook still gets it once."""
    if status not in FINAL_CALL_STATUSES:
        return
    call = await store.get_call(sid)
    if call is None:
        return
    duration = float(call_duration) if call_duration and call_duration.isdigit() else None
    publish_call_completed(
        events,
        provider=provider,
        call=call,
        status=status,
        duration_s=duration,
        key_id=call.get("owner_key"),
        flow_id=(call.get("extra") or {}).get("flow"),
    )


# -- media jobs -------------------------------------------------------------------------------------------------


async def publish_job_end(events: PlatformEvents, jobs: JobStore, job_id: str) -> None:
    """``job.finished`` for a job that just ended (read back for its final record); never raises: a failed
    read is logged, the job's own bookkeeping goes on."""
    try:
        row = await jobs.get(job_id)
    except Exception:
        log.exception("media job %s: reading it for job.finished failed", job_id)
        return
    if row is not None and row["status"] in FINAL_STATUSES:
        publish_job_finished(events, row)


def publish_job_finished(events: PlatformEvents, row: dict[str, Any]) -> None:
    """``job.finished`` for a media job record that ended (succeeded, failed or cancelled)."""
    from gateway.media.jobs_api import job_view  # the media package imports this module: no cycle at import

    events.publish(
        PlatformEvent(
            "job.finished",
            job_view(row),
            key_id=row.get("owner_key"),
            subject=row,
            id=event_id("job.finished", row["id"]),
        )
    )
