"""A finished phone call's keepsakes: a stereo WAV (caller left, agent right) and a JSON transcript."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from gateway.records import recording_row
from gateway.state import AppState
from gateway.webhooks.publish import publish_call_recording
from pipeline.recording import write_stereo_call
from pipeline.session import Session

log = logging.getLogger("voxgate.calls")

CALL_WAV = "call.wav"
TRANSCRIPT = "transcript.json"


async def save_call_recording(state: AppState, session: Session, call_sid: str) -> None:
    """Write ``call.wav`` and ``transcript.json`` beside the session's tracks and store where they are.

    Runs after the session closed (its tracks are complete, whether the call ended with ``stop`` or the socket
    dropped); the file work happens in a thread.
    """
    recording = session.recording
    if recording is None:
        return
    caller, agent = recording.files
    directory = recording.directory
    transcript = {"call_sid": call_sid, **session.snapshot()}
    try:
        duration = await asyncio.to_thread(_write, caller, agent, directory, transcript)
    except Exception:
        log.exception("call %s: writing the recording failed", call_sid)
        return
    if state.store is None:
        return
    for kind, name, rate, fmt in (
        ("stereo", CALL_WAV, 8000, "wav"),
        ("transcript", TRANSCRIPT, None, "json"),
    ):
        row = recording_row(session, kind, directory / name, fmt, rate, duration)
        state.store.writer.upsert("recordings", row)
    kinds = [("stereo", "wav"), ("transcript", "json")]
    publish_call_recording(state.events, session, call_sid, duration, kinds)


def _write(caller: Any, agent: Any, directory: Path, transcript: dict[str, Any]) -> float:
    duration = write_stereo_call(caller, agent, directory / CALL_WAV)
    (directory / TRANSCRIPT).write_text(json.dumps(transcript, indent=2))
    return duration
