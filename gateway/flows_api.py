"""``/v1/flows``: create, read, update (new versions), delete, JSON Schema, and AI drafts.

Parsing and validating a flow document is CPU work that grows with the document, so it runs on the flow
check threads (``flows.validate.run_check``) under the time limit ``flow_check_timeout_s``: no request
holds the event loop while a flow is checked.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from flows import FlowValidationError, draft_flow, flow_json_schema, load_flow
from flows.schema import SLUG, Flow
from flows.validate import run_check
from gateway.agent.llm import background_complete
from gateway.api_common import (
    BadJson,
    app_state,
    parse_body,
    parse_query_int,
    require_store,
    strict_json_loads,
    unprocessable,
)
from gateway.auth import principal_of, scoped
from gateway.keys.ownership import owns, require_owned

MAX_VERSION = 2**31 - 1  # the store's version column is a 32-bit integer
DEFAULT_DRAFT_TOKENS = 900
_FLOW_ID = re.compile(SLUG)


class DraftRequest(BaseModel):
    """Body of ``POST /v1/flows/generate``. ``max_tokens`` is capped by the setting ``flow_draft_max_tokens``."""

    description: str = Field(min_length=3, max_length=2000)
    max_tokens: int | None = Field(None, ge=200, description="default 900, or the server's cap if lower")

    model_config = {"extra": "forbid"}


def _issue(code: str, message: str, field: str = "") -> dict[str, Any]:
    return {"node": None, "field": field, "code": code, "message": message}


def _parse_and_check(body: bytes, secrets: tuple[str, ...]) -> tuple[dict[str, Any], Flow]:
    """On a check thread: the body as strict JSON (no NaN, bounded nesting), then the flow validated."""
    document = strict_json_loads(body)
    return document, load_flow(document, known_secrets=secrets)


async def _checked(request: Request) -> tuple[dict[str, Any], Flow]:
    """The body's flow document and its model; raises BadJson or FlowValidationError."""
    body = await request.body()
    settings = app_state(request).settings
    secrets = tuple(settings.flow_secrets.keys())
    return await run_check(lambda: _parse_and_check(body, secrets), timeout_s=settings.flow_check_timeout_s)


def _bad_json(exc: BadJson) -> JSONResponse:
    return unprocessable([_issue("invalid_json", f"not valid JSON: {exc}")])


async def _validated(request: Request) -> tuple[dict[str, Any], Flow] | JSONResponse:
    try:
        return await _checked(request)
    except BadJson as exc:
        return _bad_json(exc)
    except FlowValidationError as exc:
        return unprocessable(exc.to_dicts())


async def validate_flow_document(request: Request) -> Response:
    """Dry run: the same checks as saving, nothing stored. 200 ``{"valid", "issues"}`` either way (a flow
    with problems is an answer here, not an error); a body that is not JSON, or a check that ran out of
    time (no verdict on the flow), is a 422."""
    try:
        await _checked(request)
    except BadJson as exc:
        return _bad_json(exc)
    except FlowValidationError as exc:
        if any(i.code == "check_timeout" for i in exc.issues):
            return unprocessable(exc.to_dicts())
        return JSONResponse({"valid": False, "issues": exc.to_dicts()})
    return JSONResponse({"valid": True, "issues": []})


def _flow_id(request: Request) -> str:
    """The path's flow id; 404 for one no flow can have (ids are slugs), before the store sees it."""
    flow_id: str = request.path_params["flow_id"]
    if not _FLOW_ID.fullmatch(flow_id):
        raise HTTPException(404, "no such flow")
    return flow_id


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and Infinity as null: flows stored before NaN was refused must still be readable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


async def flow_schema(request: Request) -> Response:
    return JSONResponse(flow_json_schema())


async def list_flows(request: Request) -> Response:
    flows = await require_store(request).list_flows()
    principal = principal_of(request)
    return JSONResponse({"flows": [_listed(f) for f in flows if owns(principal, f.get("owner_key"))]})


def _listed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "owner_key"}


async def create_flow(request: Request) -> Response:
    checked = await _validated(request)
    if isinstance(checked, JSONResponse):
        return checked
    document, flow = checked
    store = require_store(request)
    if await store.get_flow(flow.id) is not None:
        raise HTTPException(409, f"flow {flow.id!r} exists; PUT /v1/flows/{flow.id} stores a new version")
    version = await store.save_flow(flow.id, flow.name, document)
    await _claim(request, flow.id, version)
    return JSONResponse({"id": flow.id, "version": version}, status_code=201)


