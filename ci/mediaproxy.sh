#!/usr/bin/env bash
# Installs AG Projects' MediaProxy 4.1.2 (media-dispatcher, media-relay and
# its test/*.py scripts) from ../shared/vendor into target/mediaproxy, for
# the mixed-deployment tests (firmware/relaybox/tests/mediaproxy.rs).
# Idempotent and cached: a second run only checks the stamp file.
#
#   target/mediaproxy/mediaproxy-4.1.2   the sources, C extension built in place
#   target/mediaproxy/venv               python3 -m venv --system-site-packages
#                                        + python3-application, python3-gnutls
#
# The Debian packages it needs are in ci/setup.sh's list; the vendor
# tarballs are never modified (they are extracted here and used as they are).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENDOR="${RELAYBOX_VENDOR:-$ROOT/../shared/vendor}"
[ -d "$VENDOR" ] || VENDOR=/work/shared/vendor
DEST="${CARGO_TARGET_DIR:-$ROOT/target}/mediaproxy"
STAMP="$DEST/.installed-4.1.2"

if [ -f "$STAMP" ] && [ -x "$DEST/venv/bin/python" ] && [ -d "$DEST/mediaproxy-4.1.2/test" ]; then
  echo "mediaproxy: already installed in $DEST"
  exit 0
fi

for p in python3-twisted python3-zope.interface python3-venv python3-dev gcc \
         libnetfilter-conntrack-dev libiptc-dev iptables libgnutls30; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    echo "mediaproxy: Debian package $p is missing (run ci/setup.sh)"; exit 1; }
done

mkdir -p "$DEST"
rm -rf "$DEST/mediaproxy-4.1.2" "$DEST/python3-application-3.0.9" "$DEST/python3-gnutls-3.1.11" "$DEST/venv"
for t in mediaproxy-4.1.2 python3-application-3.0.9 python3-gnutls-3.1.11; do
  tar -C "$DEST" -xf "$VENDOR/$t.tar.xz"
done

# The PyPI packages of the two AG libraries are old Python 2 code: install
# the vendored ones into a venv that also sees Debian's twisted.
# Debian's python (another python3 may come first on PATH).
/usr/bin/python3 -m venv --system-site-packages "$DEST/venv"
"$DEST/venv/bin/pip" install --quiet --no-index --no-deps --no-build-isolation \
  "$DEST/python3-application-3.0.9" "$DEST/python3-gnutls-3.1.11"

# The relay's conntrack/iptables C extension, built next to its sources.
(cd "$DEST/mediaproxy-4.1.2" && "$DEST/venv/bin/python" setup.py -q build_ext --inplace) >"$DEST/build.log" 2>&1 ||
  { cat "$DEST/build.log"; echo "mediaproxy: building the relay's C extension failed"; exit 1; }
"$DEST/venv/bin/python" -c "import sys; sys.path.insert(0, '$DEST/mediaproxy-4.1.2'); \
import application, gnutls.interfaces.twisted, mediaproxy.interfaces.system._conntrack"

touch "$STAMP"
echo "mediaproxy: installed in $DEST"
