#!/bin/sh
# Buildroot post-build script (BR2_ROOTFS_POST_BUILD_SCRIPT): $1 is
# TARGET_DIR, $2 the board (BR2_ROOTFS_POST_SCRIPT_ARGS). Finishes the root
# file system the way `cargo xtask image` does (host-tools/xtask/src/image.rs):
# the board's board.conf, the console line of inittab, resolv.conf on /run,
# and the list of kernel modules rcS loads. Buildroot runs it again at each
# `make`: every step rewrites what it owns.
set -eu

TARGET_DIR=${1:?usage: post-build.sh TARGET_DIR BOARD}
BOARD=${2:?usage: post-build.sh TARGET_DIR BOARD (BR2_ROOTFS_POST_SCRIPT_ARGS)}
TOP=$(cd "$(dirname "$0")/../.." && pwd)
BOARD_DIR=$TOP/board/$BOARD
fail() { echo "post-build.sh: $*" >&2; exit 1; }
[ -f "$BOARD_DIR/board.conf" ] || fail "no board $BOARD ($BOARD_DIR/board.conf)"

install -D -m 0644 "$BOARD_DIR/board.conf" "$TARGET_DIR/etc/relaybox/board.conf"
# board.conf is KEY="value" lines without expansions (checked by the xtask).
# shellcheck source=/dev/null
. "$BOARD_DIR/board.conf"

config=${BR2_CONFIG:?BR2_CONFIG is not set (run by Buildroot)}
setting() { sed -n "s/^$1=\"\(.*\)\"\$/\1/p" "$config"; }
# The Raspberry Pi kernel (raspberrypi/linux, as a tarball or a git tree;
# relaybox_rpi4_arm64_defconfig) passes the firmware's tryboot flag on, and
# names the Pi's console UART its own way (board.conf's RPI_KERNEL_*); any
# other kernel is counted (board/README.md, "Raspberry Pi: tryboot").
rpi_kernel=no
case "$(setting BR2_LINUX_KERNEL_CUSTOM_TARBALL_LOCATION) $(setting BR2_LINUX_KERNEL_CUSTOM_REPO_URL)" in
*raspberrypi,linux,* | *raspberrypi/linux*) rpi_kernel=yes ;;
esac
if [ "$DISK_LAYOUT" = rpi-mbr ] && [ "$rpi_kernel" = yes ]; then
    CONSOLE=${RPI_KERNEL_CONSOLE:?board.conf has no RPI_KERNEL_CONSOLE}
fi

# inittab comes from rootfs-overlay/ (the relaybox package); the console
# line from board.conf, below a marker so that a rebuild replaces it.
inittab=$TARGET_DIR/etc/inittab
grep -q '^::sysinit:/etc/init.d/rcS' "$inittab" ||
    fail "$inittab is not relaybox's (is BR2_PACKAGE_RELAYBOX set?)"
sed -i '/^# console line (board.conf, post-build.sh)/,$d' "$inittab"
{
    echo "# console line (board.conf, post-build.sh)"
    if [ "${CONSOLE_SHELL:-no}" = yes ]; then
        echo "::respawn:-/bin/sh"
    else
        echo "$CONSOLE::respawn:/sbin/getty -L ${CONSOLE_BAUD:-115200} $CONSOLE vt100"
    fi
} >> "$inittab"

ln -sfn ../run/resolv.conf "$TARGET_DIR/etc/resolv.conf"

# What the box's `relaybox update` reads (board/README.md, "Updates and
# rollback"): the release file, as the xtask writes it, and the update key
# the relaybox package installed (BR2_PACKAGE_RELAYBOX_UPDATE_KEY).
[ -f "$TARGET_DIR/etc/relaybox/update.pub" ] ||
    fail "$TARGET_DIR/etc/relaybox/update.pub missing (BR2_PACKAGE_RELAYBOX_UPDATE_KEY, buildroot/README.md)"
