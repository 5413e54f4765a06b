#!/usr/bin/env bash
# Builds OpenSIPS 3.6.8 (LTS) from the unmodified tarball in
# ../shared/vendor for the end-to-end tests, with only the modules the
# tests and examples/opensips.cfg load, and installs it under
# target/opensips/install (sbin/opensips, lib64/opensips/modules).
#
# Cached: the build is skipped when target/opensips/install/BUILT holds the
# tarball's sha256, this module list and the compiler flags. `make -j2`,
# -O1 without debug symbols (a test proxy: the build time is what counts). Needs bison flex libssl-dev libxml2-dev libncurses-dev
# pkg-config libmicrohttpd-dev (ci/setup.sh installs them).
#
# Usage: ci/opensips.sh [--print-prefix]
set -euo pipefail
cd "$(dirname "$0")/.."

tarball=${OPENSIPS_TARBALL:-$(cd .. && pwd)/shared/vendor/opensips-3.6.8.tar.xz}
[ -f "$tarball" ] || tarball=/work/shared/vendor/opensips-3.6.8.tar.xz
top=$(pwd)/target/opensips
prefix=$top/install

# What examples/opensips.cfg and the tests load (mi_http needs httpd; UDP is
# built into the core).
modules="sl tm rr maxfwd signaling textops sipmsgops dialog mediaproxy \
mi_datagram mi_fifo httpd mi_http nathelper nat_traversal usrloc registrar"

# OpenSIPS's default is -O9 -g; -O1 builds in about half the time.
make_flags=(CC_OPTIMIZE_FLAG=-O1 NODEBUGSYM=1)

if [ "${1:-}" = "--print-prefix" ]; then
  echo "$prefix"
  exit 0
fi

[ -f "$tarball" ] || { echo "opensips: $tarball not found"; exit 1; }
stamp="$(sha256sum "$tarball" | cut -d' ' -f1) $(echo $modules) ${make_flags[*]}"
if [ -x "$prefix/sbin/opensips" ] && [ "$(cat "$prefix/BUILT" 2>/dev/null)" = "$stamp" ]; then
  echo "opensips: cached in $prefix ($("$prefix/sbin/opensips" -V | head -1))"
  exit 0
fi

start=$(date +%s)
rm -rf "$top/src" "$prefix"
mkdir -p "$top/src"
tar xJf "$tarball" -C "$top/src" --strip-components=1
cd "$top/src"

# Every module directory not in the list is excluded (include_modules only
# adds to the default set, see shared/vendor/README.md).
exclude=$(for d in modules/*/; do
  m=$(basename "$d")
  case " $modules " in *" $m "*) ;; *) printf '%s ' "$m" ;; esac
done)
cp Makefile.conf.template Makefile.conf
{
  echo "exclude_modules= $exclude"
  echo "include_modules= $modules"
} >> Makefile.conf

log=$top/build.log
echo "opensips: building $(echo $modules | wc -w) modules into $prefix (log: $log)"
if ! { make -j2 all "${make_flags[@]}" prefix="$prefix/" && make install "${make_flags[@]}" prefix="$prefix/"; } >"$log" 2>&1; then
  tail -40 "$log"
  echo "opensips: build failed"
  exit 1
fi
for m in $modules; do
  [ -f "$prefix/lib64/opensips/modules/$m.so" ] || { echo "opensips: module $m was not built"; exit 1; }
done
echo "$stamp" > "$prefix/BUILT"
# The sources are not needed any more; keep target/ small.
cd "$top" && rm -rf "$top/src"
echo "opensips: built in $(( $(date +%s) - start )) s: $("$prefix/sbin/opensips" -V | head -1)"
