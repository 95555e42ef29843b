#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing —
# Chromium (Debian), Alertmanager and aiosmtpd (Debian, for the alert
# tests), promtool (from Debian's prometheus package, unpacked
# under target/tools, no server installed) and schemathesis (PyPI, in a
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

if ! command -v chromium >/dev/null; then
    echo "== installing chromium (Debian) for the status page tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium
fi

# The alert tests deliver to real receivers: Alertmanager (started by the
# test on a free loopback port) and an SMTP server (aiosmtpd).
if ! command -v prometheus-alertmanager >/dev/null || ! /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
    echo "== installing prometheus-alertmanager and python3-aiosmtpd (Debian) for the alert tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        prometheus-alertmanager python3-aiosmtpd
fi

if [ ! -x "$TOOLS/bin/promtool" ]; then
    echo "== unpacking promtool from Debian's prometheus package"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || {
        as_root apt-get update -qq
        (cd "$tmp" && apt-get download prometheus)
    }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    cp "$tmp/x/usr/bin/promtool" "$TOOLS/bin/promtool"
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