async def _claim(request: Request, flow_id: str, version: int) -> None:
    """A new flow is its creator's (admin's and auth-off flows have no owner: admin sees them)."""
    owner = principal_of(request).owner
    if version == 1 and owner is not None:
        await require_store(request).keys.set_owner("flows", flow_id, owner)


async def get_flow(request: Request) -> Response:
    raw_version = request.query_params.get("version")
    version = (
        None if not raw_version else parse_query_int(raw_version, "version", default=1, lo=1, hi=MAX_VERSION)
    )
    flow_id = _flow_id(request)
    await require_owned(request, "flows", flow_id, "no such flow")
    document = await require_store(request).get_flow(flow_id, version)
    if document is None:
        raise HTTPException(404, "no such flow" if version is None else "no such flow version")
    try:
        return JSONResponse(document)
    except ValueError:  # NaN or Infinity, stored before documents were parsed strictly
        return JSONResponse(_json_safe(document))


async def flow_versions(request: Request) -> Response:
    flow_id = _flow_id(request)
    await require_owned(request, "flows", flow_id, "no such flow")
    versions = await require_store(request).flow_versions(flow_id)
    if not versions:
        raise HTTPException(404, "no such flow")
    return JSONResponse({"id": flow_id, "versions": versions})


async def update_flow(request: Request) -> Response:
    flow_id = request.path_params["flow_id"]
    await require_owned(request, "flows", flow_id[:128], "no such flow")
    checked = await _validated(request)
    if isinstance(checked, JSONResponse):
        return checked
    document, flow = checked
    if flow.id != flow_id:
        return unprocessable([_issue("id_mismatch", f"body id {flow.id!r} is not {flow_id[:100]!r}", "id")])
    version = await require_store(request).save_flow(flow.id, flow.name, document)
    await _claim(request, flow.id, version)
    return JSONResponse({"id": flow.id, "version": version})


async def delete_flow(request: Request) -> Response:
    flow_id = _flow_id(request)
    await require_owned(request, "flows", flow_id, "no such flow")
    if not await require_store(request).delete_flow(flow_id):
        raise HTTPException(404, "no such flow")
    return Response(status_code=204)


async def generate_flow(request: Request) -> Response:
    """Draft a flow from a description with the service's LLM, under a grammar from the flow schema.

    The draft is repaired and fully validated, and returned, not saved: the user reviews it and saves it.
    """
    body = await parse_body(request, DraftRequest)
    if isinstance(body, JSONResponse):
        return body
    state = app_state(request)
    limit = state.settings.flow_draft_max_tokens
    if body.max_tokens is not None and body.max_tokens > limit:
        # One long draft holds the shared LLM for everyone else (issue 9, finding 12).
        message = f"max_tokens may be at most {limit} on this server (setting flow_draft_max_tokens)"
        return unprocessable([{"loc": ["body", "max_tokens"], "msg": message, "type": "less_than_equal"}])
    if state.runtime is None:
        raise HTTPException(503, "models are still loading")
    result = await draft_flow(
        body.description,
        background_complete(state.runtime, state.settings.llm_schema_format),
        max_tokens=body.max_tokens or min(DEFAULT_DRAFT_TOKENS, limit),
    )
    return JSONResponse(
        {
            "flow": result.flow,
            "valid": result.valid,
            "repairs": result.repairs,
            "issues": [i.to_dict() for i in result.issues],
        }
    )


routes: list[BaseRoute] = [
    scoped(Route("/v1/flows", list_flows), "flows"),
    scoped(Route("/v1/flows", create_flow, methods=["POST"]), "flows"),
    scoped(Route("/v1/flows/schema", flow_schema), "flows"),
    scoped(Route("/v1/flows/validate", validate_flow_document, methods=["POST"]), "flows"),
    scoped(Route("/v1/flows/generate", generate_flow, methods=["POST"]), "flows"),
    scoped(Route("/v1/flows/{flow_id}", get_flow), "flows"),
    scoped(Route("/v1/flows/{flow_id}", update_flow, methods=["PUT"]), "flows"),
    scoped(Route("/v1/flows/{flow_id}", delete_flow, methods=["DELETE"]), "flows"),
    scoped(Route("/v1/flows/{flow_id}/versions", flow_versions), "flows"),
]
