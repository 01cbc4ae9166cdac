#!/usr/bin/env bash
# Static checks CI runs: gen/ freshness, buf lint/format/breaking, ruff, mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=node_modules/.bin/buf

echo "== gen/ is fresh"
.venv/bin/python scripts/gen.py >/dev/null 2>&1
if [ -n "$(git status --porcelain -- gen/)" ]; then
  git status --porcelain -- gen/ | head -20
  echo "gen/ is stale: run 'make gen' and commit the result" >&2
  exit 1
fi

echo "== buf lint"
$BUF lint
echo "== buf format"
$BUF format -d --exit-code
echo "== buf breaking (against main)"
if git rev-parse --verify -q refs/heads/main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then
  $BUF breaking --against '.git#branch=main'
elif git rev-parse --verify -q refs/remotes/origin/main >/dev/null && git cat-file -e origin/main:buf.yaml 2>/dev/null; then
  $BUF breaking --against '.git#ref=refs/remotes/origin/main'
else
  echo "(no main branch with contracts yet: nothing to compare against)"
fi

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
