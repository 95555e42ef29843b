#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing —
# Chromium (Debian), Alertmanager and aiosmtpd (Debian, for the alert
# tests), promtool and prometheus (from Debian's prometheus
# package, unpacked under target/tools, no service installed: the dashboard
# test starts its own Prometheus) and schemathesis (PyPI, in a
# virtualenv under target/tools) — then runs `cargo test` and schemathesis
# against a running agent's OpenAPI document.
set -euo pipefail
cd "$(dirname "$0")"

SCHEMATHESIS_VERSION=4.32.5
TOOLS="$PWD/target/tools"
mkdir -p "$TOOLS/bin"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# The file tasks' tests: a writer in Python, flock(1) and mount(8) from
# util-linux (bind mounts and tmpfs need root).
if ! command -v python3 >/dev/null || ! command -v flock >/dev/null; then
    echo "== installing python3 and util-linux for the file task tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3 util-linux
fi

# benches/log-rotate-loss.sh compares against logrotate.
if ! command -v logrotate >/dev/null; then
    echo "== installing logrotate (Debian) for benches/log-rotate-loss.sh"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends logrotate
fi

if ! command -v chromium >/dev/null; then
    echo "== installing chromium (Debian) for the status page tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium
fi

# The security probe tests make real keys (ssh-keygen) and hold a real
# fcntl lock from another process (python3).
if ! command -v ssh-keygen >/dev/null || ! command -v python3 >/dev/null; then
    echo "== installing openssh-client and python3 (Debian) for the security probe tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends openssh-client python3
fi

# The backup and drill tests run pg_dump / pg_restore / psql, mount a small
# tmpfs and run a command as another user (setpriv).
if ! command -v pg_dump >/dev/null || ! command -v pg_restore >/dev/null ||
    ! command -v setpriv >/dev/null; then
    echo "== installing postgresql-client and util-linux (Debian) for the backup tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        postgresql-client util-linux
fi

# The alert tests deliver to real receivers: Alertmanager (started by the
# test on a free loopback port) and an SMTP server (aiosmtpd).
if ! command -v prometheus-alertmanager >/dev/null || ! /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
    echo "== installing prometheus-alertmanager and python3-aiosmtpd (Debian) for the alert tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        prometheus-alertmanager python3-aiosmtpd
fi

if [ ! -x "$TOOLS/bin/promtool" ] || [ ! -x "$TOOLS/bin/prometheus" ]; then
    echo "== unpacking promtool and prometheus from Debian's prometheus package"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || {
        as_root apt-get update -qq
        (cd "$tmp" && apt-get download prometheus)
    }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    cp "$tmp/x/usr/bin/promtool" "$TOOLS/bin/promtool"
    cp "$tmp/x/usr/bin/prometheus" "$TOOLS/bin/prometheus"
    rm -rf "$tmp"
fi

if [ ! -x "$TOOLS/venv/bin/schemathesis" ] ||
    ! "$TOOLS/venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION (PyPI) in a virtualenv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

export PATH="$TOOLS/bin:$PATH"
export UPKEEP_SCHEMATHESIS="$TOOLS/venv/bin/schemathesis"

echo "== cargo test"
cargo test --locked "$@"
