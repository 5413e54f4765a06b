#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS each,
# default 15) from its committed seed corpus; fails on the first crash.
# Installs what it needs: a nightly toolchain (minimal profile) and
# cargo-fuzz, kept inside target/ so a second run reuses them.
#
#   ci/fuzz.sh                 every target
#   ci/fuzz.sh session_table   one target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-15}
top=$PWD
tools=$top/target/fuzz-tools

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build --target-dir "$top/target/fuzz"
for t in "${targets[@]}"; do
  found="$top/target/fuzz-corpus/$t"
  mkdir -p "$found" "corpus/$t"
  echo "== fuzz $t (${seconds} s)"
  # The first directory collects what the run finds; the committed seeds
  # in corpus/ are only read. -rss_limit_mb: a leak or a huge allocation
  # is a failure too.
  log="$top/target/fuzz-$t.log"
  status=0
  cargo +nightly fuzz run "$t" --target-dir "$top/target/fuzz" "$found" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
  if [ "$status" -ne 0 ]; then
    grep -E -A30 'panicked|==[0-9]+==ERROR|SUMMARY|Test unit written' "$log" | head -60
    echo "fuzz: $t failed (exit $status); the input is in fuzz/artifacts/$t/, the whole log in $log"
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, no failure"
