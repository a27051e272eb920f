"""The platform (issue 15): API keys, resource owners, webhooks with their deliveries, usage.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OWNED = ("sessions", "calls", "flows", "jobs")


def upgrade() -> None:
    for name in OWNED:
        with op.batch_alter_table(name) as batch:
            batch.add_column(sa.Column("owner_key", sa.String(64)))
    op.create_index("ix_sessions_owner_key", "sessions", ["owner_key"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("limits", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
        sa.Column("last_used_at", sa.Float),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner_key", sa.String(64)),
        sa.Column("flow_id", sa.String(128)),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("disabled_at", sa.Float),
    )
    op.create_index("ix_webhooks_owner_key", "webhooks", ["owner_key"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "webhook_id", sa.String(64), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float),
    )
    op.create_index(
        "ix_webhook_deliveries_event", "webhook_deliveries", ["webhook_id", "event_id"], unique=True
    )
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_table(
        "usage",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("audio_in_s", sa.Float, nullable=False),
        sa.Column("audio_out_s", sa.Float, nullable=False),
        sa.Column("stt_s", sa.Float, nullable=False),
        sa.Column("llm_tokens", sa.Integer, nullable=False),
        sa.Column("tts_chars", sa.Integer, nullable=False),
        sa.Column("jobs", sa.Integer, nullable=False),
    )
    op.create_index("ix_usage_key_day", "usage", ["key_id", "day"])


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_table("api_keys")
    op.drop_index("ix_sessions_owner_key", "sessions")
    for name in OWNED:
        with op.batch_alter_table(name) as batch:
            batch.drop_column("owner_key")
