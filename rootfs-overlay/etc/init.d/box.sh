# Sourced by rcS: the box's own services at boot (issue #14: provisioning,
# network safety, running unattended). Each function is one step; rcS
# calls them in order. Uses rcS's say() and has().

# After /config is mounted: a factory reset or a restored backup waiting
# for this boot, and a certificate replacement a power cut interrupted
# (`relaybox config boot`), then last boot's log kept as previous.log.
box_config() {
    relaybox --config /config/relaybox.ini config boot 2>&1 | while read -r line; do say "$line"; done
    mkdir -p /config/log
    [ -f /config/log/current.log ] && mv -f /config/log/current.log /config/log/previous.log
    sync
}

# The firewall (nftables table inet relaybox_fw): before any service
# listens. The web page is on the LAN side only unless [Web] wan_access.
box_firewall() {
    set -- --wan "$WAN"
    ip link show "$LAN" >/dev/null 2>&1 && set -- "$@" --lan "$LAN"
    [ "${RELAY:-yes}" = yes ] && set -- "$@" --relay
    [ "${WEB:-yes}" = yes ] && set -- "$@" --web
    [ "${DISPATCHER:-no}" = yes ] && set -- "$@" --dispatcher
    if out=$(relaybox --config /config/relaybox.ini firewall "$@" 2>&1); then
        say "${out#relaybox }"
    else
        say "WARNING: no firewall: $out"
    fi
}

# The web page's own certificate: made at first boot for this host name
# (self-signed); its fingerprint, to check on first connection.
box_web_certificate() {
    [ "${WEB:-yes}" = yes ] || return 0
    has web || return 0
    out=$(relaybox --config /config/relaybox.ini web certificate 2>&1) || { say "WARNING: $out"; return 0; }
    echo "$out" | while read -r line; do say "$line"; done
}
