#!/usr/bin/env bash
# Memory under load: does the agent's footprint stay flat?
#
# The agent (the packaged static binary, or BIN) runs the host probe and the
# six service kinds at 1 s (tcp and postgres against the local PostgreSQL,
# redis against the local Redis, http against a local HTTP server, a worker,
# an access log) and the three security kinds at their default intervals,
# while a load generator sends 4 API requests a second (the status page,
# /api/v1/health, /metrics and a 1-hour query of a host series, in turn) and
# appends 50 access-log lines a second. Every 30 s it prints RSS, PSS and
# private dirty memory (/proc/PID/smaps_rollup), open fds, threads, CPU % of
# one core over the last 30 s, and the history file's and its WAL's bytes.
# At the end: the RSS slope (least squares) over the last 20 minutes (or the
# last half of a shorter run) and over the run after its first 2 minutes,
# RSS's growth over the last 20 minutes, and the peak.
#
# Needs PostgreSQL (user postgres, trust) on 127.0.0.1:5432 and Redis on
# 127.0.0.1:6379; needs python3.
#
#   benches/soak.sh                 # 60 minutes
#   MINUTES=15 benches/soak.sh      # a shorter run
#   BIN=path/to/upkeep benches/soak.sh
#   EVERY=10 benches/soak.sh        # print every 10 s
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=common/proc.sh
. benches/common/proc.sh

MINUTES=${MINUTES:-60}
EVERY=${EVERY:-30}
TARGET=x86_64-unknown-linux-gnu

for need in python3 pg_isready redis-cli; do
    command -v "$need" >/dev/null || { echo "soak: $need is missing" >&2; exit 1; }
