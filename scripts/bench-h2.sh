#!/usr/bin/env bash
# HTTP/2 through inspection (issue 10): h2load, 10 connections x 10 streams, GET /small (100 B), against
#   direct   h2load -> nghttpd (h2 origin over TLS)
#   kaizen   h2load -> socat CONNECT shim -> kaizen-egress (MITM, h2 both sides) -> nghttpd
#   mitm     h2load -> socat CONNECT shim -> mitmproxy (MITM) -> nghttpd
# h2load has no proxy option, so a socat shim makes the CONNECT (the same shim for both proxies). Prints req/s and
# the proxy's CPU per request (utime+stime of its process from /proc, during the measured run).
# usage: [ROUNDS=3] [SECS=10] scripts/bench-h2.sh [KAIZEN-BINARY]
#        (needs ../shared/bench/setup.sh: its PKI, /dev/shm/proxybench/www and the mitmproxy venv; nghttpd from
#         nghttp2-server, h2load from nghttp2-client, socat)
set -euo pipefail
BIN=${1:-.build/release/kaizen-egress}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
PKI=/var/tmp/proxybench/pki
WWW=/dev/shm/proxybench/www
WORK=/dev/shm/kz-h2bench
ORIGIN=3443 KAIZEN=3210 KAIZEN_SHIM=3211 MITM=3212 MITM_SHIM=3213
mkdir -p "$WORK"
cp "$PKI/mitm-ca.key" "$WORK/ca.key" && chmod 600 "$WORK/ca.key"
cat "$PKI/server.pem" "$PKI/ca.pem" > "$WORK/server-chain.pem"
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not listening" >&2; exit 1; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

nghttpd -n 2 -a 127.0.0.1 -d "$WWW" $ORIGIN "$PKI/server.key" "$WORK/server-chain.pem" >/dev/null 2>&1 &
pids+=($!); wait_port $ORIGIN

(cd "$WORK" && KAIZEN_CA_CERT=$PKI/mitm-ca.pem KAIZEN_CA_KEY=$WORK/ca.key KAIZEN_UPSTREAM_CA_FILE=$PKI/ca.pem \
  KAIZEN_ALLOW_PRIVATE=127.0.0.0/8 KAIZEN_ADMIN_LISTEN=off exec "$OLDPWD/$BIN" --local --port $KAIZEN --log-level warning \
  >"$WORK/actions.jsonl" 2>"$WORK/kaizen.log") &
kaizen=$!; pids+=($kaizen); wait_port $KAIZEN

mkdir -p "$WORK/mitmconf"
cat "$PKI/mitm-ca.key" "$PKI/mitm-ca.pem" > "$WORK/mitmconf/mitmproxy-ca.pem"
cp "$PKI/mitm-ca.pem" "$WORK/mitmconf/mitmproxy-ca-cert.pem"
/opt/mitm-venv/bin/mitmdump -q --listen-host 127.0.0.1 -p $MITM --set confdir="$WORK/mitmconf" \
  --set ssl_verify_upstream_trusted_ca="$PKI/ca.pem" --set stream_large_bodies=1m >"$WORK/mitm.log" 2>&1 &
mitm=$!; pids+=($mitm); wait_port $MITM

socat -lf /dev/null TCP-LISTEN:$KAIZEN_SHIM,bind=127.0.0.1,reuseaddr,fork PROXY:127.0.0.1:api.example.test:$ORIGIN,proxyport=$KAIZEN &
pids+=($!)
socat -lf /dev/null TCP-LISTEN:$MITM_SHIM,bind=127.0.0.1,reuseaddr,fork PROXY:127.0.0.1:api.example.test:$ORIGIN,proxyport=$MITM &
pids+=($!)
wait_port $KAIZEN_SHIM; wait_port $MITM_SHIM

run() {  # run LABEL PORT PID
  local label=$1 port=$2 pid=${3:-}
  h2load -c 10 -m 10 -D 2 "https://api.example.test:$port/small" >/dev/null 2>&1 || true   # warm-up (leaves minted)
  local c0=0; [[ -n $pid ]] && c0=$(cpu "$pid")
  local out; out=$(h2load -c 10 -m 10 -D "$SECS" "https://api.example.test:$port/small" 2>&1)
  local c1=0; [[ -n $pid ]] && c1=$(cpu "$pid")
  local done_=$(grep -o '[0-9]* succeeded' <<<"$out" | head -1 | cut -d' ' -f1)
  local failed=$(grep -o '[0-9]* failed' <<<"$out" | head -1 | cut -d' ' -f1)
  local rps=$(grep -o 'finished in [^,]*, [0-9.]* req/s' <<<"$out" | grep -o '[0-9.]* req/s' | cut -d' ' -f1)
  local proto=$(grep -o 'Application protocol: [a-z0-9/.]*' <<<"$out" | cut -d' ' -f3)
  local per=""
  [[ -n $pid && ${done_:-0} -gt 0 ]] && per=" proxy_cpu_us_per_req=$(echo "($c1-$c0)*10000/$done_" | bc -l | cut -c1-6)"
  echo "h2 $label protocol=$proto rps=$rps succeeded=$done_ failed=$failed$per"
}
for round in $(seq 1 "$ROUNDS"); do
  run direct $ORIGIN
  run kaizen $KAIZEN_SHIM $kaizen
  run mitmproxy $MITM_SHIM $mitm
done
echo "kaizen actions reported: $(grep -c '"action"' "$WORK/actions.jsonl")"