version=$(setting BR2_PACKAGE_RELAYBOX_FIRMWARE_VERSION)
if [ -z "$version" ]; then
    # As the xtask: the workspace version and the build's UTC time.
    version=$(sed -n 's/^version = "\([0-9.]*\)"$/\1/p' "$TOP/Cargo.toml" | head -n 1).$(date -u +%Y%m%d%H%M%S)
fi
echo "$version" | grep -Eq '^[0-9]+(\.[0-9]+){0,5}$' ||
    fail "firmware version $version: 1 to 6 dot-separated numbers (BR2_PACKAGE_RELAYBOX_FIRMWARE_VERSION)"
case "$DISK_LAYOUT" in
gpt-efi)
    # systemd-boot counts boots and goes back to the old slot; with GRUB
    # instead the box is not updated (buildroot/README.md).
    if [ -n "$(setting BR2_PACKAGE_RELAYBOX_SYSTEMD_BOOT_EFI)" ]; then scheme=efi; else scheme=grub; fi ;;
rpi-mbr) scheme=rpi ;;
*) fail "DISK_LAYOUT $DISK_LAYOUT: gpt-efi or rpi-mbr" ;;
esac
# The Pi: how a new slot is tried. The firmware's tryboot needs the
# Raspberry Pi kernel; with any other kernel init counts the boots.
pi_try=
if [ "$scheme" = rpi ]; then
    if [ "$rpi_kernel" = yes ]; then pi_try=tryboot; else pi_try=counted; fi
fi
{
    printf 'BOARD="%s"\nVERSION="%s"\nBOOT_SCHEME="%s"\n' "$BOARD" "$version" "$scheme"
    [ -z "$pi_try" ] || printf 'PI_TRY="%s"\n' "$pi_try"
} > "$TARGET_DIR/etc/relaybox/release"
echo "post-build.sh: firmware $version for $BOARD, boot scheme $scheme${pi_try:+, PI_TRY $pi_try}"

# The modules rcS loads, in dependency order, as paths under
# /lib/modules/<version>: board/common/modules.list and the board's MODULES,
# each after the modules it depends on (modules.dep). Names the kernel has
# built in (modules.builtin) need no loading; others it lacks are reported.
for kdir in "$TARGET_DIR"/lib/modules/*; do
    [ -d "$kdir" ] || continue
    [ -f "$kdir/modules.dep" ] || fail "$kdir/modules.dep missing (depmod did not run)"
    wanted=$({
        sed 's/#.*//' "$TOP/board/common/modules.list"
        for m in ${MODULES:-}; do echo "$m"; done
    } | tr -s '[:blank:]' '\n' | sed '/^$/d')
    builtin=$(cat "$kdir/modules.builtin" 2>/dev/null || true)
    awk -v wanted="$wanted" -v builtin="$builtin" '
        function name(path,   n) {
            n = path; sub(/.*\//, "", n); sub(/\.ko(\.(xz|gz|zst))?$/, "", n); gsub(/-/, "_", n)
            return n
        }
        function visit(path,   i, n, d) {
            if (path in done) return
            done[path] = 1
            n = split(deps[path], d, " ")
            for (i = n; i >= 1; i--) visit(d[i])
            print path
        }
        {
            path = $1; sub(/:$/, "", path)
            rest = $0; sub(/^[^:]*:[ \t]*/, "", rest)
            deps[path] = rest; by_name[name(path)] = path
        }
        END {
            n = split(builtin, b, "\n")
            for (i = 1; i <= n; i++) inside[name(b[i])] = 1
            n = split(wanted, w, "\n")
            for (i = 1; i <= n; i++) {
                m = w[i]; gsub(/-/, "_", m)
                if (m in by_name) visit(by_name[m])
                else if (!(m in inside)) missing = missing " " m
            }
            if (missing != "")
                print "post-build.sh: note: not in this kernel (neither a module nor built in):" missing > "/dev/stderr"
        }
    ' "$kdir/modules.dep" > "$kdir/relaybox.load"
    echo "post-build.sh: $(wc -l < "$kdir/relaybox.load") modules for rcS in $kdir/relaybox.load"
done
