#!/usr/bin/env bash
# Footprint of the agent with one probe of every kind, one task of every
# kind and one alert rule of every kind, configured but idle between runs:
# the six service kinds at a 10 s interval (tcp and postgres against the
# local PostgreSQL, redis against the local Redis, http against a local HTTP
# server, a worker (the Redis server process), and an access log that a
# writer appends 20 lines a second to), the three security kinds at their
# own default intervals, every maintenance kind on a schedule that does not
# come during the run (01:00 on 1 January), and one alert rule of every kind
# with one notifier of every kind (webhook, alertmanager, command, email). The code of a kind the agent is not
# running must not make it heavier: compare with benches/footprint.sh.
# Needs PostgreSQL (user postgres, trust) on 127.0.0.1:5432 and Redis on
# 127.0.0.1:6379. Prints what benches/footprint.sh prints.
#
#   benches/footprint-all-kinds.sh              # 120 s window
#   DURATION=30 benches/footprint-all-kinds.sh  # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/www" && echo ok >"$work/www/health"
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)

log="$work/access.log"
: >"$log"
(
    while true; do
        for i in $(seq 1 20); do
            echo "127.0.0.1 - - [28/Nov/2026:10:00:01 +0000] \"GET /item/$i HTTP/1.1\" 200 512 \"-\" \"bench\" 0.0$((i % 10))"
        done >>"$log"
        sleep 1
    done
) &
pids+=($!)

cat >"$work/probes.toml" <<TOML

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
url = "http://127.0.0.1:$port/health"
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

[maintenance.audit-log]
kind = "postgres_retention"
probe = "database"
table = "upkeep_footprint_audit"
timestamp_column = "created_at"
older_than = "365d"
schedule = "0 1 1 1 *"

[maintenance.analyze]
kind = "postgres_analyze"
probe = "database"
schedule = "0 1 1 1 *"

[maintenance.tmp-cleanup]
kind = "file_cleanup"
paths = ["$work/tmp"]
older_than = "7d"
schedule = "0 1 1 1 *"

[maintenance.app-logs]
kind = "log_rotate"
paths = ["$work/logs/*.log"]
method = "copytruncate"
schedule = "0 1 1 1 *"

[maintenance.cache-cleanup]
kind = "redis_cleanup"
probe = "cache"
match = "upkeep-footprint:*"
schedule = "0 1 1 1 *"

[maintenance.cache-warmup]
kind = "cache_warmup"
probe = "cache"
urls = ["http://127.0.0.1:$port/health"]
after = "cache-cleanup"

[maintenance.etc]
kind = "config_backup"
paths = ["$work/etc"]
schedule = "0 1 1 1 *"

[maintenance.nightly-dump]
kind = "postgres_backup"
probe = "database"
dest = "$work/dumps"
schedule = "0 1 1 1 *"

[maintenance.dump-drill]
kind = "restore_drill"
backup = "nightly-dump"
schedule = "0 1 1 1 *"

[notify.ops]
kind = "webhook"
url = "http://127.0.0.1:$port/hook"

[notify.pager]
kind = "command"
command = ["/bin/true"]

[notify.am]
kind = "alertmanager"
url = "http://127.0.0.1:$port"

[notify.mail]
kind = "email"
smtp = "smtp://127.0.0.1:$port"
from = "upkeep@localhost"
to = ["ops@localhost"]

[alert.service-down]
when = "probe"
notify = ["ops"]

[alert.load-high]
when = "threshold"
series = "host.load1"
above = 1000.0
notify = ["ops"]

[alert.disk-filling]
when = "forecast"
series = 'host.disk_used_ratio{mount="/"}'
reaches = 1.0
within = "7d"
notify = ["pager"]

[alert.maintenance-broken]
when = "maintenance"
on = ["failed", "aborted"]
notify = ["am"]

[alert.agent]
when = "agent"
notify = ["pager", "mail"]
TOML
mkdir -p "$work/tmp" "$work/logs" "$work/etc" "$work/dumps"
echo "setting = 1" >"$work/etc/app.conf"
: >"$work/logs/app.log"

INTERVAL=10s CONFIG_APPEND="$work/probes.toml" benches/footprint.sh
