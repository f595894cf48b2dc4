#!/usr/bin/env bash
# Reporter drain benchmark: spool N actions while the control plane is down, start the mock control plane
# from the tests, and time how fast the backlog arrives.
#
#   scripts/bench-reporter-drain.sh [N=5000]      (needs a release build: swift build -c release)
#
# Everything is on loopback. Prints the mock's receive rate (first to last action) and the proxy's peak RSS.
set -euo pipefail
N=${1:-5000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/.build/release/kaizen-egress"
[ -x "$BIN" ] || { echo "build first: swift build -c release" >&2; exit 2; }
WORK=$(mktemp -d /tmp/kz-drain.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"

# A CA and a certificate for localhost, as the tests mint them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout cp.key -out cp.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > cp.ext
openssl x509 -req -in cp.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile cp.ext -out cp.pem 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CP_PORT=$(free_port)
CLOSED=$(free_port)

export KAIZEN_API_KEY=bench-key MOCK_API_KEY=bench-key
KAIZEN_API_URL="https://localhost:$CP_PORT" KAIZEN_API_CA_FILE="$WORK/ca.pem" KAIZEN_SPOOL_DIR="$WORK/spool" \
  KAIZEN_LOG_LEVEL=debug "$BIN" --port 0 2> proxy.err > /dev/null &
PIDS+=($!)
PROXY_PID=$!
for _ in $(seq 1 100); do grep -q "proxy listening on" proxy.err && break; sleep 0.1; done
PROXY_PORT=$(sed -n 's/.*proxy listening on 127.0.0.1:\([0-9]*\).*/\1/p' proxy.err | head -1)

# N plain-HTTP requests to a closed port: one action each, spooled while the control plane is down.
curl -s -o /dev/null --max-time 300 -x "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$CLOSED/[1-$N]" || true
for _ in $(seq 1 300); do grep -q "spool.pending=$N\b" proxy.err && break; sleep 0.1; done
grep -q "spool.pending=$N\b" proxy.err || { echo "the spool never held $N actions" >&2; tail -5 proxy.err >&2; exit 1; }

python3 -u "$ROOT/Tests/EndToEndTests/control_plane.py" --cert cp.pem --key cp.key --port "$CP_PORT" --timestamps \
  > mock.out &
PIDS+=($!)
for _ in $(seq 1 600); do [ "$(grep -c RECEIVED mock.out || true)" -ge "$N" ] && break; sleep 0.1; done
python3 - "$N" <<'PY'
import sys
n = int(sys.argv[1])
times = [float(l.split()[0]) for l in open("mock.out") if " RECEIVED " in l]
ids = {l.split()[-1] for l in open("mock.out") if " RECEIVED " in l}
span = times[-1] - times[0] if len(times) > 1 else float("nan")
print(f"received {len(times)} ({len(ids)} distinct) of {n} in {span:.2f} s: {len(times) / span:.0f} actions/s")
PY
echo "proxy peak RSS: $(grep VmHWM /proc/$PROXY_PID/status | awk '{print $2, $3}')"
kill -9 "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null || true
