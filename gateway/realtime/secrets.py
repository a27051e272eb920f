"""``POST /v1/realtime/client_secrets``: short-lived, single-session keys for browsers.

A page must not hold the server's API key. Its backend (which does) asks for an ephemeral secret, with the
session configuration it wants; the page opens ``/v1/realtime`` with that secret as its bearer key. The
secret opens one session, once, before it expires, and that session starts with the configuration the
backend chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api_common import app_state, parse_body
from gateway.auth import CLIENT_SECRET_PREFIX, SessionTokens, grant_of, principal_of, scoped
from gateway.realtime.schema import SessionIn
from gateway.state import AppState

PREFIX = CLIENT_SECRET_PREFIX


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"] = "created_at"
    seconds: Annotated[int, Field(ge=10, le=7200)] = 600


class SecretRequest(BaseModel):
    """Body of ``POST /v1/realtime/client_secrets``."""

    model_config = ConfigDict(extra="forbid")
    expires_after: ExpiresAfter = ExpiresAfter()
    session: SessionIn | None = None


@dataclass(frozen=True)
class Secret:
    expires_at: float  # epoch seconds
    session: SessionIn | None


def client_secrets(state: AppState) -> SessionTokens:
    """The app's outstanding client secrets: one-use tokens (gateway/auth.py) that carry the session the
    backend chose and the principal that asked; the edge redeems one when a connection presents it."""
    return state.auth.client_secrets


def redeem_from(conn: HTTPConnection, state: AppState) -> Secret | None:
    """The client secret the connection presented (as its bearer key or subprotocol), which the edge redeemed
    (gateway/http_guard.py); None when it presented none."""
    grant = grant_of(conn)
    if grant is None or not isinstance(grant.payload, _Payload):
        return None
    return Secret(grant.expires_at, grant.payload.session)


@dataclass(frozen=True)
class _Payload:
    session: SessionIn | None


async def create_client_secret(request: Request) -> Response:
    """The edge checked the API key; the secret opens one session as the caller (its principal)."""
    body = await parse_body(request, SecretRequest)
    if isinstance(body, JSONResponse):
        return body
    value, expires_at = client_secrets(app_state(request)).issue(
        principal_of(request), payload=_Payload(body.session), ttl_s=body.expires_after.seconds
    )
    session: dict[str, Any] = {"type": "realtime", "object": "realtime.session"}
    if body.session is not None:
        session.update(body.session.model_dump(exclude_none=True))
    return JSONResponse(
        {"value": value, "expires_at": int(expires_at), "session": session},
        headers={"cache-control": "no-store"},
    )


routes: list[BaseRoute] = [
    scoped(Route("/v1/realtime/client_secrets", create_client_secret, methods=["POST"]), "realtime")
]
