#!/usr/bin/env bash
# Packaging checks, run by .ci/run (as root, no systemd as PID 1):
#   1. build the static binary and both packages (packaging/build.sh);
#   2. the unit: systemd-analyze security exposure <= 2.5;
#   3. the .deb: lintian, with the findings packaging/lintian-allow justifies;
#   4. the .rpm: files, scriptlets, config files, owners and modes;
#   5. the .deb installed for real: the user, files with their owners and
#      modes, systemd-analyze verify, check-config, the agent started as the
#      upkeep user (/-/ready, SIGTERM, exit 0), an upgrade to a newer build
#      that keeps a modified config and the history, remove (keeps them) and
#      purge (deletes them).
# Step 5 installs packages and creates a system user: it runs only with
# CI=true (or UPKEEP_INSTALL_TEST=1).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_RPM_VERSION=0.21.1
MAX_EXPOSURE=2.5
OUT=target/packages

passed=0
failed=0
started=$SECONDS
step_started=$SECONDS

step() {
    echo "-- $1 (after $((SECONDS - started)) s)"
    step_started=$SECONDS
}

ok() {
    passed=$((passed + 1))
    echo "ok: $1"
}

bad() {
    failed=$((failed + 1))
    echo "FAILED: $1" >&2
}

# check DESCRIPTION COMMAND...: runs COMMAND, counts the outcome.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

die() {
    echo "FAILED: $1" >&2
    echo "packaging: $passed passed, $((failed + 1)) failed"
    exit 1
}

# mode owner:group of a path, e.g. "640 root:upkeep".
perms() {
    stat -c '%a %U:%G' "$1"
}

has_perms() {
    local got
    got=$(perms "$1" 2>/dev/null || echo missing)
    [ "$got" = "$2" ] || {
        echo "  $1: $got, want $2" >&2
        return 1
    }
}

step "tools"
missing=()
for tool in lintian rpm file curl systemd-analyze setpriv; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=()
    for tool in "${missing[@]}"; do
        case $tool in
        systemd-analyze) pkgs+=(systemd) ;;
        setpriv) pkgs+=(util-linux) ;;
        *) pkgs+=("$tool") ;;
        esac
    done
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
if ! cargo generate-rpm --version 2>/dev/null | grep -qF "$CARGO_RPM_VERSION"; then
    cargo install --locked cargo-generate-rpm --version "$CARGO_RPM_VERSION"
fi

step "build: static binary, man pages, completions, .deb and .rpm"
rm -rf "$OUT"
packaging/build.sh || die "packaging/build.sh"
bin=target/x86_64-unknown-linux-gnu/release/upkeep
echo "$(file -b "$bin" | cut -d, -f1-3)"
echo "binary size: $(stat -c %s "$bin") bytes ($(du -h --apparent-size "$bin" | cut -f1))"
check "the binary is static-pie linked" sh -c "file -b '$bin' | grep -q 'static-pie linked'"
deb=$(ls "$OUT"/upkeep_*_amd64.deb)
rpm=$(ls "$OUT"/upkeep-*.x86_64.rpm)
ls -l "$deb" "$rpm"
echo "build took $((SECONDS - step_started)) s"

step "unit: systemd-analyze security"
exposure=$(systemd-analyze security --offline=true --no-pager packaging/upkeep.service 2>&1 |
    sed -n 's/.*Overall exposure level for upkeep.service: \([0-9.]*\).*/\1/p')
echo "exposure: ${exposure:-unknown} (at most $MAX_EXPOSURE)"
check "exposure ${exposure:-unknown} <= $MAX_EXPOSURE" \
    awk -v e="${exposure:-99}" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 <= m + 0) }'

step "deb: contents and lintian"
dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }'
check "the .deb depends on passwd and tzdata only (the binary is static)" \
    [ "$(dpkg-deb -f "$deb" Depends)" = "passwd, tzdata" ]
check "the config is a conffile" \
    sh -c "dpkg-deb --ctrl-tarfile '$deb' | tar -xO ./conffiles | grep -qx /etc/upkeep/agent.toml"
