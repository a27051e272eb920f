"""``/v1/keys``: create (the secret is shown once), list (never the secret) and revoke API keys. Admin only.

``DELETE /v1/keys/{id}?end_sessions=true`` also ends the key's live sessions on this replica (close reason
``key_revoked``); other replicas refuse the key within a couple of seconds (gateway/keys/registry.py).
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api_common import app_state, parse_body, require_store
from gateway.auth import scoped
from gateway.keys.registry import KeyRegistry, key_view
from gateway.principal import SCOPES, KeyLimits
from gateway.speech.conversations import registry

ScopeName = str


class LimitsIn(BaseModel):
    """A key's limits; a missing one is unlimited."""

    requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    concurrent_sessions: int | None = Field(None, ge=0, le=100_000)
    audio_minutes_per_day: float | None = Field(None, ge=0, le=10_000_000, allow_inf_nan=False)
    jobs: int | None = Field(None, ge=0, le=100_000)

    model_config = {"extra": "forbid"}


class KeyRequest(BaseModel):
    """Body of ``POST /v1/keys``."""

    name: str = Field(min_length=1, max_length=255)
    scopes: list[ScopeName] = Field(min_length=1, max_length=len(SCOPES))
    limits: LimitsIn = LimitsIn()

    model_config = {"extra": "forbid"}


def _registry(request: Request) -> KeyRegistry:
    require_store(request)
    keys = app_state(request).auth.keys
    if keys is None:
        raise HTTPException(503, "API keys are not available on this server")
    return keys


async def create_key(request: Request) -> Response:
    body = await parse_body(request, KeyRequest)
    if isinstance(body, JSONResponse):
        return body
    unknown = [s for s in body.scopes if s not in SCOPES]
    if unknown:
        msg = f"unknown scope {unknown[0][:40]!r}: scopes are {', '.join(SCOPES)}"
        return JSONResponse({"detail": [{"loc": ["body", "scopes"], "msg": msg, "type": "enum"}]}, 422)
    limits = KeyLimits(**body.limits.model_dump())
    row, secret = await _registry(request).create(body.name, body.scopes, limits)
    return JSONResponse(
        {**key_view(row), "key": secret}, status_code=201, headers={"cache-control": "no-store"}
    )


async def list_keys(request: Request) -> Response:
    _registry(request)
    rows = await require_store(request).keys.list()
    return JSONResponse({"keys": [key_view(r) for r in rows]})


async def revoke_key(request: Request) -> Response:
    key_id = request.path_params["key_id"]
    end_sessions = request.query_params.get("end_sessions", "false").lower()
    if end_sessions not in ("true", "false", "1", "0"):
        raise HTTPException(422, "end_sessions must be true or false")
    if not await _registry(request).revoke(key_id[:64]):
        raise HTTPException(404, "no such key")
    ended = 0
    if end_sessions in ("true", "1"):
        for session in list(app_state(request).sessions.live.values()):
            if session.owner_key == key_id:
                await session.close("key_revoked")
                ended += 1
        # HTTP chat conversations are sessions too, kept by their own registry (gateway/speech/conversations.py).
        for conversation in list(registry(request).open.values()):
            if conversation.session.owner_key == key_id:
                await conversation.close("key_revoked")
                ended += 1
    return JSONResponse({"id": key_id, "revoked": True, "sessions_ended": ended})


routes: list[BaseRoute] = [
    scoped(Route("/v1/keys", list_keys), "admin"),
    scoped(Route("/v1/keys", create_key, methods=["POST"]), "admin"),
    scoped(Route("/v1/keys/{key_id}", revoke_key, methods=["DELETE"]), "admin"),
]
