"""Registry: providers, capabilities, endpoints, the revision counter and the event log.

Revision ID: 0001_registry
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_registry"
down_revision = None
branch_labels = None
depends_on = None

TENANT = sa.String(63)
ID = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table("registry_state", sa.column("id"), sa.column("revision")), [{"id": 1, "revision": 0}]
    )
    op.create_table(
        "registry_providers",
        sa.Column("tenant_id", TENANT, primary_key=True),
        sa.Column("provider_id", ID, primary_key=True),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("manifest_digest", sa.String(64), nullable=False),
        sa.Column("lease_ttl_ms", sa.BigInteger, nullable=False),
        sa.Column("lease_expires_ms", sa.BigInteger, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_registry_providers_lease", "registry_providers", ["state", "lease_expires_ms"])
    op.create_table(
        "registry_capabilities",
        sa.Column("tenant_id", TENANT, primary_key=True),
        sa.Column("provider_id", ID, primary_key=True),
        sa.Column("capability_id", ID, primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("version_key", sa.String(160), nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_registry_capabilities_key", "registry_capabilities", ["capability_id", "version_key"])
    op.create_table(
        "registry_capability_grants",
        sa.Column("tenant_id", TENANT, primary_key=True),
        sa.Column("provider_id", ID, primary_key=True),
        sa.Column("capability_id", ID, primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("grantee", TENANT, primary_key=True),
    )
    op.create_index("ix_registry_grants_grantee", "registry_capability_grants", ["grantee", "capability_id"])
    op.create_table(
        "registry_endpoints",
        sa.Column("endpoint_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("provider_id", ID, nullable=False),
        sa.Column("transport", sa.SmallInteger, nullable=False),
        sa.Column("health", sa.SmallInteger, nullable=False),
        sa.Column("health_reason", sa.String(500), nullable=False),
        sa.Column("health_changed_ms", sa.BigInteger, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_registry_endpoints_provider", "registry_endpoints", ["tenant_id", "provider_id"])
    op.create_table(
        "registry_endpoint_capabilities",
        sa.Column("endpoint_id", sa.String(40), primary_key=True),
        sa.Column("capability_id", ID, primary_key=True),
    )
    op.create_index("ix_registry_endpoint_caps_cap", "registry_endpoint_capabilities", ["capability_id"])
    op.create_table(
        "registry_events",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("provider_id", ID, nullable=False),
        sa.Column("type", sa.SmallInteger, nullable=False),
        sa.Column("capability_ids", sa.Text, nullable=False),
        sa.Column("grantees", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "registry_events",
        "registry_endpoint_capabilities",
        "registry_endpoints",
        "registry_capability_grants",
        "registry_capabilities",
        "registry_providers",
        "registry_state",
    ):
        op.drop_table(table)
