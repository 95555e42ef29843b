#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing —
# Chromium (Debian), promtool (from Debian's prometheus package, unpacked
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

# The backup and drill tests run pg_dump / pg_restore / psql, mount a small
# tmpfs and run a command as another user (setpriv).
if ! command -v pg_dump >/dev/null || ! command -v pg_restore >/dev/null ||
    ! command -v setpriv >/dev/null; then
    echo "== installing postgresql-client and util-linux (Debian) for the backup tests"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        postgresql-client util-linux
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
