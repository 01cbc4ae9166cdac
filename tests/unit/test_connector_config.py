"""Tests of the declarative connector configuration (instance and flag files), its watcher and the flags."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from powerx.connector.v1 import callback_pb2, connector_pb2
from servers.connector.config_files import ConfigError, ConfigWatcher, LoadedConfig, load_config
from servers.connector.flags import CONNECTORS_FLAG, WEBHOOK_GUARD_FLAG, FlagSet, bucket

REPO = Path(__file__).resolve().parents[2]
INSTANCE_FILE = "config/platform/connectors/acme.yaml"
FLAGS_FILE = "config/feature_flags/platform_connectors.yaml"
WHSEC = "whsec_" + base64.b64encode(b"w" * 32).decode()
ENV = {
    "ACME_N8N_KEY": "n8n_api_SECRETVALUE",
    "ACME_WHSEC": WHSEC,
    "ACME_TRIGGER": "trigger-SECRETVALUE",
    "COZE_PAT": "pat_SECRETVALUE",
}

N8N = """\
instances:
  - tenant: acme
    platform: n8n
    instance_id: acme-n8n
    display_name: ACME n8n
    base_url: https://n8n.acme.example
    workflow_ids:
      summarize: summarize-ticket
    input_template:
      ticket: "{{context.ticket}}"
    required_context_fields: [ticket.id]
    rate_limit: {requests_per_second: 5, burst: 10}
    retry_policy: {max_attempts: 3, initial_backoff: 0.2s, max_backoff: 5s}
    timeout: 30s
    labels: {team: support}
    credential:
      api_key:
        token_env: ACME_N8N_KEY
        expire_time: 2030-01-01T00:00:00Z
      webhook_secrets_env: [ACME_WHSEC]
      secret_headers_env:
        X-Mesh-Token: ACME_TRIGGER
"""


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_of(root: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(root, environ=ENV if env is None else env)
    return str(err.value)


def instance_yaml(extra: str = "", credential: str = "") -> str:
    """A minimal n8n instance, with extra instance keys and a credential block (4-space indented)."""
    body = """\
instances:
  - tenant: acme
    platform: n8n
    instance_id: acme-n8n
    base_url: https://n8n.acme.example
    workflow_ids: {summarize: summarize-ticket}
