#!/usr/bin/env bash
# Figures for postgres_backup, restore_drill and config_backup, measured
# with the upkeep binary against the local PostgreSQL (127.0.0.1:5432, user
# postgres) and real files:
#   - a pgbench database of scale $SCALE (60 is about 1 GB): dump seconds and
#     size, drill restore seconds (RTO) and rows checked; $RUNS runs each,
#     median quoted;
#   - /etc: the first snapshot's seconds and a no-change run's seconds;
#     then a copy of /etc snapshotted 30 times with one changed file each:
#     the store's growth.
# The bench database and every file made are removed at the end.
#
#   benches/backup.sh                 # SCALE=60 RUNS=3
#   SCALE=10 RUNS=3 benches/backup.sh
# UPKEEP_BIN picks the binary (default target/release/upkeep, else debug).
set -euo pipefail

SCALE=${SCALE:-60}
RUNS=${RUNS:-3}
BIN=${UPKEEP_BIN:-}
if [ -z "$BIN" ]; then
  if [ -x target/release/upkeep ]; then BIN=target/release/upkeep; else BIN=target/debug/upkeep; fi
fi
PSQL=(psql -h 127.0.0.1 -U postgres -d postgres -Atq -v ON_ERROR_STOP=1)
DB="upkeep_bench_$$"
WORK=$(mktemp -d)
cleanup() {
  "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
run() { "$BIN" maintenance run "$1" --ignore-window --config "$WORK/agent.toml" --data-dir "$WORK/data" >/dev/null; }
verdict() {
  sqlite3 "$WORK/data/history.db" \
    "SELECT verdict FROM maintenance_runs WHERE task = '$1' ORDER BY id DESC LIMIT 1"
}

echo "binary: $BIN; pgbench scale $SCALE; $RUNS runs each"
"${PSQL[@]}" -c "CREATE DATABASE $DB"
t0=$(now)
pgbench -q -i -s "$SCALE" -h 127.0.0.1 -U postgres "$DB" >/dev/null 2>&1
echo "pgbench -i: $(echo "$(now) - $t0" | bc) s, database $("${PSQL[@]}" -c "SELECT pg_size_pretty(pg_database_size('$DB'))")"

cat >"$WORK/agent.toml" <<TOML
[probe.bench]
kind = "postgres"
conninfo = "host=127.0.0.1 port=5432"
user = "postgres"
dbname = "$DB"

[maintenance.dump]
kind = "postgres_backup"
probe = "bench"
keep = 1

[maintenance.drill]
kind = "restore_drill"
backup = "dump"
checks = [{ sql = "select count(*) from pgbench_accounts", expect = $((SCALE * 100000)) }]

[maintenance.etc]
kind = "config_backup"
paths = ["/etc"]

[maintenance.etc-copy]
kind = "config_backup"
paths = ["$WORK/etc"]
keep = 40
TOML

dumps=() ; drills=()
for _ in $(seq "$RUNS"); do
  t0=$(now); run dump; dumps+=("$(echo "$(now) - $t0" | bc)")
  size=$(verdict dump | jq .figures.bytes)
  run drill
  v=$(verdict drill)
  drills+=("$(echo "$v" | jq .figures.rto_seconds)")
  rows=$(echo "$v" | jq .figures.rows)
done
echo "dump: median $(printf '%s\n' "${dumps[@]}" | median) s (runs: ${dumps[*]}), size $size bytes"
echo "drill: RTO median $(printf '%s\n' "${drills[@]}" | median) s (runs: ${drills[*]}), rows checked $rows"

t0=$(now); run etc; first=$(echo "$(now) - $t0" | bc)
t0=$(now); run etc; again=$(echo "$(now) - $t0" | bc)
echo "/etc: first snapshot $first s, a run without change $again s (whole command, process start included); store $(du -sb "$WORK/data/backups/etc/store" | cut -f1) bytes"

cp -a /etc "$WORK/etc" 2>/dev/null || true
run etc-copy
base=$(du -sb "$WORK/data/backups/etc-copy/store" | cut -f1)
for i in $(seq 30); do
  echo "# change $i" >>"$WORK/etc/hostname"
  run etc-copy
done
grown=$(du -sb "$WORK/data/backups/etc-copy/store" | cut -f1)
echo "/etc copy: store $base bytes after the first snapshot, $grown after 30 more with 1 change each: +$((grown - base)) bytes ($(( (grown - base) / 30 )) per snapshot)"
