#!/usr/bin/env bash
# Builds the release binary with the image's own build script, then checks what the image relies on: it needs
# no Swift runtime libraries, and it starts in local mode as the unprivileged UID the image uses (1337),
# answers its health probe, and exits 0 on SIGTERM. Part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/kz-smoke.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
chmod 755 "$work"
scripts/build-release.sh "$work/kaizen-egress" >/dev/null
if ldd "$work/kaizen-egress" | grep -q libswift; then
    echo "smoke: the release binary links Swift runtime libraries dynamically:" >&2
    ldd "$work/kaizen-egress" | grep libswift >&2
    exit 1
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_user=()
uid=$(id -u)
if [ "$uid" = 0 ]; then as_user=(setpriv --reuid 1337 --regid 1337 --clear-groups); uid=1337; fi
(cd "$work" && exec env -i PATH=/usr/bin:/bin "${as_user[@]}" "$work/kaizen-egress" --local --port "$port" \
    >"$work/out" 2>"$work/err") &
pid=$!
for _ in $(seq 1 100); do grep -q "proxy listening" "$work/err" 2>/dev/null && break; sleep 0.1; done
grep -q "proxy listening" "$work/err" || { echo "smoke: the release binary did not start:" >&2; cat "$work/err" >&2; exit 1; }
PORT=$port "$work/kaizen-egress" probe || { echo "smoke: probe failed" >&2; exit 1; }
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
[ "$status" = 0 ] || { echo "smoke: exit status $status after SIGTERM" >&2; exit 1; }
echo "smoke: release binary ok (no Swift runtime libraries, started as UID $uid, probe answered, exit 0 on SIGTERM)"
