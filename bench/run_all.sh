#!/usr/bin/env bash
# Runs the five benchmarks in order (see bench/README.md); results in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for b in intake cleanup scale sweep latency; do
  echo "== $b  ($(uptime))"
  "$PY" -m "bench.$b"
done
echo "== done ($(uptime))"
