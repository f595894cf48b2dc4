#!/usr/bin/env bash
# Destination-only overhead of issue 8 (guard, head limits, connection caps): before vs after, interleaved.
# plain = absolute-form GET keep-alive (hsload -k); connect = new CONNECT + TLS per request (hsload, no -k);
# mitm = keep-alive HTTPS through inspection with the bench's MITM CA (hsload -k --ca, issue 5's figure).
# usage: [PAIRS=3] [LOG_LEVEL=warning] [SCENARIOS="plain connect"] scripts/bench-before-after.sh BEFORE-BINARY AFTER-BINARY
#        (needs ../shared/bench/setup.sh and upstream.sh start; the old binary ignores KAIZEN_ADMIN_LISTEN)
BEFORE=$1
AFTER=$2
HS=/var/tmp/proxybench/hsload
CA=/var/tmp/proxybench/pki/client-trust.pem
PAIRS=${PAIRS:-3}
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
run() {  # run LABEL BINARY SCENARIO
  local label=$1 bin=$2 scenario=$3
  pkill -f -- "--port 3202"; sleep 0.3
  rm -rf /dev/shm/kz8; mkdir -p /dev/shm/kz8
  local inspect=()
  if [[ $scenario == mitm ]]; then
    cp /var/tmp/proxybench/pki/mitm-ca.key /dev/shm/kz8/ca.key && chmod 600 /dev/shm/kz8/ca.key
    inspect=(KAIZEN_CA_CERT=/var/tmp/proxybench/pki/mitm-ca.pem KAIZEN_CA_KEY=/dev/shm/kz8/ca.key KAIZEN_UPSTREAM_CA_FILE=/var/tmp/proxybench/pki/ca.pem)
  fi
  (cd /dev/shm/kz8 && for setting in "${inspect[@]}"; do export "$setting"; done && KAIZEN_LOG_FORMAT=${LOG_FORMAT:-text} KAIZEN_ADMIN_LISTEN=off KAIZEN_ALLOW_PRIVATE=127.0.0.0/8 exec $bin --local --port 3202 --log-level ${LOG_LEVEL:-warning} >/dev/null 2>/dev/null) &
  local pid=$!
  for i in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/3202) 2>/dev/null && break; sleep 0.1; done
  local args
  case $scenario in
    plain) args=(-k http://api.example.test/small);;
    mitm) args=(-k --ca $CA https://api.example.test/small);;
    *) args=(--ca $CA https://api.example.test/small);;
  esac
  $HS -x 127.0.0.1:3202 -c 50 -z 2 -n 10000000 "${args[@]}" >/dev/null
  local c0=$(cpu $pid)
  local out=$($HS -x 127.0.0.1:3202 -c 50 -z 8 -n 50000000 "${args[@]}")
  local c1=$(cpu $pid)
  local ok=$(grep -o '^requests=[0-9]*' <<<"$out" | cut -d= -f2) rps=$(grep -o 'rps=[0-9.]*' <<<"$out" | cut -d= -f2) err=$(grep -o 'errors=[0-9]*' <<<"$out" | cut -d= -f2)
  kill $pid; wait $pid 2>/dev/null
  echo "$scenario $label rps=$rps errors=$err proxy_cpu_us_per_req=$(echo "($c1-$c0)*10000/$ok" | bc -l | cut -c1-6)"
}
for scenario in ${SCENARIOS:-plain connect}; do
  for pair in $(seq 1 $PAIRS); do
    run before "$BEFORE" $scenario
    run after "$AFTER" $scenario
  done
done
