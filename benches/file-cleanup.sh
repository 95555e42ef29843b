#!/usr/bin/env bash
# Removing old files: `find -mtime +7 -delete` against upkeep's file_cleanup
# (quarantine = false, remove_empty_dirs = false: the same work) on two equal
# trees of FILES empty files, 1000 per directory, 10 % of them 30 days old.
# Prints files removed, files/s, CPU seconds and peak RSS of each (GNU time),
# and checks both removed exactly the old files. Target: upkeep within 2x of
# find's files/s.
#
#   benches/file-cleanup.sh               # 1,000,000 files
#   FILES=200000 benches/file-cleanup.sh  # a reduced tree
set -euo pipefail

cd "$(dirname "$0")/.."
FILES=${FILES:-1000000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET_DIR/release/upkeep}
[ -x "$BIN" ] || cargo build --release --quiet --bin upkeep

work=$(mktemp -d "${DIR:-${TMPDIR:-/tmp}}/file-cleanup.XXXXXX")
trap 'rm -rf "$work"' EXIT
old=$(( (FILES + 9) / 10 ))
echo "== two trees of $FILES files ($old old) under $work ($(stat -f -c %T "$work"))"
for t in find upkeep; do
    python3 benches/file-cleanup/make-tree.py "$work/$t" "$FILES"
done
sync
cat >"$work/agent.toml" <<TOML
[maintenance.bench]
kind = "file_cleanup"
paths = ["$work/upkeep"]
older_than = "7d"
quarantine = false
remove_empty_dirs = false
batch_size = 100000
TOML

# measure NAME CMD...: GNU time's wall, user, sys, max RSS (KiB).
measure() {
    local name=$1; shift
    /usr/bin/time -f "%e %U %S %M" -o "$work/$name.time" "$@" >/dev/null
    read -r wall user sys rss <"$work/$name.time"
    local left
    left=$(find "$work/$name" -type f | wc -l)
    local removed=$(( FILES - left ))
    [ "$removed" -eq "$old" ] || { echo "$name removed $removed files, not $old" >&2; exit 1; }
    printf '%-8s %10d %12.0f %8.2f %10.1f\n' "$name" "$removed" \
        "$(echo "$removed / $wall" | bc -l)" "$(echo "$user + $sys" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}

printf '%-8s %10s %12s %8s %10s\n' tool removed files_per_s cpu_s peak_rss_mib
measure find find "$work/find" -type f -mtime +7 -delete
measure upkeep "$BIN" maintenance run bench --ignore-window --config "$work/agent.toml" --data-dir "$work/data"
