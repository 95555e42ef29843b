#!/usr/bin/env bash
# What removing many Redis keys costs an application, measured as latency at
# a fixed request rate, side by side for the usual one-liners and upkeep's
# redis_cleanup (DESIGN.md, Maintenance). Runs against a redis-server of its
# own, started here on a free port with its data in a temporary directory
# and stopped on exit: no other server is touched.
#
# Every phase loads REMOVE keys `tmp:N` (100-byte values) to remove among
# KEEP keys `keep:N` to keep, then runs the application (one client at a
# fixed RATE ops/s, GET and SET alternating on the kept keys; latency
# counted from when each op was due, so a stall shows in the ops it
# delays) while one method removes the tmp: keys:
#
#   baseline      nothing removed (D seconds)
#   keys+del      redis-cli KEYS 'tmp:*', then DEL in 1000s
#   scan+del      redis-cli --scan --pattern 'tmp:*' | xargs -n1000 DEL
#   scan+unlink   the same with UNLINK
#   upkeep        `upkeep maintenance run` (redis_cleanup, default batch_size
#                 and pause, guarded by the redis probe), backup on
#   upkeep-nobak  the same with backup = false
#   upkeep-old    with OLD_BIN set: the same as upkeep with that binary (an
#                 earlier build), run right after upkeep so that the two
#                 compare on the same machine at nearly the same time
#
# Printed per phase: p50/p99/p999/max of the application's ops during the
# removal (ms), the removal's keys/s (keys over the removal's wall time;
# for upkeep, plan and validation included, and the batches alone beside
# it), and used_memory before and after. Target (issue): upkeep's p99 <= 2x
# baseline at >= 20000 keys/s with backup on.
#
#   benches/redis-cleanup-impact.sh                          # 1M + 200k keys
#   REMOVE=200000 KEEP=40000 benches/redis-cleanup-impact.sh  # a quick run
#
# Environment: REMOVE (1000000), KEEP (200000), RATE (2000), D (10 s of
# baseline), BIN (target/release/upkeep), BATCH and PAUSE (upkeep's
# batch_size and pause; default: the kind's defaults, 500 and "10ms"),
# DUTY and TARGET (upkeep's max_duty and batch_target; default: pacing's
# defaults, 0.2 and "5ms"),
# OLD_BIN (unset: no upkeep-old phase), PHASES (the phases to run, default
# all). Needs redis-server, redis-cli, python3, xargs, sqlite3.
#
#   OLD_BIN=/path/to/older/upkeep PHASES="baseline upkeep upkeep-old" \
#       benches/redis-cleanup-impact.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REMOVE=${REMOVE:-1000000}
KEEP=${KEEP:-200000}
RATE=${RATE:-2000}
D=${D:-10}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/upkeep}
OLD_BIN=${OLD_BIN:-}
PHASES=${PHASES:-baseline keys+del scan+del scan+unlink upkeep upkeep-nobak upkeep-old}
BATCH=${BATCH:-500}
PAUSE=${PAUSE:-10ms}
DUTY=${DUTY:-0.2}
TARGET=${TARGET:-5ms}

for tool in redis-server redis-cli python3 xargs sqlite3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release" >&2; exit 1; }
[ -z "$OLD_BIN" ] || [ -x "$OLD_BIN" ] || { echo "missing OLD_BIN $OLD_BIN" >&2; exit 1; }

