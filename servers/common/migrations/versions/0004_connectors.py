"""Connectors: instances, configuration versions, encrypted credentials, invocations, webhook receipts,
callback events, degrade switches with history, human tasks, the durable callback outbox and the audit log.

Revision ID: 0004_connectors
Revises: 0003_agents
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_connectors"
down_revision = "0003_agents"
branch_labels = None
depends_on = None


def _partial_unique(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(
        name, table, columns, unique=True, sqlite_where=sa.text(where), postgresql_where=sa.text(where)
    )


def upgrade() -> None:
    op.create_table(
        "connector_instances",
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("instance_id", sa.String(63), primary_key=True),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("config_version", sa.BigInteger, nullable=False),
        sa.Column("credential_version", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "connector_instances_tenant", "connector_instances", ["tenant_id", "platform", "instance_id"]
    )
    op.create_table(
        "connector_config_versions",
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("instance_id", sa.String(63), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("credential_version", sa.BigInteger, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "connector_credentials",
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("instance_id", sa.String(63), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("info", sa.LargeBinary, nullable=False),
        sa.Column("expire_ms", sa.BigInteger, nullable=False),
        sa.Column("destroyed", sa.Boolean, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "connector_invocations",
        sa.Column("invocation_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("instance_id", sa.String(63), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("mode", sa.SmallInteger, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("key_expire_ms", sa.BigInteger, nullable=False),
        sa.Column("next_poll_ms", sa.BigInteger, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "connector_invocations_tenant_time",
        "connector_invocations",
        ["tenant_id", "platform", "created_ms", "invocation_id"],
    )
    op.create_index("connector_invocations_poll", "connector_invocations", ["state", "next_poll_ms"])
    _partial_unique(
        "connector_invocations_idempotency",
        "connector_invocations",
        ["tenant_id", "platform", "idempotency_key"],
        "idempotency_key != ''",
    )
    op.create_table(
        "connector_replay_keys",
        sa.Column("replay_key", sa.String(512), primary_key=True),
        sa.Column("expire_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("connector_replay_keys_expiry", "connector_replay_keys", ["expire_ms"])
    op.create_table(
        "connector_callbacks",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("instance_id", sa.String(63), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "connector_callbacks_tenant", "connector_callbacks", ["tenant_id", "platform", "sequence"]
    )
    op.create_table(
        "connector_outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.String(1024), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("connector_outbox_due", "connector_outbox", ["state", "next_attempt_ms"])
    op.create_table(
        "connector_degrade",
        sa.Column("tenant_id", sa.String(63), primary_key=True),
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "connector_degrade_history",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "connector_degrade_history_tenant", "connector_degrade_history", ["tenant_id", "platform", "id"]
    )
    op.create_table(
        "connector_human_tasks",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("invocation_id", sa.String(64), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("assignee", sa.String(255), nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "connector_human_tasks_tenant", "connector_human_tasks", ["tenant_id", "created_ms", "task_id"]
    )
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


def downgrade() -> None:
    for name in (
        "connector_audit",
        "connector_human_tasks",
        "connector_degrade_history",
        "connector_degrade",
        "connector_outbox",
        "connector_callbacks",
        "connector_replay_keys",
        "connector_invocations",
        "connector_credentials",
        "connector_config_versions",
        "connector_instances",
    ):
        op.drop_table(name)
