#!/usr/bin/env bash
# Load on the local HTTP server while the probes run at 1 s.
#
# Starts the release agent (host, tcp and http probes at 1 s), lets it warm
# up, then for 30 s each: no load, wrk on `/`, wrk on `/api/v1/health`, at
# about RATE requests/s (CONNS connections, each waiting CONNS/RATE s
# between requests: Debian's wrk has no fixed-rate mode). Prints wrk's p50
# and p99 latency and the rate reached, and the largest probe tick delay
# seen in each phase. Tick delays come from the ticks' own start times
# (`last.at` of GET /api/v1/probes, polled every 100 ms): a tick that
# starts d late makes its gap to the previous tick interval + d.
#
# Targets: p99 <= 5 ms; largest tick delay under load unchanged from idle.
# Environment: RATE (1000), CONNS (10), DURATION (30 s), WARMUP (15 s).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-1000}
CONNS=${CONNS:-10}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-15}

if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi
cargo build --release --quiet
BIN=target/release/upkeep

work=$(mktemp -d)
agent_pid=
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# A listener for the tcp probe, alive as long as the script.
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$target)); s.listen(64); time.sleep(100000)" &
listener_pid=$!
trap 'kill $listener_pid 2>/dev/null; cleanup' EXIT

cat > "$work/agent.toml" <<TOML
[agent]
interval = "1s"

[api]
listen = "127.0.0.1:$port"

[probe.tcp]
kind = "tcp"
address = "127.0.0.1:$target"

[probe.self]
kind = "http"
url = "http://127.0.0.1:$port/-/healthy"
TOML

UPKEEP_LOG=warn "$BIN" run --config "$work/agent.toml" --data-dir "$work/data" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null || { cat "$work/agent.log"; exit 1; }
echo "agent up on 127.0.0.1:$port; warming up ${WARMUP}s"
sleep "$WARMUP"

cat > "$work/rate.lua" <<LUA
-- Each of the $CONNS connections waits this long between requests.
function delay()
    return math.floor(1000 * $CONNS / $RATE)
end
LUA

# Polls the probes' last tick start times for $1 seconds; prints the largest
# tick delay (ms) over all probes.
watch_ticks() {
    python3 - "$port" "$1" <<'PY'
import json, sys, time, urllib.request
from datetime import datetime
port, secs = sys.argv[1], float(sys.argv[2])
seen = {}
end = time.time() + secs
while time.time() < end:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/probes") as r:
        for p in json.load(r)["probes"]:
            if p["last"]:
                t = datetime.fromisoformat(p["last"]["at"].replace("Z", "+00:00")).timestamp()
                seen.setdefault(p["name"], (p["interval_seconds"], set()))[1].add(t)
    time.sleep(0.1)
worst = 0.0
for name, (interval, ticks) in seen.items():
    ts = sorted(ticks)
    for a, b in zip(ts, ts[1:]):
        worst = max(worst, (b - a - interval) * 1000)
print(f"{worst:.1f}")
PY
}

phase() {
    local name=$1 path=$2
    watch_ticks "$DURATION" >"$work/ticks" &
    local w=$!
    if [ -n "$path" ]; then
        wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$work/rate.lua" \
            -H "Host: 127.0.0.1:$port" "http://127.0.0.1:$port$path" >"$work/wrk" 2>&1
    else
        sleep "$DURATION"
    fi
    wait "$w"
    local delay
    delay=$(cat "$work/ticks")
    if [ -n "$path" ]; then
        local p50 p99 rps errors
        p50=$(awk '$1 == "50%" {print $2}' "$work/wrk")
        p99=$(awk '$1 == "99%" {print $2}' "$work/wrk")
        rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk")
        errors=$(awk '/Non-2xx|Socket errors/ {print}' "$work/wrk")
        echo "$name: ${rps} requests/s; latency p50 $p50, p99 $p99 (target p99 5ms); largest tick delay ${delay} ms${errors:+; $errors}"
    else
        echo "$name: largest tick delay ${delay} ms"
    fi
}

phase "idle" ""
phase "GET /" "/"
phase "GET /api/v1/health" "/api/v1/health"
phase "idle again" ""
