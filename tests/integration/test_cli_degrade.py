"""`powerx degrade` against a real mesh: it sets, shows and lists the switch, and fails loudly."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import grpc
import pytest

from powerx.connector.v1 import connector_service_pb2 as svc
from powerx.connector.v1 import connector_service_pb2_grpc as svc_grpc
from powerx.connector.v1 import degrade_pb2
from servers.cli import main, parse_duration
from servers.mesh import Mesh


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Runs `powerx …` (its own event loop, so in a thread) and returns its exit code and output."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _state(mesh: Mesh, platform: str, tenant: str = "t1") -> degrade_pb2.DegradeState:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        resp = await svc_grpc.ConnectorServiceStub(ch).GetDegradeState(
            svc.GetDegradeStateRequest(platform=platform), metadata=(("x-tenant-id", tenant),)
        )
    return resp.state


async def test_degrade_sets_the_switch_shows_it_and_recovers(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await _state(mesh, "coze")).mode == degrade_pb2.DEGRADE_MODE_OFF
    code, out, err = await _cli(
        capsys,
        "degrade",
        "--platform",
        "coze",
        "--mode",
        "local",
        "--tenant",
        "t1",
        "--timeout",
        "30m",
        "--reason",
        "coze outage",
        "--capability",
        "local.x",
        "--address",
        mesh.address,
        "--principal",
        "ops-alice",
    )
    assert code == 0, err
    printed: dict[str, Any] = json.loads(out)
    assert printed["mode"] == "DEGRADE_MODE_LOCAL"
    assert printed["platform"] == "coze"
    assert printed["tenant_id"] == "t1"
    assert printed["actor"] == "ops-alice"
    assert printed["reason"] == "coze outage"
    assert printed["local_capability_id"] == "local.x"

    state = await _state(mesh, "coze")
    assert state.mode == degrade_pb2.DEGRADE_MODE_LOCAL
    assert state.actor == "ops-alice"
    assert state.local_capability_id == "local.x"
    held_ms = state.expire_time.ToMilliseconds() - state.set_time.ToMilliseconds()
    assert abs(held_ms - 30 * 60 * 1000) < 2000
    assert (await _state(mesh, "n8n")).mode == degrade_pb2.DEGRADE_MODE_OFF  # another platform
    assert (await _state(mesh, "coze", "t2")).mode == degrade_pb2.DEGRADE_MODE_OFF  # another tenant

    code, out, err = await _cli(
        capsys, "degrade", "--platform", "coze", "--status", "--tenant", "t1", "--address", mesh.address
    )
    assert code == 0, err
    assert json.loads(out)["mode"] == "DEGRADE_MODE_LOCAL"

    code, out, err = await _cli(
        capsys,
        "degrade",
        "--platform",
        "coze",
        "--mode",
        "HUMAN",
        "--tenant",
        "t1",
        "--address",
        mesh.address,
    )
    assert code == 0, err
    assert (await _state(mesh, "coze")).mode == degrade_pb2.DEGRADE_MODE_HUMAN
    assert json.loads(out)["actor"]  # the login name by default

    code, out, err = await _cli(
        capsys,
        "degrade",
        "--platform",
        "coze",
        "--mode",
        "off",
        "--tenant",
        "t1",
        "--reason",
        "recovered",
        "--address",
        mesh.address,
    )
    assert code == 0, err
    assert json.loads(out)["mode"] == "DEGRADE_MODE_OFF"
    assert (await _state(mesh, "coze")).mode == degrade_pb2.DEGRADE_MODE_OFF

    code, out, err = await _cli(
        capsys, "degrade", "--platform", "coze", "--history", "--tenant", "t1", "--address", mesh.address
    )
    assert code == 0, err
    modes = [s["mode"] for s in json.loads(out)["states"]]
    assert modes == ["DEGRADE_MODE_OFF", "DEGRADE_MODE_HUMAN", "DEGRADE_MODE_LOCAL"]


async def test_degrade_address_defaults_to_the_mesh_setting(
    mesh: Mesh, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERX_GRPC_ADDRESS", f"0.0.0.0:{mesh.port}")
    code, _, err = await _cli(
        capsys, "degrade", "--platform", "n8n", "--mode", "human", "--tenant", "t1", "--timeout", "2h"
    )
    assert code == 0, err
    assert (await _state(mesh, "n8n")).mode == degrade_pb2.DEGRADE_MODE_HUMAN


async def test_degrade_reports_the_meshs_refusal(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    # 8 days parses, but the mesh allows at most 7.
    code, out, err = await _cli(
        capsys,
        "degrade",
        "--platform",
        "coze",
        "--mode",
        "local",
        "--tenant",
        "t1",
        "--timeout",
        "8d",
        "--address",
        mesh.address,
    )
    assert code != 0
    assert out == ""
    assert "INVALID_ARGUMENT" in err
    assert "timeout" in err
    assert (await _state(mesh, "coze")).mode == degrade_pb2.DEGRADE_MODE_OFF
    # A malformed tenant: the ErrorInfo reason is shown.
    code, _, err = await _cli(
        capsys,
        "degrade",
        "--platform",
        "coze",
        "--status",
        "--tenant",
        "Not A Tenant",
        "--address",
        mesh.address,
    )
    assert code != 0
    assert "reason: TENANT_REQUIRED" in err, err


async def test_degrade_reports_an_unreachable_mesh(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = await _cli(
        capsys,
        "degrade",
        "--platform",
        "coze",
        "--mode",
        "off",
        "--tenant",
        "t1",
        "--address",
        f"127.0.0.1:{port}",
    )
    assert code != 0
    assert out == ""
    assert "UNAVAILABLE" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "sideways", "--tenant", "t1"], "invalid choice: 'sideways'"),
        (["--mode", "local", "--tenant", "t1", "--timeout", "30x"], "invalid duration '30x'"),
        (["--mode", "local", "--tenant", "t1", "--timeout", "soon"], "invalid duration 'soon'"),
        (["--tenant", "t1"], "one of the arguments --mode --status --history is required"),
        (["--status", "--mode", "off", "--tenant", "t1"], "not allowed with argument"),
        (["--status", "--tenant", "t1", "--timeout", "1h"], "go with --mode"),
        (["--mode", "off"], "the following arguments are required: --tenant"),
    ],
)
def test_degrade_rejects_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["degrade", "--platform", "coze", "--address", "127.0.0.1:1", *argv])
    assert exited.value.code != 0
    assert message in capsys.readouterr().err


def test_degrade_rejects_an_unknown_platform(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["degrade", "--platform", "zapier", "--mode", "off", "--tenant", "t1"])
    assert exited.value.code != 0
    assert "invalid choice: 'zapier'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("45", 45), ("2H", 7200)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
