"""API key rows (issue 15) and who owns a stored resource.

A key's secret is never stored: only its SHA-256 hex (``secret_hash``) and its first characters (``prefix``,
to tell keys apart in a list). Key rows are written directly, not through the batched write queue: a
revocation must be on disk before the answer says it is done, so that other replicas see it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.tables import api_keys, calls, flows, jobs, sessions

# The tables whose rows carry an ``owner_key`` the API filters on, by the name routes use.
OWNED: dict[str, Table] = {"sessions": sessions, "calls": calls, "flows": flows, "jobs": jobs}


class KeyStore:
    """Creates, reads and revokes ``api_keys`` rows; reads the owner of sessions, calls, flows and jobs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**row))

    async def by_hash(self, secret_hash: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.secret_hash == secret_hash))).first()
        return dict(row._mapping) if row is not None else None

    async def get(self, key_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return dict(row._mapping) if row is not None else None

    async def list(self, include_revoked: bool = True) -> list[dict[str, Any]]:
        stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            stmt = stmt.where(api_keys.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt)]

    async def revoke(self, key_id: str, now: float) -> bool:
        """Mark the key revoked (the first revocation's time is kept); False when there is no such key."""
        async with self.engine.begin() as conn:
            found = (await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))).first()
            if found is None:
                return False
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return True

    async def touch(self, key_id: str, now: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now))

    async def owner_of(self, kind: str, resource_id: str) -> tuple[bool, str | None]:
        """(whether the row exists, its ``owner_key``) for a session, call, flow or job."""
        table = OWNED[kind]
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(table.c.owner_key).where(table.c.id == resource_id))).first()
        return (False, None) if row is None else (True, row.owner_key)

    async def set_owner(self, kind: str, resource_id: str, owner_key: str | None) -> None:
        table = OWNED[kind]
        async with self.engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == resource_id).values(owner_key=owner_key))
