"""Webhook registrations and their deliveries (issue 15), written directly, like media jobs (storage/jobs.py).

A delivery's moves are decisions that several dispatchers race for (two replicas, or a restart finding work a
killed process left): each move is one conditional ``UPDATE``, and whoever's ``WHERE`` still matches owns the
delivery. A delivery is claimed (``pending`` -> ``sending``, with a lease in ``next_attempt_at``) before it is
sent, and a delivered one is never claimed again; a ``sending`` one whose lease ran out lost its sender (a
killed process) and may be claimed again. One row per (webhook, event), by a unique index: an event published
twice (two replicas, a retried publisher) is stored, and so sent, once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import dialect_insert
from storage.tables import webhook_deliveries, webhooks

PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
DELIVERY_STATUSES = (PENDING, SENDING, DELIVERED, FAILED)


class WebhookStore:
    """Registrations (per key, per flow) and the delivery queue; every method is one short transaction.

    ``owner`` arguments filter by the owning key: ``None`` is an admin (or auth off) and sees every row.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- registrations ----------------------------------------------------------------------------------------

    async def create(
        self,
        hook_id: str,
        *,
        owner_key: str | None,
        flow_id: str | None,
        url: str,
        events: list[str],
        secret: str,
        now: float,
    ) -> dict[str, Any]:
        row = {
            "id": hook_id,
            "owner_key": owner_key,
            "flow_id": flow_id,
            "url": url,
            "events": events,
            "secret": secret,
            "created_at": now,
            "disabled_at": None,
        }
        async with self.engine.begin() as conn:
            await conn.execute(webhooks.insert().values(**row))
        return row

    async def list(self, owner: str | None) -> list[dict[str, Any]]:
        """Newest first; an owner sees only its own registrations."""
        stmt = select(webhooks).where(webhooks.c.disabled_at.is_(None))
        if owner is not None:
            stmt = stmt.where(webhooks.c.owner_key == owner)
        stmt = stmt.order_by(webhooks.c.created_at.desc(), webhooks.c.id.desc())
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt)]

    async def delete(self, hook_id: str, owner: str | None) -> bool:
        """Remove a registration with its deliveries; False when unknown or another key's."""
        conditions = [webhooks.c.id == hook_id]
        if owner is not None:
            conditions.append(webhooks.c.owner_key == owner)
        async with self.engine.begin() as conn:
            found = (await conn.execute(select(webhooks.c.id).where(*conditions))).first()
            if found is None:
                return False
            # Deliveries first: SQLite without the foreign-key pragma (another engine) would not cascade.
            await conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == hook_id))
            await conn.execute(delete(webhooks).where(webhooks.c.id == hook_id))
        return True

    async def active(self) -> list[dict[str, Any]]:
        """Every registration that receives events (the dispatcher matches events against these)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(webhooks).where(webhooks.c.disabled_at.is_(None)))
            return [dict(r._mapping) for r in rows]

    # -- deliveries ---------------------------------------------------------------------------------------------

    async def enqueue(self, rows: list[dict[str, Any]]) -> int:
        """Store new deliveries (``pending``); a (webhook, event) already stored is left as it is. Returns how
        many were new."""
        if not rows:
            return 0
        insert = dialect_insert(self.engine)
        added = 0
        async with self.engine.begin() as conn:
            for row in rows:
                stmt = (
                    insert(webhook_deliveries)
                    .values(**row)
                    .on_conflict_do_nothing(index_elements=["webhook_id", "event_id"])
                )
                added += (await conn.execute(stmt)).rowcount or 0
        return added

    async def due(self, now: float, limit: int) -> list[str]:
        """Deliveries whose turn has come: pending ones due now, and sending ones whose sender's lease ran out."""
        stmt = (
            select(webhook_deliveries.c.id)
            .where(
                webhook_deliveries.c.status.in_((PENDING, SENDING)),
                webhook_deliveries.c.next_attempt_at <= now,
            )
            .order_by(webhook_deliveries.c.next_attempt_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [r.id for r in await conn.execute(stmt)]

    async def claim(self, delivery_id: str, now: float, lease_s: float) -> dict[str, Any] | None:
        """Take one due delivery for sending: the delivery with its webhook's url and secret, or None when
        another sender got it first (or it was delivered, failed or deleted meanwhile)."""
        stmt = (
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.status.in_((PENDING, SENDING)),
                webhook_deliveries.c.next_attempt_at <= now,
            )
            .values(
                status=SENDING,
                attempts=webhook_deliveries.c.attempts + 1,
                next_attempt_at=now + lease_s,
            )
        )
        joined = select(webhook_deliveries, webhooks.c.url, webhooks.c.secret, webhooks.c.disabled_at).join(
            webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id
        )
        async with self.engine.begin() as conn:
            if (await conn.execute(stmt)).rowcount != 1:
                return None
            row = (await conn.execute(joined.where(webhook_deliveries.c.id == delivery_id))).first()
        return dict(row._mapping) if row is not None else None

    async def settle(
        self,
        delivery_id: str,
        attempt: int,
        status: str,
        now: float,
        *,
        status_code: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> bool:
        """Record how attempt ``attempt`` went: ``delivered``, ``failed`` (final) or ``pending`` again (a retry
        at ``next_attempt_at``). Only the sender holding the claim (same attempt, still ``sending``) may."""
        assert status in (PENDING, DELIVERED, FAILED)
        values: dict[str, Any] = {
            "status": status,
            "last_status_code": status_code,
            "last_error": error,
            "next_attempt_at": next_attempt_at if status == PENDING else None,
        }
        if status == DELIVERED:
            values["delivered_at"] = now
        stmt = (
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.status == SENDING,
                webhook_deliveries.c.attempts == attempt,
            )
            .values(**values)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def deliveries(
        self,
        owner: str | None,
        *,
        webhook_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Newest first; an owner sees only the deliveries of its own registrations."""
        stmt = select(webhook_deliveries).join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
        if owner is not None:
            stmt = stmt.where(webhooks.c.owner_key == owner)
        if webhook_id is not None:
            stmt = stmt.where(webhook_deliveries.c.webhook_id == webhook_id)
        if status is not None:
            stmt = stmt.where(webhook_deliveries.c.status == status)
        stmt = stmt.order_by(webhook_deliveries.c.created_at.desc(), webhook_deliveries.c.id.desc())
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt.limit(limit))]

    async def delete_settled_before(self, cutoff: float) -> int:
        """Retention: delete the delivered and failed deliveries created before ``cutoff`` (epoch s): their
        payloads hold transcripts, which must not outlive the sessions they came from."""
        stmt = delete(webhook_deliveries).where(
            webhook_deliveries.c.status.in_((DELIVERED, FAILED)), webhook_deliveries.c.created_at < cutoff
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount or 0