lintian_rc=0
lintian_out=$(lintian --fail-on none --tag-display-limit 0 "$deb" 2>&1) || lintian_rc=$?
echo "$lintian_out"
check "lintian ran" [ "$lintian_rc" -eq 0 ]
allowed=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' packaging/lintian-allow | awk '{ print $1 }')
found=$(echo "$lintian_out" | awk '/^[EW]: / { print $3 }' | sort -u)
unexpected=$(grep -vxF -f <(echo "$allowed") <<<"$found" || true)
check "lintian: no errors or warnings beyond packaging/lintian-allow${unexpected:+ (got: $unexpected)}" \
    [ -z "$unexpected" ]
for tag in $allowed; do
    grep -qxF "$tag" <<<"$found" || echo "note: packaging/lintian-allow lists $tag, which lintian no longer reports"
done

step "rpm: files, scriptlets, config files"
rpm_files=$(rpm -qpl "$rpm")
echo "$rpm_files"
for f in /usr/bin/upkeep /etc/upkeep/agent.toml /usr/lib/systemd/system/upkeep.service \
    /usr/lib/sysusers.d/upkeep.conf /usr/share/man/man1/upkeep.1.gz \
    /usr/share/man/man1/upkeep-run.1.gz /usr/share/bash-completion/completions/upkeep \
    /usr/share/zsh/site-functions/_upkeep /usr/share/fish/vendor_completions.d/upkeep.fish; do
    check "rpm ships $f" grep -qxF "$f" <<<"$rpm_files"
done
check "rpm config files: exactly /etc/upkeep/agent.toml" \
    [ "$(rpm -qp --configfiles "$rpm")" = /etc/upkeep/agent.toml ]
rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" \
    >"$OUT/rpm-files.txt"
check "rpm config is -rw-r----- root:upkeep, noreplace" \
    grep -qE '^-rw-r----- root:upkeep cn? /etc/upkeep/agent.toml$' "$OUT/rpm-files.txt"
scripts=$(rpm -qp --scripts "$rpm")
echo "$scripts"
for s in preinstall postinstall preuninstall postuninstall; do
    check "rpm has a $s scriptlet" grep -q "^$s scriptlet" <<<"$scripts"
done
sysusers_line=$(grep '^u ' packaging/upkeep.sysusers)
check "rpm %pre creates the user from the sysusers line" grep -qF "echo '$sysusers_line'" <<<"$scripts"
check "rpm %pre falls back to useradd" grep -q 'useradd --system' <<<"$scripts"
# Every systemctl call sits under `[ -d /run/systemd/system ]` and may fail.
systemd_guarded() {
    [ "$(grep -c '\[ -d /run/systemd/system \]' <<<"$scripts")" -eq 3 ] &&
        ! grep -v '^[[:space:]]*#' <<<"$scripts" | grep 'systemctl' | grep -qv '|| :$'
}
check "rpm scriptlets call systemctl only where systemd runs" systemd_guarded
for s in pre post preun postun; do
    check "rpm $s scriptlet parses (sh -n)" sh -n "packaging/rpm/$s.sh"
done

if [ "${CI:-}" != true ] && [ "${UPKEEP_INSTALL_TEST:-}" != 1 ]; then
    echo "-- install test skipped: it installs packages and creates a user; run with CI=true"
    echo "packaging took $((SECONDS - started)) s"
    echo "packaging: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
fi