WORK=$(mktemp -d -t upkeep-redis-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --slowlog-log-slower-than 1000 --slowlog-max-len 100000 \
    --dir "$WORK" --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
# The slow log keeps every command of 1 ms or more.
cleanup() {
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
CLI=(redis-cli -h 127.0.0.1 -p "$PORT")
for _ in $(seq 100); do "${CLI[@]}" PING >/dev/null 2>&1 && break; sleep 0.1; done

# The application: RATE ops/s on the kept keys until $WORK/stop exists;
# writes one latency (ms, from the op's due time) per line.
cat >"$WORK/app.py" <<'EOF'
import os, socket, sys, time
port, rate, keep, out, stop = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
def cmd(*a):
    return b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a)
def reply():
    line = f.readline()
    if line[:1] == b"$":
        n = int(line[1:])
        if n >= 0: f.read(n + 2)
val = b"v" * 100
lat = []
gap = 1.0 / rate
due = time.perf_counter()
i = 0
while not os.path.exists(stop):
    now = time.perf_counter()
    if now < due:
        time.sleep(due - now)
    k = b"keep:%d" % ((i * 7919) % keep)
    s.sendall(cmd(b"GET", k) if i % 2 == 0 else cmd(b"SET", k, val))
    reply()
    lat.append((time.perf_counter() - due) * 1000.0)
    i += 1
    due += gap
with open(out, "w") as o:
    o.write("\n".join("%.4f" % x for x in lat))
EOF

load() {
    "${CLI[@]}" FLUSHALL >/dev/null   # this bench's own server only
    python3 - "$REMOVE" "$KEEP" >"$WORK/load.resp" <<'EOF'
import sys
remove, keep = int(sys.argv[1]), int(sys.argv[2])
val = b"x" * 100
w = sys.stdout.buffer
for prefix, n in ((b"tmp", remove), (b"keep", keep)):
    for i in range(n):
        k = b"%s:%d" % (prefix, i)
        w.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(k), k, val))
EOF
    "${CLI[@]}" --pipe <"$WORK/load.resp" >/dev/null
    rm -f "$WORK/load.resp"
}

used_memory() { "${CLI[@]}" INFO memory | tr -d '\r' | awk -F: '$1=="used_memory"{print $2}'; }

stats() { # latency file -> "p50 p99 p999 max"
    python3 - "$1" <<'EOF'
import sys
v = sorted(float(x) for x in open(sys.argv[1]) if x.strip())
if not v:
    print("- - - - 0"); sys.exit()
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print("%.3f %.3f %.3f %.3f %d" % (q(0.5), q(0.99), q(0.999), v[-1], len(v)))
EOF
}

cat >"$WORK/agent.toml" <<EOF
[probe.cache]
kind = "redis"
url = "redis://127.0.0.1:$PORT/0"

[maintenance.cleanup]
kind = "redis_cleanup"
probe = "cache"
match = "tmp:*"
batch_size = $BATCH
pause = "$PAUSE"
max_duty = $DUTY
batch_target = "$TARGET"

[maintenance.cleanup-nobak]
kind = "redis_cleanup"
probe = "cache"
match = "tmp:*"
batch_size = $BATCH
pause = "$PAUSE"
max_duty = $DUTY
batch_target = "$TARGET"
backup = false
EOF

# phase NAME COMMAND...: load, start the app, run COMMAND, stop the app.
printf '%-13s %8s %8s %8s %8s %7s %9s %12s %12s  %s\n' phase p50_ms p99_ms p999_ms max_ms ops keys/s mem_before mem_after note
phase() {
    local name=$1; shift
    load
    "${CLI[@]}" CONFIG RESETSTAT >/dev/null
    "${CLI[@]}" SLOWLOG RESET >/dev/null
    local before; before=$(used_memory)
    rm -f "$WORK/stop"
    python3 "$WORK/app.py" "$PORT" "$RATE" "$KEEP" "$WORK/$name.lat" "$WORK/stop" &
    local app=$!
    sleep 1
    # Only the ops during the removal count: the file is cut at its start.
    local t0; t0=$(date +%s.%N)
    "$@" >"$WORK/$name.out" 2>&1 || { echo "$name failed:" >&2; cat "$WORK/$name.out" >&2; }
    local t1; t1=$(date +%s.%N)
    touch "$WORK/stop"; wait "$app"
    local skip; skip=$(python3 -c "print(int($RATE * 1.0))")
    tail -n +"$((skip + 1))" "$WORK/$name.lat" >"$WORK/$name.during"
    local after; after=$(used_memory)
    local left; left=$("${CLI[@]}" --scan --pattern 'tmp:*' | wc -l)
    local rate; rate=$(python3 -c "print(int(($REMOVE - $left) / max($t1 - $t0, 1e-9)))")
    [ "$name" = baseline ] && rate=-
    read -r p50 p99 p999 max ops < <(stats "$WORK/$name.during")
    local note=""
    if [ -f "$WORK/$name.batches" ]; then note="batches alone: $(cat "$WORK/$name.batches") keys/s"; fi
    [ "$left" != 0 ] && [ "$name" != baseline ] && note="$note; $left tmp: keys LEFT"
    printf '%-13s %8s %8s %8s %8s %7s %9s %12s %12s  %s\n' "$name" "$p50" "$p99" "$p999" "$max" "$ops" "$rate" "$before" "$after" "$note"
    server_time "$name" >>"$WORK/server-time"
}

