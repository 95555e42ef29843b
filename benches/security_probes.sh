#!/usr/bin/env bash
# What the security probes cost on this host: `apt-get --simulate
# dist-upgrade` (the work of one security_updates tick) and `upkeep access
# report` over a temp root whose one user has 10,000 keys (the work of one
# access_review tick, plus printing). Prints the median of RUNS runs of each.
# Usage: benches/security_probes.sh [path/to/upkeep] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/upkeep}
RUNS=${2:-7}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }

root="$tmp/root"
mkdir -p "$root/etc/sudoers.d" "$root/home/alice/.ssh" "$tmp/data"
printf 'root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n' > "$root/etc/passwd"
printf 'root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n' > "$root/etc/group"
printf 'root ALL=(ALL:ALL) ALL\n' > "$root/etc/sudoers"
python3 - "$root/home/alice/.ssh/authorized_keys" <<'PY'
import base64, struct, sys
with open(sys.argv[1], "w") as f:
    for i in range(10000):
        blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + struct.pack(">I", i) + b"\x07" * 28
        f.write("ssh-ed25519 %s k%d\n" % (base64.b64encode(blob).decode(), i))
PY
cat > "$tmp/agent.toml" <<TOML
[agent]
data_dir = "$tmp/data"
[probe.access]
kind = "access_review"
root = "$root"
TOML

apt=$(for _ in $(seq "$RUNS"); do ms apt-get --simulate dist-upgrade; done | median)
report=$(for _ in $(seq "$RUNS"); do ms "$BIN" access report --format json --config "$tmp/agent.toml"; done | median)
echo "apt-get --simulate dist-upgrade: median ${apt} ms over $RUNS runs"
echo "upkeep access report, 10,000 keys: median ${report} ms over $RUNS runs ($BIN)"