"""
    if extra:
        body += textwrap.indent(textwrap.dedent(extra), "    ")
    if credential:
        body += "    credential:\n" + textwrap.indent(textwrap.dedent(credential), "      ")
    return body


# --- instance files -------------------------------------------------------------------------------------


def test_no_config_folder_gives_an_empty_config(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert cfg.instances == ()
    assert cfg.flags == ()
    assert not cfg.flags_file
    assert cfg.files == {}


def test_an_instance_file_loads_into_connector_instances(tmp_path: Path) -> None:
    write(tmp_path, INSTANCE_FILE, N8N)
    cfg = load_config(tmp_path, environ=ENV)
    (d,) = cfg.instances
    assert (d.tenant, d.platform, d.instance_id, d.source) == ("acme", "n8n", "acme-n8n", INSTANCE_FILE)
    inst = d.instance
    assert inst.enabled  # defaults to true in a file
    assert dict(inst.workflow_ids) == {"summarize": "summarize-ticket"}
    assert inst.timeout.seconds == 30
    assert inst.retry_policy.initial_backoff.nanos == 200_000_000
    assert inst.rate_limit.burst == 10
    assert inst.input_template.fields["ticket"].string_value == "{{context.ticket}}"
    ci = inst.credential_input
    assert ci.api_key.token == ENV["ACME_N8N_KEY"]
    assert ci.api_key.expire_time.ToJsonString() == "2030-01-01T00:00:00Z"
    assert list(ci.webhook_secrets) == [WHSEC]
    assert dict(ci.secret_headers) == {"X-Mesh-Token": ENV["ACME_TRIGGER"]}
    assert INSTANCE_FILE in cfg.files
    assert "SECRETVALUE" not in repr(cfg)  # the instance (with its credential) is left out of the repr


def test_enabled_false_is_kept(tmp_path: Path) -> None:
    write(tmp_path, INSTANCE_FILE, instance_yaml("enabled: false\n"))
    assert not load_config(tmp_path, environ={}).instances[0].instance.enabled


def test_messages_name_file_field_and_reason(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml("workflow_ids: {summarize: has space}\n").replace(
            "    workflow_ids: {summarize: summarize-ticket}\n", "", 1
        ),
    )
    assert error_of(tmp_path) == (
        "config/platform/connectors/acme.yaml: "
        "instances[0].workflow_ids.summarize: must not contain whitespace"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        """\
        instances:
          - tenant: "bad tenant"
            platform: zapier
            instance_id: Bad_Id
          - tenant: acme
            platform: n8n
            instance_id: ok
            workflow_ids: {a: b}
            timeout: 601s
            retry_policy: {max_attempts: 11}
        """,
    )
    message = error_of(tmp_path)
    for expected in (
        f"{INSTANCE_FILE}: instances[0].tenant: is required",
        f"{INSTANCE_FILE}: instances[0].platform: is required: coze or n8n",
        f"{INSTANCE_FILE}: instances[0].instance_id: is required",
        f"{INSTANCE_FILE}: instances[1].base_url: is required",
        f"{INSTANCE_FILE}: instances[1].timeout: must be between 0 and 600 s",
        f"{INSTANCE_FILE}: instances[1].retry_policy.max_attempts: must be 0 to 10",
    ):
        assert expected in message


def test_unknown_keys_are_rejected_with_their_path(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(
            """\
            colour: blue
            rate_limit: {rps: 5}
            user_mappings:
              - {user_id: a, platform_user_id: b}
              - {user_id: c, platform_user_id: d, role: admin}
            """
        ),
    )
    message = error_of(tmp_path)
    assert f"{INSTANCE_FILE}: instances[0].colour: is not a field (expected one of: " in message
    assert (
        f"{INSTANCE_FILE}: instances[0].rate_limit.rps: is not a field (expected one of: burst, " in message
    )
    assert f"{INSTANCE_FILE}: instances[0].user_mappings[1].role: is not a field" in message


def test_wrong_types_name_the_field(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(
            """\
            timeout: 30
            labels: [a]
            rate_limit: {burst: many}
            display_name: 12
            """
        ),
    )
    message = error_of(tmp_path)
    assert f"{INSTANCE_FILE}: instances[0].timeout: Duration JSON value not a string: 30" in message
    assert f"{INSTANCE_FILE}: instances[0].labels: " in message
    assert f"{INSTANCE_FILE}: instances[0].rate_limit.burst: " in message
    assert f"{INSTANCE_FILE}: instances[0].display_name: must be a string (quote numbers in YAML)" in message


def test_output_only_and_credential_input_keys_are_rejected(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(
            """\
            tenant_id: other
            secret_ref: secret://x
            config_version: 3
            credential_input: {api_key: {token: x}}
            """
        ),
    )
    message = error_of(tmp_path)
    assert f"{INSTANCE_FILE}: instances[0].tenant_id: is output only: give tenant" in message
    assert f"{INSTANCE_FILE}: instances[0].secret_ref: is output only" in message
    assert f"{INSTANCE_FILE}: instances[0].config_version: is output only" in message
    assert f"{INSTANCE_FILE}: instances[0].credential_input: is not accepted in a file" in message


@pytest.mark.parametrize(
    ("credential", "field", "hint"),
    [
        ("api_key: {token: pat_LITERALSECRET}\n", "credential.api_key.token", "use token_env"),
        (
            "oauth: {access_token_env: COZE_PAT, refresh_token: LITERALSECRET}\n",
            "credential.oauth.refresh_token",
            "use refresh_token_env",
        ),
        (
            "oauth: {access_token_env: COZE_PAT, client_secret: LITERALSECRET}\n",
            "credential.oauth.client_secret",
            "use client_secret_env",
        ),
        ("webhook_secrets: [whsec_LITERALSECRET]\n", "credential.webhook_secrets", "use webhook_secrets_env"),
        ("secret_headers: {X-T: LITERALSECRET}\n", "credential.secret_headers", "use secret_headers_env"),
        ("coze_verify_token: LITERALSECRET\n", "credential.coze_verify_token", "use coze_verify_token_env"),
    ],
)
def test_literal_secrets_are_rejected(tmp_path: Path, credential: str, field: str, hint: str) -> None:
    write(tmp_path, INSTANCE_FILE, instance_yaml(credential=credential))
    message = error_of(tmp_path)
    assert f"{INSTANCE_FILE}: instances[0].{field}: must not hold a secret in the file: {hint}" in message
    assert "LITERALSECRET" not in message


def test_literal_private_key_is_rejected(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(
            credential="coze_jwt: {app_id: a, public_key_id: k, private_key_pem: LITERALSECRET}\n"
        ).replace("platform: n8n", "platform: coze"),
    )
    message = error_of(tmp_path)
    assert (
        "instances[0].credential.coze_jwt.private_key_pem: must not hold a secret in the file: use "
        in message
    )
    assert "private_key_file or private_key_env" in message
    assert "LITERALSECRET" not in message


def test_missing_and_malformed_env_references_are_named(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(
            credential="""\
            api_key: {token_env: NOT_SET_ANYWHERE}
            webhook_secrets_env: [ACME_WHSEC, ALSO_MISSING]
            secret_headers_env: {X-Mesh-Token: pat_pastedSecretValue}
            """
        ),
    )
    message = error_of(tmp_path)
    assert (
        f"{INSTANCE_FILE}: instances[0].credential.api_key.token_env: "
        "environment variable NOT_SET_ANYWHERE is not set"
    ) in message
    assert (
        "instances[0].credential.webhook_secrets_env[1]: environment variable ALSO_MISSING is not set"
        in message
    )
    assert (
        "instances[0].credential.secret_headers_env.X-Mesh-Token: must be the name of an environment"
        in message
    )
    assert "pastedSecretValue" not in message


def test_env_values_are_validated_and_named_by_their_variable(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(credential="api_key: {token_env: BAD_TOKEN}\nwebhook_secrets_env: [BAD_WHSEC]\n"),
    )
    env = {"BAD_TOKEN": "pat_ SECRETVALUE", "BAD_WHSEC": "whsec_SECRETVALUE"}
    message = error_of(tmp_path, env)
    assert (
        f"{INSTANCE_FILE}: instances[0].credential.api_key.token_env: must not contain whitespace or control "
        "characters (value of environment variable BAD_TOKEN)"
    ) in message
    assert "instances[0].credential.webhook_secrets_env[0]: must be whsec_" in message
    assert "(value of environment variable BAD_WHSEC)" in message
    assert "SECRETVALUE" not in message


def test_credential_shape_errors(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(
            credential="""\
            api_key: {token_env: COZE_PAT}
            oauth: {access_token_env: COZE_PAT}
            vault: x
            """
        ),
    )
    message = error_of(tmp_path)
    assert "instances[0].credential: must give at most one of api_key, oauth, coze_jwt" in message
    assert "instances[0].credential.vault: is not a credential key" in message
    write(tmp_path, INSTANCE_FILE, instance_yaml(credential="api_key: {expire_time: 2030-01-01T00:00:00Z}\n"))
    assert "instances[0].credential.api_key.token_env: is required" in error_of(tmp_path)


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def test_coze_jwt_private_key_from_a_file_or_env(tmp_path: Path) -> None:
    pem = _rsa_pem()
    (tmp_path / "config/platform/connectors/keys").mkdir(parents=True)
    (tmp_path / "config/platform/connectors/keys/coze.pem").write_bytes(pem)
    coze = """\
    instances:
      - tenant: acme
        platform: coze
        instance_id: acme-coze
        workflow_ids: {triage: "7371234567890123456"}
        credential:
          coze_jwt: {app_id: "123", public_key_id: kid, private_key_file: keys/coze.pem, token_ttl: 900s}
          coze_verify_token_env: COZE_PAT
      - tenant: beta
        platform: coze
        instance_id: beta-coze
        workflow_ids: {triage: "1"}
        credential:
          coze_jwt: {app_id: "1", public_key_id: k, private_key_env: BETA_KEY}
    """
    write(tmp_path, "config/platform/connectors/coze.yaml", coze)
    cfg = load_config(tmp_path, environ={**ENV, "BETA_KEY": pem.decode()})
    acme, beta = cfg.instances
    assert acme.instance.credential_input.coze_jwt.private_key_pem == pem.decode()
    assert acme.instance.credential_input.coze_jwt.token_ttl.seconds == 900
    assert acme.instance.credential_input.coze_verify_token == ENV["COZE_PAT"]
    assert beta.instance.credential_input.coze_jwt.private_key_pem == pem.decode()
    assert "config/platform/connectors/keys/coze.pem" in cfg.files  # watched for changes

    # A new key in the file changes the instance's digest (by its public key, not its secret).
    (tmp_path / "config/platform/connectors/keys/coze.pem").write_bytes(_rsa_pem())
    again = load_config(tmp_path, environ={**ENV, "BETA_KEY": pem.decode()})
    assert again.instances[0].digest != acme.digest
    assert again.instances[1].digest == beta.digest

    (tmp_path / "config/platform/connectors/keys/coze.pem").write_text("not a key SECRETVALUE")
    message = error_of(tmp_path, {**ENV, "BETA_KEY": pem.decode()})
    assert (
        "config/platform/connectors/coze.yaml: instances[0].credential.coze_jwt.private_key_file: "
        "must be an unencrypted RSA private key in PEM (value of file keys/coze.pem)"
    ) in message
    assert "SECRETVALUE" not in message
    (tmp_path / "config/platform/connectors/keys/coze.pem").unlink()
    assert "instances[0].credential.coze_jwt.private_key_file: cannot read keys/coze.pem" in error_of(
        tmp_path, {**ENV, "BETA_KEY": pem.decode()}
    )


def test_coze_jwt_is_only_for_coze(tmp_path: Path) -> None:
    write(
        tmp_path,
        INSTANCE_FILE,
        instance_yaml(credential="coze_jwt: {app_id: a, public_key_id: k, private_key_env: COZE_PAT}\n"),
    )
    assert "instances[0].credential.coze_jwt: is only for platform coze" in error_of(tmp_path)


def test_yaml_syntax_errors_carry_the_line(tmp_path: Path) -> None:
    write(tmp_path, INSTANCE_FILE, "instances:\n  - tenant: acme\n    platform: [n8n\n")
    message = error_of(tmp_path)
    assert message.startswith(f"{INSTANCE_FILE}: line ")
    write(tmp_path, INSTANCE_FILE, "instances:\n  - tenant: acme\n    tenant: beta\n")
    assert error_of(tmp_path) == f"{INSTANCE_FILE}: line 3, column 5: duplicate key 'tenant'"


def test_file_shape_errors(tmp_path: Path) -> None:
    write(tmp_path, INSTANCE_FILE, "- tenant: acme\n")
    assert "must be a mapping with one key, instances:" in error_of(tmp_path)
    write(tmp_path, INSTANCE_FILE, "instances: {tenant: acme}\n")
    assert error_of(tmp_path) == f"{INSTANCE_FILE}: instances: must be a list"
    write(tmp_path, INSTANCE_FILE, "# nothing declared yet\n")
    assert load_config(tmp_path, environ={}).instances == ()


def test_duplicate_instances_across_files_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "config/platform/connectors/a.yaml", instance_yaml())
    write(
        tmp_path, "config/platform/connectors/b.yml", instance_yaml().replace("tenant: acme", "tenant: beta")
    )
    assert error_of(tmp_path) == (
        "config/platform/connectors/b.yml: instances[0].instance_id: n8n/acme-n8n is also declared in "
        "config/platform/connectors/a.yaml instances[0]"
    )
    # The same id on another platform is another instance.
    write(
        tmp_path,
        "config/platform/connectors/b.yml",
        instance_yaml().replace("platform: n8n", "platform: coze").replace("tenant: acme", "tenant: beta"),
    )
    assert len(load_config(tmp_path, environ={}).instances) == 2


def test_example_files_are_not_loaded_but_are_valid(tmp_path: Path) -> None:
    cfg = load_config(REPO, environ={})  # the repository's own config must load with no variables set
    assert {f.name for f in cfg.flags} == {CONNECTORS_FLAG, WEBHOOK_GUARD_FLAG}
    assert all(f.enabled and f.rollout_percent == 100 for f in cfg.flags)
    assert not any(path.endswith(".example") for path in cfg.files)
    example = REPO / "config/platform/connectors/example-n8n.yaml.example"
    target = tmp_path / "config/platform/connectors/example-n8n.yaml"
    target.parent.mkdir(parents=True)
    shutil.copy(example, target)
    with pytest.raises(ConfigError):
        load_config(tmp_path, environ={})
    env = {"ACME_N8N_API_KEY": "k", "ACME_N8N_WEBHOOK_SECRET": WHSEC, "ACME_N8N_TRIGGER_TOKEN": "t"}
    (d,) = load_config(tmp_path, environ=env).instances
    assert d.instance_id == "acme-n8n"


def test_digest_follows_declared_content_not_formatting_of_other_entries(tmp_path: Path) -> None:
    write(tmp_path, INSTANCE_FILE, N8N)
    first = load_config(tmp_path, environ=ENV).instances[0].digest
    assert load_config(tmp_path, environ={**ENV, "ACME_N8N_KEY": "other"}).instances[0].digest == first
    write(tmp_path, INSTANCE_FILE, "# a comment\n" + N8N)
    assert load_config(tmp_path, environ=ENV).instances[0].digest == first
    write(tmp_path, INSTANCE_FILE, N8N.replace("timeout: 30s", "timeout: 31s"))
    assert load_config(tmp_path, environ=ENV).instances[0].digest != first


# --- flags file -----------------------------------------------------------------------------------------


def test_flags_file_loads(tmp_path: Path) -> None:
    write(
        tmp_path,
        FLAGS_FILE,
        """\
        flags:
          - name: agent-platform-connectors
            enabled: true
            rollout_percent: 25
            tenant_allowlist: [pilot]
            tenant_denylist: [legacy]
            platforms: [coze]
            rate_limit: {requests_per_second: 50, burst: 100}
          - name: platform-webhook-guard
            enabled: true
          - name: staged
            enabled: true
            rollout_percent: 0
        """,
    )
    cfg = load_config(tmp_path, environ={})
    assert cfg.flags_file
    connectors, guard, staged = cfg.flags
    assert connectors.rollout_percent == 25
    assert staged.rollout_percent == 0  # an explicit 0 is kept: allowlisted tenants only
    assert list(connectors.platforms) == ["coze"]
    assert connectors.rate_limit.burst == 100
    assert guard.rollout_percent == 100  # absent means everyone


def test_flags_file_errors(tmp_path: Path) -> None:
    write(
        tmp_path,
        FLAGS_FILE,
        """\
        flags:
          - name: Bad_Name
            rollout_percent: 101
            platforms: [zapier]
            tenant_allowlist: ["no spaces please"]
            rate_limit: {requests_per_second: -1}
          - name: ok
            enabled_for_caller: true
            colour: red
          - name: dup
          - name: dup
        """,
    )
    message = error_of(tmp_path, {})
    for expected in (
        f"{FLAGS_FILE}: flags[0].name: must be lower-kebab-case",
        f"{FLAGS_FILE}: flags[0].rollout_percent: must be 0 to 100",
        f"{FLAGS_FILE}: flags[0].platforms[0]: must be coze or n8n",
        f"{FLAGS_FILE}: flags[0].tenant_allowlist[0]: is not a tenant id",
        f"{FLAGS_FILE}: flags[0].rate_limit.requests_per_second: must be a number from 0",
        f"{FLAGS_FILE}: flags[1].enabled_for_caller: is output only",
        f"{FLAGS_FILE}: flags[1].colour: is not a field",
        f"{FLAGS_FILE}: flags[3].name: dup is declared twice",
    ):
        assert expected in message


def test_a_bad_flags_file_fails_the_whole_load(tmp_path: Path) -> None:
    write(tmp_path, INSTANCE_FILE, instance_yaml())
    write(tmp_path, FLAGS_FILE, "flags: [\n")
    assert error_of(tmp_path).startswith(f"{FLAGS_FILE}: line ")


# --- flags ----------------------------------------------------------------------------------------------


def flag(**kw: object) -> callback_pb2.FeatureFlag:
    args: dict[str, object] = {"name": CONNECTORS_FLAG, "enabled": True, "rollout_percent": 100} | kw
    return callback_pb2.FeatureFlag(**args)  # type: ignore[arg-type]


def test_flags_absent_from_config_are_on() -> None:
    empty = FlagSet([])
    assert empty.enabled(CONNECTORS_FLAG, "t1", "coze")
    assert empty.enabled(WEBHOOK_GUARD_FLAG, "t1")
    assert empty.enabled("something-else", "t1")
    assert empty.rate_limit(CONNECTORS_FLAG) is None
    listed = empty.list("t1")
    assert [f.name for f in listed] == [CONNECTORS_FLAG, WEBHOOK_GUARD_FLAG]
    assert all(f.enabled_for_caller and f.HasField("update_time") for f in listed)


def test_master_switch_denylist_allowlist_and_platforms() -> None:
    flags = FlagSet(
        [
            flag(
                rollout_percent=0,
                tenant_allowlist=["pilot", "both"],
                tenant_denylist=["legacy", "both"],
                platforms=["coze"],
            )
        ]
    )
    assert flags.enabled(CONNECTORS_FLAG, "pilot", "coze")
    assert flags.enabled(CONNECTORS_FLAG, "pilot")  # no platform given: the platform filter does not apply
    assert not flags.enabled(CONNECTORS_FLAG, "pilot", "n8n")
    assert not flags.enabled(CONNECTORS_FLAG, "both", "coze")  # the denylist wins
    assert not flags.enabled(CONNECTORS_FLAG, "anyone", "coze")  # 0 %: allowlist only
    assert not FlagSet([flag(tenant_denylist=["legacy"])]).enabled(CONNECTORS_FLAG, "legacy")
    off = FlagSet([flag(enabled=False, tenant_allowlist=["pilot"])])
    assert not off.enabled(CONNECTORS_FLAG, "pilot")
    assert off.enabled(WEBHOOK_GUARD_FLAG, "pilot")  # other flags are unaffected


def test_rollout_is_stable_roughly_proportional_and_monotonic() -> None:
    tenants = [f"tenant-{i}" for i in range(4000)]
    on: dict[int, set[str]] = {}
    for pct in (0, 10, 25, 50, 100):
        flags = FlagSet([flag(rollout_percent=pct)])
        on[pct] = {t for t in tenants if flags.enabled(CONNECTORS_FLAG, t)}
        assert abs(len(on[pct]) / len(tenants) - pct / 100) < 0.03
        again = FlagSet([flag(rollout_percent=pct)])
        assert on[pct] == {t for t in tenants if again.enabled(CONNECTORS_FLAG, t)}
    assert on[0] == set()
    assert on[100] == set(tenants)
    assert on[10] <= on[25] <= on[50] <= on[100]
    # Buckets are per flag: another flag at 50 % picks a different half.
    guard = FlagSet([flag(name=WEBHOOK_GUARD_FLAG, rollout_percent=50)])
    other = {t for t in tenants if guard.enabled(WEBHOOK_GUARD_FLAG, t)}
    assert other != on[50]
    assert bucket(CONNECTORS_FLAG, "tenant-1") == bucket(CONNECTORS_FLAG, "tenant-1")
    assert all(0 <= bucket(CONNECTORS_FLAG, t) < 100 for t in tenants[:100])


def test_flag_rate_limit_and_list() -> None:
    flags = FlagSet(
        [
            flag(
                rate_limit=connector_pb2.RateLimit(requests_per_second=5, burst=10),
                tenant_denylist=["legacy"],
            )
        ],
        update_time_ms=1_700_000_000_000,
    )
    limit = flags.rate_limit(CONNECTORS_FLAG)
    assert limit is not None
    assert (limit.requests_per_second, limit.burst) == (5, 10)
    assert flags.rate_limit(WEBHOOK_GUARD_FLAG) is None
    listed = {f.name: f for f in flags.list("legacy")}
    assert not listed[CONNECTORS_FLAG].enabled_for_caller
    assert listed[WEBHOOK_GUARD_FLAG].enabled_for_caller
    assert listed[CONNECTORS_FLAG].update_time.ToMilliseconds() == 1_700_000_000_000
    assert flags.get(CONNECTORS_FLAG) is not None
    assert flags.get(WEBHOOK_GUARD_FLAG) is None


# --- watcher --------------------------------------------------------------------------------------------


class Applied:
    def __init__(self) -> None:
        self.configs: list[LoadedConfig] = []

    async def __call__(self, cfg: LoadedConfig) -> None:
        self.configs.append(cfg)


async def test_reload_keeps_the_previous_config_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, INSTANCE_FILE, N8N)
    initial = load_config(tmp_path, environ=ENV)
    applied = Applied()
    watcher = ConfigWatcher(tmp_path, applied, current=initial, environ=ENV, log=logging.getLogger("t.cfg"))
    assert not await watcher.check()  # nothing changed
    assert applied.configs == []

    write(tmp_path, INSTANCE_FILE, N8N.replace("summarize-ticket", "has space"))
    with caplog.at_level(logging.ERROR, logger="t.cfg"):
        assert not await watcher.check()
    assert watcher.current is initial
    assert applied.configs == []
    assert "instances[0].workflow_ids.summarize: must not contain whitespace" in watcher.last_error
    assert "keeping the previous one" in caplog.text
    assert "SECRETVALUE" not in caplog.text
    assert not await watcher.check()  # not retried until the files change again
    assert watcher.last_error

    write(tmp_path, INSTANCE_FILE, N8N)  # changed back to what is applied: nothing to apply, no error
    assert not await watcher.check()
    assert watcher.last_error == ""
    assert applied.configs == []

    write(tmp_path, INSTANCE_FILE, N8N.replace("summarize-ticket", "summarize-v2"))
    assert await watcher.check()
    assert watcher.last_error == ""
    assert watcher.current is applied.configs[-1]
    assert watcher.current.instances[0].instance.workflow_ids["summarize"] == "summarize-v2"


async def test_watcher_notices_new_and_removed_files_and_ignores_touches(tmp_path: Path) -> None:
    applied = Applied()
    watcher = ConfigWatcher(tmp_path, applied, environ=ENV)
    assert await watcher.reload_now()  # first load applies an (empty) config
    assert applied.configs[-1].instances == ()
    write(tmp_path, INSTANCE_FILE, N8N)
    assert await watcher.check()
    assert len(applied.configs[-1].instances) == 1
    path = tmp_path / INSTANCE_FILE
    path.write_text(path.read_text())  # same content, new mtime
    assert not await watcher.check()
    write(tmp_path, FLAGS_FILE, "flags:\n  - {name: platform-webhook-guard, enabled: false}\n")
    assert await watcher.check()
    assert not FlagSet(applied.configs[-1].flags).enabled(WEBHOOK_GUARD_FLAG, "acme")
    path.unlink()
    assert await watcher.check()
    assert applied.configs[-1].instances == ()
    assert len(applied.configs) == 4


async def test_watcher_retries_when_applying_fails(tmp_path: Path) -> None:
    calls = 0

    async def flaky(cfg: LoadedConfig) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database is down")

    watcher = ConfigWatcher(tmp_path, flaky, current=load_config(tmp_path, environ=ENV), environ=ENV)
    write(tmp_path, INSTANCE_FILE, N8N)
    assert not await watcher.check()
    assert "database is down" in watcher.last_error
    assert await watcher.check()
    assert watcher.last_error == ""
    assert calls == 2


async def test_run_polls_until_stopped(tmp_path: Path) -> None:
    applied = Applied()
    watcher = ConfigWatcher(tmp_path, applied, poll_s=0.02, environ=ENV)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    for _ in range(100):
        if applied.configs:
            break
        await asyncio.sleep(0.01)
    write(tmp_path, INSTANCE_FILE, N8N)
    for _ in range(200):
        if applied.configs and applied.configs[-1].instances:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert applied.configs[-1].instances[0].instance_id == "acme-n8n"
