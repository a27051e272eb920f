"""What the HTTP route modules share: the app state, the store, strict JSON and query parsing, 422 bodies."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

M = TypeVar("M", bound=BaseModel)

# Deeper documents are refused before anything walks them: every structure voxgate accepts (flows included)
# is a few levels deep, and Python's own recursion limit (~1000) must never be what stops a request.
MAX_JSON_DEPTH = 64
# A query parameter that is an integer: ASCII digits only ("²".isdigit() is True, int("²") raises).
_MAX_QUERY_INT_DIGITS = 18  # fits a signed 64-bit column (SQLite and PostgreSQL bigint)


class BadJson(ValueError):
    """A body or message that is not strict JSON: syntax, non-finite numbers, or nesting too deep."""


def _no_constant(name: str) -> float:
    raise BadJson(f"{name} is not a JSON number")


def json_depth_exceeds(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when brackets outside strings nest deeper than ``limit``: a linear scan, safe on any input."""
    data = text.encode() if isinstance(text, str) else text
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def strict_json_loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN/Infinity, numbers that overflow to infinity, and deep nesting."""
    if json_depth_exceeds(text):
        raise BadJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except BadJson:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadJson(getattr(exc, "msg", None) or str(exc)[:200]) from None


def _finite_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise BadJson(f"number out of range: {raw[:40]}")
    return value


def app_state(request: Request) -> Any:
    return request.app.state.voxgate


def require_store(request: Request) -> Any:
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
