#!/usr/bin/env bash
# Audit log off vs on, plain-HTTP keep-alive through the proxy (hsload), interleaved; prints req/s, proxy CPU µs
# per request and the audit lines written (then verified). Needs ../shared/bench/setup.sh and upstream.sh start.
BIN=${BIN:-$PWD/.build/release/kaizen-egress}
HS=/var/tmp/proxybench/hsload
PAIRS=${PAIRS:-3}
mkdir -p /dev/shm/kzaudit
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
run() {  # run LABEL ARGS...
  local label=$1; shift
  rm -rf /dev/shm/kzaudit/* /dev/shm/kzaudit/.kaizen; pkill -f -- "--port 3201"; sleep 0.3
  (cd /dev/shm/kzaudit && exec $BIN --local --port 3201 --log-level warning "$@" >/dev/null 2>>/tmp/kzaudit.err) &
  local pid=$!
  for i in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/3201) 2>/dev/null && break; sleep 0.1; done
  $HS -x 127.0.0.1:3201 -c 50 -z 2 -n 10000000 -k http://api.example.test/small >/dev/null
  local c0=$(cpu $pid)
  local out=$($HS -x 127.0.0.1:3201 -c 50 -z 8 -n 50000000 -k http://api.example.test/small)
  local c1=$(cpu $pid)
  local ok=$(grep -o '^requests=[0-9]*' <<<"$out" | cut -d= -f2) rps=$(grep -o 'rps=[0-9.]*' <<<"$out" | cut -d= -f2)
  local during=0; [[ -f /dev/shm/kzaudit/audit.jsonl ]] && during=$(cat $(ls /dev/shm/kzaudit/audit.jsonl* | grep -v head) | wc -l)
  kill $pid; wait $pid 2>/dev/null
  local after=0; [[ -f /dev/shm/kzaudit/audit.jsonl ]] && after=$(cat $(ls /dev/shm/kzaudit/audit.jsonl* | grep -v head) | wc -l); [[ -f /dev/shm/kzaudit/audit.jsonl ]] && $BIN audit verify /dev/shm/kzaudit/audit.jsonl* | head -1
  echo "$label rps=$rps proxy_cpu_us_per_req=$(echo "($c1-$c0)*10000/$ok" | bc -l | cut -c1-6) audit_lines_at_end_of_load=$during audit_lines_after_stop=$after"
}
for pair in $(seq 1 $PAIRS); do
  run audit-off
  run audit-on --audit-log /dev/shm/kzaudit/audit.jsonl
done
