#!/usr/bin/env bash
# Instructions the proxy executes per inspected HTTPS request, counted by callgrind: the same figure every run
# (within 0.5 %), where the wall-clock benchmark moves by 20 % with the machine. Use it to tell whether a change
# made the proxy do less work; use ../shared/bench/run.sh for what that is worth in requests per second.
#
#   scripts/count-instructions.sh BINARY [REQUESTS]        (default 4000; keep-alive, 4 connections)
#   NEW_CONNECTIONS=1 scripts/count-instructions.sh BINARY 200    (a new connection and handshakes per request)
#
# Counts user-space instructions of every thread of the proxy (its event loops and the action log's writer), not
# the kernel's. The figure printed is the cost of one more request: the difference between a run of REQUESTS and
# one of 3 x REQUESTS, so connection set-up cancels out. Needs valgrind and the bench's origin and PKI
# (../shared/bench/setup.sh, upstream.sh start); takes a minute or two.
set -euo pipefail
binary=$(realpath "$1")
requests=${2:-4000}
port=3209
hsload=/var/tmp/proxybench/hsload
pki=/var/tmp/proxybench/pki
command -v valgrind >/dev/null || { echo "count-instructions: needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }
[ -x "$hsload" ] || { echo "count-instructions: needs the bench harness (../shared/bench/setup.sh, upstream.sh start)" >&2; exit 2; }

if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  echo "count-instructions: something already listens on 127.0.0.1:$port" >&2
  exit 2
fi
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
# Valgrind 3.19 cannot read the DWARF 5 debug information Swift writes; symbols are enough.
objcopy --strip-debug "$binary" "$work/proxy"
cp "$pki/mitm-ca.key" "$work/ca.key" && chmod 600 "$work/ca.key"
keepalive=(-k)
[ "${NEW_CONNECTIONS:-}" = 1 ] && keepalive=()
load=(-x "127.0.0.1:$port" -c 4 "${keepalive[@]}" --ca "$pki/client-trust.pem" https://api.example.test/small)

count() {  # count N: prints the instructions for N requests after a warm-up (run in this shell: the trap sees $pid)
  local n=$1 out="$work/callgrind.$1"
  (cd "$work" && KAIZEN_CA_CERT="$pki/mitm-ca.pem" KAIZEN_CA_KEY="$work/ca.key" KAIZEN_UPSTREAM_CA_FILE="$pki/ca.pem" \
    KAIZEN_ADMIN_LISTEN=off KAIZEN_ALLOW_PRIVATE=127.0.0.0/8 \
    exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.%p" ./proxy --local --port $port \
    >/dev/null 2>"$work/valgrind.log") &
  pid=$!
  local ready=
  for _ in $(seq 1 300); do
    kill -0 $pid 2>/dev/null || { echo "count-instructions: the proxy exited: $(cat "$work/valgrind.log")" >&2; exit 1; }
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && { ready=1; break; }
    sleep 0.2
  done
  [ -n "$ready" ] || { echo "count-instructions: the proxy did not listen within 60 s" >&2; exit 1; }
  "$hsload" "${load[@]}" -z 60 -n 500 >/dev/null
  callgrind_control -i on $pid >/dev/null 2>&1
  local result
  result=$("$hsload" "${load[@]}" -z 600 -n "$n")
  [[ $result == *"requests=$n "* ]] || { echo "count-instructions: load failed: $result" >&2; exit 1; }
  callgrind_control -i off $pid >/dev/null 2>&1
  callgrind_control -d $pid >/dev/null 2>&1
  kill $pid
  wait $pid 2>/dev/null || true
  pid=
  grep -h '^totals:' "$out".* | awk '{ sum += $2 } END { printf "%.0f\n", sum }'
}

count "$requests" >"$work/one"
count $((3 * requests)) >"$work/three"
one=$(cat "$work/one")
three=$(cat "$work/three")
echo "instructions per request: $(( (three - one) / (2 * requests) ))" \
  "(${requests} requests: ${one}; $((3 * requests)): ${three}; $([ ${#keepalive[@]} = 1 ] && echo keep-alive || echo new connections))"
