#!/usr/bin/env bash
# Footprint of the agent: the default host probes at a 1 s interval, the API
# on a free loopback port, a fresh data dir. After a warm-up, samples CPU time
# (utime + stime from /proc/PID/stat) and VmRSS (/proc/PID/status) for the
# measuring window, prints CPU % of one core over the window and RSS median
# and max, then stops the agent with SIGTERM and checks that it exits 0.
# Targets: at most 0.25 % of one core and 10 MiB.
#
#   benches/footprint.sh                       # 10 s warm-up, 120 s window
#   DURATION=30 WARMUP=5 benches/footprint.sh  # a quick run
#   SAMPLE_EVERY=2 benches/footprint.sh        # RSS sampled every 2 s (default 5)
#   PREFILL=1 benches/footprint.sh             # steady state: history at full retention
#   INTERVAL=10s CONFIG_APPEND=probes.toml benches/footprint.sh  # other probes too
#
# PREFILL=1 runs the agent for a few seconds so that it registers its series,
# fills every tier of its history to full capacity (`cargo bench --bench query
# -- --fill-existing`), then measures as above: the cost of a long-running
# agent, whose retention deletes as much as it adds.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-120}
WARMUP=${WARMUP:-10}
SAMPLE_EVERY=${SAMPLE_EVERY:-5}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release/upkeep

cargo build --release --quiet

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/agent.toml" <<EOF
[agent]
interval = "${INTERVAL:-1s}"

[api]
listen = "${LISTEN:-127.0.0.1:0}"
EOF
# More probes (benches/footprint-all-kinds.sh uses this).
if [ -n "${CONFIG_APPEND:-}" ]; then cat "$CONFIG_APPEND" >>"$work/agent.toml"; fi

if [ "${PREFILL:-0}" = 1 ]; then
    "$BIN" run --config "$work/agent.toml" --data-dir "$work/data" 2>"$work/prefill.log" &
    pid=$!
    sleep 5
    kill -TERM "$pid"
    wait "$pid" || { echo "the agent failed while registering its series:" >&2; cat "$work/prefill.log" >&2; exit 1; }
    pid=
    cargo bench --quiet --bench query -- --fill-existing "$work/data"
fi

"$BIN" run --config "$work/agent.toml" --data-dir "$work/data" 2>"$work/agent.log" &
pid=$!
hz=$(getconf CLK_TCK)

# utime + stime in clock ticks. The command name in field 2 may hold spaces:
# count fields after its closing parenthesis.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$pid/stat")
    stat=${stat##*) }
    # After the name: state is field 3, so utime (14) and stime (15) are the
    # 12th and 13th words here.
    awk '{ print $12 + $13 }' <<<"$stat"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }

sleep "$WARMUP"
if ! kill -0 "$pid" 2>/dev/null; then
    echo "the agent exited during the warm-up:" >&2
    cat "$work/agent.log" >&2
    exit 1
fi
t0=$(date +%s%N)
c0=$(cpu_ticks)
rss=()
end=$((t0 + DURATION * 1000000000))
while :; do
    rss+=("$(rss_kib)")
    now=$(date +%s%N)
    [ "$now" -ge "$end" ] && break
    left=$(((end - now) / 1000000))
    step=$((SAMPLE_EVERY * 1000))
    [ "$left" -lt "$step" ] && step=$left
    sleep "$(awk -v ms="$step" 'BEGIN { printf "%.3f", ms / 1000 }')"
done
c1=$(cpu_ticks)
t1=$(date +%s%N)
rss+=("$(rss_kib)")

series=$("$BIN" series --data-dir "$work/data" 2>/dev/null | wc -l || echo "?")
kill -TERM "$pid"
set +e
wait "$pid"
code=$?
set -e
pid=

elapsed_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
cpu_s=$(awk -v t=$((c1 - c0)) -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')
cpu_pct=$(awk -v t=$((c1 - c0)) -v hz="$hz" -v s="$elapsed_s" 'BEGIN { printf "%.3f", 100 * t / hz / s }')
sorted=$(printf '%s\n' "${rss[@]}" | sort -n)
rss_med=$(echo "$sorted" | awk '{ a[NR] = $1 } END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.2f", m / 1024 }')
rss_max=$(echo "$sorted" | tail -1 | awk '{ printf "%.2f", $1 / 1024 }')
db_mib=$(awk -v b="$(stat -c %s "$work/data/history.db" 2>/dev/null || echo 0)" 'BEGIN { printf "%.1f", b / 1048576 }')

echo "footprint: probes at ${INTERVAL:-1s}$([ -n "${CONFIG_APPEND:-}" ] && echo " (host and $(grep -c "^kind" "$CONFIG_APPEND") configured)" || echo " (host)")$([ "${PREFILL:-0}" = 1 ] && echo ", history prefilled to full retention"), $series series, ${WARMUP} s warm-up, window ${elapsed_s} s, ${#rss[@]} RSS samples, history file ${db_mib} MiB"
echo "cpu: ${cpu_s} s of CPU = ${cpu_pct} % of one core (CLK_TCK $hz); target 0.25 %: $(awk -v p="$cpu_pct" 'BEGIN { printf "%.2f", p / 0.25 }')x"
echo "rss: median ${rss_med} MiB, max ${rss_max} MiB; target 10 MiB: $(awk -v r="$rss_med" 'BEGIN { printf "%.2f", r / 10 }')x"
if [ "$code" -ne 0 ]; then
    echo "SIGTERM: the agent exited with $code (expected 0); its log:" >&2
    tail -20 "$work/agent.log" >&2
    exit 1
fi
echo "SIGTERM: exit 0"
