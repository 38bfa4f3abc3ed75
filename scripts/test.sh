#!/usr/bin/env bash
# Run the test suite on a fresh Debian machine: installs redis-server, docker-registry, promtool
# (package prometheus: the alert rules' tests), chromium (the activity page's browser tests) and
# the Python test dependencies when missing, then runs pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_binary redis-server redis-server
ensure_binary docker-registry docker-registry
ensure_binary promtool prometheus
ensure_binary chromium chromium
ensure_venv "[test]"
exec .venv/bin/python -m pytest "$@"
