"""The schema. Alembic migrations in ``storage/migrations`` create exactly these tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Times are epoch seconds (float): the same in SQLite and PostgreSQL, and what the API returns.
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("transport", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("closed_at", Float),
    Column("close_reason", String(64)),
    Column("caller", String(255)),  # who: remote address, phone number or SIP URI
    Column("flow_id", String(128)),
    Column("flow_version", Integer),
    Column("outcome", String(64)),  # how the conversation ended for the business (flow end reason, ...)
    Column("dropped_input_ms", Integer, nullable=False, default=0),
    Column("turn_count", Integer, nullable=False, default=0),
    Column("extra", JSON, nullable=False, default=dict),
    Column("owner_key", String(64)),  # 0003: the API key that opened it (None: auth off, or admin)
)
Index("ix_sessions_created_at", sessions.c.created_at)
Index("ix_sessions_owner_key", sessions.c.owner_key)
Index("ix_sessions_flow_id", sessions.c.flow_id)
Index("ix_sessions_transport", sessions.c.transport)

turns = Table(
    "turns",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("source", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("user_text", Text, nullable=False, default=""),
    Column("response_id", String(64)),
    Column("response_text", Text, nullable=False, default=""),
    Column("heard_text", Text, nullable=False, default=""),
    Column("interrupted", Boolean, nullable=False, default=False),
    Column("resumed", Boolean, nullable=False, default=False),
    Column("timings", JSON, nullable=False, default=dict),
)
Index("ix_turns_session_seq", turns.c.session_id, turns.c.seq)

calls = Table(
    "calls",
    metadata,
    Column("id", String(64), primary_key=True),  # the provider's call id (Twilio CallSid)
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE")),
    Column("provider", String(32), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("from_number", String(64)),
    Column("to_number", String(64)),
    Column("status", String(32)),
    Column("created_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("extra", JSON, nullable=False, default=dict),
    Column("owner_key", String(64)),  # 0003
)
Index("ix_calls_session_id", calls.c.session_id)

recordings = Table(
    "recordings",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("kind", String(32), nullable=False),  # caller, agent, mixed, provider
    Column("format", String(16), nullable=False),
    Column("sample_rate", Integer),
    Column("duration_s", Float),
    Column("created_at", Float, nullable=False),
)
Index("ix_recordings_session_id", recordings.c.session_id)

flows = Table(
    "flows",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False),  # the current version
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("owner_key", String(64)),  # 0003
)

flow_versions = Table(
    "flow_versions",
    metadata,
    Column("flow_id", String(128), ForeignKey("flows.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("document", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),  # image, video
    Column("status", String(16), nullable=False),  # queued, running, succeeded, failed, cancelled
    Column("request", JSON, nullable=False, default=dict),  # the parameters, without uploaded bytes
    Column("result", JSON),  # file names, seed, size, frames (gateway/media/runner.py)
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    # 0002: media jobs (storage/jobs.py)
    Column("task", String(32), nullable=False, default=""),  # text-to-image, inpaint, text-to-video, ...
    Column("progress", Float, nullable=False, default=0.0),  # 0..1
    Column("cancel_requested", Boolean, nullable=False, default=False),  # a worker polls it between steps
    Column("started_at", Float),
    Column("updated_at", Float),
    Column("owner_key", String(64)),  # 0003
)
Index("ix_jobs_created_at", jobs.c.created_at)
Index("ix_jobs_status", jobs.c.status)

# 0003: the platform (issue 15). Keys are stored as a hash only; the secret is shown once, at creation.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("prefix", String(32), nullable=False),  # the key's first characters, to tell keys apart in lists
    Column("secret_hash", String(128), nullable=False, unique=True),  # SHA-256 hex of the whole key
    Column("scopes", JSON, nullable=False, default=list),  # realtime, batch, media, flows, calls, admin
    Column("limits", JSON, nullable=False, default=dict),  # requests_per_minute, concurrent_sessions, ...
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner_key", String(64)),  # whose events it receives (None: every key's, set by admin)
    Column("flow_id", String(128)),  # only this flow's events, when set
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False, default=list),  # session.ended, call.completed, ...
    Column("secret", String(128), nullable=False),  # signs each delivery (HMAC-SHA256)
    Column("created_at", Float, nullable=False),
    Column("disabled_at", Float),
)
Index("ix_webhooks_owner_key", webhooks.c.owner_key)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("webhook_id", String(64), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", String(64), nullable=False),  # one delivery per (webhook, event): never sent twice
    Column("event_type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float),
)
Index(
    "ix_webhook_deliveries_event", webhook_deliveries.c.webhook_id, webhook_deliveries.c.event_id, unique=True
)
Index("ix_webhook_deliveries_status", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at)

# One row per billable thing (a session, a job, an HTTP speech or chat request), upserted as it grows.
usage = Table(
    "usage",
    metadata,
    Column("id", String(64), primary_key=True),  # the session's, job's or request's id
    Column("key_id", String(64)),  # None: auth off
    Column("kind", String(16), nullable=False),  # session, job, request
    Column("created_at", Float, nullable=False),
    Column("day", String(10), nullable=False),  # YYYY-MM-DD (UTC), for per-day sums
    Column("sessions", Integer, nullable=False, default=0),
    Column("audio_in_s", Float, nullable=False, default=0.0),
    Column("audio_out_s", Float, nullable=False, default=0.0),
    Column("stt_s", Float, nullable=False, default=0.0),
    Column("llm_tokens", Integer, nullable=False, default=0),
    Column("tts_chars", Integer, nullable=False, default=0),
    Column("jobs", Integer, nullable=False, default=0),
)
Index("ix_usage_key_day", usage.c.key_id, usage.c.day)

# Rows the write queue may upsert, by table name, with their key columns.
UPSERT_KEYS: dict[str, tuple[str, ...]] = {
    "sessions": ("id",),
    "turns": ("id",),
    "calls": ("id",),
    "recordings": ("id",),
    "jobs": ("id",),
    "usage": ("id",),
}


def table(name: str) -> Table:
    return metadata.tables[name]


def row_key(name: str, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[column] for column in UPSERT_KEYS[name])
