#!/usr/bin/env bash
# Footprint of the agent: the default host probes at a 1 s interval, the API
# on a free loopback port, a fresh data dir. After a warm-up, samples CPU time
# (utime + stime from /proc/PID/stat) and RSS, PSS and private dirty memory
# (/proc/PID/smaps_rollup) for the measuring window, prints CPU % of one core
# over the window and the memory medians (RSS max too), then stops the agent
# with SIGTERM and checks that it exits 0. PSS counts a page shared with
# other processes in part, private dirty is what only the agent holds: what
# the agent really costs a host. Targets: at most 0.10 % of one core and
# monit's RSS (benches/footprint-vs-peers.sh measures both side by side).
#
# The agent measured is the packaged one: the static binary that
# packaging/build.sh builds (built here), or BIN.
#
#   benches/footprint.sh                       # 70 s warm-up, 120 s window
#   DURATION=30 WARMUP=5 benches/footprint.sh  # a quick run (before settling)
#   SAMPLE_EVERY=2 benches/footprint.sh        # RSS sampled every 2 s (default 5)
#   PREFILL=1 benches/footprint.sh             # steady state: history at full retention
#   INTERVAL=10s CONFIG_APPEND=probes.toml benches/footprint.sh  # other probes too
#   BIN=target/release/upkeep benches/footprint.sh  # another build (not rebuilt)
#   SMAPS=1 benches/footprint.sh               # where the memory is, at the end
#
# PREFILL=1 runs the agent for a few seconds so that it registers its series,
# fills every tier of its history to full capacity (`cargo bench --bench query
# -- --fill-existing`), then measures as above: the cost of a long-running
# agent, whose retention deletes as much as it adds.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-120}
# Past the agent's settling (60 s after start; src/cli/footprint.rs).
WARMUP=${WARMUP:-70}
SAMPLE_EVERY=${SAMPLE_EVERY:-5}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
TARGET=x86_64-unknown-linux-gnu
# shellcheck source=common/proc.sh
. benches/common/proc.sh

if [ -z "${BIN:-}" ]; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet --target "$TARGET"
    BIN=$TARGET_DIR/$TARGET/release/upkeep
fi

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

sleep "$WARMUP"
if ! kill -0 "$pid" 2>/dev/null; then
    echo "the agent exited during the warm-up:" >&2
    cat "$work/agent.log" >&2
    exit 1
fi
t0=$(date +%s%N)
c0=$(proc_cpu_ticks "$pid")
rss=() pss=() dirty=()
end=$((t0 + DURATION * 1000000000))
sample() {
    local r p d
    read -r r p d <<<"$(proc_mem "$pid")"
    rss+=("$r") pss+=("$p") dirty+=("$d")
}
while :; do
    sample
    now=$(date +%s%N)
    [ "$now" -ge "$end" ] && break
    left=$(((end - now) / 1000000))
    step=$((SAMPLE_EVERY * 1000))
    [ "$left" -lt "$step" ] && step=$left
    sleep "$(awk -v ms="$step" 'BEGIN { printf "%.3f", ms / 1000 }')"
done
c1=$(proc_cpu_ticks "$pid")
t1=$(date +%s%N)
sample
fds=$(proc_fds "$pid")
threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")

if [ "${SMAPS:-0}" = 1 ]; then
    echo "memory by mapping at the end of the window (/proc/PID/smaps):"
    proc_smaps_summary "$pid"
fi
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
rss_med=$(mib "$(printf '%s\n' "${rss[@]}" | median)")
rss_max=$(mib "$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)")
pss_med=$(mib "$(printf '%s\n' "${pss[@]}" | median)")
dirty_med=$(mib "$(printf '%s\n' "${dirty[@]}" | median)")
db_mib=$(awk -v b="$(stat -c %s "$work/data/history.db" 2>/dev/null || echo 0)" 'BEGIN { printf "%.1f", b / 1048576 }')

configured() { grep -c "^\[$1\." "$CONFIG_APPEND" || true; }
echo "footprint: $BIN ($(stat -c %s "$BIN") bytes), probes at ${INTERVAL:-1s}$([ -n "${CONFIG_APPEND:-}" ] && echo " (host and $(configured probe) probes, $(configured maintenance) tasks, $(configured alert) alert rules configured)" || echo " (host)")$([ "${PREFILL:-0}" = 1 ] && echo ", history prefilled to full retention"), $series series, ${WARMUP} s warm-up, window ${elapsed_s} s, ${#rss[@]} RSS samples, history file ${db_mib} MiB"
echo "cpu: ${cpu_s} s of CPU = ${cpu_pct} % of one core (CLK_TCK $hz); target 0.10 %: $(awk -v p="$cpu_pct" 'BEGIN { printf "%.2f", p / 0.10 }')x; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "memory (medians): rss ${rss_med} MiB (max ${rss_max}), pss ${pss_med} MiB, private dirty ${dirty_med} MiB; ${threads} threads, ${fds} fds"
if [ "$code" -ne 0 ]; then
    echo "SIGTERM: the agent exited with $code (expected 0); its log:" >&2
    tail -20 "$work/agent.log" >&2
    exit 1
fi
echo "SIGTERM: exit 0"
