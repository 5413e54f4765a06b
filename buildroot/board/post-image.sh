#!/bin/sh
# Buildroot post-image script (BR2_ROOTFS_POST_IMAGE_SCRIPT): $1 is
# BINARIES_DIR, $2 the board (BR2_ROOTFS_POST_SCRIPT_ARGS). Writes
# disk.img (and disk.img.xz) with the layout of `cargo xtask image`
# (board/README.md, "Disk layout"): slot a holds the kernel, the initramfs,
# cmdline.txt and the slot's manifest.json, slot b is empty, and the boot
# loader's files (systemd-boot's loader/ on EFI boards, autoboot.txt on the
# Pi) boot slot a. The partitions come from genimage-<DISK_LAYOUT>.cfg.in
# next to this script, their sizes, file systems and the kernel command
# line from board/<board>/board.conf (the Raspberry Pi kernel's own
# RPI_KERNEL_* on the Pi), the version from the release file post-build.sh
# wrote into the root file system (TARGET_DIR).
set -eu

BINARIES_DIR=${1:?usage: post-image.sh BINARIES_DIR BOARD}
BOARD=${2:?usage: post-image.sh BINARIES_DIR BOARD (BR2_ROOTFS_POST_SCRIPT_ARGS)}
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
BOARD_DIR=$TOP/board/$BOARD
fail() { echo "post-image.sh: $*" >&2; exit 1; }
[ -f "$BOARD_DIR/board.conf" ] || fail "no board $BOARD ($BOARD_DIR/board.conf)"
# shellcheck source=/dev/null
. "$BOARD_DIR/board.conf"
release=${TARGET_DIR:?TARGET_DIR is not set (run by Buildroot)}/etc/relaybox/release
[ -f "$release" ] || fail "$release missing (post-build.sh writes it)"
VERSION=$(sed -n 's/^VERSION="\(.*\)"$/\1/p' "$release")
BOOT_SCHEME=$(sed -n 's/^BOOT_SCHEME="\(.*\)"$/\1/p' "$release")
PI_TRY=$(sed -n 's/^PI_TRY="\(.*\)"$/\1/p' "$release")
[ -n "$VERSION" ] || fail "$release has no VERSION"
# The Raspberry Pi kernel (post-build.sh wrote PI_TRY="tryboot" for it) has
# its own console name and config.txt (board.conf's RPI_KERNEL_*).
config_txt=config.txt
if [ "$PI_TRY" = tryboot ]; then
    KERNEL_CMDLINE=${RPI_KERNEL_CMDLINE:?board.conf has no RPI_KERNEL_CMDLINE}
    config_txt=${RPI_KERNEL_CONFIG_TXT:?board.conf has no RPI_KERNEL_CONFIG_TXT}
fi

