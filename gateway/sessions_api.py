"""``GET /v1/sessions``, ``GET /v1/sessions/{id}`` and ``DELETE /v1/sessions/{id}``: storage plus live state."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api_common import app_state, require_store, unprocessable, validation_detail
from gateway.auth import issue_session_token, scoped
from gateway.keys.ownership import owner_filter, owns, require_owned
from gateway.principal import principal_of
from gateway.sessions import EndedSession
from pipeline.session import Session
from storage.store import BadCursor, SessionQuery


class SessionListParams(BaseModel):
    """Query parameters of ``GET /v1/sessions``; times are epoch seconds."""

    # Finite only: "nan" or "inf" would reach the database as a comparison that matches nothing or all.
    since: float | None = Field(None, allow_inf_nan=False)
    until: float | None = Field(None, allow_inf_nan=False)
    flow: str | None = Field(None, max_length=128)
    transport: str | None = Field(None, max_length=32)
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(None, max_length=512)

    model_config = {"extra": "forbid"}


async def list_sessions(request: Request) -> Response:
    try:
        params = SessionListParams.model_validate(dict(request.query_params))
    except ValidationError as exc:
        return validation_detail(exc)
    query = SessionQuery(
        params.since,
        params.until,
        params.flow,
        params.transport,
        params.limit,
        params.cursor,
        owner_key=owner_filter(request),  # a key lists its own sessions; admin all
    )
    try:
        rows, next_cursor = await require_store(request).list_sessions(query)
    except BadCursor as exc:
        return unprocessable([{"loc": ["cursor"], "msg": str(exc), "type": "value_error"}])
    # Live sessions are stored as they go; overlay what they know now (turns still being spoken).
    live = app_state(request).sessions.live
    rows = [_live_summary(live[r["session_id"]]) if r["session_id"] in live else r for r in rows]
    return JSONResponse({"sessions": rows, "next_cursor": next_cursor})


async def get_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    session = await _owned_in_memory(request, session_id)
    stored = await require_store(request).get_session(session_id)
    if session is not None:
        # Memory knows the turns best (storage lags by a write interval); storage knows the recordings.
        snapshot = session.snapshot() if isinstance(session, Session) else session.snapshot
        return JSONResponse({**snapshot, "recordings": (stored or {}).get("recordings", [])})
    if stored is None:
        raise HTTPException(404, "no such session")
    return JSONResponse(stored)


async def delete_session(request: Request) -> Response:
    """Delete a session with its turns and recordings; a live one is ended first (reason ``deleted``)."""
    state = app_state(request)
    session_id = request.path_params["session_id"]
    in_memory = await _owned_in_memory(request, session_id)
    recording_dir = None
    if isinstance(in_memory, Session):
        await in_memory.close("deleted")
        recording_dir = in_memory.recording.directory if in_memory.recording is not None else None
    elif in_memory is not None:
        recording_dir = in_memory.recording_dir
    was_known = state.sessions.forget(session_id)
    deleted = await require_store(request).delete_session(session_id)
    if recording_dir is not None:
        # Its recording rows may still be queued (the queue drops them now): remove the files themselves.
        await asyncio.to_thread(shutil.rmtree, recording_dir, True)
    if not (deleted or was_known):
        raise HTTPException(404, "no such session")
    return Response(status_code=204)


async def _owned_in_memory(request: Request, session_id: str) -> Session | EndedSession | None:
    """The session as memory knows it; 404 when it is another key's (live, or stored)."""
    session = app_state(request).sessions.get(session_id)
    if session is not None and not owns(principal_of(request), session.owner_key):
        raise HTTPException(404, "no such session")
    await require_owned(request, "sessions", session_id, "no such session")
    return session


def _live_summary(session: Any) -> dict[str, Any]:
    snapshot = session.snapshot()
    snapshot.pop("turns", None)
    return snapshot


routes: list[BaseRoute] = [
    scoped(Route("/v1/sessions", list_sessions), "realtime"),
    scoped(Route("/v1/sessions/token", issue_session_token, methods=["POST"]), "realtime"),
    scoped(Route("/v1/sessions/{session_id}", get_session), "realtime"),
    scoped(Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]), "realtime"),
]
