#!/usr/bin/env bash
# What a postgres_backup run (pg_dump) costs the application, as latency at
# a fixed rate (DESIGN.md, Maintenance: a saturated benchmark hides it), in
# the style of benches/maintenance-impact.sh. Against the PostgreSQL on
# 127.0.0.1:5432 (trust, user postgres), in a database of its own
# (upkeep_bench_dump_PID, created here and dropped on exit):
#
#   setup      pgbench's tables at -s SCALE (60 is about 1 GB)
#   capacity   pgbench tpcb-like unthrottled for 10 s (printed)
#   baseline1  the workload at RATE tx/s for D seconds
#   baseline2  the same again: when the two p99s differ by more than
#              NOISE % (30) the machine is too noisy to compare anything
#              and the bench stops (exit 3; NOISY_OK=1 goes on and marks
#              every figure "noisy")
#   VARIANT    for each of VARIANTS: the workload while `upkeep maintenance
#              run` makes one dump with that variant's settings; the window
#              is the dump itself (its batch step in the ledger)
#
# Variants (a postgres_backup's settings; `default` is what the example
# config ships):
#   default    nice = 10, io_class = "low"
#   plain      nice = 0, io_class = "normal" (pg_dump as the agent runs)
#   idle       nice = 19, io_class = "idle"
#   compress1  nice = 10, io_class = "low", compress = 1
#   compress0  nice = 10, io_class = "low", compress = 0
#
# Latency is pgbench's per-transaction log (-l): under -R it runs from the
# scheduled start to the end, so a stall shows even in transactions that
# could not start. Figures are nearest-rank percentiles of the transactions
# that ended in the window.
#
#   benches/backup-impact.sh                           # SCALE=60, D=30, RATE=auto50
#   SCALE=10 D=15 VARIANTS="plain default" benches/backup-impact.sh
#
# Environment: SCALE (60), D (30 s), RATE (a number of tx/s, or autoNN: NN %
# of the measured capacity; auto50), CLIENTS (8), THREADS (2), WARMUP (5 s),
# VARIANTS (all five), NOISE (30), NOISY_OK, UPKEEP_BIN (default: a release
# build, built here).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-60}
D=${D:-30}
RATE=${RATE:-auto50}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-5}
VARIANTS=${VARIANTS:-default plain idle compress1 compress0}
NOISE=${NOISE:-30}
CAPACITY_SECONDS=10
TAIL=3
export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
DB=upkeep_bench_dump_$$

if ! psql -X -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    echo "PostgreSQL does not answer on $PGHOST:$PGPORT as $PGUSER (trust auth expected)" >&2
    exit 1
fi
if ! command -v pgbench >/dev/null; then
    echo "installing pgbench (Debian: postgresql-contrib)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq postgresql-contrib >/dev/null; else sudo apt-get install -y -qq postgresql-contrib >/dev/null; fi
fi
BIN=${UPKEEP_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-target}/release/upkeep
fi

work=$(mktemp -d)
bench_pid=
created=
cleanup() {
    if [ -n "$bench_pid" ]; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    if [ -n "$created" ]; then
        psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sql() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
now_us() { echo $(($(date +%s%N) / 1000)); }
secs() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1e6 }'; }
load() { cut -d' ' -f1 /proc/loadavg; }
nap() {
    sleep "$1" &
    wait $!
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

psql -X -q -d postgres -c "CREATE DATABASE $DB" >/dev/null
created=1
t=$(now_us)
pgbench -i -q -s "$SCALE" "$DB" >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; exit 1; }
sql -c 'VACUUM ANALYZE' -c CHECKPOINT
echo "backup impact: PostgreSQL $(sql -Atc 'SHOW server_version'), $(pg_dump --version); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at the start; disk scheduler of the data dir's device: $(cat /sys/block/*/queue/scheduler 2>/dev/null | head -1)"
echo "setup: pgbench -s $SCALE, database $(sql -Atc "SELECT pg_size_pretty(pg_database_size('$DB'))") in $(secs $(($(now_us) - t))) s; binary $BIN"

# --- capacity and rate --------------------------------------------------------
pgbench -n -c "$CLIENTS" -j "$THREADS" -T "$CAPACITY_SECONDS" -b tpcb-like "$DB" \
    >"$work/capacity.out" 2>"$work/capacity.err" || { cat "$work/capacity.err" >&2; exit 1; }
capacity=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$work/capacity.out")
case "$RATE" in
auto*) rate=$(awk -v c="$capacity" -v p="${RATE#auto}" 'BEGIN { printf "%.0f", c * p / 100 }') ;;
*) rate=$RATE ;;
esac
echo "capacity: $capacity tps unthrottled ($CAPACITY_SECONDS s, $CLIENTS clients, tpcb-like); fixed rate $rate tps ($RATE) = $(awk -v r="$rate" -v c="$capacity" 'BEGIN { printf "%.0f", 100 * r / c }') % of it"

