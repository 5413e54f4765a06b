#!/usr/bin/env bash
# Installs what relaybox needs to build and test on a fresh Debian machine
# (the last line of PACKAGES: Buildroot's host tools, utils/check-package
# and genimage for host-tools/xtask/tests/buildroot.rs).
# Idempotent: skips apt when every package is already there.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config ca-certificates
  iproute2 nftables conntrack procps psmisc util-linux
  kamailio kamailio-extra-modules sip-tester
  postgresql mariadb-server freeradius
  musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-x86 qemu-system-arm ovmf
  mtools dosfstools gdisk e2fsprogs xz-utils file
  chromium chromium-driver
  chrony curl
  git make cpio rsync bc unzip wget patch shellcheck python3-magic python3-flake8 genimage
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The aarch64 image links against Debian's musl headers for arm64.
dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
if ! dpkg-query -W -f='${Status}' musl-dev:arm64 2>/dev/null | grep -q "install ok installed"; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-dev:arm64
fi

# Debian starts these as services on install; the tests run their own
# instances on free ports, so the system ones only cost memory.
for svc in kamailio postgresql mariadb freeradius chrony; do
  service "$svc" stop >/dev/null 2>&1 || true
done
pkill -x kamailio >/dev/null 2>&1 || true
pkill -x chronyd >/dev/null 2>&1 || true

command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
echo "setup: ok"
