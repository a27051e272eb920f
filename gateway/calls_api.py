"""``/v1/calls``: place outbound calls through the outbound provider, list calls, read one with its transcript
and recording. Provider-neutral: the provider comes from `telephony.registry`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api_common import app_state, parse_body, parse_query_int, require_store, unprocessable
from gateway.auth import principal_of, scoped
from gateway.keys.ownership import owner_filter, owns
from gateway.protocol import clip, quote
from telephony.call_provider import OutboundCall, OutboundRefused
from telephony.registry import outbound_provider

PHONE = r"^(\+[1-9][0-9]{6,15}|sips?:.+|client:.+)$"


class CallRequest(BaseModel):
    """Body of ``POST /v1/calls``."""

    to: str = Field(pattern=PHONE, description="E.164 number or SIP URI to call")
    from_: str = Field(alias="from", pattern=PHONE, description="your provider number (caller id)")
    flow: str = Field(min_length=1, max_length=128, description="the stored flow that runs the call")
    machine_detection: bool = Field(False, description="run the provider's answering-machine detection")
    voicemail_message: str | None = Field(
        None, max_length=1000, description="said to an answering machine (else the call hangs up)"
    )
    time_limit_s: int | None = Field(None, ge=10, le=14400)

    model_config = {"extra": "forbid", "populate_by_name": True}


async def place_call(request: Request) -> Response:
    body = await parse_body(request, CallRequest)
    if isinstance(body, JSONResponse):
        return body
    state = app_state(request)
    provider = outbound_provider()
    unavailable = provider.outbound_unavailable(state)
    if unavailable is not None:
        raise HTTPException(400, unavailable)
    store = require_store(request)
    exists, flow_owner = await store.keys.owner_of("flows", body.flow)
    # A key calls with its own flows and admin's (shared), never another key's.
    owner = principal_of(request).owner
    if not exists or (owner is not None and flow_owner not in (None, owner)):
        return unprocessable(
            [{"loc": ["flow"], "msg": f"no stored flow {quote(body.flow)}", "type": "value_error"}]
        )
    call = OutboundCall(
        to=body.to,
        from_=body.from_,
        flow=body.flow,
        machine_detection=body.machine_detection,
        time_limit_s=body.time_limit_s,
    )
    try:
        sid = await provider.place_call(state, call)
    except OutboundRefused as exc:
        raise HTTPException(502, f"{provider.title} refused the call: {clip(str(exc), 200)}") from exc
    await store.merge_call(
        sid,
        {
            "direction": "outbound",
            "from_number": body.from_,
            "to_number": body.to,
            "status": "queued",
            "owner_key": principal_of(request).owner,  # the key that placed it sees it; admin all
        },
        provider=provider.name,
        extra={"flow": body.flow, "voicemail_message": body.voicemail_message},
        now=time.time(),
    )
    return JSONResponse({"sid": sid, "status": "queued"}, status_code=201)


async def list_calls(request: Request) -> Response:
    limit = parse_query_int(request.query_params.get("limit"), "limit", default=50, lo=1, hi=500)
    rows = await require_store(request).list_calls(limit, owner_filter(request))
    return JSONResponse({"calls": [_public(r) for r in rows]})


async def get_call(request: Request) -> Response:
    store = require_store(request)
    call = await store.get_call(request.path_params["sid"])
    if call is None or not owns(principal_of(request), call.get("owner_key")):
        raise HTTPException(404, "no such call")
    result = _public(call)
    session = await _session(request, call)
    result["turns"] = session.get("turns", []) if session else []
    result["recording"] = f"/v1/calls/{call['id']}/recording" if _stereo(session) else None
    return JSONResponse(result)


async def get_recording(request: Request) -> Response:
    store = require_store(request)
    call = await store.get_call(request.path_params["sid"])
    if call is None or not owns(principal_of(request), call.get("owner_key")):
        raise HTTPException(404, "no such call")
    path = _stereo(await _session(request, call))
    if path is None or not Path(path).is_file():
        raise HTTPException(404, "this call has no recording (yet)")
    return FileResponse(path, media_type="audio/wav", filename=f"{call['id']}.wav")


async def _session(request: Request, call: dict[str, Any]) -> dict[str, Any] | None:
    if not call.get("session_id"):
        return None
    return await require_store(request).get_session(call["session_id"])


def _stereo(session: dict[str, Any] | None) -> str | None:
    for recording in (session or {}).get("recordings", []):
        if recording["kind"] == "stereo":
            return str(recording["path"])
    return None


def _public(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "sid": call["id"],
        "session_id": call["session_id"],
        "direction": call["direction"],
        "from": call["from_number"],
        "to": call["to_number"],
        "status": call["status"],
        "created_at": call["created_at"],
        "ended_at": call["ended_at"],
        "statuses": (call.get("extra") or {}).get("statuses", []),
    }


routes: list[BaseRoute] = [
    scoped(Route("/v1/calls", list_calls), "calls"),
    scoped(Route("/v1/calls", place_call, methods=["POST"]), "calls"),
    scoped(Route("/v1/calls/{sid}", get_call), "calls"),
    scoped(Route("/v1/calls/{sid}/recording", get_recording), "calls"),
]
