#!/usr/bin/env bash
# Builds the static x86_64 binary once, then its man pages, completions and
# packaged config, then the .deb and the .rpm into target/packages/.
#
#   packaging/build.sh                      # both packages
#   packaging/build.sh --deb-version 0.1.0-2  # only a .deb at another version,
#                                           # from the binary already built
#
# Needs cargo-deb and cargo-generate-rpm (`cargo install --locked cargo-deb
# cargo-generate-rpm`); packaging/check.sh installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
BIN=target/$TARGET/release/upkeep
GEN=target/packaging
OUT=target/packages

deb_version=
if [ "${1:-}" = "--deb-version" ]; then
    deb_version=${2:?--deb-version needs a version}
fi

if [ -z "$deb_version" ]; then
    # glibc with crt-static: one self-contained static-pie binary. RUSTFLAGS
    # with --target applies to the binary only, not to build scripts.
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked --target "$TARGET"
fi
if ! file "$BIN" | grep -q 'static-pie linked'; then
    echo "build.sh: $BIN is not static-pie linked: $(file -b "$BIN")" >&2
    exit 1
fi

rm -rf "$GEN"
mkdir -p "$GEN/man" "$GEN/completions" "$OUT"
"$BIN" generate-man "$GEN/man"
gzip -9n "$GEN"/man/*.1
"$BIN" generate-completions "$GEN/completions"

# The packaged config is the documented example (every option commented at
# its default) with the data dir spelled out, so that the CLI read commands
# find the agent's history without systemd's $STATE_DIRECTORY.
sed 's|^# data_dir = "/var/lib/upkeep"$|data_dir = "/var/lib/upkeep"|' \
    agent.toml.example >"$GEN/agent.toml"
if ! grep -q '^data_dir = "/var/lib/upkeep"$' "$GEN/agent.toml"; then
    echo "build.sh: agent.toml.example no longer has the data_dir line to set" >&2
    exit 1
fi
"$BIN" check-config "$GEN/agent.toml" >/dev/null

# Debian wants a changelog; the project's history is git. One entry for the
# version being built, dated by the commit it is built from.
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
cat >"$GEN/changelog" <<EOF
upkeep (${deb_version:-$crate_version-1}) unstable; urgency=medium

  * upkeep $crate_version, built from commit $commit; the changes are in the
    project's git history.

 -- $(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)  $date
EOF

if [ -n "$deb_version" ]; then
    cargo deb --no-build --target "$TARGET" --deb-version "$deb_version" --output "$OUT/"
    exit 0
fi
cargo deb --no-build --target "$TARGET" --output "$OUT/"
cargo generate-rpm --target "$TARGET" --output "$OUT/"
ls -l "$OUT"
