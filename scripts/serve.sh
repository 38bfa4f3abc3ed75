#!/usr/bin/env bash
# Run tagsweeper (web + worker, from the Procfile) on a fresh Debian machine.
# With no REDIS_URL it starts a local redis-server (with append-only persistence) first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_venv ""
export PATH="$PWD/.venv/bin:$PATH"

if [ -z "${REDIS_URL:-}" ]; then
    ensure_binary redis-server redis-server
    ensure_binary redis-cli redis-tools
    port="${REDIS_PORT:-6379}"
    if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
        mkdir -p .run
        # appendonly: an accepted delivery survives a Redis restart.
        redis-server --port "$port" --bind 127.0.0.1 --dir "$PWD/.run" --appendonly yes \
            --appendfsync everysec --daemonize yes --logfile "$PWD/.run/redis.log" --pidfile "$PWD/.run/redis.pid"
        for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
        echo "tagsweeper: started a local redis-server on 127.0.0.1:$port (data in .run/)" >&2
    fi
    export REDIS_URL="redis://127.0.0.1:$port/0"
fi

exec honcho start -f Procfile -p "${PORT:-8000}"
