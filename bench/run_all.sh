#!/usr/bin/env bash
# Runs the benchmarks in order (see bench/README.md); results in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for b in intake cleanup scale sweep latency history "history --rss" retention activity; do
  echo "== $b  ($(uptime))"
  # shellcheck disable=SC2086  # "history --rss" is a module and its option
  "$PY" -m bench.$b
done
echo "== done ($(uptime))"
