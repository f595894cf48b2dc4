#!/usr/bin/env bash
# Two of issue 5's figures, taken apart (docs/performance.md, twelfth pass):
#   first-sni: the bench's own method for the first request to a never-seen SNI (hsload -n 1 on a new name, then
#              -n 5 on the same name, new connections both), on a fresh proxy, with upstream reuse on (the default)
#              and off (KAIZEN_UPSTREAM_IDLE_TIMEOUT=0), alternating; prints each run's medians.
#   bulk:      1 GiB over HTTPS through inspection and direct, alternating, with the CPU seconds of curl, the
#              origin (nginx workers) and the proxy, read from /proc.
#   CLIENT_DELAY_MS=N (first-sni): the client reaches the proxy through scripts/delay-relay.py, which delays every
#              byte by N ms each way, as for an agent across a network rather than beside the proxy.
# usage: [RUNS=3] [NAMES=15] [CLIENT_DELAY_MS=N] scripts/bench-inspection-latency.sh BINARY first-sni|bulk
#        (needs ../shared/bench/setup.sh and upstream.sh start; the proxy listens on 127.0.0.1:3203, the relay on 3213)
set -euo pipefail
usage="usage: [RUNS=3] [NAMES=15] [CLIENT_DELAY_MS=N] scripts/bench-inspection-latency.sh BINARY first-sni|bulk"
binary=$(realpath "${1:?$usage}")
what=${2:?$usage}
runs=${RUNS:-3}
names=${NAMES:-15}
port=3203
hsload=/var/tmp/proxybench/hsload
pki=/var/tmp/proxybench/pki
[ -x "$hsload" ] || { echo "bench-inspection-latency: needs the bench harness (../shared/bench/setup.sh, upstream.sh start)" >&2; exit 2; }
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  echo "bench-inspection-latency: something already listens on 127.0.0.1:$port" >&2
  exit 2
fi
work=$(mktemp -d /dev/shm/kz-latency.XXXXXX)
pid=
relay=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$relay" ] && kill "$relay" 2>/dev/null; rm -rf "$work"' EXIT
client_port=$port
if [ -n "${CLIENT_DELAY_MS:-}" ]; then
  client_port=3213
  python3 "$(dirname "$0")/delay-relay.py" $client_port $port "$CLIENT_DELAY_MS" >"$work/relay.out" 2>&1 &
  relay=$!
  for _ in $(seq 1 100); do grep -q READY "$work/relay.out" 2>/dev/null && break; sleep 0.1; done
  grep -q READY "$work/relay.out" || { echo "bench-inspection-latency: the delay relay did not start" >&2; exit 1; }
fi
cp "$pki/mitm-ca.key" "$work/ca.key" && chmod 600 "$work/ca.key"

start() {  # start [SETTING=VALUE…]: a fresh proxy on $port
  stop
  (cd "$work" && for setting in "$@"; do export "$setting"; done &&
    KAIZEN_CA_CERT="$pki/mitm-ca.pem" KAIZEN_CA_KEY="$work/ca.key" KAIZEN_UPSTREAM_CA_FILE="$pki/ca.pem" \
    KAIZEN_ADMIN_LISTEN=off KAIZEN_ALLOW_PRIVATE=127.0.0.0/8 exec "$binary" --local --port $port >/dev/null 2>&1) &
  pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.1; done
  echo "bench-inspection-latency: the proxy did not listen within 10 s" >&2
  exit 1
}
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi; }
# The bench's median (lib/common.sh): the middle value, or the mean of the two middle ones.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# p50 URL…: one hsload run (new connections), its median latency; every request must have succeeded.
p50() {
  local out
  out=$("$hsload" -x 127.0.0.1:$client_port -c 1 -z 20 --ca "$pki/client-trust.pem" "$@" || true)
  [[ $out == *" errors=0 "* ]] || { echo "bench-inspection-latency: hsload failed: $out" >&2; exit 1; }
  grep -o 'p50_ms=[0-9.]*' <<<"$out" | cut -d= -f2
}
# utime + stime (clock ticks), read after the command name, which may hold spaces.
cpu() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

case $what in
first-sni)
  # The bench's names mint000…mint299 resolve to the origin; each run takes its own, never seen by that proxy.
  next=0
  for run in $(seq 1 "$runs"); do
    for reuse in on off; do
      if [ $reuse = on ]; then start; else start KAIZEN_UPSTREAM_IDLE_TIMEOUT=0; fi
      first=() again=()
      for _ in $(seq 1 "$names"); do
        name=$(printf 'mint%03d.example.test' $(( next % 300 ))); next=$((next + 1))
        first+=("$(p50 -n 1 "https://$name/small")")
        again+=("$(p50 -n 5 "https://$name/small")")
      done
      f=$(printf '%s\n' "${first[@]}" | median); a=$(printf '%s\n' "${again[@]}" | median)
      echo "run=$run reuse=$reuse first_ms=$f again_ms=$a gap_ms=$(awk "BEGIN { printf \"%.2f\", $f - $a }")"
    done
  done
  ;;
bulk)
  start
  # The bench origin's workers (not any other nginx on the machine).
  workers=$(pgrep -P "$(cat /var/tmp/proxybench/run/nginx-upstream.pid)" | tr '\n' ' ' || true)
  [ -n "$workers" ] || { echo "bench-inspection-latency: the bench origin is not running (upstream.sh start)" >&2; exit 2; }
  nginx_cpu() { local sum=0 p; for p in $workers; do sum=$((sum + $(cpu "$p"))); done; echo $sum; }
  ticks=$(getconf CLK_TCK)
  one() {  # one direct|proxy
    local route=(--cacert "$pki/ca.pem")
    [ "$1" = proxy ] && route=(-x "http://127.0.0.1:$port" --cacert "$pki/client-trust.pem")
    local p0 n0 out p1 n1
    p0=$(cpu "$pid"); n0=$(nginx_cpu)
    out=$({ /usr/bin/time -f '%U %S' curl -s --http1.1 "${route[@]}" --max-time 120 https://api.example.test/big -o /dev/null \
      -w '%{time_total} %{size_download}\n' || true; } 2>&1 | tr '\n' ' ')
    p1=$(cpu "$pid"); n1=$(nginx_cpu)
    local seconds= bytes= curl_user= curl_system=
    read -r seconds bytes curl_user curl_system <<<"$out" || true
    [ "$bytes" = 1073741824 ] || { echo "bench-inspection-latency: the $1 transfer failed: $out" >&2; exit 1; }
    local proxy_s=0
    [ "$1" = proxy ] && proxy_s=$(awk "BEGIN { print ($p1 - $p0) / $ticks }")
    echo "$1 seconds=$seconds curl_cpu_s=$(awk "BEGIN { print $curl_user + $curl_system }")" \
      "nginx_cpu_s=$(awk "BEGIN { print ($n1 - $n0) / $ticks }") proxy_cpu_s=$proxy_s"
  }
  one proxy >/dev/null  # warm-up
  for _ in $(seq 1 "$runs"); do one direct; one proxy; done
  ;;
*)
  echo "$usage" >&2
  exit 2
  ;;
esac
