"""What the HTTP route modules share: the app state, the store, and the 422 body for pydantic errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

M = TypeVar("M", bound=BaseModel)


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
    return unprocessable([{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()])


async def parse_body(request: Request, model: type[M]) -> M | JSONResponse:
    """The request's JSON body as ``model``, or the 422 answer that says what is wrong with it."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        return validation_detail(exc)
