# upkeep %preun ($1: 0 erase, 1 upgrade): stop and disable the agent when the
# package goes away; an upgrade restarts it in %postun instead.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now upkeep.service >/dev/null 2>&1 || :
fi
exit 0
