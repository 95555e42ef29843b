#!/usr/bin/env bash
# Times the whole `upkeep query` process: seven days at 1 m of one series
# (10,080 points) from a history file of 500 series at full retention.
# Target: median at most 15 ms.
#
#   benches/query-process.sh              # 50 runs
#   RUNS=20 benches/query-process.sh
#   QUERY_MAX_AGE=600 benches/query-process.sh   # rebuild a file older than 10 min
#
# The file is the one `cargo bench --bench query` builds and caches under
# <target>/bench-data/full-retention/ (or $UPKEEP_BENCH_DATA). The query runs
# against the real clock (`--since 7d`), so the file is rebuilt when it is
# older than QUERY_MAX_AGE seconds (default 3600): the answer then still holds
# at least 10,020 points. Uses hyperfine when installed (as root, installs the
# Debian package when missing), else a plain loop.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-50}
WARMUP=${WARMUP:-5}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
DATA=${UPKEEP_BENCH_DATA:-$TARGET_DIR/bench-data/full-retention}
KEY='bench.m{i="42"}'
BIN=$TARGET_DIR/release/upkeep

cargo build --release --quiet
UPKEEP_BENCH_DATA=$DATA cargo bench --quiet --bench query -- --generate-only \
    --max-age "${QUERY_MAX_AGE:-3600}"

CMD=("$BIN" query "$KEY" --since 7d --step 1m --data-dir "$DATA" --format csv)
echo "command: ${CMD[*]}"
points=$(("$(UPKEEP_LOG=error "${CMD[@]}" | wc -l)" - 1))
echo "answer: $points points"

if ! command -v hyperfine >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq hyperfine >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq hyperfine >/dev/null 2>&1; } ||
        echo "hyperfine could not be installed; timing with a plain loop"
fi

median_ms=
if command -v hyperfine >/dev/null; then
    json=$(mktemp)
    trap 'rm -f "$json"' EXIT
    # -N: no intermediate shell, so its start-up is not counted.
    hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" --export-json "$json" \
        "$BIN query '$KEY' --since 7d --step 1m --data-dir $DATA --format csv"
    median_s=$(grep -m1 '"median"' "$json" | sed -E 's/.*: *([0-9.eE+-]+).*/\1/')
    median_ms=$(awk -v s="$median_s" 'BEGIN { printf "%.2f", s * 1000 }')
else
    for _ in $(seq "$WARMUP"); do "${CMD[@]}" >/dev/null; done
    times=()
    for _ in $(seq "$RUNS"); do
        t0=$(date +%s%N)
        "${CMD[@]}" >/dev/null
        t1=$(date +%s%N)
        times+=($(((t1 - t0) / 1000)))
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n)
    min_us=$(echo "$sorted" | head -1)
    max_us=$(echo "$sorted" | tail -1)
    median_ms=$(echo "$sorted" | awk '{ a[NR] = $1 } END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.2f", m / 1000 }')
    echo "plain loop, $RUNS runs: min $(awk -v u="$min_us" 'BEGIN { printf "%.2f", u / 1000 }') ms, max $(awk -v u="$max_us" 'BEGIN { printf "%.2f", u / 1000 }') ms"
fi
echo "query process: median $median_ms ms over $RUNS runs ($points points); target 15 ms: $(awk -v m="$median_ms" 'BEGIN { printf "%.2f", m / 15 }')x"
