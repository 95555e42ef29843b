# upkeep %postun ($1: 0 erase, 1 upgrade): after an upgrade, restart a
# running agent on the new binary. An erase keeps /var/lib/upkeep (history)
# and saves a modified config as agent.toml.rpmsave; delete them by hand.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart upkeep.service >/dev/null 2>&1 || :
    fi
fi
if [ "$1" -eq 0 ]; then
    rmdir /etc/upkeep 2>/dev/null || :
fi
exit 0
