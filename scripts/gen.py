"""Regenerates everything under gen/ from proto/ (the one codegen command; CI checks it is fresh).

Outputs:
  gen/python/powerx/...           protoc Python stubs (_pb2.py, .pyi, _pb2_grpc.py) for our protos only
  gen/descriptors/powerx.binpb    descriptor set for Envoy's transcoder (imports + google/rpc/error_details)
  gen/betterproto/powerx_mesh_client/...   typed dataclass client (betterproto2) for SDK users
  deploy/envoy, deploy/kubernetes/*configmap*, deploy/observability/grafana dashboards (scripts/gen_deploy.py)
  gen/openapi/powerx.openapi.yaml   OpenAPI 2.0 (Swagger) document of the REST surface (the google.api.http
                                  rules of every service, merged), by grpc-gateway's protoc-gen-openapiv2
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
GEN = ROOT / "gen"
BUF = ROOT / "node_modules" / ".bin" / "buf"
# grpc-gateway's OpenAPI generator; scripts/setup.sh puts the pinned version next to the interpreter.
OPENAPIV2 = Path(sys.executable).parent / "protoc-gen-openapiv2"
OPENAPI_INFO = {
    "title": "PowerX Integration Mesh REST API",
    "version": "v1",
    "description": (
        "The REST surface of the mesh's gRPC services, served by the Envoy edge's gRPC-JSON transcoder from "
        "the `google.api.http` rules in proto/ (generated from them by scripts/gen.py; do not edit). "
        "Field names are the proto names (snake_case), and responses print scalar fields even when they "
        "hold their default. Errors are `google.rpc.Status` JSON with the HTTP status of their gRPC code. "
        "Server-streaming methods answer with newline-delimited JSON: one bare response message per line "
        "(not the `result`/`error` wrapper grpc-gateway describes), the last one carrying `end`. A "
        "`google.api.HttpBody` request body is the raw HTTP body in any content type, not the JSON object "
        "its schema shows."
    ),
}


def _protos() -> list[str]:
    return sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))


def _protoc(*args: str) -> None:
    # grpc_tools adds its bundled google/protobuf includes itself.
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"-I{THIRD_PARTY}", *args]
    env = dict(os.environ)
    # The betterproto2 plugin is a console script next to the interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def _python_stubs() -> None:
    out = GEN / "python"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _protoc(f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *_protos())
    # Regular packages (not namespace packages) so setuptools and mypy find them.
    for d in sorted(p for p in out.rglob("*") if p.is_dir()):
        (d / "__init__.py").touch()
    (out / "powerx" / "py.typed").touch()


def _descriptor() -> None:
    out = GEN / "descriptors"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # Without source info the set stays small enough to inline into Envoy's config; it includes every
    # file of both buf modules, so google/rpc/error_details.proto is there for rich error details.
    subprocess.run(
        [str(BUF), "build", "--exclude-source-info", "-o", str(out / "powerx.binpb")], check=True, cwd=ROOT
    )


def _betterproto() -> None:
    out = GEN / "betterproto" / "powerx_mesh_client"
    shutil.rmtree(GEN / "betterproto", ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        _protoc(f"--python_betterproto2_out={tmp}", *_protos())
        shutil.copytree(tmp, out)


def _openapi() -> None:
    if not OPENAPIV2.exists():
        sys.exit(f"protoc-gen-openapiv2 not found at {OPENAPIV2}: run scripts/setup.sh first")
    out = GEN / "openapi"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    protos = _protos()
    with tempfile.TemporaryDirectory() as tmp:
        # A merged document takes its info from the first file, so every file gets the same one.
        config = Path(tmp) / "openapi_config.yaml"  # JSON is YAML
        config.write_text(
            json.dumps(
                {"openapiOptions": {"file": [{"file": f, "option": {"info": OPENAPI_INFO}} for f in protos]}}
            )
        )
        options = [
            "allow_merge=true",
            "merge_file_name=powerx",
            "output_format=yaml",
            # Message names are unique only per package (router and provider both have InvokeStreamRequest).
            "openapi_naming_strategy=fqn",
            # Envoy prints proto field names (print_options.preserve_proto_field_names).
            "json_names_for_fields=false",
            # grpc-gateway fills update_mask from a PATCH body; Envoy does not, so it stays a query parameter.
            "allow_patch_feature=false",
            "remove_internal_comments=true",
            f"openapi_configuration={config}",
        ]
        _protoc(
            f"--plugin=protoc-gen-openapiv2={OPENAPIV2}",
            f"--openapiv2_out={tmp}",
            f"--openapiv2_opt={','.join(options)}",
            *protos,
        )
        shutil.copyfile(Path(tmp) / "powerx.swagger.yaml", out / "powerx.openapi.yaml")


def main() -> None:
    """Regenerates gen/."""
    if not BUF.exists():
        sys.exit(f"buf not found at {BUF}: run scripts/setup.sh first")
    _python_stubs()
    _descriptor()
    _betterproto()
    _openapi()
    # deploy/: the Envoy configs and ConfigMaps derived from gateway/envoy.py and the descriptor set.
    import gen_deploy  # noqa: PLC0415 (a sibling script)

    if gen_deploy.main([]) != 0:
        sys.exit("scripts/gen_deploy.py failed")
    print(f"regenerated {GEN.relative_to(ROOT)}/ from {len(_protos())} proto files")


if __name__ == "__main__":
    main()
