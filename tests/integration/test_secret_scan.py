"""No secret leaks: a full connector flow, then every place a secret could end up is scanned for it.

The flow (fake n8n and Coze): instances with an API key, a secret header, a webhook secret, a Coze PAT,
OAuth (client secret, access and rotating refresh tokens) and a Coze JWT app (private key); sync, async
and streamed invocations; a signed webhook and a tampered one; a platform refusing a bad token;
workflow listing and health; rotation, rollback and refresh. Then each secret value, and its base64
(standard and URL-safe, at every byte alignment) and hex encodings, is looked for in:

* a dump of every column of every row of every table of the mesh's database,
* everything logged (every logger at DEBUG, as records and through the JSON formatter),
* the audit rows,
* the Prometheus exposition,
* every gRPC response of the flow.

A planted canary (in a database column, in a log line and in a response) proves the scanner finds
what it looks for. The figures (secrets, encodings, bytes scanned) are printed.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api import httpbody_pb2
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from prometheus_client import generate_latest

from powerx.connector.v1 import connector_pb2, invocation_pb2
from powerx.connector.v1 import connector_service_pb2 as svc
from powerx.connector.v1 import connector_service_pb2_grpc as svc_grpc
from servers.common.db import create_engine
from servers.common.logs import JsonFormatter
from servers.connector import guard
from servers.mesh import Mesh
from tests.fakes.coze import FakeCoze
from tests.fakes.n8n import FakeN8n
from tests.reliability import call_metadata, emit

SUCCEEDED = invocation_pb2.INVOCATION_STATE_SUCCEEDED


# ---- the scanner -----------------------------------------------------------------------------------------


def _b64_fragments(secret: bytes) -> Iterator[bytes]:
    """The parts of base64 text that encode only `secret`'s bytes, at each of the three alignments.

    Base64 of a larger blob holding the secret contains one of these whatever precedes the secret.
    """
    n = len(secret)
    for k in range(3):
        text = base64.b64encode(b"\0" * k + secret).rstrip(b"=")
        start = -(-8 * k // 6)  # the first character made of secret bits only
        end = (8 * (k + n)) // 6  # the last one
        fragment = text[start:end]
        yield fragment
        yield fragment.replace(b"+", b"-").replace(b"/", b"_")


@dataclass
class Scanner:
    """Looks for each secret, and its base64 and hex encodings, in blobs."""

    secrets: dict[str, str] = field(default_factory=dict)
    bytes_scanned: int = 0
    blobs_scanned: int = 0

    def add(self, name: str, value: str) -> None:
        assert len(value) >= 12, f"{name}: too short to scan for without false positives"
        self.secrets[name] = value

    def needles(self) -> Iterator[tuple[str, str, bytes]]:
        for name, value in self.secrets.items():
            raw = value.encode()
            yield name, "raw", raw
            yield name, "hex", binascii.hexlify(raw)
            yield name, "HEX", binascii.hexlify(raw).upper()
            for fragment in _b64_fragments(raw):
                yield name, "base64", fragment

    def encodings(self) -> int:
        return len({(n, v) for n, _, v in self.needles()})

    def scan(self, source: str, blobs: Iterable[bytes]) -> list[str]:
        """Where a secret was found in `blobs` (empty: nowhere)."""
        needles = list(self.needles())
        found = []
        for i, blob in enumerate(blobs):
            self.bytes_scanned += len(blob)
            self.blobs_scanned += 1
            for name, kind, needle in needles:
                at = blob.find(needle)
                if at >= 0:
                    found.append(f"{name} ({kind}) in {source}[{i}]: …{blob[max(0, at - 60) : at + 60]!r}…")
        return found


def _bytes_of(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value, default=str, ensure_ascii=False).encode()


# ---- where secrets could end up --------------------------------------------------------------------------


async def database_dump(mesh: Mesh) -> dict[str, list[bytes]]:
    """Every column of every row of every table, one blob per row (PostgreSQL: the test's schema)."""
    engine = create_engine(mesh.settings.effective_database_url)
    out: dict[str, list[bytes]] = {}
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            if conn.dialect.name == "sqlite":  # also what the inspector may hide (views, sqlite_*)
                extra = await conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'table'"))
                names = sorted(set(names) | {str(n) for (n,) in extra})
            for name in names:
                rows = (await conn.execute(sa.text(f'SELECT * FROM "{name}"'))).all()
                out[name] = [b"\x1f".join(_bytes_of(v) for v in row) for row in rows]
    finally:
        await engine.dispose()
    return out


class Capture(logging.Handler):
    """Keeps every record, and its JSON-formatted line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines = io.StringIO()
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        try:
            self.lines.write(self.formatter_.format(record) + "\n")
        except Exception as exc:  # a record the formatter cannot render is a finding too
            self.lines.write(f"FORMAT FAILED {exc!r} {record.__dict__!r}\n")

    def blobs(self) -> list[bytes]:
        out = [line.encode() for line in self.lines.getvalue().splitlines()]
        for r in self.records:
            out.append(repr({k: v for k, v in r.__dict__.items() if k not in ("exc_info",)}).encode())
            if r.exc_info and r.exc_info[1] is not None:
                out.append(repr(r.exc_info[1]).encode())
        return out


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Capture]:
    """Every logger at DEBUG, including the ones that do not propagate to the root."""
    caplog.set_level(logging.DEBUG)
    handler = Capture()
    loggers = [logging.getLogger()] + [
        lg
        for lg in logging.Logger.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.propagate
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


# ---- the flow --------------------------------------------------------------------------------------------


def _secret(name: str) -> str:
    return f"SCAN{name}{secrets.token_hex(12)}"


def _ts(unix_s: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(int(unix_s * 1000))
    return t


@dataclass
class Flow:
    stub: svc_grpc.ConnectorServiceStub
    responses: list[Message] = field(default_factory=list)

    async def call(self, name: str, request: Message) -> Any:
        response = await getattr(self.stub, name)(request, metadata=call_metadata())
        self.responses.append(response)
        return response

    async def expect_error(self, name: str, request: Message, md: Any = None) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(self.stub, name)(request, metadata=md or call_metadata())
        return err.value

    def blobs(self) -> list[bytes]:
        out = []
        for r in self.responses:
            out.append(r.SerializeToString())
            out.append(json_format.MessageToJson(r).encode())
            out.append(str(r).encode())
        return out


def _ctx(**kw: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


@pytest.fixture
async def stub(mesh: Mesh) -> AsyncIterator[svc_grpc.ConnectorServiceStub]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield svc_grpc.ConnectorServiceStub(ch)  # type: ignore[no-untyped-call]


async def test_no_secret_reaches_the_database_logs_audit_metrics_or_responses(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, captured_logs: Capture, request: pytest.FixtureRequest
) -> None:
    scanner = Scanner()
    n8n_api_key = _secret("n8napikey")
    n8n_header = _secret("n8nheader")
    n8n_header_rotated = _secret("n8nheader2")
    webhook_key = secrets.token_bytes(32)
    webhook_secret = "whsec_" + base64.b64encode(webhook_key).decode()
    coze_pat = _secret("cozepat")
    coze_bad_pat = _secret("cozebadpat")
    client_secret = _secret("clientsecret")
    expired_access = _secret("oldaccess")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    for name, value in (
        ("n8n api key", n8n_api_key),
        ("n8n header token", n8n_header),
        ("n8n rotated header token", n8n_header_rotated),
        ("webhook secret", webhook_secret),
        ("webhook key (base64)", webhook_secret.removeprefix("whsec_")),
        ("coze PAT", coze_pat),
        ("coze refused PAT", coze_bad_pat),
        ("oauth client secret", client_secret),
        ("oauth expiring access token", expired_access),
    ):
        scanner.add(name, value)
    # The private key: its PEM text, and each line of its body (base64 of the DER).
    scanner.add("jwt private key (PEM)", pem)
    for i, line in enumerate(pem.splitlines()[1:-1]):
        if len(line) >= 16:
            scanner.add(f"jwt private key line {i}", line)
    scanner.add("webhook key (hex)", webhook_key.hex())

    flow = Flow(stub)
    canary = _secret("canary")
    async with (
        FakeN8n(("X-Mesh-Token", n8n_header), api_key=n8n_api_key, callback_secret=webhook_secret) as n8n,
        FakeCoze(
            tokens={coze_pat},
            jwt_app_id="app-1",
            jwt_public_keys={"kid-1": key.public_key()},
            oauth_clients={"cli": client_secret},
        ) as coze,
    ):
        n8n.webhook("mesh-invoke")
        n8n.add_workflow("Mesh invoke", webhook_paths=("mesh-invoke",))
        # -- n8n: API key, secret header, webhook secret --
        inst = connector_pb2.ConnectorInstance(
            # The canary goes into a plain column, hex-encoded: the database scan must find it.
            display_name=canary.encode().hex(),
            base_url=n8n.base_url,
            workflow_ids={"echo": "mesh-invoke"},
            default_platform_user_id="u1",
            enabled=True,
        )
        inst.credential_input.api_key.token = n8n_api_key
        inst.credential_input.secret_headers["X-Mesh-Token"] = n8n_header
        inst.credential_input.webhook_secrets.append(webhook_secret)
        await flow.call(
            "CreateConnectorInstance",
            svc.CreateConnectorInstanceRequest(platform="n8n", instance_id="acme", instance=inst),
        )
        inv = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(platform="n8n", workflow_id="echo", context=_ctx(q="hi")),
            )
        ).invocation
        assert inv.state == SUCCEEDED, inv
        assert n8n.requests[-1].headers["x-mesh-token"] == n8n_header  # the secret was really used
        await flow.call(
            "ListPlatformWorkflows", svc.ListPlatformWorkflowsRequest(platform="n8n", instance_id="acme")
        )
        await flow.call(
            "CheckPlatformHealth", svc.CheckPlatformHealthRequest(platform="n8n", instance_id="acme")
        )
        # An async run completed by a signed webhook, a tampered one refused.
        n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=60)
        pending = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(
                    platform="n8n",
                    workflow_id="echo",
                    context=_ctx(q="later"),
                    mode=invocation_pb2.INVOCATION_MODE_ASYNC,
                ),
            )
        ).invocation
        raw = json.dumps({"invocation_id": pending.invocation_id, "ok": True, "result": {"a": 1}}).encode()
        stamp = int(time.time())
        sig = guard.sign_standard(webhook_secret, "msg-1", stamp, raw)
        headers = (("webhook-id", "msg-1"), ("webhook-timestamp", str(stamp)), ("webhook-signature", sig))
        hook = svc.ReceiveWebhookRequest(
            platform="n8n",
            instance_id="acme",
            body=httpbody_pb2.HttpBody(content_type="application/json", data=raw),
        )
        err = await flow.expect_error(
            "ReceiveWebhook",
            svc.ReceiveWebhookRequest(
                platform="n8n",
                instance_id="acme",
                body=httpbody_pb2.HttpBody(content_type="application/json", data=raw + b" "),
            ),
            md=(*call_metadata(), *headers),
        )
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        flow.responses.append(await stub.ReceiveWebhook(hook, metadata=(*call_metadata(), *headers)))
        # Rotation, then rollback to the first version (the old secret stored again).
        await flow.call(
            "RotateCredential",
            svc.RotateCredentialRequest(
                platform="n8n",
                instance_id="acme",
                credential_input=connector_pb2.CredentialInput(
                    secret_headers={"X-Mesh-Token": n8n_header_rotated}
                ),
                reason="quarterly",
            ),
        )
        n8n.header_auth = ("X-Mesh-Token", n8n_header_rotated)
        n8n.webhook("mesh-invoke")
        inv = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(platform="n8n", workflow_id="echo", context=_ctx(q="r")),
            )
        ).invocation
        assert inv.state == SUCCEEDED, inv
        await flow.call(
            "UpdateConnectorInstance",
            svc.UpdateConnectorInstanceRequest(
                platform="n8n",
                instance_id="acme",
                instance=connector_pb2.ConnectorInstance(timeout=duration_pb2.Duration(seconds=5)),
                update_mask=field_mask_pb2.FieldMask(paths=["timeout"]),
            ),
        )
        await flow.call(
            "RollbackConfig",
            svc.RollbackConfigRequest(platform="n8n", instance_id="acme", version=1, restore_credential=True),
        )
        n8n.header_auth = ("X-Mesh-Token", n8n_header)
        inv = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(platform="n8n", workflow_id="echo", context=_ctx(q="b")),
            )
        ).invocation
        assert inv.state == SUCCEEDED, inv
        await flow.call(
            "ListConfigVersions", svc.ListConfigVersionsRequest(platform="n8n", instance_id="acme")
        )
        await flow.call(
            "GetConnectorInstance", svc.GetConnectorInstanceRequest(platform="n8n", instance_id="acme")
        )
        await flow.call("ListConnectorInstances", svc.ListConnectorInstancesRequest(platform="n8n"))
        await flow.call("ListInvocations", svc.ListInvocationsRequest(platform="n8n"))

        # -- Coze: a PAT (sync and streamed), a refused PAT, OAuth with refresh, a JWT app --
        def coze_instance(**kw: Any) -> connector_pb2.ConnectorInstance:
            return connector_pb2.ConnectorInstance(
                base_url=coze.base_url,
                workflow_ids={"summarize": "7366000000000000001"},
                default_platform_user_id="coze-user",
                enabled=True,
                retry_policy=connector_pb2.RetryPolicy(max_attempts=1),
                **kw,
            )

        pat = coze_instance()
        pat.credential_input.api_key.token = coze_pat
        await flow.call(
            "CreateConnectorInstance",
            svc.CreateConnectorInstanceRequest(platform="coze", instance_id="pat", instance=pat),
        )
        inv = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(
                    platform="coze", workflow_id="summarize", instance_id="pat", context=_ctx(text="t")
                ),
            )
        ).invocation
        assert inv.state == SUCCEEDED, inv
        async for item in stub.InvokeConnectorStream(
            svc.InvokeConnectorStreamRequest(
                platform="coze", workflow_id="summarize", instance_id="pat", context=_ctx(text="s")
            ),
            metadata=call_metadata(),
        ):
            flow.responses.append(item)
        bad = coze_instance()
        bad.credential_input.api_key.token = coze_bad_pat
        await flow.call(
            "CreateConnectorInstance",
            svc.CreateConnectorInstanceRequest(platform="coze", instance_id="refused", instance=bad),
        )
        inv = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(platform="coze", workflow_id="summarize", instance_id="refused"),
            )
        ).invocation
        assert inv.state != SUCCEEDED  # the platform refused the token: the error path was taken
        refresh = coze.issue_refresh_token("cli")
        scanner.add("oauth refresh token (first)", refresh)
        oauth = coze_instance()
        oauth.credential_input.oauth.CopyFrom(
            connector_pb2.OAuthCredential(
                access_token=expired_access,
                refresh_token=refresh,
                client_id="cli",
                client_secret=client_secret,
                expire_time=_ts(time.time() + 5),
            )
        )
        await flow.call(
            "CreateConnectorInstance",
            svc.CreateConnectorInstanceRequest(platform="coze", instance_id="oauth", instance=oauth),
        )
        inv = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(platform="coze", workflow_id="summarize", instance_id="oauth"),
            )
        ).invocation
        assert inv.state == SUCCEEDED, inv
        assert refresh not in coze.refresh_tokens  # refreshed on use (the refresh token rotated)
        await flow.call("RotateCredential", svc.RotateCredentialRequest(platform="coze", instance_id="oauth"))
        jwt = coze_instance()
        jwt.credential_input.coze_jwt.CopyFrom(
            connector_pb2.CozeJwtCredential(app_id="app-1", public_key_id="kid-1", private_key_pem=pem)
        )
        await flow.call(
            "CreateConnectorInstance",
            svc.CreateConnectorInstanceRequest(platform="coze", instance_id="jwt", instance=jwt),
        )
        inv = (
            await flow.call(
                "InvokeConnector",
                svc.InvokeConnectorRequest(platform="coze", workflow_id="summarize", instance_id="jwt"),
            )
        ).invocation
        assert inv.state == SUCCEEDED, inv
        await flow.call("ListConnectorInstances", svc.ListConnectorInstancesRequest(platform="coze"))
        # Every token the fake platform issued during the flow is a secret too.
        for token in coze.tokens:
            if token != coze_pat:
                scanner.add(f"coze issued token {token[:4]}", token)
        for token in coze.refresh_tokens:
            scanner.add(f"coze refresh token {token[:3]}", token)

    # The canary in a log line (base64) and in a response: the scanner must find it in both.
    logging.getLogger("powerx.secret_scan").debug(
        "canary %s", base64.b64encode(b"prefix-" + canary.encode()).decode()
    )
    canary_response = struct_pb2.Struct()
    canary_response.update({"planted": canary})
    flow.responses.append(canary_response)

    # ---- collect ----
    assert mesh.connectors is not None
    await mesh.connectors.audit_log.flush()
    if mesh.audit is not None:
        await mesh.audit.flush()
    dump = await database_dump(mesh)
    audit_tables = sorted(name for name in dump if "audit" in name)
    assert audit_tables, f"no audit table in {sorted(dump)}"
    assert any(dump[name] for name in audit_tables), "the flow wrote no audit rows"
    metrics = generate_latest(mesh.metrics)
    logs = captured_logs.blobs()
    assert len(logs) > 20, "the logs were not captured"

    # ---- the scanner works: it finds the canary where it was planted ----
    canary_scanner = Scanner()
    canary_scanner.add("canary", canary)
    assert canary_scanner.scan("database", [b for rows in dump.values() for b in rows]), (
        "not found in the dump"
    )
    assert canary_scanner.scan("logs", logs), "canary not found in the logs"
    assert canary_scanner.scan("responses", flow.blobs()), "canary not found in the responses"

    # ---- the secrets appear nowhere ----
    findings: list[str] = []
    for table, rows in sorted(dump.items()):
        findings += scanner.scan(f"table {table}", rows)
    findings += scanner.scan("logs", logs)
    findings += scanner.scan("metrics", [metrics])
    findings += scanner.scan("responses", flow.blobs())
    emit(
        request.config,
        [
            "",
            f"secret_scan [{mesh.settings.effective_database_url.split(':', 1)[0]}]: {len(scanner.secrets)} "
            f"secret values ({scanner.encodings()} needles with base64/hex encodings), "
            f"{scanner.bytes_scanned} bytes in {scanner.blobs_scanned} blobs: "
            f"{len(dump)} tables / {sum(len(r) for r in dump.values())} rows "
            f"(audit: {', '.join(f'{t}={len(dump[t])}' for t in audit_tables)}), "
            f"{len(captured_logs.records)} log records, {len(metrics)} bytes of metrics, "
            f"{len(flow.responses)} responses; findings: {len(findings)}",
        ],
    )
    assert not findings, "secrets leaked:\n" + "\n".join(findings[:30])


def test_the_scanner_finds_every_encoding_at_every_alignment() -> None:
    scanner = Scanner()
    secret = "SCANselfcheck" + secrets.token_hex(8)
    scanner.add("s", secret)
    for prefix in (b"", b"a", b"ab", b"abc"):
        blob = prefix + secret.encode() + b"tail"
        for encoded in (
            blob,
            base64.b64encode(blob),
            base64.urlsafe_b64encode(blob),
            binascii.hexlify(blob),
            binascii.hexlify(blob).upper(),
        ):
            assert scanner.scan("t", [b"<" + encoded + b">"]), (prefix, encoded)
    assert not scanner.scan("t", [b"nothing to see here", base64.b64encode(b"SCANselfcheck")])