done
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "soak: PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }
[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ] || { echo "soak: Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }

if [ -z "${BIN:-}" ]; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet --target "$TARGET"
    BIN=target/$TARGET/release/upkeep
fi

work=$(mktemp -d)
pids=()
agent=
cleanup() {
    if [ -n "$agent" ] && kill -0 "$agent" 2>/dev/null; then
        kill -TERM "$agent" 2>/dev/null || true
        wait "$agent" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
web_port=$(free_port)
api_port=$(free_port)
mkdir -p "$work/www" && echo ok >"$work/www/health"
python3 -m http.server "$web_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
log="$work/access.log"
: >"$log"

cat >"$work/agent.toml" <<TOML
[agent]
interval = "1s"

[api]
listen = "127.0.0.1:$api_port"

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
url = "http://127.0.0.1:$web_port/health"
body_contains = "ok"

[probe.cache-server]
kind = "worker"
name = "redis-server"

[probe.web]
kind = "access_log"
paths = ["$log"]

[probe.updates]
kind = "security_updates"

[probe.access]
kind = "access_review"

[probe.baseline]
kind = "compliance"
TOML

"$BIN" run --config "$work/agent.toml" --data-dir "$work/data" 2>"$work/agent.log" &
agent=$!
for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$api_port/-/healthy" 2>/dev/null && break
    sleep 0.2
done
kill -0 "$agent" 2>/dev/null || { echo "soak: the agent did not start:" >&2; cat "$work/agent.log" >&2; exit 1; }

# The load: 4 requests/s round the four routes, 50 log lines/s in batches of
# 5 every 100 ms. Failed requests are counted and reported at the end.
cat >"$work/load.py" <<'PY'
import http.client, sys, time, urllib.parse
port, log, stats = int(sys.argv[1]), sys.argv[2], sys.argv[3]
key = urllib.parse.quote('host.cpu_used_ratio')
routes = ['/', '/api/v1/health', '/metrics', f'/api/v1/query?key={key}&since=1h']
ok = failed = sent = 0
start = time.monotonic()
tick = 0
out = open(log, 'a', buffering=1)
while True:
    due = start + tick * 0.1
    time.sleep(max(0.0, due - time.monotonic()))
    for i in range(5):
        n = tick * 5 + i
        out.write(f'127.0.0.1 - - [05/Dec/2026:10:00:01 +0000] "GET /item/{n % 500} HTTP/1.1" '
                  f'{500 if n % 97 == 0 else 200} 512 "-" "soak" 0.0{n % 10}{n % 7}\n')
    if tick % 5 in (0, 2):  # 10 ticks a second: 4 requests a second
        route = routes[sent % 4]
        sent += 1
        try:
            c = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
            c.request('GET', route)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                ok += 1
            else:
                failed += 1
        except Exception:
            failed += 1
        with open(stats, 'w') as f:
            f.write(f'{ok} {failed}\n')
    tick += 1
PY
python3 "$work/load.py" "$api_port" "$log" "$work/load.stats" &
pids+=($!)

hz=$(getconf CLK_TCK)
echo "soak: $BIN ($(stat -c %s "$BIN") bytes), $MINUTES min, sampled every $EVERY s; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%7s %8s %8s %9s %5s %7s %7s %10s %9s\n' min "RSS MiB" "PSS MiB" "dirty MiB" fds threads "CPU %" "hist MiB" "WAL KiB"
t_start=$(date +%s%N)
end=$((t_start + MINUTES * 60 * 1000000000))
c_prev=$(proc_cpu_ticks "$agent")
t_prev=$t_start
c_first=$c_prev
: >"$work/series"
while :; do
    sleep "$EVERY"
    kill -0 "$agent" 2>/dev/null || { echo "soak: the agent died:" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
    now=$(date +%s%N)
    c=$(proc_cpu_ticks "$agent")
    read -r rss pss dirty <<<"$(proc_mem "$agent")"
    fds=$(proc_fds "$agent")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$agent/status")
    hist=$(stat -c %s "$work/data/history.db" 2>/dev/null || echo 0)
    wal=$(stat -c %s "$work/data/history.db-wal" 2>/dev/null || echo 0)
    min=$(awk -v a="$t_start" -v b="$now" 'BEGIN { printf "%.2f", (b - a) / 6e10 }')
    cpu=$(awk -v t=$((c - c_prev)) -v hz="$hz" -v ns=$((now - t_prev)) 'BEGIN { printf "%.2f", 100 * t / hz / (ns / 1e9) }')
    printf '%7s %8s %8s %9s %5s %7s %7s %10s %9s\n' "$min" "$(mib "$rss")" "$(mib "$pss")" "$(mib "$dirty")" \
        "$fds" "$threads" "$cpu" "$(awk -v b="$hist" 'BEGIN { printf "%.2f", b / 1048576 }')" $((wal / 1024))
    echo "$min $rss" >>"$work/series"
    c_prev=$c t_prev=$now
    [ "$now" -ge "$end" ] && break
done

read -r ok failed <"$work/load.stats" || { ok=0 failed=0; }
total_cpu=$(awk -v t=$((c_prev - c_first)) -v hz="$hz" -v ns=$((t_prev - t_start)) 'BEGIN { printf "%.2f", 100 * t / hz / (ns / 1e9) }')
echo "requests: $ok answered 200, $failed failed; log lines: $(wc -l <"$log"); agent CPU over the run: $total_cpu % of one core; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
# slope FROM_MIN: least-squares RSS slope (MiB per 100 s) of the samples at
# or after FROM_MIN, their count, and RSS's change between the first and the
# last of them (MiB).
slope() {
    awk -v from="$1" '$1 >= from { n++; x = $1 * 60; y = $2 / 1024; sx += x; sy += y; sxx += x * x; sxy += x * y
            if (n == 1) first = y; last = y }
        END { if (n < 2) { print "n/a", n, "n/a"; exit }
            b = (n * sxy - sx * sy) / (n * sxx - sx * sx); printf "%.4f %d %.2f\n", b * 100, n, last - first }' "$work/series"
}
last_min=$(tail -1 "$work/series" | cut -d' ' -f1)
from=$(awk -v m="$last_min" 'BEGIN { f = m - 20; if (f < m / 2) f = m / 2; printf "%.2f", f }')
read -r s20 n20 d20 <<<"$(slope "$from")"
read -r s2 n2 d2 <<<"$(slope 2)"
peak=$(awk '{ if ($2 > m) m = $2 } END { printf "%.2f", m / 1024 }' "$work/series")
echo "rss slope from minute $from to $last_min: $s20 MiB/100 s over $n20 samples, growth $d20 MiB (target: at most 0.1 MiB over the last 20 minutes of an hour)"
echo "rss slope after minute 2: $s2 MiB/100 s over $n2 samples, growth $d2 MiB; peak $peak MiB"
kill -TERM "$agent"
set +e
wait "$agent"
code=$?
set -e
agent=
[ "$code" -eq 0 ] || { echo "SIGTERM: the agent exited with $code (expected 0)" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
echo "SIGTERM: exit 0"
