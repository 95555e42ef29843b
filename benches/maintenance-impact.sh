#!/usr/bin/env bash
# What a postgres_retention run costs an application, measured as latency at
# a fixed request rate (a saturated benchmark hides it: DESIGN.md,
# Maintenance). Against the PostgreSQL on 127.0.0.1:5432 (trust, user
# postgres), in a database of its own (upkeep_bench, created here and dropped
# on exit; no other database is touched):
#
#   setup     pgbench's TPC-B tables (-s SCALE) and audit_log of ROWS rows,
#             half older than 365 days, indexed on created_at
#   capacity  the workload unthrottled for 10 s (printed, not a phase)
#   baseline  the workload at RATE tx/s for D seconds, reported as a whole
#             and as its two halves: when their p99s differ by more than
#             30 % the machine is too noisy to judge that run ("noisy")
#   upkeep    the workload while `upkeep maintenance run` deletes the old half
#             (default pacing: batch_target, max_duty; guarded by the
#             postgres probe with write_check); its pacing changes and the
#             backends it saw waiting (Lock, LWLock, IO) are printed, and
#             where in the run's steps the slow transactions (over twice
#             the baseline's p99) fell
#   seed      the old rows restored (`upkeep maintenance rollback`), then the
#             workload while one DELETE ... WHERE created_at < cutoff and a
#             VACUUM run, as the original service's cron job did
#
# The workload, the same in every phase: pgbench's tpcb-like and
# maintenance-impact/audit.sql (insert one audit row, read the newest ten)
# in equal parts, CLIENTS clients, at a fixed RATE (-R). Latency is
# pgbench's per-transaction log (-l): under -R it runs from the
# transaction's scheduled start to its end, so a stalled server shows even in
# transactions that could not start. A phase's figures are over the
# transactions that ended inside its window: D seconds after a warm-up for
# the baseline; the batches (first batch start to validation start) and the
# whole run for upkeep; DELETE start to VACUUM end for seed. The seed phase
# deletes the rows the rollback wrote back (at the end of the heap, recently
# written), the upkeep phase the rows loaded at setup.
#
# Targets: tps >= 90 % of baseline, p99 <= 1.5x baseline, >= 20000 rows/s.
#
# The baseline, upkeep and seed phases are repeated RUNS times (the old rows
# put back between runs); each run's ratios are printed, then the median
# and spread (max - min) over the runs that were judged.
#
#   benches/maintenance-impact.sh                          # 4M rows, 60 s, 500 tx/s
#   RATE=auto50 RUNS=3 benches/maintenance-impact.sh       # half the capacity, 3 runs
#   ROWS=200000 D=15 RATE=200 benches/maintenance-impact.sh  # a quick run
#
# Environment: ROWS (4000000), D (60 s), RATE (500; autoN: N % of the
# capacity measured first), RUNS (1), SCALE (10), CLIENTS (8),
# THREADS (2), WARMUP (5 s of workload before a window), KEEP (a directory
# to copy the pgbench logs, the run document and the ledger steps into).
# The task's pacing, each unset to keep the task's default: DUTY
# (max_duty), TARGET (batch_target, e.g. 5ms), GUARD_EVERY (guard_every,
# e.g. 250ms), BATCH (batch_size), PAUSE (pause).
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-4000000}
D=${D:-60}
RATE=${RATE:-500}
RUNS=${RUNS:-1}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-5}
CAPACITY_SECONDS=10
# Workload kept running after a window closes: pgbench is stopped by
# SIGTERM (a background job of a script ignores SIGINT), and its log lines
# still in stdio buffers are lost with it.
TAIL=3
export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
DB=upkeep_bench
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release/upkeep
AUDIT_SQL=benches/maintenance-impact/audit.sql
OLD=$((ROWS / 2))

if ! psql -X -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    echo "PostgreSQL does not answer on $PGHOST:$PGPORT as $PGUSER (trust auth expected):" >&2
    psql -X -d postgres -Atqc 'SELECT 1' 2>&1 >/dev/null | sed 's/^/  /' >&2 || true
    exit 1
fi
if ! command -v pgbench >/dev/null; then
    echo "installing pgbench (Debian: postgresql-contrib)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq postgresql-contrib >/dev/null; else sudo apt-get install -y -qq postgresql-contrib >/dev/null; fi
fi
cargo build --release --quiet

