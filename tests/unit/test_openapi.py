"""The committed OpenAPI document (gen/openapi) describes exactly the `google.api.http` rules of the protos.

The expected REST surface is read from the compiled descriptors in gen/python, not from the document's
generator, so a generator that drops, adds or misplaces an operation fails here. scripts/check.sh checks
separately that the document is fresh.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FileDescriptor

import powerx

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "gen" / "openapi" / "powerx.openapi.yaml"
# The operations a Swagger 2.0 path item can hold; its other keys (`parameters`) are not operations.
OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch")
_VARIABLE = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of an RPC, as the document must show it."""

    rpc: str  # powerx.agent.v1.AgentService.GetAgent
    operation: str  # AgentService_GetAgent; additional bindings get a number after it
    verb: str  # lower case, as in a Swagger path item
    path: str  # the template with `{field=pattern}` written `{field}`
    path_params: frozenset[str]
    has_body: bool


def bindings_of(service: str, method: str, package: str, rule: Any) -> list[Binding]:
    """The bindings of one RPC: its HttpRule and each of the rule's additional_bindings."""
    found = []
    for r in [rule, *rule.additional_bindings]:
        kind = r.WhichOneof("pattern")
        if kind == "custom":
            verb, template = r.custom.kind.lower(), r.custom.path
        else:
            verb, template = kind, getattr(r, kind)
        found.append(
            Binding(
                rpc=f"{package}.{service}.{method}",
                operation=f"{service}_{method}",
                verb=verb,
                path=_VARIABLE.sub(r"{\1}", template),
                path_params=frozenset(_VARIABLE.findall(template)),
                has_body=bool(r.body),
            )
        )
    return found


def _proto_files() -> Iterator[FileDescriptor]:
    for info in pkgutil.walk_packages(powerx.__path__, "powerx."):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(info.name).DESCRIPTOR


def expected_bindings() -> list[Binding]:
    """Every HTTP binding declared in the compiled protos of gen/python."""
    found = []
    for file in _proto_files():
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(annotations_pb2.http):
                    rule = options.Extensions[annotations_pb2.http]
                    found += bindings_of(service.name, method.name, file.package, rule)
    return found


def differences(expected: list[Binding], document: dict[str, Any]) -> list[str]:
    """What differs between the bindings and the document's operations (empty when they agree)."""
    problems = []
    wanted: dict[tuple[str, str], Binding] = {}
    for b in expected:
        other = wanted.setdefault((b.verb, b.path), b)
        if other is not b:
            problems.append(f"{b.verb.upper()} {b.path} is bound by both {other.rpc} and {b.rpc}")
    actual = {
        (verb, path): operation
        for path, item in document.get("paths", {}).items()
        for verb, operation in item.items()
        if verb in OPERATIONS
    }
    for key in sorted(wanted.keys() - actual.keys()):
        problems.append(f"missing: {key[0].upper()} {key[1]} ({wanted[key].rpc})")
    for key in sorted(actual.keys() - wanted.keys()):
        problems.append(f"not in any http rule: {key[0].upper()} {key[1]} ({actual[key].get('operationId')})")
    for key in sorted(wanted.keys() & actual.keys()):
        b, operation = wanted[key], actual[key]
        where = f"{key[0].upper()} {key[1]}"
        if not re.fullmatch(rf"{re.escape(b.operation)}\d*", operation.get("operationId", "")):
            problems.append(f"{where} is operation {operation.get('operationId')!r}, not {b.rpc}")
        parameters = operation.get("parameters", [])
        in_path = {p["name"] for p in parameters if p.get("in") == "path"}
        if in_path != b.path_params:
            problems.append(f"{where} has path parameters {sorted(in_path)}, not {sorted(b.path_params)}")
        has_body = any(p.get("in") == "body" for p in parameters)
        if has_body != b.has_body:
            problems.append(f"{where} {'has' if has_body else 'lacks'} a body parameter")
    return problems


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


@pytest.fixture(scope="module")
def expected() -> list[Binding]:
    return expected_bindings()


# --- the committed document ------------------------------------------------------------------------


def test_document_has_every_http_binding_and_nothing_else(
    document: dict[str, Any], expected: list[Binding]
) -> None:
    assert document["swagger"] == "2.0"
    assert differences(expected, document) == []


