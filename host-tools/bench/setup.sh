#!/usr/bin/env bash
# What relaybox-bench needs on a Debian host (root): ip, nft, conntrack,
# and rtpengine (Debian's rtpengine-daemon; the bench starts its own
# rtpengine in a network namespace). Not part of ci/setup.sh: the bench is
# not CI. Like ci/setup.sh it starts no service: packages are installed
# behind a temporary policy-rc.d (only when the machine has none).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v rtpengine >/dev/null || need+=(rtpengine-daemon)
if [ ${#need[@]} -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d
    own_policy=no
    cleanup() { if [ "$own_policy" = yes ]; then rm -f "$policy"; fi; }
    trap cleanup EXIT
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=yes
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
rtpengine --version 2>&1 | head -1 || true
