"""What the HTTP route modules share: the app state, the store, strict JSON and query parsing, 422 bodies."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

# Re-exported: the routes parse bodies with these.
from gateway.state import app_state as app_state
from pipeline.strict_json import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from pipeline.strict_json import BadJson as BadJson
from pipeline.strict_json import strict_json_loads as strict_json_loads
from storage.store import Store

M = TypeVar("M", bound=BaseModel)

# A query parameter that is an integer: ASCII digits only ("²".isdigit() is True, int("²") raises).
_MAX_QUERY_INT_DIGITS = 18  # fits a signed 64-bit column (SQLite and PostgreSQL bigint)


def require_store(request: Request) -> Store:
    store = app_state(request).store
    if store is None:
        raise HTTPException(503, "storage is not open yet")
    return store


def unprocessable(detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=422)


def validation_detail(exc: ValidationError) -> JSONResponse:
    """A pydantic error as HTTP 422 ``{"detail": [{"loc", "msg", "type"}, ...]}``."""
    return unprocessable(
        [{"loc": list(e["loc"]), "msg": e["msg"][:300], "type": e["type"]} for e in exc.errors()]
    )


async def read_json(request: Request) -> Any:
    """The request body as strict JSON; raises ``BadJson`` (callers answer 422)."""
    return strict_json_loads(await request.body())


async def parse_body(request: Request, model: type[M]) -> M | JSONResponse:
    """The request's JSON body as ``model``, or the 422 answer that says what is wrong with it."""
    try:
        data = await read_json(request)
    except BadJson as exc:
        return unprocessable([{"loc": ["body"], "msg": f"not valid JSON: {exc}", "type": "json_invalid"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return validation_detail(exc)


def parse_query_int(raw: str | None, name: str, *, default: int, lo: int, hi: int) -> int:
    """A strict integer query parameter in ``[lo, hi]``; raises HTTPException(422) with what is wrong."""
    if raw is None or raw == "":
        return default
    digits = raw[1:] if raw[:1] == "-" else raw
    if not (digits.isascii() and digits.isdigit()) or len(digits) > _MAX_QUERY_INT_DIGITS:
        raise HTTPException(422, f"{name} must be an integer from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise HTTPException(422, f"{name} must be an integer from {lo} to {hi}")
    return value
