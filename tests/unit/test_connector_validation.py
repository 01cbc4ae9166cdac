"""Tests of connector instance, credential and update-mask validation."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from google.protobuf import duration_pb2, timestamp_pb2

from powerx.connector.v1 import connector_pb2
from servers.common.errors import InvalidArgument
from servers.common.validate import Violations
from servers.connector import validation
from servers.connector.templates import dict_to_struct
from servers.connector.validation import (
    UPDATABLE_FIELDS,
    apply_update_mask,
    check_platform,
    check_update_mask,
    settings_of,
    validate_credential_input,
    validate_instance,
)

WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
SECRET_TOKEN = "pat_SUPERSECRETVALUE"  # a test value that must never appear in a message


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def n8n_instance(**overrides: object) -> connector_pb2.ConnectorInstance:
    inst = connector_pb2.ConnectorInstance(
        display_name="ACME n8n",
        base_url="https://n8n.acme.example",
        workflow_ids={"summarize": "summarize-ticket", "enrich.lead_v2": "abc/def"},
        user_mappings=[
            connector_pb2.UserMapping(user_id="alice", platform_user_id="a1", workflow_aliases=["summarize"])
        ],
        input_template=dict_to_struct({"ticket": "{{context.ticket}}", "text": "Hi {{ context.user.name }}"}),
        output_template=dict_to_struct({"summary": "{{result.summary}}"}),
        required_context_fields=["ticket.id"],
        sensitive_fields=["user.email"],
        callback_url="https://mesh.example/cb?x=1",
        rate_limit=connector_pb2.RateLimit(requests_per_second=5, burst=10),
        retry_policy=connector_pb2.RetryPolicy(
            max_attempts=3,
            initial_backoff=duration_pb2.Duration(nanos=200_000_000),
            max_backoff=duration_pb2.Duration(seconds=5),
            backoff_multiplier=2,
        ),
        timeout=duration_pb2.Duration(seconds=30),
        webhook_tolerance=duration_pb2.Duration(seconds=300),
        enabled=True,
        local_capability_id="local.workflow.summarize",
        labels={"team": "support"},
        credential_input=connector_pb2.CredentialInput(
            api_key=connector_pb2.ApiKeyCredential(token="n8n_api_key"),
            webhook_secrets=[WHSEC],
            secret_headers={"X-Mesh-Token": "abc"},
        ),
    )
    for name, value in overrides.items():
        if isinstance(value, list | dict):
            inst.ClearField(name)
            if isinstance(value, dict):
                getattr(inst, name).update(value)
            else:
                getattr(inst, name).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(inst, name).CopyFrom(value)
        else:
            setattr(inst, name, value)
    return inst


def problems(
    inst: connector_pb2.ConnectorInstance, platform: str = "n8n", *, creating: bool = True
) -> dict[str, str]:
    v = Violations()
    validate_instance(inst, platform, v, creating=creating)
    return dict(v.items)


def cred_problems(
    ci: connector_pb2.CredentialInput, platform: str = "coze", *, required: bool = False
) -> dict[str, str]:
    v = Violations()
    validate_credential_input(ci, platform, v, "credential_input", required=required)
    return dict(v.items)


def test_a_complete_instance_is_valid() -> None:
    assert problems(n8n_instance()) == {}
    coze = n8n_instance(base_url="", workflow_ids={"triage": "7371234567890123456"}, user_mappings=[])
    assert problems(coze, "coze") == {}


def test_check_platform() -> None:
    v = Violations()
    assert check_platform(v, "coze")
    assert not check_platform(v, "zapier")
    assert not check_platform(v, "")
    assert v.items == [("platform", "must be coze or n8n"), ("platform", "is required")]


def test_base_url_is_required_for_n8n_and_must_be_http() -> None:
    assert problems(n8n_instance(base_url="")) == {"instance.base_url": "is required"}
    assert "instance.base_url" in problems(n8n_instance(base_url="ftp://x.example"))
    assert "user info" in problems(n8n_instance(base_url="https://u:p@x.example"))["instance.base_url"]
    assert "query" in problems(n8n_instance(base_url="https://x.example/?a=1"))["instance.base_url"]
    assert "longer" in problems(n8n_instance(base_url="https://x.example/" + "a" * 2048))["instance.base_url"]
    assert "instance.callback_url" in problems(n8n_instance(callback_url="mesh.example/cb"))


def test_text_limits() -> None:
    found = problems(n8n_instance(display_name="x" * 201, description="y" * 2001))
    assert found == {
        "instance.display_name": "is longer than 200 characters",
        "instance.description": "is longer than 2000 characters",
    }


def test_workflow_ids() -> None:
    assert "required" in problems(n8n_instance(workflow_ids={}, user_mappings=[]))["instance.workflow_ids"]
    found = problems(
        n8n_instance(
            workflow_ids={"summarize": "has space", "-bad": "x", "ok": "", "up": "../api/v1", "lead": "/abs"},
            user_mappings=[],
        )
    )
    assert found["instance.workflow_ids.summarize"] == "must not contain whitespace"
    assert found["instance.workflow_ids.-bad"].startswith("alias must be")
    assert found["instance.workflow_ids.ok"] == "is required"
    assert "'..'" in found["instance.workflow_ids.up"]
    assert "leading '/'" in found["instance.workflow_ids.lead"]
    # Coze ids are not paths: a slash is fine there.
    assert problems(n8n_instance(base_url="", workflow_ids={"a": "x/y"}, user_mappings=[]), "coze") == {}
    many = {f"w{i}": str(i) for i in range(257)}
    assert (
        "more than 256"
        in problems(n8n_instance(workflow_ids=many, user_mappings=[]))["instance.workflow_ids"]
    )


def test_user_mappings() -> None:
    found = problems(
        n8n_instance(
            user_mappings=[
                connector_pb2.UserMapping(user_id="alice", platform_user_id="a1"),
                connector_pb2.UserMapping(user_id="alice", platform_user_id="a2", workflow_aliases=["nope"]),
                connector_pb2.UserMapping(user_id="", platform_user_id=""),
            ]
        )
    )
    assert found == {
        "instance.user_mappings[1].user_id": "is mapped twice",
        "instance.user_mappings[1].workflow_aliases[0]": "is not an alias of workflow_ids",
        "instance.user_mappings[2].user_id": "is required",
        "instance.user_mappings[2].platform_user_id": "is required",
    }


def test_templates_are_bounded_and_their_placeholders_checked() -> None:
    big = dict_to_struct({"x": "a" * (64 * 1024)})
    assert "64 KiB" in problems(n8n_instance(input_template=big))["instance.input_template"]
    deep: dict[str, object] = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    assert "deeper" in problems(n8n_instance(input_template=dict_to_struct(deep)))["instance.input_template"]
    found = problems(
        n8n_instance(
            input_template=dict_to_struct({"a": {"b": "{{result.x}}"}}),
            output_template=dict_to_struct({"c": "{{ result.x.. }}"}),
        )
    )
    assert found["instance.input_template.a.b"] == "{{result.x}} must read from context"
    assert "is not a placeholder" in found["instance.output_template.c"]


def test_dotted_paths() -> None:
    found = problems(
        n8n_instance(required_context_fields=["a.b", "a..b", "a b"], sensitive_fields=["x" * 300])
    )
    assert set(found) == {
        "instance.required_context_fields[1]",
        "instance.required_context_fields[2]",
        "instance.sensitive_fields[0]",
    }
    assert (
        "more than 100" in problems(n8n_instance(sensitive_fields=["a"] * 101))["instance.sensitive_fields"]
    )


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (
            {"rate_limit": connector_pb2.RateLimit(requests_per_second=-1)},
            "instance.rate_limit.requests_per_second",
        ),
        (
            {"rate_limit": connector_pb2.RateLimit(requests_per_second=float("nan"))},
            "instance.rate_limit.requests_per_second",
        ),
        (
            {"rate_limit": connector_pb2.RateLimit(requests_per_second=100_001)},
            "instance.rate_limit.requests_per_second",
        ),
        ({"rate_limit": connector_pb2.RateLimit(burst=-1)}, "instance.rate_limit.burst"),
        ({"retry_policy": connector_pb2.RetryPolicy(max_attempts=11)}, "instance.retry_policy.max_attempts"),
        (
            {"retry_policy": connector_pb2.RetryPolicy(backoff_multiplier=0.5)},
            "instance.retry_policy.backoff_multiplier",
        ),
        (
            {"retry_policy": connector_pb2.RetryPolicy(backoff_multiplier=11)},
            "instance.retry_policy.backoff_multiplier",
        ),
        (
            {"retry_policy": connector_pb2.RetryPolicy(initial_backoff=duration_pb2.Duration(seconds=-1))},
            "instance.retry_policy.initial_backoff",
        ),
        (
            {
                "retry_policy": connector_pb2.RetryPolicy(
                    initial_backoff=duration_pb2.Duration(seconds=10),
                    max_backoff=duration_pb2.Duration(seconds=5),
                )
            },
            "instance.retry_policy.initial_backoff",
        ),
        ({"timeout": duration_pb2.Duration(seconds=601)}, "instance.timeout"),
        ({"timeout": duration_pb2.Duration(seconds=-1)}, "instance.timeout"),
        ({"webhook_tolerance": duration_pb2.Duration(seconds=86_401)}, "instance.webhook_tolerance"),
        ({"local_capability_id": "Not A Capability"}, "instance.local_capability_id"),
        ({"labels": {"Bad Key": "x"}}, "instance.labels[Bad Key]"),
    ],
)
def test_limits(override: dict[str, object], field: str) -> None:
    assert field in problems(n8n_instance(**override))


def test_output_only_fields_must_be_unset() -> None:
    inst = n8n_instance(
        instance_id="i1", tenant_id="t1", platform="n8n", secret_ref="secret://x", config_version=3
    )
    inst.create_time.GetCurrentTime()
    inst.update_time.GetCurrentTime()
    inst.credential.version = 1
    found = problems(inst)
    assert sorted(found) == sorted(f"instance.{n}" for n in validation.OUTPUT_ONLY_FIELDS)
    assert all(d == "is output only and must not be set" for d in found.values())


def test_credential_input_only_at_creation() -> None:
    assert problems(n8n_instance(), creating=False) == {
        "instance.credential_input": "is only accepted at creation: use RotateCredential"
    }
    inst = n8n_instance()
    inst.ClearField("credential_input")
    assert problems(inst, creating=False) == {}


def test_api_key_and_oauth() -> None:
    assert cred_problems(connector_pb2.CredentialInput(), required=True) == {
        "credential_input": "is required: give api_key, oauth, coze_jwt, webhook_secrets or secret_headers"
    }
    assert cred_problems(connector_pb2.CredentialInput(), required=False) == {}
    bad = connector_pb2.CredentialInput(api_key=connector_pb2.ApiKeyCredential(token=SECRET_TOKEN + " x"))
    assert cred_problems(bad) == {
        "credential_input.api_key.token": "must not contain whitespace or control characters"
    }
    long = connector_pb2.CredentialInput(api_key=connector_pb2.ApiKeyCredential(token="a" * 4097))
    assert "longer" in cred_problems(long)["credential_input.api_key.token"]
    expired = connector_pb2.ApiKeyCredential(token="t", expire_time=timestamp_pb2.Timestamp(seconds=-5))
    assert "credential_input.api_key.expire_time" in cred_problems(
        connector_pb2.CredentialInput(api_key=expired)
    )
    oauth = connector_pb2.OAuthCredential(refresh_token="r", token_url="not a url", client_id="c" * 256)
    assert set(cred_problems(connector_pb2.CredentialInput(oauth=oauth))) == {
        "credential_input.oauth.access_token",
        "credential_input.oauth.token_url",
        "credential_input.oauth.client_id",
    }
    good = connector_pb2.OAuthCredential(
        access_token="a", refresh_token="r", token_url="https://api.coze.com/t"
    )
    assert cred_problems(connector_pb2.CredentialInput(oauth=good)) == {}


def test_coze_jwt(rsa_pem: str) -> None:
    def jwt(**kw: object) -> connector_pb2.CredentialInput:
        args: dict[str, object] = {"app_id": "app", "public_key_id": "kid", "private_key_pem": rsa_pem} | kw
        return connector_pb2.CredentialInput(coze_jwt=connector_pb2.CozeJwtCredential(**args))  # type: ignore[arg-type]

    assert cred_problems(jwt()) == {}
    assert cred_problems(jwt(), "n8n") == {"credential_input.coze_jwt": "is only for platform coze"}
    assert set(cred_problems(jwt(app_id="", public_key_id=""))) == {
        "credential_input.coze_jwt.app_id",
        "credential_input.coze_jwt.public_key_id",
    }
    garbage = "-----BEGIN PRIVATE KEY-----\nSECRETGARBAGE\n-----END PRIVATE KEY-----\n"
    found = cred_problems(jwt(private_key_pem=garbage))
    assert found == {
        "credential_input.coze_jwt.private_key_pem": "must be an unencrypted RSA private key in PEM"
    }
    ec_pem = _pem(ec.generate_private_key(ec.SECP256R1()))
    assert "RSA" in cred_problems(jwt(private_key_pem=ec_pem))["credential_input.coze_jwt.private_key_pem"]
    small = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    assert "2048" in cred_problems(jwt(private_key_pem=small))["credential_input.coze_jwt.private_key_pem"]
    assert "credential_input.coze_jwt.token_ttl" in cred_problems(
        jwt(token_ttl=duration_pb2.Duration(seconds=86_400))
    )
    assert cred_problems(jwt(token_ttl=duration_pb2.Duration(seconds=86_399))) == {}


def test_webhook_secrets_headers_and_verify_token() -> None:
    ok = connector_pb2.CredentialInput(
        webhook_secrets=[WHSEC, "a-typed-secret-of-20c"],
        secret_headers={"X-Mesh-Token": "v", "Authorization": "Bearer x"},
        coze_verify_token="vt",
    )
    assert cred_problems(ok) == {}
    short = "whsec_" + base64.b64encode(b"k" * 16).decode()
    bad = connector_pb2.CredentialInput(
        webhook_secrets=[short, "whsec_!!notbase64!!", "tooshort", WHSEC],
        secret_headers={"Bad Header": "v", "X-Split": "a\r\nInjected: 1", "Host": "h", "X-Empty": ""},
        coze_verify_token="t" * 513,
    )
    found = cred_problems(bad)
    for i in range(3):
        assert f"credential_input.webhook_secrets[{i}]" in found
    assert "credential_input.webhook_secrets[3]" not in found
    assert "RFC 7230" in found["credential_input.secret_headers"]
    assert found["credential_input.secret_headers[X-Split]"] == "must not contain CR, LF or NUL"
    assert "HTTP client" in found["credential_input.secret_headers[Host]"]
    assert "required" in found["credential_input.secret_headers[X-Empty]"]
    assert "credential_input.coze_verify_token" in found
    six = connector_pb2.CredentialInput(webhook_secrets=[WHSEC] * 6)
    assert "more than 5" in cred_problems(six)["credential_input.webhook_secrets"]
    many = connector_pb2.CredentialInput(secret_headers={f"X-H{i}": "v" for i in range(11)})
    assert "more than 10" in cred_problems(many)["credential_input.secret_headers"]


def test_violation_messages_never_contain_secret_values() -> None:
    secret_pem = "-----BEGIN PRIVATE KEY-----\n" + SECRET_TOKEN + "\n-----END PRIVATE KEY-----\n"
    ci = connector_pb2.CredentialInput(
        oauth=connector_pb2.OAuthCredential(
            access_token=SECRET_TOKEN + " ",
            refresh_token=SECRET_TOKEN + "\n",
            client_secret=SECRET_TOKEN + " ",
        ),
        webhook_secrets=["whsec_" + SECRET_TOKEN, SECRET_TOKEN + " x"],
        secret_headers={"X-T": SECRET_TOKEN + "\n"},
        coze_verify_token=SECRET_TOKEN * 40,
    )
    jwt = connector_pb2.CredentialInput(
        coze_jwt=connector_pb2.CozeJwtCredential(app_id="a", public_key_id="k", private_key_pem=secret_pem)
    )
    v = Violations()
    validate_credential_input(ci, "coze", v, "c", required=True)
    validate_credential_input(jwt, "coze", v, "c", required=True)
    assert len(v.items) >= 7
    with pytest.raises(InvalidArgument) as err:
        v.raise_if_any()
    for f, d in v.items:
        assert "SUPERSECRET" not in f
        assert "SUPERSECRET" not in d
    assert "SUPERSECRET" not in str(err.value)


def test_updatable_fields_are_the_settable_fields() -> None:
    names = {f.name for f in connector_pb2.ConnectorInstance.DESCRIPTOR.fields}
    assert set(UPDATABLE_FIELDS) == names - set(validation.OUTPUT_ONLY_FIELDS) - {"credential_input"}
    assert "workflow_ids" in UPDATABLE_FIELDS
    assert "instance_id" not in UPDATABLE_FIELDS


def _mask_problems(paths: list[str]) -> list[tuple[str, str]]:
    v = Violations()
    check_update_mask(paths, v)
    return v.items


def test_update_mask() -> None:
    assert _mask_problems(["timeout", "workflow_ids", "rate_limit.burst", "retry_policy.max_attempts"]) == []
    assert _mask_problems(["*"]) == []
    assert _mask_problems([]) == [("update_mask", "is required: name the fields to change, or * for all")]
    assert _mask_problems(["*", "timeout"])[0][0] == "update_mask"
    found = dict(
        _mask_problems(["instance_id", "credential_input", "nope", "rate_limit.nope", "timeout.seconds"])
    )
    assert found == {
        "update_mask.paths[0]": "instance_id is output only",
        "update_mask.paths[1]": "credential_input changes only through RotateCredential",
        "update_mask.paths[2]": "'nope' is not a field of ConnectorInstance",
        "update_mask.paths[3]": "'rate_limit.nope' is not a field that can be updated on its own",
        "update_mask.paths[4]": "'timeout.seconds' is not a field that can be updated on its own",
    }


def test_apply_update_mask_replaces_named_fields_only() -> None:
    base = n8n_instance(instance_id="i1", config_version=4)
    patch = connector_pb2.ConnectorInstance(
        workflow_ids={"only": "one"},
        rate_limit=connector_pb2.RateLimit(burst=99, requests_per_second=1),
        display_name="new",
    )
    out = apply_update_mask(base, patch, ["workflow_ids", "rate_limit.burst"])
    assert dict(out.workflow_ids) == {"only": "one"}
    assert out.rate_limit.burst == 99
    assert out.rate_limit.requests_per_second == 5  # not named
    assert out.display_name == "ACME n8n"
    assert out.instance_id == "i1"
    assert base.rate_limit.burst == 10  # base unchanged
    everything = apply_update_mask(base, patch, ["*"])
    assert everything.display_name == "new"
    assert everything.description == ""
    assert not everything.enabled
    assert everything.instance_id == "i1"  # output-only fields are never taken from the patch
    assert everything.HasField("credential_input")  # nor is the credential


def test_settings_of_clears_output_and_credential_fields() -> None:
    inst = n8n_instance(instance_id="i1", tenant_id="t", config_version=2)
    out = settings_of(inst)
    assert out.instance_id == ""
    assert out.tenant_id == ""
    assert out.config_version == 0
    assert not out.HasField("credential_input")
    assert out.display_name == "ACME n8n"
    assert problems(out, creating=False) == {}


@pytest.fixture(autouse=True)
def _no_leak(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert "SUPERSECRET" not in caplog.text
