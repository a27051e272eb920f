"""A key sees and changes only what it owns; admin (and everyone, with auth off) sees all (issue 15).

Resources carry the ``owner_key`` of the key that made them (``Principal.owner``: None for admin and with
auth off). Another key's resource is answered as if it did not exist (404), so that ids cannot be probed.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from gateway.principal import Principal, principal_of
from gateway.state import app_state


def owns(principal: Principal, owner_key: str | None) -> bool:
    """Whether ``principal`` may see a resource owned by ``owner_key``."""
    return principal.owner is None or owner_key == principal.owner


def owner_filter(conn: HTTPConnection) -> str | None:
    """The owner a list is narrowed to: None lists everything (admin, or auth off)."""
    return principal_of(conn).owner


async def require_owned(conn: HTTPConnection, kind: str, resource_id: str, missing: str) -> None:
    """404 with ``missing`` unless the caller may see the stored ``kind`` row ``resource_id`` (a session,
    call, flow or job); a row not stored (yet) passes: the route answers for it itself."""
    principal = principal_of(conn)
    if principal.owner is None:
        return
    store = app_state(conn).store
    if store is None:
        return
    exists, owner_key = await store.keys.owner_of(kind, resource_id)
    if exists and owner_key != principal.owner:
        raise HTTPException(404, missing)
