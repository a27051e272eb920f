"""``POST /v1/realtime/client_secrets``: short-lived, single-session keys for browsers.

A page must not hold the server's API key. Its backend (which does) asks for an ephemeral secret, with the
session configuration it wants; the page opens ``/v1/realtime`` with that secret as its bearer key. The
secret opens one session, once, before it expires, and that session starts with the configuration the
backend chose.
"""

from __future__ import annotations

import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api_common import app_state, parse_body
from gateway.realtime.schema import SessionIn
from gateway.state import AppState

PREFIX = "ek_"
MAX_OUTSTANDING = 1024  # memory stays bounded whatever a key holder asks for: the oldest secret goes first


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


class ClientSecrets:
    """The outstanding secrets of one app."""

    def __init__(self) -> None:
        self._secrets: dict[str, Secret] = {}

    def issue(self, seconds: int, session: SessionIn | None) -> tuple[str, float]:
        now = time.time()
        for value, secret in list(self._secrets.items()):
            if secret.expires_at <= now:
                del self._secrets[value]
        while len(self._secrets) >= MAX_OUTSTANDING:
            del self._secrets[next(iter(self._secrets))]
        value = PREFIX + secrets.token_urlsafe(24)
        self._secrets[value] = Secret(now + seconds, session)
        return value, now + seconds

    def redeem(self, value: str) -> Secret | None:
        """The secret's configuration, once, if it is known and alive; it is spent either way."""
        secret = self._secrets.pop(value, None)
        return secret if secret is not None and secret.expires_at > time.time() else None


_BY_APP: weakref.WeakKeyDictionary[AppState, ClientSecrets] = weakref.WeakKeyDictionary()


def client_secrets(state: AppState) -> ClientSecrets:
    store = _BY_APP.get(state)
    if store is None:
        store = _BY_APP[state] = ClientSecrets()
    return store


def bearer(conn: HTTPConnection) -> str:
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def redeem_from(conn: HTTPConnection, state: AppState) -> Secret | None:
    """The ephemeral secret the connection presents (as its bearer key), redeemed; None when it has none."""
    value = bearer(conn)
    return client_secrets(state).redeem(value) if value.startswith(PREFIX) else None


async def create_client_secret(request: Request) -> Response:
    """The edge guard checked the API key; the secret inherits nothing else from the caller."""
    body = await parse_body(request, SecretRequest)
    if isinstance(body, JSONResponse):
        return body
    value, expires_at = client_secrets(app_state(request)).issue(body.expires_after.seconds, body.session)
    session: dict[str, Any] = {"type": "realtime", "object": "realtime.session"}
    if body.session is not None:
        session.update(body.session.model_dump(exclude_none=True))
    return JSONResponse(
        {"value": value, "expires_at": int(expires_at), "session": session},
        headers={"cache-control": "no-store"},
    )


routes: list[BaseRoute] = [Route("/v1/realtime/client_secrets", create_client_secret, methods=["POST"])]
