# upkeep %pre ($1: 1 install, 2 upgrade): the upkeep user must exist before
# the files that belong to its group are laid out. The sysusers.d line is the
# one in /usr/lib/sysusers.d/upkeep.conf (not on disk yet: given on stdin);
# useradd stands in where systemd-sysusers is missing.
if command -v systemd-sysusers >/dev/null 2>&1; then
    echo 'u upkeep - "upkeep health agent" /var/lib/upkeep' |
        systemd-sysusers --replace=/usr/lib/sysusers.d/upkeep.conf - || exit 1
fi
if ! getent passwd upkeep >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/upkeep --no-create-home \
        --shell /sbin/nologin --comment "upkeep health agent" upkeep || exit 1
fi
exit 0
