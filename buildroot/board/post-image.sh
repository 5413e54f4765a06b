#!/bin/sh
# Buildroot post-image script (BR2_ROOTFS_POST_IMAGE_SCRIPT): $1 is
# BINARIES_DIR, $2 the board (BR2_ROOTFS_POST_SCRIPT_ARGS). Writes
# disk.img (and disk.img.xz) with the layout of `cargo xtask image`: the
# partitions come from genimage.cfg.in next to this script, their sizes,
# file systems and boot files from board/<board>/board.conf.
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

# The boot partition's files, staged under BINARIES_DIR/relaybox-boot.
BOOT=relaybox-boot
rm -rf "${BINARIES_DIR:?}/$BOOT"
mkdir -p "$BINARIES_DIR/$BOOT"
stage() { # stage SOURCE (under BINARIES_DIR) DEST (in the boot partition)
    [ -f "$BINARIES_DIR/$1" ] || fail "$BINARIES_DIR/$1 missing (board $BOARD)"
    install -D -m 0644 "$BINARIES_DIR/$1" "$BINARIES_DIR/$BOOT/$2"
}
case "$DISK_LAYOUT" in
gpt-efi)
    # GRUB (BR2_TARGET_GRUB2_*_EFI) as the removable-media boot loader;
    # no menu, the kernel command line of board.conf.
    case "$EFI_ARCH" in
    x64) kernel=bzImage grub=bootx64.efi ;;
    aa64) kernel=Image grub=bootaa64.efi ;;
    *) fail "EFI_ARCH $EFI_ARCH: x64 or aa64" ;;
    esac
    upper=$(echo "$grub" | tr '[:lower:]' '[:upper:]')
    stage "efi-part/EFI/BOOT/$grub" "EFI/BOOT/$upper"
    cat > "$BINARIES_DIR/$BOOT/EFI/BOOT/grub.cfg" <<EOT
set default=0
set timeout=0
menuentry "relaybox ($BOARD)" {
	linux /vmlinuz $KERNEL_CMDLINE
	initrd /initrd.img
}
EOT
    stage "$kernel" vmlinuz
    PARTITION_TABLE=gpt
    DISK_OPTIONS=
    BOOT_PARTITION_TYPE='partition-type-uuid = "U"'
    CFG_PARTITION_TYPE='partition-type-uuid = "L"'
    ;;
rpi-mbr)
    # The GPU firmware (BR2_PACKAGE_RPI_FIRMWARE) reads config.txt and
    # cmdline.txt and loads the kernel, the initramfs and the device tree.
    install -m 0644 "$BOARD_DIR/config.txt" "$BINARIES_DIR/$BOOT/config.txt"
    echo "$KERNEL_CMDLINE" > "$BINARIES_DIR/$BOOT/cmdline.txt"
    stage Image.gz vmlinuz
    for dtb in ${DTBS:-}; do
        stage "${dtb##*/}" "${dtb##*/}"
    done
    stage rpi-firmware/start4.elf start4.elf
    stage rpi-firmware/fixup4.dat fixup4.dat
    PARTITION_TABLE=mbr
    DISK_OPTIONS='disk-signature = 0x72656c61'
    BOOT_PARTITION_TYPE='partition-type = 0xC
		bootable = true'
    CFG_PARTITION_TYPE='partition-type = 0x83'
    ;;
*) fail "DISK_LAYOUT $DISK_LAYOUT: gpt-efi or rpi-mbr" ;;
esac
stage rootfs.cpio.xz initrd.img

case "${CFG_FS:-ext4}" in
ext4) CFG_LABEL=RELAYBOX_CFG CFG_FS_OPTIONS='use-mke2fs = true
		extraargs = "-m 0 -T small"' ;;
vfat) CFG_LABEL=RELAYBOXCFG CFG_FS_OPTIONS='extraargs = "-F 32"' ;;
*) fail "CFG_FS $CFG_FS: ext4 or vfat" ;;
esac

# As the xtask: at least ESP_SIZE_MIB, and 8 MiB more than the files.
need=$(du -sm "$BINARIES_DIR/$BOOT" | cut -f1)
esp=${ESP_SIZE_MIB:-64}
[ "$esp" -ge $((need + 8)) ] || esp=$((need + 8))
files=$(cd "$BINARIES_DIR/$BOOT" && for f in *; do printf '"%s/%s", ' "$BOOT" "$f"; done)

cfg=$BINARIES_DIR/genimage-relaybox.cfg
awk -v files="${files%, }" -v esp="$esp" -v cfg_fs="${CFG_FS:-ext4}" -v cfg_label="$CFG_LABEL" \
    -v cfg_options="$CFG_FS_OPTIONS" -v cfg_size="${CFG_SIZE_MIB:-16}" -v table="$PARTITION_TABLE" \
    -v disk="$DISK_OPTIONS" -v boot_type="$BOOT_PARTITION_TYPE" -v cfg_type="$CFG_PARTITION_TYPE" '{
        gsub(/@BOOT_FILES@/, files); gsub(/@ESP_SIZE_MIB@/, esp); gsub(/@CFG_FS@/, cfg_fs)
        gsub(/@CFG_LABEL@/, cfg_label); gsub(/@CFG_FS_OPTIONS@/, cfg_options); gsub(/@CFG_SIZE_MIB@/, cfg_size)
        gsub(/@PARTITION_TABLE@/, table); gsub(/@DISK_OPTIONS@/, disk)
        gsub(/@BOOT_PARTITION_TYPE@/, boot_type); gsub(/@CFG_PARTITION_TYPE@/, cfg_type)
        print
    }' "$HERE/genimage.cfg.in" > "$cfg"
! grep -n '@[A-Z_]*@' "$cfg" || fail "$cfg: values left unfilled"

support/scripts/genimage.sh -c "$cfg"
xz -T2 -6 -c "$BINARIES_DIR/disk.img" > "$BINARIES_DIR/disk.img.xz"
echo "post-image.sh: $BINARIES_DIR/disk.img(.xz) for $BOARD"
