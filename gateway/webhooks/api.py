"""``/v1/webhooks``: register, list and delete webhooks; ``/v1/webhooks/deliveries``: what was sent, and how.

Any valid key may use these routes for its own webhooks: a key's registrations receive only its own events and
it sees only its own registrations and deliveries; an admin (or anyone, with auth off) registers webhooks that
receive every key's events, and sees everything. The signing secret is shown once, in the answer to the POST.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api_common import app_state, parse_body, parse_query_int, require_store, unprocessable
from gateway.auth import ANY_KEY, scoped
from gateway.keys.ownership import owns
from gateway.platform_events import EVENT_TYPES
from gateway.principal import principal_of
from gateway.webhooks.service import dispatcher_of
from gateway.webhooks.targets import target_problem
from storage.webhooks import DELIVERY_STATUSES

MAX_WEBHOOKS_PER_OWNER = 50


class WebhookIn(BaseModel):
    """``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    events: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES))
    flow_id: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("events")
    @classmethod
    def known_events(cls, events: list[str]) -> list[str]:
        unknown = [e for e in events if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event {unknown[0][:64]!r}; known: {', '.join(EVENT_TYPES)}")
        return list(dict.fromkeys(events))


def webhook_view(row: dict[str, Any]) -> dict[str, Any]:
    """A registration as listed (never its secret)."""
    return {
        "id": row["id"],
        "url": row["url"],
        "events": list(row["events"] or []),
        "flow_id": row["flow_id"],
        "owner_key": row["owner_key"],
        "created_at": row["created_at"],
    }


def delivery_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "webhook_id": row["webhook_id"],
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "status": row["status"],
        "attempts": row["attempts"],
        "next_attempt_at": row["next_attempt_at"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "created_at": row["created_at"],
        "delivered_at": row["delivered_at"],
        "payload": row["payload"],
    }


async def create_webhook(request: Request) -> Response:
    body = await parse_body(request, WebhookIn)
    if isinstance(body, JSONResponse):
        return body
    settings = app_state(request).settings
    problem = await target_problem(body.url, settings.webhook_allow_private, settings.flow_http_allowlist)
    if problem is not None:
        return unprocessable([{"loc": ["url"], "msg": problem, "type": "url_refused"}])
    principal = principal_of(request)
    if body.flow_id is not None:  # another key's flow is "no such flow" too: its id is not for this key
        exists, flow_owner = await require_store(request).keys.owner_of("flows", body.flow_id)
        if not exists or not owns(principal, flow_owner):
            return unprocessable([{"loc": ["flow_id"], "msg": "no such flow", "type": "flow_not_found"}])
    owner = principal.owner
    dispatcher = dispatcher_of(request)
    hooks = dispatcher.store
    if len(await hooks.list(owner)) >= MAX_WEBHOOKS_PER_OWNER:
        raise HTTPException(400, f"at most {MAX_WEBHOOKS_PER_OWNER} webhooks per key; delete one first")
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = await hooks.create(
        "wh_" + secrets.token_hex(12),
        owner_key=owner,
        flow_id=body.flow_id,
        url=body.url,
        events=body.events,
        secret=secret,
        now=time.time(),
    )
    dispatcher.registrations_changed()
    return JSONResponse({**webhook_view(row), "secret": secret}, status_code=201)


async def list_webhooks(request: Request) -> Response:
    rows = await dispatcher_of(request).store.list(principal_of(request).owner)
    return JSONResponse({"webhooks": [webhook_view(r) for r in rows]})


async def delete_webhook(request: Request) -> Response:
    hook_id = request.path_params["id"]
    dispatcher = dispatcher_of(request)
    if not await dispatcher.store.delete(hook_id[:64], principal_of(request).owner):
        raise HTTPException(404, "no such webhook")
    dispatcher.registrations_changed()
    return Response(status_code=204)


async def list_deliveries(request: Request) -> Response:
    query = request.query_params
    status = query.get("status") or None
    if status is not None and status not in DELIVERY_STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(DELIVERY_STATUSES)}")
    limit = parse_query_int(query.get("limit"), "limit", default=50, lo=1, hi=500)
    rows = await dispatcher_of(request).store.deliveries(
        principal_of(request).owner,
        webhook_id=(query.get("webhook_id") or None),
        status=status,
        limit=limit,
    )
    return JSONResponse({"deliveries": [delivery_view(r) for r in rows]})


# Any valid key, for its own webhooks: the handlers filter by the caller's owner.
routes: list[BaseRoute] = [
    scoped(Route("/v1/webhooks/deliveries", list_deliveries, methods=["GET"]), ANY_KEY),
    scoped(Route("/v1/webhooks", create_webhook, methods=["POST"]), ANY_KEY),
    scoped(Route("/v1/webhooks", list_webhooks, methods=["GET"]), ANY_KEY),
    scoped(Route("/v1/webhooks/{id}", delete_webhook, methods=["DELETE"]), ANY_KEY),
]
