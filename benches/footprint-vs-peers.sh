#!/usr/bin/env bash
# The agent beside two peers, each alone, in one run on this machine: upkeep
# (host probes at 1 s, history on, the API on loopback), collectd with its
# rrdtool plugin (cpu, load, memory, swap, df, interface, uptime at
# Interval 1) and monit (`set daemon 1`: system, the root filesystem, the
# loopback interface; it keeps no history). Each runs in the foreground as
# a child of this script with its own config and files under a temporary
# dir, is measured after a warm-up, then stopped. Prints CPU % of one core
# over the window and the medians of RSS, PSS and private dirty memory
# (/proc/PID/smaps_rollup), then upkeep's ratios to each peer.
#
#   benches/footprint-vs-peers.sh                        # 70 s warm-up, 60 s each
#   DURATION=30 WARMUP=10 benches/footprint-vs-peers.sh  # a quick run
#   BIN=path/to/upkeep benches/footprint-vs-peers.sh     # another build of the agent
#
# The agent measured is the packaged one: the static binary packaging/build.sh
# builds (built here when BIN is not given). collectd (collectd-core),
# rrdtool and monit are installed from Debian when missing; services the
# install would start are kept from starting and left disabled, and this
# script stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=common/proc.sh
. benches/common/proc.sh

DURATION=${DURATION:-60}
# Past upkeep's settling (60 s after start; src/cli/footprint.rs), for each.
WARMUP=${WARMUP:-70}
SAMPLE_EVERY=${SAMPLE_EVERY:-2}
TARGET=x86_64-unknown-linux-gnu

install_peers() {
    local pkgs=() installed=() made_policy=
    command -v collectd >/dev/null || pkgs+=(collectd-core) installed+=(collectd)
    command -v rrdtool >/dev/null || pkgs+=(rrdtool)
    command -v monit >/dev/null || pkgs+=(monit) installed+=(monit)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || { echo "footprint-vs-peers: needs ${pkgs[*]} (run as root to install them)" >&2; exit 1; }
    echo "installing ${pkgs[*]} (Debian)" >&2
    # Keep the packages' services from starting at install (invoke-rc.d asks
    # policy-rc.d); ours goes when the install is done.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null ||
        { [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    # Installed for this benchmark only: never a running or enabled service.
    for svc in "${installed[@]}"; do
        if command -v systemctl >/dev/null; then
            systemctl stop "$svc" >/dev/null 2>&1 || true
            systemctl disable "$svc" >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null; then update-rc.d -f "$svc" disable >/dev/null 2>&1 || true; fi
        if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
    done
}
install_peers

if [ -z "${BIN:-}" ]; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet --target "$TARGET"
    BIN=target/$TARGET/release/upkeep
fi

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# measure NAME COMMAND...: starts COMMAND in the foreground, measures it,
# stops it; appends "NAME CPU RSS PSS DIRTY" to $work/results.
measure() {
    local name=$1
    shift
    "$@" >"$work/$name.out" 2>&1 &
    pid=$!
    sleep "$WARMUP"
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$name exited during the warm-up:" >&2
        tail -20 "$work/$name.out" >&2
        exit 1
    fi
    local m
    m=$(proc_measure "$pid" "$DURATION" "$SAMPLE_EVERY") || { echo "$name died while measured" >&2; exit 1; }
    echo "$name $m" >>"$work/results"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

# upkeep: the defaults at 1 s.
cat >"$work/agent.toml" <<TOML
[agent]
interval = "1s"

[api]
listen = "127.0.0.1:0"
TOML
measure upkeep "$BIN" run --config "$work/agent.toml" --data-dir "$work/upkeep"

# collectd + rrdtool: the same host facts at 1 s, kept in RRD files.
mkdir -p "$work/collectd/rrd"
cat >"$work/collectd.conf" <<CONF
Hostname "bench"
FQDNLookup false
BaseDir "$work/collectd"
PIDFile "$work/collectd/collectd.pid"
Interval 1
LoadPlugin cpu
LoadPlugin load
LoadPlugin memory
LoadPlugin swap
LoadPlugin df
LoadPlugin interface
LoadPlugin uptime
LoadPlugin rrdtool
<Plugin rrdtool>
  DataDir "$work/collectd/rrd"
</Plugin>
CONF
measure collectd collectd -f -C "$work/collectd.conf"
rrds=$(find "$work/collectd/rrd" -name '*.rrd' | wc -l)
[ "$rrds" -gt 0 ] || { echo "collectd wrote no RRD file: its rrdtool plugin did not run" >&2; exit 1; }

# monit: checks at 1 s, no history.
cat >"$work/monitrc" <<CONF
set daemon 1
set logfile $work/monit.log
set pidfile $work/monit.pid
set idfile $work/monit.id
set statefile $work/monit.state
check system bench
check filesystem root with path /
check network loopback with interface lo
CONF
chmod 600 "$work/monitrc"
measure monit monit -I -c "$work/monitrc"

echo "footprint vs peers: each alone, ${WARMUP} s warm-up, ${DURATION} s window, memory sampled every ${SAMPLE_EVERY} s (medians); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "upkeep binary: $BIN ($(stat -c %s "$BIN") bytes); collectd wrote $rrds RRD files"
printf '%-10s %10s %10s %10s %14s\n' agent "CPU %" "RSS MiB" "PSS MiB" "priv dirty MiB"
while read -r name cpu rss pss dirty; do
    printf '%-10s %10s %10s %10s %14s\n' "$name" "$cpu" "$(mib "$rss")" "$(mib "$pss")" "$(mib "$dirty")"
done <"$work/results"
read -r _ ucpu urss upss udirty < <(grep '^upkeep ' "$work/results")
for peer in collectd monit; do
    read -r _ cpu rss pss dirty < <(grep "^$peer " "$work/results")
    awk -v n="$peer" -v uc="$ucpu" -v c="$cpu" -v ur="$urss" -v r="$rss" -v up="$upss" -v p="$pss" -v ud="$udirty" -v d="$dirty" \
        'function q(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "n/a" }
        BEGIN { printf "upkeep / %s: CPU %s, RSS %s, PSS %s, private dirty %s\n", n, q(uc, c), q(ur, r), q(up, p), q(ud, d) }'
done
