"""Router: one audit record per invocation.

Revision ID: 0002_router_audit
Revises: 0001_registry
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_router_audit"
down_revision = "0001_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "router_audit",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("capability_id", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("streamed", sa.Boolean, nullable=False),
    )
    op.create_index("router_audit_tenant_time", "router_audit", ["tenant_id", "created_ms"])
    op.create_index("router_audit_trace", "router_audit", ["trace_id"])


def downgrade() -> None:
    op.drop_table("router_audit")