work=$(mktemp -d)
bench_pid=
upkeep_pid=
created=
cleanup() {
    local pid
    for pid in "$bench_pid" "$upkeep_pid"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp -r "$work"/. "$KEEP"/; then
        rm -rf "$KEEP/data" # the backup archive: as large as the rows deleted
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
# A sleep that a signal interrupts at once (bash runs traps only after a
# foreground command ends).
nap() {
    sleep "$1" &
    wait $!
}

# --- setup -----------------------------------------------------------------
if [ -n "$(psql -X -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
    echo "dropping $DB left by an earlier run" >&2
    psql -X -q -d postgres -c "DROP DATABASE $DB" >/dev/null
fi
psql -X -q -d postgres -c "CREATE DATABASE $DB" >/dev/null
created=1
t=$(now_us)
pgbench -i -q -s "$SCALE" "$DB" >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; exit 1; }
sql -v rows="$ROWS" -v old="$OLD" -f benches/maintenance-impact/setup.sql
sql -c CHECKPOINT
setup_s=$(secs $(($(now_us) - t)))
audit_mib=$(sql -Atc "SELECT pg_total_relation_size('audit_log') >> 20")

echo "maintenance impact: PostgreSQL $(sql -Atc 'SHOW server_version'), shared_buffers $(sql -Atc 'SHOW shared_buffers'), autovacuum $(sql -Atc 'SHOW autovacuum'); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at the start"
echo "setup: pgbench -s $SCALE, audit_log $ROWS rows ($OLD older than 365 days), ${audit_mib} MiB with indexes, in ${setup_s} s"

# --- the workload ------------------------------------------------------------
# start_workload NAME [RATE]: pgbench in the background until stop_workload.
start_workload() {
    local name=$1 rate=${2:-$RATE}
    pgbench -n -c "$CLIENTS" -j "$THREADS" -R "$rate" -T 86400 -P 1 \
        -l --log-prefix="$work/log-$name" \
        -b tpcb-like -f "$AUDIT_SQL" "$DB" >"$work/$name.out" 2>"$work/$name.err" &
    bench_pid=$!
    nap "$WARMUP"
    if ! kill -0 "$bench_pid" 2>/dev/null; then
        echo "pgbench stopped during the warm-up of $name:" >&2
        tail -20 "$work/$name.err" >&2
        exit 1
    fi
}
stop_workload() {
    nap "$TAIL"
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    bench_pid=
}

# window_stats NAME START_US END_US: shell assignments n, tps, p50, p99, max
# (ms), failed, p99_tpcb, p99_audit (ms) over the transactions of NAME that
# ended in [START, END).
window_stats() {
    python3 - "$work/log-$1" "$2" "$3" <<'PY'
import glob, math, sys
prefix, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lats, per, failed, last = [], {}, 0, 0
for path in glob.glob(prefix + ".*"):
    with open(path) as f:
        for line in f:
            p = line.split()
            # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            if len(p) < 6:
                continue
            t = int(p[4]) * 1_000_000 + int(p[5])
            last = max(last, t)
            if not start <= t < end:
                continue
            if not p[2].isdigit():
                failed += 1
                continue
            ms = int(p[2]) / 1000
            lats.append(ms)
            per.setdefault(p[3], []).append(ms)
if last < end:
    sys.exit(f"the pgbench log of {prefix} ends before its window")
def pct(v, q):
    return v[max(0, math.ceil(q * len(v)) - 1)] if v else float("nan")
lats.sort()
for v in per.values():
    v.sort()
secs = (end - start) / 1e6
print(f"n={len(lats)} tps={len(lats) / secs:.1f} p50={pct(lats, .5):.2f} p99={pct(lats, .99):.2f}"
      f" max={lats[-1] if lats else float('nan'):.1f} failed={failed}"
      f" p99_tpcb={pct(per.get('0', []), .99):.2f} p99_audit={pct(per.get('1', []), .99):.2f}")
PY
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# verdict VALUE OP LIMIT: "ok" or "MISSED"
verdict() { awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { ok = (op == ">=") ? v >= l : v <= l; print ok ? "ok" : "MISSED" }'; }

base_tps=
base_p99=
# report LABEL WORKLOAD START_US END_US: one phase's line; leaves its tps and
# p99 in last_tps and last_p99.
report() {
    local label=$1 name=$2 start=$3 end=$4 n tps p50 p99 max failed p99_tpcb p99_audit
    eval "$(window_stats "$name" "$start" "$end")"
    last_tps=$tps
    last_p99=$p99
    local extra=
    if [ -n "$base_tps" ]; then
        local tr pr
        tr=$(ratio "$tps" "$base_tps")
        pr=$(ratio "$p99" "$base_p99")
        extra=" | tps ${tr}x baseline (target >= 0.90: $(verdict "$tr" '>=' 0.90)), p99 ${pr}x baseline (target <= 1.5: $(verdict "$pr" '<=' 1.5))"
    fi
    printf '%-18s window %6s s, %6d tx, %6.1f tps, p50 %6.2f ms, p99 %7.2f ms (tpcb %.2f, audit %.2f), max %.1f ms, %d failed, load %s%s\n' \
        "$label:" "$(secs $((end - start)))" "$n" "$tps" "$p50" "$p99" "$p99_tpcb" "$p99_audit" "$max" "$failed" "$(load)" "$extra"
    if [ "$n" -lt 1000 ]; then
        echo "  (only $n transactions in the window: its p99 is close to its max)"
    fi
    if grep -q 'aborted' "$work/$name.err" 2>/dev/null; then
        echo "  pgbench clients aborted: $(grep -m3 'aborted' "$work/$name.err" | tr '\n' ' ')"
    fi
}

# slow_steps NAME START_US END_US BASE_P99_MS SHOW_JSON BATCH_START_US
# BATCH_END_US: where the slow transactions of NAME's window fell: each one
# that took more than twice the baseline's p99 is put down to the ledger
# step its span overlapped most, else to "the batch window" (pauses, guard
# checks, and the batches past the ledger's itemized ones), "before the
# first step" (start-up, connections), "after validation" (the closing
# count of the old rows left, the run's last work) or "between steps";
# then the five slowest.
slow_steps() {
    python3 - "$work/log-$1" "$2" "$3" "$4" "$5" "$6" "$7" <<'PY'
import glob, json, sys
prefix, start, end, base, show = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
bstart, bend = int(sys.argv[6]), int(sys.argv[7])
limit = 2 * base
steps = []
for s in json.load(open(show))["steps"]:
    d = s.get("duration_ms") or 0
    if d > 0:
        steps.append((s["step"], (s["ts_ms"] - d) * 1000, s["ts_ms"] * 1000))
first = min((a for _, a, _ in steps), default=end)
last = max((b for _, _, b in steps), default=start)
def where(a, b):
    best, most = None, 0
    for name, sa, sb in steps:
        o = min(b, sb) - max(a, sa)
        if o > most:
            best, most = name, o
    if best:
        return best
    if bstart < b and a < bend:
        return "the batch window"
    if b <= first:
        return "before the first step"
    if a >= last:
        return "after validation"
    return "between steps"
slow, total = [], 0
for path in glob.glob(prefix + ".*"):
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 6 or not p[2].isdigit():
                continue
            t = int(p[4]) * 1_000_000 + int(p[5])
            if not start <= t < end:
                continue
            total += 1
            lat = int(p[2])
            if lat / 1000 > limit:
                slow.append((lat, t - lat, t))
counts = {}
for lat, a, b in slow:
    k = where(a, b)
    counts[k] = counts.get(k, 0) + 1
print(f"  slow transactions (over {limit:.1f} ms, 2x the baseline p99): {len(slow)} of {total}: "
      + (", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"))
for lat, a, b in sorted(slow, reverse=True)[:5]:
    print(f"    {lat / 1000:7.1f} ms, ending {(b - start) / 1e6:6.2f} s into the run: {where(a, b)}")
PY
}

# --- capacity ----------------------------------------------------------------
sql -c CHECKPOINT
pgbench -n -c "$CLIENTS" -j "$THREADS" -T "$CAPACITY_SECONDS" \
    -b tpcb-like -f "$AUDIT_SQL" "$DB" >"$work/capacity.out" 2>"$work/capacity.err" ||
    { cat "$work/capacity.err" >&2; exit 1; }
capacity=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$work/capacity.out")
case "$RATE" in
auto*) RATE=$(awk -v c="$capacity" -v p="${RATE#auto}" 'BEGIN { printf "%.0f", c * p / 100 }') ;;
esac
echo "capacity: ${capacity} tps unthrottled (${CAPACITY_SECONDS} s, $CLIENTS clients, $THREADS threads, tpcb-like + audit 1:1); fixed rate $RATE tps = $(awk -v r="$RATE" -v c="$capacity" 'BEGIN { printf "%.0f", 100 * r / c }') % of it"
echo

cat >"$work/agent.toml" <<TOML
[probe.bench]
kind = "postgres"
conninfo = "host=$PGHOST port=$PGPORT"
user = "$PGUSER"
dbname = "$DB"
write_check = true

[maintenance.audit-log]
kind = "postgres_retention"
probe = "bench"
table = "audit_log"
timestamp_column = "created_at"
older_than = "365d"
guard = ["bench"]
TOML
pacing=
for opt in "max_duty=${DUTY:-}" "batch_target=${TARGET:+\"$TARGET\"}" \
    "guard_every=${GUARD_EVERY:+\"$GUARD_EVERY\"}" "batch_size=${BATCH:-}" "pause=${PAUSE:+\"$PAUSE\"}"; do
    if [ -n "${opt#*=}" ]; then
        echo "${opt%%=*} = ${opt#*=}" >>"$work/agent.toml"
        pacing="$pacing ${opt%%=*} = ${opt#*=};"
    fi
done
echo "task pacing:${pacing:- the defaults of the task}"
upkeep() { "$BIN" "$@" --config "$work/agent.toml" --data-dir "$work/data"; }
"$BIN" check-config "$work/agent.toml" >/dev/null 2>"$work/check.err" || { cat "$work/check.err" >&2; exit 1; }
old_now() { sql -Atc "SELECT count(*) FROM audit_log WHERE created_at < now() - make_interval(secs => 365 * 86400.0)"; }

# Per run: "RUN judged|noisy upkeep_p99_ratio upkeep_tps_ratio rows_per_s seed_p99_ratio"
: >"$work/runs"

# one_run N: the three phases once.
one_run() {
    local r=$1 judged=judged
    echo "--- run $r of $RUNS (RATE $RATE tps) ---"
    # --- a. baseline, as two halves --------------------------------------------
    base_tps=
    base_p99=
    sql -c CHECKPOINT
    start_workload "baseline-$r"
    a0=$(now_us)
    nap "$D"
    a1=$(now_us)
    stop_workload
    local am=$(((a0 + a1) / 2)) p99a p99b spread
    report "baseline 1st half" "baseline-$r" "$a0" "$am"
    p99a=$last_p99
    report "baseline 2nd half" "baseline-$r" "$am" "$a1"
    p99b=$last_p99
    report baseline "baseline-$r" "$a0" "$a1"
    base_tps=$last_tps
    base_p99=$last_p99
    spread=$(awk -v a="$p99a" -v b="$p99b" 'BEGIN { lo = a < b ? a : b; hi = a < b ? b : a; printf "%.0f", (lo > 0 ? 100 * (hi - lo) / lo : 999) }')
    if [ "$spread" -gt 30 ]; then
        echo "noisy: baselines differ by ${spread}% in p99 ($p99a vs $p99b ms); this run is not judged"
        judged=noisy
    else
        echo "baseline halves agree: p99 $p99a vs $p99b ms (${spread}% apart, limit 30%)"
    fi

    # --- b. upkeep -------------------------------------------------------------
    sql -c CHECKPOINT
    start_workload "upkeep-$r"
    b0=$(now_us)
    set +e
    UPKEEP_LOG=${UPKEEP_LOG:-warn} upkeep maintenance run audit-log --ignore-window >"$work/run-$r.json" 2>"$work/run-$r.err" &
    upkeep_pid=$!
    wait "$upkeep_pid"
    run_rc=$?
    set -e
    upkeep_pid=
    b1=$(now_us)
    stop_workload

    run_id=$(jq -r '.tasks[0].details.run_id // empty' "$work/run-$r.json" 2>/dev/null || true)
    if [ -z "$run_id" ]; then
        echo "upkeep maintenance run printed no run document (exit $run_rc):" >&2
        tail -20 "$work/run-$r.err" >&2
        exit 1
    fi
    upkeep maintenance show "$run_id" --json >"$work/show-$r.json"
    # The ledger's steps: batch window (first batch start to the start of the
    # step that ends the batches), pacing changes, waits seen, batch times.
    python3 - "$work/show-$r.json" >"$work/pacing-$r" <<'PY'
import json, re, sys
doc = json.load(open(sys.argv[1]))
steps = doc["steps"]
batches = [s for s in steps if s["step"] == "batch"]
closing = [s for s in steps if s["step"] in ("validate", "abort", "error", "end")]
if batches:
    start = batches[0]["ts_ms"] - (batches[0]["duration_ms"] or 0)
    after = [s for s in closing if s["ts_ms"] >= batches[-1]["ts_ms"]]
    end = (after[0]["ts_ms"] - (after[0]["duration_ms"] or 0)) if after else batches[-1]["ts_ms"]
else:
    start = end = 0
print(f"batch_start_us={start * 1000} batch_end_us={end * 1000} itemized={len(batches)}"
      f" truncated={int(any(s['step'] == 'note' for s in steps))}"
      f" guard_pauses={sum(s['step'] == 'pause' for s in steps)}")
took = sorted(s["duration_ms"] or 0 for s in batches)
sizes = sorted(int(m.group(1)) for s in batches if (m := re.search(r"\(size (\d+),", s["detail"])))
if took:
    print(f"#   batch time: median {took[len(took) // 2]} ms, max {took[-1]} ms over {len(took)} itemized batches;"
          f" size median {sizes[len(sizes) // 2] if sizes else '-'}, min {sizes[0] if sizes else '-'}, max {sizes[-1] if sizes else '-'}")
waits = {}
for s in batches:
    m = re.search(r"waits ([^):]*)", s["detail"])
    for part in (m.group(1).split(", ") if m else []):
        k, _, n = part.rpartition(" ")
        if n.isdigit():
            waits[k] = waits.get(k, 0) + int(n)
print("#   backends seen waiting before and during batches: "
      + (", ".join(f"{k} {n}" for k, n in sorted(waits.items())) or "none"))
pacing = [s for s in steps if s["step"] == "pacing"]
changes = [s for s in pacing if s["detail"].startswith(("back off", "recover"))]
print(f"#   pacing: {len(changes)} change(s)")
for i, s in enumerate(changes):
    if 10 <= i < len(changes) - 5:
        if i == 10:
            print(f"#     ... {len(changes) - 15} more ...")
        continue
    print(f"#     {s['detail']}")
for s in steps:
    if s["step"] == "summary":
        print(f"#   summary: {s['detail']}")
for s in steps:
    if s["step"] in ("pause", "abort", "error", "note"):
        print(f"#   {s['step']}: {s['detail']}")
PY
    eval "$(grep -v '^#' "$work/pacing-$r")"
    status=$(jq -r '.tasks[0].details.status' "$work/run-$r.json")
    deleted=$(jq -r '.tasks[0].details.rows_changed' "$work/run-$r.json")
    run_ms=$(jq -r '.tasks[0].duration_ms // 0' "$work/run-$r.json")
    batches=$(jq -r '.tasks[0].details.batches' "$work/run-$r.json")
    rate_run=$(awk -v r="$deleted" -v ms="$run_ms" 'BEGIN { if (ms > 0) printf "%.0f", r * 1000 / ms; else print 0 }')
    rate_batches=$(awk -v r="$deleted" -v s="$batch_start_us" -v e="$batch_end_us" 'BEGIN { if (e > s) printf "%.0f", r * 1e6 / (e - s); else print 0 }')
    echo "upkeep run $run_id: $status (exit $run_rc), $deleted rows deleted in $(awk -v ms="$run_ms" 'BEGIN { printf "%.1f", ms / 1000 }') s = $rate_run rows/s (target >= 20000: $(verdict "$rate_run" '>=' 20000)); batches $(secs $((batch_end_us - batch_start_us))) s = $rate_batches rows/s; $batches batches, $itemized itemized$([ "$truncated" = 1 ] && echo " (ledger stopped itemizing: more ran)"), $guard_pauses guard pauses"
    if [ "$run_rc" -ne 0 ]; then
        echo "  error: $(jq -r '.tasks[0].error // empty' "$work/run-$r.json")$(tail -3 "$work/run-$r.err" | tr '\n' ' ')"
    fi
    sed 's/^#//' "$work/pacing-$r" | grep -v '=' || true
    local up_p99=nan up_tps=nan
    if [ "$batch_end_us" -gt "$batch_start_us" ]; then
        report "upkeep (batches)" "upkeep-$r" "$batch_start_us" "$batch_end_us"
        up_p99=$(ratio "$last_p99" "$base_p99")
        up_tps=$(ratio "$last_tps" "$base_tps")
    fi
    report "upkeep (whole run)" "upkeep-$r" "$b0" "$b1"
    slow_steps "upkeep-$r" "$b0" "$b1" "$base_p99" "$work/show-$r.json" "$batch_start_us" "$batch_end_us"
    local whole_p99
    whole_p99=$(ratio "$last_p99" "$base_p99")

    # --- c. seed ---------------------------------------------------------------
    restore="nothing to restore"
    if [ "$deleted" -gt 0 ]; then
        t=$(now_us)
        if upkeep maintenance rollback "$run_id" >"$work/rollback-$r.json" 2>"$work/rollback-$r.err"; then
            restore="upkeep maintenance rollback $run_id: $(jq -r '.tasks[0].details.status' "$work/rollback-$r.json") in $(secs $(($(now_us) - t))) s (no workload)"
        else
            restore="upkeep maintenance rollback $run_id FAILED after $(secs $(($(now_us) - t))) s: $(tail -2 "$work/rollback-$r.err" | tr '\n' ' ')"
        fi
    fi
    if [ "$(old_now)" -ne "$OLD" ]; then
        t=$(now_us)
        sql -v old="$OLD" -f benches/maintenance-impact/restore-old.sql
        restore="$restore; old rows re-inserted instead in $(secs $(($(now_us) - t))) s"
    fi
    sql -c 'VACUUM ANALYZE audit_log' -c CHECKPOINT
    echo "restore: $restore; $(old_now) old rows"

    start_workload "seed-$r"
    c0=$(now_us)
    # Not quiet: the command tag "DELETE n" is the row count.
    deleted_seed=$(psql -X -v ON_ERROR_STOP=1 -d "$DB" -c "DELETE FROM audit_log WHERE created_at < now() - interval '365 days'" | awk '/^DELETE/ { print $2 }')
    c1=$(now_us)
    sql -c 'VACUUM audit_log'
    c2=$(now_us)
    stop_workload
    echo "seed: DELETE of ${deleted_seed:-?} rows in $(secs $((c1 - c0))) s, VACUUM in $(secs $((c2 - c1))) s; $(awk -v r="${deleted_seed:-0}" -v us=$((c2 - c0)) 'BEGIN { printf "%.0f", r * 1e6 / us }') rows/s"
    report "seed (DELETE+VACUUM)" "seed-$r" "$c0" "$c2"
    local seed_p99
    seed_p99=$(ratio "$last_p99" "$base_p99")
    echo "$r $judged $up_p99 $up_tps $rate_batches $seed_p99 $whole_p99" >>"$work/runs"

    # The next run starts from the same table: the old half back.
    if [ "$r" -lt "$RUNS" ]; then
        sql -v old="$OLD" -f benches/maintenance-impact/restore-old.sql
        sql -c 'VACUUM ANALYZE audit_log' -c CHECKPOINT
    fi
    echo
}

for r in $(seq 1 "$RUNS"); do
    one_run "$r"
done

echo "runs (p99 and tps as ratios to the run's own baseline; rows/s over the batches):"
python3 - "$work/runs" <<'PY'
import math, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print(f"  {'run':>3}  {'judged':>6}  {'upkeep p99':>10}  {'upkeep tps':>10}  {'rows/s':>8}  {'seed p99':>8}  {'whole-run p99':>13}")
for r in rows:
    print(f"  {r[0]:>3}  {r[1]:>6}  {r[2]:>10}  {r[3]:>10}  {r[4]:>8}  {r[5]:>8}  {r[6]:>13}")
judged = [r for r in rows if r[1] == "judged"]
if not judged:
    print("  no run judged: every run's baseline halves differed by more than 30 % (noisy machine)")
    sys.exit()
def col(i):
    v = sorted(float(r[i]) for r in judged if r[i] not in ("nan", "-"))
    return v
for name, i in (("upkeep p99 ratio", 2), ("upkeep tps ratio", 3), ("rows/s", 4), ("seed p99 ratio", 5), ("whole-run p99 ratio", 6)):
    v = col(i)
    if not v:
        continue
    med = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    print(f"  median {name} over {len(v)} judged run(s): {med:.2f} (spread {v[-1] - v[0]:.2f}: {v[0]:.2f} to {v[-1]:.2f})")
PY
echo
echo "targets: tps >= 90 % of baseline, p99 <= 1.5x baseline, >= 20000 rows/s at 14 % of capacity (>= 10000 at 50 %); latencies are nearest-rank percentiles of every transaction in the window"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (other processes share the machine)"
