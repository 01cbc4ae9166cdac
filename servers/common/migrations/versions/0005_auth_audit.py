"""API keys and the one audit log; the connector audit rows move into it.

Revision ID: 0005_auth_audit
Revises: 0004_connectors
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_auth_audit"
down_revision = "0004_connectors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("status_reason", sa.String(512), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("expire_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("api_keys_tenant", "api_keys", ["tenant_id", "created_ms", "key_id"])
    op.create_index("api_keys_hash", "api_keys", ["key_hash"], unique=True)
    op.create_table(
        "audit_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("permission", sa.String(128), nullable=False),
        sa.Column("action", sa.String(160), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(128), nullable=False),
        sa.Column("resource", sa.String(255), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_index("audit_log_tenant", "audit_log", ["tenant_id", "id"])
    op.create_index("audit_log_created", "audit_log", ["created_ms"])
    op.create_index("audit_log_trace", "audit_log", ["trace_id"])
    # Connector events kept so far become rows of the one log (kind 1 = mutation).
    op.execute(
        "INSERT INTO audit_log (created_ms, tenant_id, actor, permission, action, kind, outcome, ok, reason,"
        " resource, trace_id, request_id, duration_ms, summary)"
        " SELECT created_ms, tenant_id, actor, '', action, 1, outcome, outcome NOT LIKE 'REJECTED%', '',"
        " scope, trace_id, request_id, 0, summary FROM connector_audit ORDER BY id"
    )
    op.drop_table("connector_audit")


def downgrade() -> None:
    op.create_table(
        "connector_audit",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_index("connector_audit_tenant", "connector_audit", ["tenant_id", "created_ms"])
    op.drop_table("audit_log")
    op.drop_table("api_keys")
