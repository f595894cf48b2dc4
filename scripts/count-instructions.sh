#!/usr/bin/env bash
# Instructions the proxy executes per inspected HTTPS request, counted by callgrind: the same figure every run
# (within 0.5 %), where the wall-clock benchmark moves by 20 % with the machine. Use it to tell whether a change
# made the proxy do less work; use ../shared/bench/run.sh for what that is worth in requests per second.
#
#   scripts/count-instructions.sh BINARY [REQUESTS]        (default 4000; keep-alive, 4 connections)
#   NEW_CONNECTIONS=1 scripts/count-instructions.sh BINARY 200    (a new connection and handshakes per request)
#   NEW_NAMES=1 scripts/count-instructions.sh BINARY 20    (each request a new connection to a name never seen:
#                                                          a leaf minted, an upstream connection dialled; at most 60)
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
new_names=${NEW_NAMES:-}
if [ "$new_names" = 1 ]; then
  # The bench's setup lists mint000…mint299.example.test in /etc/hosts; each run of the proxy starts afresh, so a
  # run's names are new to it. 5 warm the proxy up, then REQUESTS (and 3 × REQUESTS) are counted.
  (( requests <= 60 )) || { echo "count-instructions: NEW_NAMES takes at most 60 requests" >&2; exit 2; }
  getent hosts mint000.example.test >/dev/null || { echo "count-instructions: mint000.example.test does not resolve (../shared/bench/setup.sh)" >&2; exit 2; }
fi
# one_per_name FIRST COUNT: one request each to mintFIRST… on a new connection; prints how many succeeded
one_per_name() {
  local ok=0 i
  for i in $(seq "$1" $(( $1 + $2 - 1 ))); do
    "$hsload" -x "127.0.0.1:$port" -c 1 -n 1 -z 20 --ca "$pki/client-trust.pem" \
      "https://$(printf 'mint%03d' "$i").example.test/small" | grep -q 'requests=1 errors=0' && ok=$((ok + 1))
  done
  echo "$ok"
}

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
  if [ "$new_names" = 1 ]; then
    one_per_name 0 5 >/dev/null
    callgrind_control -i on $pid >/dev/null 2>&1
    local done
    done=$(one_per_name 5 "$n")
    [ "$done" = "$n" ] || { echo "count-instructions: only $done of $n requests to new names succeeded" >&2; exit 1; }
  else
    "$hsload" "${load[@]}" -z 60 -n 500 >/dev/null
    callgrind_control -i on $pid >/dev/null 2>&1
    local result
    result=$("$hsload" "${load[@]}" -z 600 -n "$n")
    [[ $result == *"requests=$n "* ]] || { echo "count-instructions: load failed: $result" >&2; exit 1; }
  fi
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
kind="new connections"
[ ${#keepalive[@]} = 1 ] && kind=keep-alive
[ "$new_names" = 1 ] && kind="a new name each"
echo "instructions per request: $(( (three - one) / (2 * requests) ))" \
  "(${requests} requests: ${one}; $((3 * requests)): ${three}; $kind)"