step "install: dpkg -i on this machine"
tmp=$(mktemp -d)
agent_pid=
saved=()
cleanup() {
    if [ -n "$agent_pid" ]; then kill -KILL "$agent_pid" 2>/dev/null || true; fi
    if dpkg-query -W -f='${Status}' upkeep 2>/dev/null | grep -q 'installed\|config-files'; then
        dpkg --purge upkeep >/dev/null 2>&1 || true
    fi
    for d in "${saved[@]}"; do
        if [ ! -e "$d" ]; then mv "$tmp/saved${d//\//_}" "$d"; fi
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
# A clean machine: no package and no user left by an earlier run. What an
# agent run by hand left in these places (as root it keeps its history in
# /var/lib/upkeep) is moved aside, and put back at the end.
if dpkg-query -W upkeep >/dev/null 2>&1; then dpkg --purge upkeep >/dev/null; fi
for d in /etc/upkeep /var/lib/upkeep; do
    if [ -e "$d" ]; then
        mv "$d" "$tmp/saved${d//\//_}"
        saved+=("$d")
        echo "moved $d aside for the test; it is put back at the end"
    fi
done
if getent passwd upkeep >/dev/null; then userdel upkeep; fi
if getent group upkeep >/dev/null; then groupdel upkeep; fi

dpkg -i "$deb" </dev/null || die "dpkg -i $deb"
check "the upkeep system user exists" sh -c 'getent passwd upkeep | grep -q ":/var/lib/upkeep:/usr/sbin/nologin$"'
check "the upkeep group exists" getent group upkeep
check "/usr/bin/upkeep 755 root:root" has_perms /usr/bin/upkeep "755 root:root"
check "/etc/upkeep/agent.toml 640 root:upkeep" has_perms /etc/upkeep/agent.toml "640 root:upkeep"
check "/var/lib/upkeep 750 upkeep:upkeep" has_perms /var/lib/upkeep "750 upkeep:upkeep"
for f in /lib/systemd/system/upkeep.service /usr/lib/sysusers.d/upkeep.conf \
    /usr/share/man/man1/upkeep.1.gz /usr/share/bash-completion/completions/upkeep \
    /usr/share/zsh/vendor-completions/_upkeep /usr/share/fish/vendor_completions.d/upkeep.fish; do
    check "$f 644 root:root" has_perms "$f" "644 root:root"
done
check "completions offer no hidden packaging command" \
    sh -c '! grep -q generate- /usr/share/bash-completion/completions/upkeep'
check "the man page renders" sh -c 'man -l /usr/share/man/man1/upkeep.1.gz 2>/dev/null | grep -q "upkeep-run"'
check "systemd-analyze verify on the installed unit" \
    systemd-analyze verify --man=no /lib/systemd/system/upkeep.service
check "upkeep check-config /etc/upkeep/agent.toml" /usr/bin/upkeep check-config /etc/upkeep/agent.toml

# The API's default port may be taken (by a test running at the same time):
# a local change to the installed config picks a free one. That change is
# also the local modification the upgrade must keep.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000)))
sed -i "s|^# listen = \"127.0.0.1:8711\"$|listen = \"127.0.0.1:$port\"|" /etc/upkeep/agent.toml
check "the config is modified locally (port $port)" grep -qx "listen = \"127.0.0.1:$port\"" /etc/upkeep/agent.toml

# No systemd here: the agent runs as the unit would run it, as upkeep:upkeep
# with the packaged config, in the foreground.
start_agent() {
    # umask as the unit's UMask=0027; exec keeps $! the agent's pid.
    (
        umask 0027
        exec env -i PATH=/usr/bin:/bin UPKEEP_LOG=info \
            setpriv --reuid=upkeep --regid=upkeep --init-groups -- \
            /usr/bin/upkeep run --config /etc/upkeep/agent.toml >"$tmp/agent.log" 2>&1
    ) &
    agent_pid=$!
    for _ in $(seq 1 150); do
        if curl -fsS "http://127.0.0.1:$port/-/ready" >"$tmp/ready.json" 2>/dev/null; then
            return 0
        fi
        kill -0 "$agent_pid" 2>/dev/null || break
        sleep 0.2
    done
    cat "$tmp/agent.log" >&2
    return 1
}

stop_agent() {
    local t0=$SECONDS rc=0
    kill -TERM "$agent_pid"
    wait "$agent_pid" || rc=$?
    agent_pid=
    echo "  exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] && [ $((SECONDS - t0)) -le 5 ]
}

check "the installed agent starts as upkeep and answers /-/ready" start_agent
cat "$tmp/ready.json" && echo
check "the agent writes its history to /var/lib/upkeep as upkeep" \
    has_perms /var/lib/upkeep/history.db "640 upkeep:upkeep"
check "/api/v1/info names the packaged config and data dir" sh -c \
    "curl -fsS http://127.0.0.1:$port/api/v1/info | grep -q '\"config_path\":\"/etc/upkeep/agent.toml\".*\"data_dir\":\"/var/lib/upkeep\"'"
# README: members of the upkeep group read history with the CLI, read-only,
# while the agent writes it.
group_reader_sees_history() {
    for _ in $(seq 1 50); do
        if setpriv --reuid=nobody --regid=upkeep --clear-groups -- \
            /usr/bin/upkeep series --config /etc/upkeep/agent.toml 2>/dev/null | grep -q '^host.load1'; then
            return 0
        fi
        sleep 0.2
    done
    setpriv --reuid=nobody --regid=upkeep --clear-groups -- \
        /usr/bin/upkeep series --config /etc/upkeep/agent.toml >&2 || true
    return 1
}
check "a member of group upkeep reads the live history (upkeep series)" group_reader_sees_history
check "SIGTERM stops it cleanly (exit 0 within 5 s)" stop_agent
grep -q 'stopped' "$tmp/agent.log" || cat "$tmp/agent.log" >&2

step "upgrade: a newer build keeps the modified config and the history"
version=$(dpkg-deb -f "$deb" Version)
new_version="${version%-*}-$((${version##*-} + 1))"
cp /etc/upkeep/agent.toml "$tmp/agent.toml.local"
history_sum=$(sha256sum </var/lib/upkeep/history.db)
packaging/build.sh --deb-version "$new_version" >/dev/null || die "building the $new_version .deb"
dpkg -i "$OUT/upkeep_${new_version}_amd64.deb" </dev/null || die "upgrading to $new_version"
check "upkeep $new_version is installed" \
    [ "$(dpkg-query -W -f='${Version}' upkeep)" = "$new_version" ]
check "the modified config is kept" cmp -s /etc/upkeep/agent.toml "$tmp/agent.toml.local"
check "the config is still 640 root:upkeep" has_perms /etc/upkeep/agent.toml "640 root:upkeep"
check "the history file is untouched" [ "$(sha256sum </var/lib/upkeep/history.db)" = "$history_sum" ]
check "the history is readable after the upgrade" \
    sh -c '/usr/bin/upkeep series --config /etc/upkeep/agent.toml | grep -q "^host.load1"'
check "the upgraded agent starts on the kept history" start_agent
check "and stops cleanly" stop_agent

step "remove keeps config and history; purge deletes them"
dpkg --remove upkeep </dev/null || die "dpkg --remove"
check "remove: the binary is gone" [ ! -e /usr/bin/upkeep ]
check "remove: the modified config is kept" cmp -s /etc/upkeep/agent.toml "$tmp/agent.toml.local"
check "remove: the history is kept" [ -s /var/lib/upkeep/history.db ]
check "remove: the package is in state config-files" \
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' upkeep)" = "rc " ]
dpkg --purge upkeep </dev/null || die "dpkg --purge"
check "purge: /etc/upkeep is gone" [ ! -e /etc/upkeep ]
check "purge: /var/lib/upkeep is gone" [ ! -e /var/lib/upkeep ]
check "purge: dpkg forgot the package" sh -c '! dpkg-query -W upkeep >/dev/null 2>&1'
check "purge: the upkeep user stays (files elsewhere may belong to it)" getent passwd upkeep
userdel upkeep
groupdel upkeep 2>/dev/null || true

# A plain container has no systemd-sysusers: postinst falls back to useradd.
# Hidden here in a private mount namespace, where the machine allows one.
if unshare -m true 2>/dev/null; then
    step "install without systemd-sysusers (useradd), then purge"
    check "dpkg -i without systemd-sysusers" unshare -m sh -c \
        "mount --bind /dev/null /usr/bin/systemd-sysusers && dpkg -i '$deb' </dev/null >/dev/null"
    check "useradd made the system user" sh -c 'getent passwd upkeep | grep -q ":/var/lib/upkeep:/usr/sbin/nologin$"'
    check "and its group owns the config" has_perms /etc/upkeep/agent.toml "640 root:upkeep"
    check "purge" dpkg --purge upkeep
    userdel upkeep 2>/dev/null || true
    groupdel upkeep 2>/dev/null || true
else
    echo "-- no mount namespace here: the useradd fallback is not exercised"
fi

echo "packaging took $((SECONDS - started)) s"
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
