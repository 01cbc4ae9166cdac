"""Settings of a mesh process, read once from environment variables (see the README's configuration table)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything a mesh process is configured with. Defaults give the embedded single-process mesh."""

    grpc_address: str = "127.0.0.1:50051"
    edge_address: str = "127.0.0.1:8080"
    envoy_admin_address: str = "127.0.0.1:9901"
    data_dir: Path = field(default_factory=lambda: Path(".powerx"))
    database_url: str = field(default="", repr=False)  # may hold a password
    redis_url: str = field(default="", repr=False)
    log_level: str = "INFO"
    log_format: str = "json"
    default_lease_ttl_s: float = 30.0
    lease_sweep_interval_s: float = 1.0
    max_message_bytes: int = 4 * 1024 * 1024
    edge_max_body_bytes: int = 4 * 1024 * 1024
    shutdown_grace_s: float = 5.0
    watch_poll_interval_s: float = 1.0
    metrics_address: str = ""
    router_default_timeout_s: float = 30.0
    route_token_secret: str = field(default="", repr=False)
    health_monitor: bool = True
    # Per transport (grpc, http, mcp, agent): overrides of the probe rule, `interval_s=5,warn_after=3`.
    health_rules: tuple[tuple[str, str], ...] = ()
    # Passive outlier detection: `consecutive_failures=5,base_ejection_s=30,max_ejection_s=300,…`.
    outlier: str = ""
    # Executables an MCP `stdio:` endpoint may start on the mesh host (`*`: any); none by default.
    mcp_stdio_commands: tuple[str, ...] = ()
    # Agents: token secret (shared by processes on one database; else kept in the data folder), signed
    # manifests only, quotas as `rate=50,burst=100`, default heartbeat and run timeout, A2A listener.
    agent_token_secret: str = field(default="", repr=False)
    agent_require_signed: bool = False
    agent_quota: str = "rate=50,burst=100"
    tenant_run_quota: str = "rate=200,burst=400"
    agent_heartbeat_s: float = 10.0
    agent_run_timeout_s: float = 300.0
    a2a_address: str = ""
    # Connectors: key-encryption keys of tenant credentials (`kid:base64,…`, first = active; else a key
    # kept in the data folder), the folder holding `config/` (instance and flag files, reloaded live),
    # the public URL platforms call back on, breaker knobs, webhook limits, credential expiry warning.
    connector_keys: str = field(default="", repr=False)
    config_root: Path = field(default_factory=lambda: Path("."))
    public_url: str = ""
    connector_breaker: str = ""
    connector_webhook_rate: str = "rate=1000,burst=2000"
    connector_webhook_max_bytes: int = 1024 * 1024
    connector_credential_warning_s: float = 7 * 86400.0
    connector_config_poll_s: float = 2.0
    # Authentication: on by default. Off only for development; then the `x-principal` / `x-scopes`
    # headers are trusted. A bootstrap key (raw `pxk_…` value, e.g. from a Kubernetes Secret) is
    # registered at start as an all-tenant admin key when no key with its hash exists.
    auth_required: bool = True
    bootstrap_api_key: str = field(default="", repr=False)
    # OpenTelemetry: share of new traces sampled (a caller's sampled flag is honoured), and the exporter:
    # `none`, `otlp` (OTEL_EXPORTER_OTLP_ENDPOINT) or `console`.
    otel_sample_ratio: float = 0.1
    otel_exporter: str = "none"
    # Audit rows older than this many days are deleted (0 keeps them forever).
    audit_retention_days: float = 90.0

    @classmethod
    def from_env(cls) -> Settings:
        """Reads the settings from `POWERX_*` environment variables."""
        return cls(
            grpc_address=_env("POWERX_GRPC_ADDRESS", cls.grpc_address),
            edge_address=_env("POWERX_EDGE_ADDRESS", cls.edge_address),
            envoy_admin_address=_env("POWERX_ENVOY_ADMIN_ADDRESS", cls.envoy_admin_address),
            data_dir=Path(_env("POWERX_DATA_DIR", ".powerx")),
            database_url=_env("POWERX_DATABASE_URL", ""),
            redis_url=_env("POWERX_REDIS_URL", ""),
            log_level=_env("POWERX_LOG_LEVEL", cls.log_level).upper(),
            log_format=_env("POWERX_LOG_FORMAT", cls.log_format).lower(),
            default_lease_ttl_s=_env_float("POWERX_DEFAULT_LEASE_TTL_S", cls.default_lease_ttl_s),
            lease_sweep_interval_s=_env_float("POWERX_LEASE_SWEEP_INTERVAL_S", cls.lease_sweep_interval_s),
            max_message_bytes=_env_int("POWERX_MAX_MESSAGE_BYTES", cls.max_message_bytes),
            edge_max_body_bytes=_env_int("POWERX_EDGE_MAX_BODY_BYTES", cls.edge_max_body_bytes),
            shutdown_grace_s=_env_float("POWERX_SHUTDOWN_GRACE_S", cls.shutdown_grace_s),
            watch_poll_interval_s=_env_float("POWERX_WATCH_POLL_INTERVAL_S", cls.watch_poll_interval_s),
            metrics_address=_env("POWERX_METRICS_ADDRESS", "127.0.0.1:9464"),
            router_default_timeout_s=_env_float(
                "POWERX_ROUTER_DEFAULT_TIMEOUT_S", cls.router_default_timeout_s
            ),
            route_token_secret=_env("POWERX_ROUTE_TOKEN_SECRET", ""),
            health_monitor=_env("POWERX_HEALTH_MONITOR", "1") not in ("0", "false", "off"),
            health_rules=tuple(
                (t, os.environ[f"POWERX_HEALTH_{t.upper()}"].strip())
                for t in ("grpc", "http", "mcp", "agent")
                if os.environ.get(f"POWERX_HEALTH_{t.upper()}", "").strip()
            ),
            outlier=_env("POWERX_OUTLIER", ""),
            mcp_stdio_commands=tuple(
                c.strip() for c in _env("POWERX_MCP_STDIO_COMMANDS", "").split(",") if c.strip()
            ),
            agent_token_secret=_env("POWERX_AGENT_TOKEN_SECRET", ""),
            agent_require_signed=_env("POWERX_AGENT_REQUIRE_SIGNED", "0") not in ("0", "false", "off"),
            agent_quota=_env("POWERX_AGENT_QUOTA", cls.agent_quota),
            tenant_run_quota=_env("POWERX_TENANT_RUN_QUOTA", cls.tenant_run_quota),
            agent_heartbeat_s=_env_float("POWERX_AGENT_HEARTBEAT_S", cls.agent_heartbeat_s),
            agent_run_timeout_s=_env_float("POWERX_AGENT_RUN_TIMEOUT_S", cls.agent_run_timeout_s),
            a2a_address=_env("POWERX_A2A_ADDRESS", ""),
            connector_keys=_env("POWERX_CONNECTOR_KEYS", ""),
            config_root=Path(_env("POWERX_CONFIG_ROOT", ".")),
            public_url=_env("POWERX_PUBLIC_URL", ""),
            connector_breaker=_env("POWERX_CONNECTOR_BREAKER", ""),
            connector_webhook_rate=_env("POWERX_CONNECTOR_WEBHOOK_RATE", cls.connector_webhook_rate),
            connector_webhook_max_bytes=_env_int(
                "POWERX_CONNECTOR_WEBHOOK_MAX_BYTES", cls.connector_webhook_max_bytes
            ),
            connector_credential_warning_s=_env_float(
                "POWERX_CONNECTOR_CREDENTIAL_WARNING_S", cls.connector_credential_warning_s
            ),
            connector_config_poll_s=_env_float("POWERX_CONNECTOR_CONFIG_POLL_S", cls.connector_config_poll_s),
            auth_required=_env("POWERX_AUTH_REQUIRED", "1") not in ("0", "false", "off"),
            bootstrap_api_key=_env("POWERX_BOOTSTRAP_API_KEY", ""),
            otel_sample_ratio=_env_float("POWERX_OTEL_SAMPLE_RATIO", cls.otel_sample_ratio),
            otel_exporter=_env("POWERX_OTEL_EXPORTER", cls.otel_exporter).lower(),
            audit_retention_days=_env_float("POWERX_AUDIT_RETENTION_DAYS", cls.audit_retention_days),
        )

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL to use: POWERX_DATABASE_URL, or a SQLite file in the data folder."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'mesh.db').resolve()}"


def parse_overrides(base: T, spec: str, what: str) -> T:
    """`base` with numeric fields replaced from `name=value,name=value` (POWERX_HEALTH_*, POWERX_OUTLIER).

    Fields annotated `int` take whole numbers, the others floats; every value must be finite and >= 0.

    Raises:
        ValueError: An unknown field, or a value that is not such a number.
    """
    kinds = {f.name: f.type for f in dataclasses.fields(base)}  # type: ignore[arg-type]
    values: dict[str, float | int] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, raw = item.partition("=")
        name = name.strip()
        if name not in kinds:
            raise ValueError(f"unknown {what} field {name!r}")
        kind = int if kinds[name] in ("int", int) else float
        try:
            number = kind(raw.strip())
        except ValueError:
            raise ValueError(f"{what} field {name} must be a number, got {raw!r}") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{what} field {name} must be a number (finite, at least 0), got {raw!r}")
        values[name] = number
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def normalize_database_url(url: str) -> str:
    """Maps plain `postgresql://` and `sqlite://` URLs onto the async drivers the mesh uses."""
    for plain, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url
