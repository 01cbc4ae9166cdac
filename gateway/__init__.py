"""The public edge of the mesh: an Envoy proxy serving native gRPC and transcoded REST on one port."""

from gateway.envoy import GRPC_SERVICES, EdgeConfig, EnvoyEdge, EnvoyEdgeError, build_config

__all__ = ["GRPC_SERVICES", "EdgeConfig", "EnvoyEdge", "EnvoyEdgeError", "build_config"]
