#!/usr/bin/env bash
# Installs what relaybox needs on a fresh Debian machine. Idempotent: skips
# apt when every package is already there.
#
#   ci/setup.sh          everything the tests need (ci/test.sh)
#   ci/setup.sh --demo   only what building and running the demo needs
#
# It never stops, restarts or reconfigures a service of the machine: the
# tests run their own Kamailio, PostgreSQL, MariaDB, FreeRADIUS and chronyd
# instances on their own ports or in their own network namespaces. Packages
# it installs itself are installed without starting their services (a
# temporary policy-rc.d, only when the machine has none), so a fresh CI
# machine does not run a system Kamailio or database the tests never use.
#
# The last line of PACKAGES: Buildroot's host tools, utils/check-package and
# genimage for host-tools/xtask/tests/buildroot.rs.
set -euo pipefail

# Building relaybox and running the demo (a dispatcher and a relay).
BASE=(build-essential pkg-config ca-certificates curl)
# Everything else the tests use.
TESTS=(
  iproute2 nftables conntrack procps psmisc util-linux
  kamailio kamailio-extra-modules sip-tester
  bison flex libssl-dev libxml2-dev libncurses-dev libmicrohttpd-dev
  postgresql mariadb-server freeradius
  musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64
  mtools dosfstools gdisk e2fsprogs xz-utils file
  chromium chromium-driver
  chrony
  python3-twisted python3-zope.interface python3-venv python3-dev libnetfilter-conntrack-dev libiptc-dev iptables
  libgnutls30 openssl
  debootstrap systemd
  git make cpio rsync bc unzip wget patch shellcheck python3-magic python3-flake8 genimage
)

demo=no
[ "${1:-}" = "--demo" ] && demo=yes
packages=("${BASE[@]}")
[ "$demo" = no ] && packages+=("${TESTS[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

policy=/usr/sbin/policy-rc.d
own_policy=no
cleanup() { if [ "$own_policy" = yes ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt_install() {
  if [ ! -e "$policy" ]; then
    # 101 = "action not allowed": packages installed now do not start
    # their services. Only ours, removed on exit.
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=yes
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  apt_install "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)"; exit 1; }
if [ "$demo" = yes ]; then
  echo "setup: ok (demo)"
  exit 0
fi

# The aarch64 image links against Debian's musl headers for arm64.
dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
if ! dpkg-query -W -f='${Status}' musl-dev:arm64 2>/dev/null | grep -q "install ok installed"; then
  apt_install musl-dev:arm64
fi

# The end-to-end tests run Kamailio and OpenSIPS as this unprivileged user,
# as packaged proxies run (the rig makes it too when it is missing).
id -u relaybox-test-proxy >/dev/null 2>&1 ||
  useradd --system --no-create-home --user-group --shell /usr/sbin/nologin relaybox-test-proxy

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
echo "setup: ok"