# What goes on the partitions, staged under BINARIES_DIR: relaybox-boot
# (the EFI system partition, or the Pi's autoboot.txt partition) and
# relaybox-slot (slot a's files).
BOOT=relaybox-boot
SLOT=relaybox-slot
rm -rf "${BINARIES_DIR:?}/$BOOT" "${BINARIES_DIR:?}/$SLOT"
mkdir -p "$BINARIES_DIR/$BOOT" "$BINARIES_DIR/$SLOT"
# The slot's files in the order of the xtask's manifest.
slot_files=
put() { # put SOURCE (under BINARIES_DIR, or absolute) NAME (in the slot)
    case "$1" in /*) src=$1 ;; *) src=$BINARIES_DIR/$1 ;; esac
    [ -f "$src" ] || fail "$src missing (board $BOARD)"
    install -m 0644 "$src" "$BINARIES_DIR/$SLOT/$2"
    slot_files="$slot_files $2"
}
echo "$KERNEL_CMDLINE" > "$BINARIES_DIR/$SLOT/cmdline.txt"
slot_files=cmdline.txt

case "$DISK_LAYOUT" in
gpt-efi)
    case "$EFI_ARCH" in
    x64) kernel=bzImage grub=bootx64.efi ;;
    aa64) kernel=Image grub=bootaa64.efi ;;
    *) fail "EFI_ARCH $EFI_ARCH: x64 or aa64" ;;
    esac
    put "$kernel" vmlinuz
    put rootfs.cpio.xz initrd.img
    loader=EFI/BOOT/BOOT$(echo "$EFI_ARCH" | tr '[:lower:]' '[:upper:]').EFI
    mkdir -p "$BINARIES_DIR/$BOOT/EFI/BOOT" "$BINARIES_DIR/$BOOT/loader/entries" "$BINARIES_DIR/$BOOT/slot-b"
    # systemd-boot's files, as the xtask writes them: the image's own entry
    # is generation 1 of slot a, with no boot counter.
    install -m 0644 "$BOARD_DIR/loader.conf" "$BINARIES_DIR/$BOOT/loader/loader.conf"
    options=$(echo "$KERNEL_CMDLINE" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
    printf 'title relaybox %s (slot a)\nversion %s\nlinux /slot-a/vmlinuz\ninitrd /slot-a/initrd.img\noptions %s relaybox.slot=a\n' \
        "$VERSION" "$VERSION" "$options" > "$BINARIES_DIR/$BOOT/loader/entries/relaybox-1-a.conf"
    case "$BOOT_SCHEME" in
    efi)
        # systemd-boot (BR2_PACKAGE_RELAYBOX_SYSTEMD_BOOT_EFI, installed
        # by the relaybox package): updates and rollback as the xtask's.
        sdboot=relaybox-systemd-boot.efi
        [ -f "$BINARIES_DIR/$sdboot" ] ||
            fail "BOOT_SCHEME efi but no $BINARIES_DIR/$sdboot (BR2_PACKAGE_RELAYBOX_SYSTEMD_BOOT_EFI)"
        install -m 0644 "$BINARIES_DIR/$sdboot" "$BINARIES_DIR/$BOOT/$loader"
        ;;
    grub)
        # GRUB (BR2_TARGET_GRUB2_*_EFI), which Buildroot builds: it boots
        # the image's entry (slot a) and nothing else. It reads no
        # loader/entries/ and counts no boots, so that `relaybox update`
        # refuses this box (buildroot/README.md).
        [ -f "$BINARIES_DIR/efi-part/EFI/BOOT/$grub" ] ||
            fail "$BINARIES_DIR/efi-part/EFI/BOOT/$grub missing (BR2_TARGET_GRUB2 with the ${EFI_ARCH} EFI platform)"
        install -m 0644 "$BINARIES_DIR/efi-part/EFI/BOOT/$grub" "$BINARIES_DIR/$BOOT/$loader"
        printf 'set default=0\nset timeout=0\nmenuentry "relaybox %s (slot a)" {\n\tlinux /slot-a/vmlinuz %s relaybox.slot=a\n\tinitrd /slot-a/initrd.img\n}\n' \
            "$VERSION" "$options" > "$BINARIES_DIR/$BOOT/EFI/BOOT/grub.cfg"
        ;;
    *) fail "$release: BOOT_SCHEME $BOOT_SCHEME on an EFI board: efi or grub" ;;
    esac
    ;;
rpi-mbr)
    # The GPU firmware (BR2_PACKAGE_RPI_FIRMWARE) reads autoboot.txt on the
    # first partition, then config.txt and cmdline.txt of the slot's and
    # loads the kernel, the initramfs and the device tree from there.
    [ "$BOOT_SCHEME" = rpi ] || fail "$release: BOOT_SCHEME $BOOT_SCHEME on the Pi: rpi"
    put "$BOARD_DIR/$config_txt" config.txt
    put Image.gz vmlinuz
    put rootfs.cpio.xz initrd.img
    for dtb in ${DTBS:-}; do
        put "${dtb##*/}" "${dtb##*/}"
    done
    put rpi-firmware/start4.elf start4.elf
    put rpi-firmware/fixup4.dat fixup4.dat
    # The firmware's redistribution terms travel with it.
    licence=$(find "${BUILD_DIR:?BUILD_DIR is not set (run by Buildroot)}" -maxdepth 3 \
        -path '*/rpi-firmware-*/boot/LICENCE.broadcom' 2>/dev/null | head -n 1)
    put "${licence:-$BUILD_DIR/rpi-firmware/boot/LICENCE.broadcom}" LICENCE.broadcom
    printf '# Raspberry Pi firmware A/B boot (written by relaybox; see board/README.md)\n[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n' \
        > "$BINARIES_DIR/$BOOT/autoboot.txt"
    ;;
*) fail "DISK_LAYOUT $DISK_LAYOUT: gpt-efi or rpi-mbr" ;;
esac