start_workload() {
    pgbench -n -c "$CLIENTS" -j "$THREADS" -R "$rate" -T 86400 \
        -l --log-prefix="$work/log-$1" -b tpcb-like "$DB" >"$work/$1.out" 2>"$work/$1.err" &
    bench_pid=$!
    nap "$WARMUP"
    kill -0 "$bench_pid" 2>/dev/null || { tail -20 "$work/$1.err" >&2; exit 1; }
}
stop_workload() {
    nap "$TAIL"
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    bench_pid=
}
# window_stats NAME START_US END_US: n tps p50 p99 max (ms) of the
# transactions of NAME that ended in [START, END).
window_stats() {
    python3 - "$work/log-$1" "$2" "$3" <<'PY'
import glob, math, sys
prefix, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lats, last = [], 0
for path in glob.glob(prefix + ".*"):
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 6:
                continue
            t = int(p[4]) * 1_000_000 + int(p[5])
            last = max(last, t)
            if start <= t < end and p[2].isdigit():
                lats.append(int(p[2]) / 1000)
if last < end:
    sys.exit(f"the pgbench log of {prefix} ends before its window")
lats.sort()
pct = lambda q: lats[max(0, math.ceil(q * len(lats)) - 1)] if lats else float("nan")
print(f"n={len(lats)} tps={len(lats) / ((end - start) / 1e6):.1f} p50={pct(.5):.2f} p99={pct(.99):.2f} max={lats[-1] if lats else float('nan'):.1f}")
PY
}
mark=
base_p99=
report() {
    local label=$1 name=$2 start=$3 end=$4 extra=${5:-} n tps p50 p99 max
    eval "$(window_stats "$name" "$start" "$end")"
    last_p99=$p99
    local vs=
    [ -n "$base_p99" ] && vs=", p99 $(ratio "$p99" "$base_p99")x baseline"
    printf '%-11s window %6s s, %6d tx, %7.1f tps, p50 %6.2f ms, p99 %7.2f ms, max %7.1f ms, load %s%s%s%s\n' \
        "$label:" "$(secs $((end - start)))" "$n" "$tps" "$p50" "$p99" "$max" "$(load)" "$vs" "$extra" "$mark"
}

# --- two baselines --------------------------------------------------------------
p99s=()
for b in 1 2; do
    sql -c CHECKPOINT
    start_workload "baseline$b"
    s0=$(now_us)
    nap "$D"
    s1=$(now_us)
    stop_workload
    report "baseline$b" "baseline$b" "$s0" "$s1"
    p99s+=("$last_p99")
done
spread=$(awk -v a="${p99s[0]}" -v b="${p99s[1]}" 'BEGIN { lo = a < b ? a : b; hi = a < b ? b : a; printf "%.0f", ((lo > 0) ? 100 * (hi - lo) / lo : 999) }')
if [ "$spread" -gt "$NOISE" ]; then
    echo "noisy: the baselines' p99s (${p99s[0]} and ${p99s[1]} ms) differ by $spread % (> $NOISE %): nothing measured here is comparable; re-run on a quiet machine"
    [ -n "${NOISY_OK:-}" ] || exit 3
    mark=" [noisy]"
fi
base_p99=$(printf '%s\n' "${p99s[@]}" | sort -g | tail -1)
echo "baseline p99 taken as the worse of the two: $base_p99 ms (spread $spread %)"

# --- the dump, one run per variant ----------------------------------------------
settings() {
    case "$1" in
    default) echo 'nice = 10
io_class = "low"' ;;
    plain) echo 'nice = 0
io_class = "normal"' ;;
    idle) echo 'nice = 19
io_class = "idle"' ;;
    compress1) echo 'nice = 10
io_class = "low"
compress = 1' ;;
    compress0) echo 'nice = 10
io_class = "low"
compress = 0' ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
    esac
}
for v in $VARIANTS; do
    cat >"$work/agent-$v.toml" <<TOML
[probe.bench]
kind = "postgres"
conninfo = "host=$PGHOST port=$PGPORT"
user = "$PGUSER"
dbname = "$DB"

[maintenance.dump]
kind = "postgres_backup"
probe = "bench"
keep = 1
$(settings "$v")
TOML
    "$BIN" check-config "$work/agent-$v.toml" >/dev/null
    sql -c CHECKPOINT
    start_workload "$v"
    r0=$(now_us)
    UPKEEP_LOG=warn "$BIN" maintenance run dump --ignore-window --config "$work/agent-$v.toml" \
        --data-dir "$work/data" >"$work/run-$v.json" 2>"$work/run-$v.err" || {
        echo "$v: the run failed: $(tail -3 "$work/run-$v.err" | tr '\n' ' ')" >&2
        exit 1
    }
    r1=$(now_us)
    stop_workload
    run_id=$(jq -r '.tasks[0].details.run_id' "$work/run-$v.json")
    "$BIN" maintenance show "$run_id" --json --config "$work/agent-$v.toml" --data-dir "$work/data" >"$work/show-$v.json"
    eval "$(jq -r '.steps[] | select(.step == "batch") | "d1=\(.ts_ms * 1000); d0=\((.ts_ms - .duration_ms) * 1000)"' "$work/show-$v.json" | tail -1)"
    bytes=$(jq -r .bytes "$work/data/backups/dump/$run_id/dump.json")
    report "$v" "$v" "$d0" "$d1" ", dump $(secs $((d1 - d0))) s, $((bytes >> 20)) MiB"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
