#!/usr/bin/env bash
# Lines lost by log rotation under a writer appending numbered 90-byte lines
# at RATE lines/s (each line one O_APPEND write; SIGHUP makes it reopen):
# logrotate's copytruncate and create (+ postrotate SIGHUP, delaycompress)
# against upkeep's log_rotate copytruncate (fallocate COLLAPSE_RANGE) and
# reopen, side by side, ROTATIONS forced rotations EVERY seconds apart each.
# Prints written, lost and duplicated lines per method. The logs live under
# DIR (default: a temp dir on the filesystem of /tmp); collapse needs ext4
# or XFS there.
#
#   benches/log-rotate-loss.sh
#   RATE=20000 ROTATIONS=5 EVERY=4 benches/log-rotate-loss.sh
set -euo pipefail

cd "$(dirname "$0")/.."
RATE=${RATE:-20000}
ROTATIONS=${ROTATIONS:-5}
EVERY=${EVERY:-4}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET_DIR/release/upkeep}
HERE=benches/log-rotate
command -v logrotate >/dev/null || { echo "logrotate is missing (test.sh installs it)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is missing" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release --quiet --bin upkeep

work=$(mktemp -d "${DIR:-${TMPDIR:-/tmp}}/log-rotate-loss.XXXXXX")
trap 'rm -rf "$work"' EXIT
total=$(( RATE * (ROTATIONS * EVERY + EVERY) ))

# rotate METHOD DIR: one forced rotation of DIR/app.log.
rotate() {
    local method=$1 d=$2
    case $method in
    logrotate-copytruncate | logrotate-create)
        logrotate -f -s "$d/state" "$d/logrotate.conf" ;;
    upkeep-*)
        "$BIN" maintenance run logs --ignore-window --config "$d/agent.toml" --data-dir "$d/data" >/dev/null ;;
    esac
}

setup() {
    local method=$1 d=$2
    mkdir -p "$d/logs" "$d/data"
    case $method in
    logrotate-copytruncate)
        printf '%s {\n  rotate 100\n  copytruncate\n  compress\n  missingok\n}\n' "$d/logs/app.log" >"$d/logrotate.conf" ;;
    logrotate-create)
        printf '%s {\n  rotate 100\n  create\n  compress\n  delaycompress\n  missingok\n  postrotate\n    kill -HUP $(cat %s)\n  endscript\n}\n' \
            "$d/logs/app.log" "$d/app.pid" >"$d/logrotate.conf" ;;
    upkeep-copytruncate)
        printf '[maintenance.logs]\nkind = "log_rotate"\npaths = ["%s"]\nmethod = "copytruncate"\nkeep = 100\nsize = 4096\n' \
            "$d/logs/app.log" >"$d/agent.toml" ;;
    upkeep-reopen)
        printf '[maintenance.logs]\nkind = "log_rotate"\npaths = ["%s"]\nmethod = "reopen"\npidfile = "%s"\nkeep = 100\nsize = 4096\n' \
            "$d/logs/app.log" "$d/app.pid" >"$d/agent.toml" ;;
    esac
}

echo "writer: $RATE lines/s of 90 bytes, $ROTATIONS rotations ${EVERY}s apart, $total lines per method"
echo "filesystem of the logs: $(stat -f -c %T "$work")"
printf '%-24s %10s %8s %10s %10s %12s\n' method written lost duplicated malformed writer_rate
for method in logrotate-copytruncate logrotate-create upkeep-copytruncate upkeep-reopen; do
    d=$work/$method
    setup "$method" "$d"
    python3 "$HERE/writer.py" "$d/logs/app.log" "$total" "$RATE" "$d/app.pid" >"$d/rate" &
    wpid=$!
    t0=$(date +%s.%N)
    for i in $(seq "$ROTATIONS"); do
        # At t0 + i * EVERY whatever the rotations took (none starts late
        # into the writer's last interval).
        sleep "$(echo "d = $t0 + $i * $EVERY - $(date +%s.%N); if (d > 0) d else 0" | bc -l)"
        rotate "$method" "$d"
    done
    wait "$wpid"
    read -r written lost dup bad < <(python3 "$HERE/count.py" "$d/logs" app.log "$total")
    printf '%-24s %10s %8s %10s %10s %12s\n' "$method" "$written" "$lost" "$dup" "$bad" "$(cat "$d/rate")"
    rm -rf "$d"
done
