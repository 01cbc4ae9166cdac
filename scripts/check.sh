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
echo "== buf breaking"
# Against main when working on another branch. On main itself (as in CI) comparing with main is
# vacuous, so compare with the contracts as they were before the latest commit that changed proto/.
against="${BUF_BREAKING_AGAINST:-}"
if [ -z "$against" ]; then
  if git rev-parse --verify -q refs/heads/main >/dev/null && [ "$(git rev-parse HEAD)" != "$(git rev-parse main)" ]; then
    against=main
  else
    last=$(git log -1 --format=%H -- proto)
    [ -n "$last" ] && git rev-parse --verify -q "$last^" >/dev/null && against=$(git rev-parse "$last^")
  fi
fi
if [ -n "$against" ] && git cat-file -e "$against:buf.yaml" 2>/dev/null; then
  echo "(against $against)"
  $BUF breaking --against ".git#ref=$against"
else
  echo "(no earlier contracts to compare with)"
fi

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
