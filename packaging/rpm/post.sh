# upkeep %post ($1: 1 install, 2 upgrade): the history directory, then the
# unit where systemd runs. As on Fedora and RHEL, the preset policy decides
# whether a new service is enabled; `systemctl enable --now upkeep` starts it.
install -d -o upkeep -g upkeep -m 0750 /var/lib/upkeep
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl --no-reload preset upkeep.service >/dev/null 2>&1 || :
    fi
fi
exit 0
