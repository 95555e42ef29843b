#!/usr/bin/env bash
# Footprint of the agent with all six probe kinds at a 10 s interval: tcp and
# postgres against the local PostgreSQL, redis against the local Redis, http
# against a local HTTP server, a worker (the Redis server process), and an
# access log that a writer appends 20 lines a second to.
# Needs PostgreSQL (user postgres, trust) on 127.0.0.1:5432 and Redis on
# 127.0.0.1:6379. Prints what benches/footprint.sh prints.
#
#   benches/footprint-all-kinds.sh              # 120 s window
#   DURATION=30 benches/footprint-all-kinds.sh  # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/www" && echo ok >"$work/www/health"
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)

log="$work/access.log"
: >"$log"
(
    while true; do
        for i in $(seq 1 20); do
            echo "127.0.0.1 - - [28/Nov/2026:10:00:01 +0000] \"GET /item/$i HTTP/1.1\" 200 512 \"-\" \"bench\" 0.0$((i % 10))"
        done >>"$log"
        sleep 1
    done
) &
pids+=($!)

cat >"$work/probes.toml" <<TOML

[probe.database-port]
kind = "tcp"
address = "127.0.0.1:5432"

[probe.database]
kind = "postgres"
conninfo = "host=127.0.0.1 port=5432 dbname=postgres"
user = "postgres"

[probe.cache]
kind = "redis"
url = "redis://127.0.0.1:6379/0"

[probe.api]
kind = "http"
url = "http://127.0.0.1:$port/health"
body_contains = "ok"

[probe.cache-server]
kind = "worker"
name = "redis-server"

[probe.web]
kind = "access_log"
paths = ["$log"]
TOML

INTERVAL=10s CONFIG_APPEND="$work/probes.toml" benches/footprint.sh
