#!/bin/sh
# Buildroot post-build hook: $1 is TARGET_DIR; BOARD=<name> comes from
# BR2_ROOTFS_POST_SCRIPT_ARGS. Adds board.conf and the console line of
# board/<name>, as `cargo xtask image` does.
set -eu
TARGET_DIR=$1
BOARD=${2:?board name}
TOP=$(dirname "$0")/../..
conf="$TOP/board/$BOARD/board.conf"
install -D -m 0644 "$conf" "$TARGET_DIR/etc/relaybox/board.conf"
install -m 0644 "$TOP/rootfs-overlay/etc/inittab" "$TARGET_DIR/etc/inittab"
. "$conf"
if [ "${CONSOLE_SHELL:-no}" = yes ]; then
    echo "::respawn:-/bin/sh" >> "$TARGET_DIR/etc/inittab"
else
    echo "$CONSOLE::respawn:/sbin/getty -L ${CONSOLE_BAUD:-115200} $CONSOLE vt100" >> "$TARGET_DIR/etc/inittab"
fi
ln -sf ../run/resolv.conf "$TARGET_DIR/etc/resolv.conf"
# rcS loads the modules listed here (Buildroot's kernel has them built in
# per the fragments, so the list may stay empty).
kver=$(ls "$TARGET_DIR/lib/modules" 2>/dev/null | head -n1)
if [ -n "$kver" ]; then
    : > "$TARGET_DIR/lib/modules/$kver/relaybox.load"
fi
