#!/usr/bin/env bash
# The README's main job: build relaybox, make demo certificates, and run a
# dispatcher and a relay on localhost with a demo config, ready for a
# Kamailio/OpenSIPS `mediaproxy` module to point at.
#
#   ci/demo.sh            run until Ctrl-C
#   ci/demo.sh --check    start, verify the relay is connected, stop
set -euo pipefail
cd "$(dirname "$0")/.."
check=no
[ "${1:-}" = "--check" ] && check=yes

ci/setup.sh --demo >/dev/null
profile=release
[ "$check" = yes ] && profile=debug   # the test run already built debug
cargo build -q $([ $profile = release ] && echo --release) -p relaybox -p relaybox-ca
bin=target/$profile

demo=${RELAYBOX_DEMO_DIR:-$PWD/demo}
mkdir -p "$demo/run"
# Certificates from before relaybox-ca marked roles would be refused: make new ones.
if [ -f "$demo/certs/relay.crt" ] && ! "$bin/relaybox-ca" show "$demo/certs/relay.crt" | grep -q '^role: *relay$'; then
  echo "demo: $demo/certs has certificates without relaybox roles; making new ones"
  rm -rf "$demo/ca" "$demo/certs"
fi
if [ ! -f "$demo/certs/relay.crt" ]; then
  "$bin/relaybox-ca" demo --out "$demo" --org "relaybox demo"
fi
cat > "$demo/config.ini" <<INI
; relaybox demo: dispatcher and relay on localhost. MediaProxy's format.
[Dispatcher]
socket_path = $demo/run/dispatcher.sock
listen = 127.0.0.1:25060
listen_management = 127.0.0.1:25061
management_use_tls = no

[Relay]
dispatchers = 127.0.0.1:25060
relay_ip = 127.0.0.1
port_range = 40000:40200
log_level = INFO

[TLS]
certs_path = $demo/certs
INI

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/relaybox" --config "$demo/config.ini" dispatcher 2> >(tee "$demo/dispatcher.log" >&2) &
pids+=($!)
for _ in $(seq 50); do [ -S "$demo/run/dispatcher.sock" ] && break; sleep 0.1; done
"$bin/relaybox" --config "$demo/config.ini" relay 2> >(tee "$demo/relay.log" >&2) &
pids+=($!)

summary=""
for _ in $(seq 50); do
  if exec 3<>/dev/tcp/127.0.0.1/25061 2>/dev/null; then
    printf 'summary\r\n' >&3
    read -r -t 2 summary <&3 || true
    exec 3>&- 3<&-
    case "$summary" in *'"status":"active"'*) break ;; esac
  fi
  sleep 0.2
done
case "$summary" in
  *'"status":"active"'*) echo "demo: relay connected to dispatcher: $summary" ;;
  *) echo "demo: relay did not connect (summary: ${summary:-none})"; exit 1 ;;
esac
echo "demo: module socket $demo/run/dispatcher.sock, management 127.0.0.1:25061"
if [ "$check" = yes ]; then
  echo "demo: check passed"
  exit 0
fi
echo "demo: running; Ctrl-C stops"
wait
