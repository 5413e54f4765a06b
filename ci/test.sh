#!/usr/bin/env bash
# Runs every relaybox check and test: formatting, lints, unit and property
# tests, the TLS and daemon tests, and the end-to-end tests with Kamailio,
# OpenSIPS (built from ../shared/vendor by ci/opensips.sh), SIPp and NAT in
# network namespaces (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
log=$(mktemp /tmp/relaybox-test.XXXXXX.log)
exec > >(tee "$log") 2>&1
# Each stage's header says when it starts (seconds since the start), so a
# run's log shows where its time goes.
stage() { echo "== [$(( $(date +%s) - start )) s] $*"; }

ci/setup.sh

stage "cargo fmt --check"
cargo fmt --all -- --check
stage "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
stage "relaybox without the default features: a relay box, a dispatcher host"
for features in relay,web,clock dispatcher; do
  cargo clippy -p relaybox --no-default-features --features "$features" --all-targets -- -D warnings
done
stage "build"
cargo build --workspace --bins
stage "unit, property and daemon tests"
cargo test --workspace --exclude relaybox-e2e
stage "fuzz targets (fuzz/, a bounded run of each from its committed corpus)"
ci/fuzz.sh
stage "firmware: static binaries and board images"
cargo xtask binaries
for b in qemu-x86_64 qemu-aarch64 pc-x86_64-efi rpi4-arm64; do cargo xtask image --board "$b"; done
stage "proxy host: the .deb (cargo xtask deb) installed in a debootstrap bookworm root, a call through its units"
cargo test -p xtask --test deb -- --ignored --nocapture
stage "firmware: QEMU tests (boot, provisioning, updates and rollback; x86_64 and aarch64)"
cargo test -p xtask --test boards --test boot --test update --test provision -- --ignored --test-threads=1 --nocapture
stage "firmware: the Buildroot tree against Buildroot 2026.02.3 (vendor tarball)"
cargo test -p xtask --test buildroot -- --ignored --test-threads=1 --nocapture
stage "accounting against real PostgreSQL, MariaDB and FreeRADIUS servers"
cargo test -p relaybox-accounting --test servers -- --ignored --test-threads=1
cargo test -p relaybox-accounting --test radius -- --ignored --test-threads=1
stage "kernel datapath in network namespaces"
cargo test -p relaybox --test kernel -- --ignored --test-threads=1
stage "multiple interfaces (auto_detect_interfaces) in network namespaces"
cargo test -p relaybox --test interfaces -- --ignored --test-threads=1
stage "the box's firewall in network namespaces"
cargo test -p relaybox --test firewall -- --ignored --test-threads=1
stage "IPv6 media in network namespaces"
cargo test -p relaybox --test ipv6 -- --ignored --test-threads=1
stage "mixed deployments with MediaProxy 4.1.2 (its dispatcher, relay and test scripts)"
ci/mediaproxy.sh
cargo test -p relaybox --test mediaproxy -- --ignored --test-threads=1
stage "web page in a real browser (headless Chromium)"
cargo test -p relaybox-web --test browser -- --ignored --nocapture
stage "demo (the README's main job) comes up and answers"
ci/demo.sh --check
stage "OpenSIPS 3.6.8 for the end-to-end tests (built once, cached in target/opensips)"
ci/opensips.sh
stage "end-to-end: Kamailio and OpenSIPS + SIPp + NAT namespaces"
RELAYBOX_E2E_REQUIRE_BINARIES=1 cargo test -p relaybox-e2e -- --include-ignored --test-threads=1 --nocapture
stage "all tests passed in $(( $(date +%s) - start )) s"
# One closing line for the whole run: the sum of every cargo test summary.
# (Tests marked ignored in the first run are counted where they run.)
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "relaybox: %d passed, %d failed\n", p, f }' "$log"