# The slot's own record of what it holds (relaybox-update's manifest,
# format 1, unsigned: the image is not a bundle), and its size in whole MiB.
slot_bytes=0
{
    printf '{\n  "format": 1,\n  "board": "%s",\n  "version": "%s",\n  "files": [' "$BOARD" "$VERSION"
    sep=
    for f in $slot_files; do
        size=$(stat -c %s "$BINARIES_DIR/$SLOT/$f")
        sum=$(sha256sum "$BINARIES_DIR/$SLOT/$f" | cut -d' ' -f1)
        printf '%s\n    {\n      "name": "%s",\n      "size": %s,\n      "sha256": "%s"\n    }' "$sep" "$f" "$size" "$sum"
        sep=,
    done
    printf '\n  ]\n}\n'
} > "$BINARIES_DIR/manifest.json.tmp"
for f in $slot_files; do
    slot_bytes=$((slot_bytes + $(stat -c %s "$BINARIES_DIR/$SLOT/$f")))
done
mv "$BINARIES_DIR/manifest.json.tmp" "$BINARIES_DIR/$SLOT/manifest.json"
slot_mib=$(((slot_bytes + 1048575) / 1048576))
# Room for a slot half again as big as this one in each slot (as the xtask).
want=$((slot_mib + slot_mib / 2 + 4))

case "${CFG_FS:-ext4}" in
ext4) CFG_LABEL=RELAYBOX_CFG CFG_FS_OPTIONS='use-mke2fs = true
		extraargs = "-m 0 -T small"' ;;
vfat) CFG_LABEL=RELAYBOXCFG CFG_FS_OPTIONS='extraargs = "-F 32"' ;;
*) fail "CFG_FS $CFG_FS: ext4 or vfat" ;;
esac

list() { # list DIR: its entries as genimage `files`, quoted, comma-separated
    (cd "$BINARIES_DIR/$1" && for f in *; do printf '"%s/%s", ' "$1" "$f"; done) | sed 's/, $//'
}
case "$DISK_LAYOUT" in
gpt-efi)
    mv "$BINARIES_DIR/$SLOT" "$BINARIES_DIR/$BOOT/slot-a"
    # One EFI system partition for the boot loader and both slots.
    esp=${ESP_SIZE_MIB:-96}
    [ "$esp" -ge $((2 * want + 4)) ] || esp=$((2 * want + 4))
    slot_size=
    ;;
rpi-mbr)
    esp=16
    slot_size=${ESP_SIZE_MIB:-64}
    [ "$slot_size" -ge "$want" ] || slot_size=$want
    rm -f "$BINARIES_DIR/slot-b.vfat"
    mkfs.vfat -C -F 32 -n RBXSLOTB "$BINARIES_DIR/slot-b.vfat" $((slot_size * 1024)) >/dev/null
    ;;
esac
boot_files=$(list "$BOOT")
slot_list=
[ ! -d "$BINARIES_DIR/$SLOT" ] || slot_list=$(list "$SLOT")

cfg=$BINARIES_DIR/genimage-relaybox.cfg
awk -v boot_files="$boot_files" -v slot_files="$slot_list" -v esp="$esp" -v slot_size="$slot_size" \
    -v cfg_fs="${CFG_FS:-ext4}" -v cfg_label="$CFG_LABEL" -v cfg_options="$CFG_FS_OPTIONS" \
    -v cfg_size="${CFG_SIZE_MIB:-16}" '{
        gsub(/@BOOT_FILES@/, boot_files); gsub(/@SLOT_FILES@/, slot_files); gsub(/@ESP_SIZE_MIB@/, esp)
        gsub(/@SLOT_SIZE_MIB@/, slot_size); gsub(/@CFG_FS@/, cfg_fs); gsub(/@CFG_LABEL@/, cfg_label)
        gsub(/@CFG_FS_OPTIONS@/, cfg_options); gsub(/@CFG_SIZE_MIB@/, cfg_size)
        print
    }' "$HERE/genimage-$DISK_LAYOUT.cfg.in" > "$cfg"
! grep -n '@[A-Z_]*@' "$cfg" || fail "$cfg: values left unfilled"

support/scripts/genimage.sh -c "$cfg"
xz -T2 -6 -c "$BINARIES_DIR/disk.img" > "$BINARIES_DIR/disk.img.xz"
echo "post-image.sh: $BINARIES_DIR/disk.img(.xz) for $BOARD, version $VERSION, boot scheme $BOOT_SCHEME"