def test_every_service_with_http_rules_is_covered(expected: list[Binding]) -> None:
    # Guards the descriptor walk itself: an empty or partial walk would make the comparison vacuous.
    services = {b.rpc.rsplit(".", 1)[0] for b in expected}
    assert {
        "powerx.agent.v1.AgentService",
        "powerx.connector.v1.ConnectorService",
        "powerx.registry.v1.RegistryService",
        "powerx.router.v1.RouterService",
    } <= services
    assert ("post", "/platform/connectors/{platform}/invoke") in {(b.verb, b.path) for b in expected}


def test_methods_without_a_rule_are_left_out(document: dict[str, Any]) -> None:
    # ProviderService (implemented by providers) and the bidi Connect session have no REST binding.
    operation_ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    assert not {o for o in operation_ids if o.startswith("ProviderService_")}
    assert "AgentService_Connect" not in operation_ids


# --- the comparison can fail -----------------------------------------------------------------------


def _first(document: dict[str, Any], verb: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = document["paths"][path][verb]
    return operation


def _drop_operation(d: dict[str, Any]) -> None:
    del d["paths"]["/platform/connectors/{platform}/invoke"]["post"]


def _add_operation(d: dict[str, Any]) -> None:
    d["paths"]["/api/v1/nowhere"] = {"get": {"operationId": "AgentService_GetAgent", "parameters": []}}


def _change_verb(d: dict[str, Any]) -> None:
    item = d["paths"]["/platform/connectors/{platform}/invoke"]
    item["put"] = item.pop("post")


def _rename_path_parameter(d: dict[str, Any]) -> None:
    (p,) = [p for p in _first(d, "get", "/api/v1/agents/{agent_id}")["parameters"] if p["in"] == "path"]
    p["name"] = "id"


def _drop_body(d: dict[str, Any]) -> None:
    op = _first(d, "post", "/platform/connectors/{platform}/invoke")
    op["parameters"] = [p for p in op["parameters"] if p["in"] != "body"]


def _swap_operation(d: dict[str, Any]) -> None:
    _first(d, "get", "/api/v1/agents/{agent_id}")["operationId"] = "AgentService_DeleteAgent"


@pytest.mark.parametrize(
    "mutate",
    [_drop_operation, _add_operation, _change_verb, _rename_path_parameter, _drop_body, _swap_operation],
)
def test_a_document_that_drifted_is_caught(
    document: dict[str, Any], expected: list[Binding], mutate: Any
) -> None:
    drifted = copy.deepcopy(document)
    mutate(drifted)
    assert differences(expected, drifted)


def test_additional_bindings_and_custom_verbs_are_expected() -> None:
    rule = http_pb2.HttpRule(get="/v1/{name=things/*}")
    rule.additional_bindings.add(post="/v1/{name=things/*}:fetch", body="*")
    rule.additional_bindings.add(custom=http_pb2.CustomHttpPattern(kind="HEAD", path="/v1/h/{name}"))
    got = bindings_of("S", "Get", "x.v1", rule)
    assert [(b.verb, b.path, b.has_body) for b in got] == [
        ("get", "/v1/{name}", False),
        ("post", "/v1/{name}:fetch", True),
        ("head", "/v1/h/{name}", False),
    ]
    assert {b.path_params for b in got} == {frozenset({"name"})}
    document = {
        "paths": {
            "/v1/{name}": {"get": {"operationId": "S_Get", "parameters": [{"name": "name", "in": "path"}]}}
        }
    }
    assert differences(got, document) == [
        "missing: HEAD /v1/h/{name} (x.v1.S.Get)",
        "missing: POST /v1/{name}:fetch (x.v1.S.Get)",
    ]


def test_two_rpcs_on_one_binding_are_a_conflict() -> None:
    a = bindings_of("S", "A", "x.v1", http_pb2.HttpRule(get="/v1/x"))
    b = bindings_of("S", "B", "x.v1", http_pb2.HttpRule(get="/v1/x"))
    document = {"paths": {"/v1/x": {"get": {"operationId": "S_A", "parameters": []}}}}
    assert differences(a + b, document) == ["GET /v1/x is bound by both x.v1.S.A and x.v1.S.B"]
