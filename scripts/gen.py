"""Regenerates everything under gen/ from proto/ (the one codegen command; CI checks it is fresh).

Outputs:
  gen/python/powerx/...           protoc Python stubs (_pb2.py, .pyi, _pb2_grpc.py) for our protos only
  gen/descriptors/powerx.binpb    descriptor set for Envoy's transcoder (imports + google/rpc/error_details)
  gen/betterproto/powerx_mesh_client/...   typed dataclass client (betterproto2) for SDK users
"""

from __future__ import annotations

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


def main() -> None:
    """Regenerates gen/."""
    if not BUF.exists():
        sys.exit(f"buf not found at {BUF}: run scripts/setup.sh first")
    _python_stubs()
    _descriptor()
    _betterproto()
    print(f"regenerated {GEN.relative_to(ROOT)}/ from {len(_protos())} proto files")


if __name__ == "__main__":
    main()
