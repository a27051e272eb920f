"""``/v1/flows``: create, read, update (new versions), delete, JSON Schema, and AI drafts."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flows import FlowValidationError, draft_flow, flow_json_schema, load_flow
from flows.schema import Flow
from gateway.api_common import app_state, parse_body, require_store, unprocessable
from gateway.flow_llm import background_complete


class DraftRequest(BaseModel):
    """Body of ``POST /v1/flows/generate``."""

    description: str = Field(min_length=3, max_length=2000)
    max_tokens: int = Field(900, ge=200, le=4000)

    model_config = {"extra": "forbid"}


def check_flow(state: Any, document: Any) -> Flow:
    """Validate a flow document against this server's secrets; raises FlowValidationError."""
    return load_flow(document, known_secrets=state.settings.flow_secrets.keys())


async def _json_body(request: Request) -> Any:
    """The parsed body, or the 422 answer for a body that is not JSON."""
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        message = f"not valid JSON: {exc}"
        return unprocessable([{"node": None, "field": "", "code": "invalid_json", "message": message}])


async def _validated(request: Request) -> tuple[dict[str, Any], Flow] | JSONResponse:
    document = await _json_body(request)
    if isinstance(document, JSONResponse):
        return document
    try:
        flow = check_flow(app_state(request), document)
    except FlowValidationError as exc:
        return unprocessable(exc.to_dicts())
    return document, flow


async def validate_flow_document(request: Request) -> Response:
    """Dry run: the same checks as saving, nothing stored. 200 ``{"valid", "issues"}`` either way (a flow
    with problems is an answer here, not an error); only a body that is not JSON is a 422."""
    document = await _json_body(request)
    if isinstance(document, JSONResponse):
        return document
    try:
        check_flow(app_state(request), document)
    except FlowValidationError as exc:
        return JSONResponse({"valid": False, "issues": exc.to_dicts()})
    return JSONResponse({"valid": True, "issues": []})


async def flow_schema(request: Request) -> Response:
    return JSONResponse(flow_json_schema())


async def list_flows(request: Request) -> Response:
    return JSONResponse({"flows": await require_store(request).list_flows()})


async def create_flow(request: Request) -> Response:
    checked = await _validated(request)
    if isinstance(checked, JSONResponse):
        return checked
    document, flow = checked
    store = require_store(request)
    if await store.get_flow(flow.id) is not None:
        raise HTTPException(409, f"flow {flow.id!r} exists; PUT /v1/flows/{flow.id} stores a new version")
    version = await store.save_flow(flow.id, flow.name, document)
    return JSONResponse({"id": flow.id, "version": version}, status_code=201)


async def get_flow(request: Request) -> Response:
    flow_id = request.path_params["flow_id"]
    version = request.query_params.get("version")
    if version is not None and not version.isdigit():
        return unprocessable(
            [{"loc": ["version"], "msg": "version must be a positive integer", "type": "int_parsing"}]
        )
    document = await require_store(request).get_flow(flow_id, int(version) if version else None)
    if document is None:
        raise HTTPException(404, "no such flow" if version is None else "no such flow version")
    return JSONResponse(document)


async def flow_versions(request: Request) -> Response:
    flow_id = request.path_params["flow_id"]
    versions = await require_store(request).flow_versions(flow_id)
    if not versions:
        raise HTTPException(404, "no such flow")
    return JSONResponse({"id": flow_id, "versions": versions})


async def update_flow(request: Request) -> Response:
    flow_id = request.path_params["flow_id"]
    checked = await _validated(request)
    if isinstance(checked, JSONResponse):
        return checked
    document, flow = checked
    if flow.id != flow_id:
        return unprocessable(
            [
                {
                    "node": None,
                    "field": "id",
                    "code": "id_mismatch",
                    "message": f"body id {flow.id!r} is not {flow_id!r}",
                }
            ]
        )
    version = await require_store(request).save_flow(flow.id, flow.name, document)
    return JSONResponse({"id": flow.id, "version": version})


async def delete_flow(request: Request) -> Response:
    if not await require_store(request).delete_flow(request.path_params["flow_id"]):
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
    if state.runtime is None:
        raise HTTPException(503, "models are still loading")
    result = await draft_flow(
        body.description,
        background_complete(state.runtime, state.settings.llm_schema_format),
        max_tokens=body.max_tokens,
    )
    return JSONResponse(
        {
            "flow": result.flow,
            "valid": result.valid,
            "repairs": result.repairs,
            "issues": [i.to_dict() for i in result.issues],
        }
    )
