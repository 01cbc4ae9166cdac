"""Agents: agents (token hashes only), runs, run output (the context store), append idempotency keys.

Revision ID: 0003_agents
Revises: 0002_router_audit
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_agents"
down_revision = "0002_router_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("tenant_id", sa.String(63), primary_key=True),
        sa.Column("agent_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "agent_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("agent_tenant_id", sa.String(63), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("agent_runs_tenant_time", "agent_runs", ["tenant_id", "created_ms", "run_id"])
    op.create_index("agent_runs_agent", "agent_runs", ["agent_tenant_id", "agent_id", "state"])
    op.create_index("agent_runs_state", "agent_runs", ["state"])
    op.create_index(
        "agent_runs_idempotency",
        "agent_runs",
        ["tenant_id", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text("idempotency_key != ''"),
        postgresql_where=sa.text("idempotency_key != ''"),
    )
    op.create_table(
        "agent_run_events",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "agent_run_appends",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("append_key", sa.String(128), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agent_run_appends")
    op.drop_table("agent_run_events")
    op.drop_table("agent_runs")
    op.drop_table("agents")