# Where the server's time went in a phase: the commands that took the most
# (INFO commandstats: calls, total ms, usec per call), and the commands
# the slow log caught at 1 ms or more (each one held every client).
server_time() {
    local name=$1
    "${CLI[@]}" INFO commandstats | tr -d '\r' | python3 -c '
import sys
name = sys.argv[1]
rows = []
for line in sys.stdin:
    if not line.startswith("cmdstat_"): continue
    cmd, rest = line[8:].strip().split(":", 1)
    f = dict(kv.split("=") for kv in rest.split(","))
    rows.append((int(f["usec"]), cmd, int(f["calls"]), float(f["usec_per_call"])))
rows.sort(reverse=True)
top = ", ".join("%s %d calls %.0f ms %.2f us/call" % (c, n, u / 1000, per) for u, c, n, per in rows[:5])
print("%-13s server: %s" % (name, top))
' "$name"
    printf '%-13s slowlog: %s commands of 1 ms or more, the longest %s us\n' "$name" \
        "$("${CLI[@]}" SLOWLOG LEN)" "$(slow_max)"
}

slow_max() { # the longest command in the slow log, in microseconds
    "${CLI[@]}" --json SLOWLOG GET 100000 2>/dev/null \
        | python3 -c 'import json,sys; v=json.load(sys.stdin); print(max((e[2] for e in v), default=0))'
}

upkeep_run() { # binary task phase: runs it, and writes the batches' own keys/s
    local bin=$1 task=$2 name=$3
    local data="$WORK/data-$task"
    UPKEEP_LOG=warn "$bin" maintenance run "$task" -c "$WORK/agent.toml" --data-dir "$data" --ignore-window >"$WORK/$task.json"
    local id; id=$(python3 -c "import json; print(json.load(open('$WORK/$task.json'))['tasks'][0]['details']['run_id'])")
    sqlite3 -readonly "$data/history.db" \
        "SELECT sum(rows), (max(ts_ms) - min(ts_ms - coalesce(duration_ms,0))) FROM maintenance_steps WHERE run_id = $id AND step = 'batch'" \
        2>/dev/null | awk -F'|' '$2>0 {printf "%d", $1 * 1000 / $2}' >"$WORK/$name.batches" || true
    rm -rf "$data"
}

want() { [[ " $PHASES " == *" $1 "* ]]; }
want baseline && phase baseline sleep "$D"
want keys+del && phase keys+del bash -c "${CLI[*]} --raw KEYS 'tmp:*' | xargs -n1000 ${CLI[*]} DEL >/dev/null"
want scan+del && phase scan+del bash -c "${CLI[*]} --scan --pattern 'tmp:*' | xargs -n1000 ${CLI[*]} DEL >/dev/null"
want scan+unlink && phase scan+unlink bash -c "${CLI[*]} --scan --pattern 'tmp:*' | xargs -n1000 ${CLI[*]} UNLINK >/dev/null"
want upkeep && phase upkeep upkeep_run "$BIN" cleanup upkeep
[ -n "$OLD_BIN" ] && want upkeep-old && phase upkeep-old upkeep_run "$OLD_BIN" cleanup upkeep-old
want upkeep-nobak && phase upkeep-nobak upkeep_run "$BIN" cleanup-nobak upkeep-nobak
cat "$WORK/server-time"
echo "REMOVE=$REMOVE KEEP=$KEEP RATE=$RATE BATCH=$BATCH PAUSE=$PAUSE DUTY=$DUTY TARGET=$TARGET; machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
