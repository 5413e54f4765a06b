#!/bin/sh
# Buildroot post-image hook: $1 is BINARIES_DIR; BOARD=<name> as for
# post-build.sh. Writes the boot partition and the disk image with the
# same layout as `cargo xtask image` (genimage, from Buildroot).
set -eu
BINARIES_DIR=$1
BOARD=${2:?board name}
TOP=$(dirname "$0")/../..
. "$TOP/board/$BOARD/board.conf"
GENIMAGE_CFG="$BINARIES_DIR/genimage-relaybox.cfg"
case "$DISK_LAYOUT" in
gpt-efi)
    mkdir -p "$BINARIES_DIR/efi-part/EFI/BOOT" "$BINARIES_DIR/efi-part/loader/entries"
    cp "$TOP/board/$BOARD/loader.conf" "$BINARIES_DIR/efi-part/loader/loader.conf"
    printf 'title relaybox (%s)\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$BOARD" "$KERNEL_CMDLINE" \
        > "$BINARIES_DIR/efi-part/loader/entries/relaybox.conf"
    BOOT_FILES='"efi-part/EFI", "efi-part/loader", "bzImage" = "vmlinuz", "rootfs.cpio.xz" = "initrd.img"'
    [ "$EFI_ARCH" = aa64 ] && BOOT_FILES='"efi-part/EFI", "efi-part/loader", "Image" = "vmlinuz", "rootfs.cpio.xz" = "initrd.img"'
    PTABLE='partition-table-type = "gpt"'
    ;;
rpi-mbr)
    cp "$TOP/board/$BOARD/config.txt" "$BINARIES_DIR/config.txt"
    echo "$KERNEL_CMDLINE" > "$BINARIES_DIR/cmdline.txt"
    BOOT_FILES='"config.txt", "cmdline.txt", "Image" = "vmlinuz", "rootfs.cpio.xz" = "initrd.img", "bcm2711-rpi-4-b.dtb", "rpi-firmware/start4.elf", "rpi-firmware/fixup4.dat"'
    PTABLE='partition-table-type = "mbr"'
    ;;
esac
cat > "$GENIMAGE_CFG" <<EOT
image boot.vfat {
  vfat { label = "RELAYBOX" files = { $BOOT_FILES } }
  size = ${ESP_SIZE_MIB}M
}
image config.img {
  ext4 { label = "RELAYBOX_CFG" }
  size = ${CFG_SIZE_MIB}M
}
image disk.img {
  hdimage { $PTABLE }
  partition boot { partition-type-uuid = "U" image = "boot.vfat" bootable = "true" }
  partition config { partition-type-uuid = "L" image = "config.img" }
}
EOT
support/scripts/genimage.sh -c "$GENIMAGE_CFG"
