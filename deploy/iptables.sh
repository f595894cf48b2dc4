#!/bin/sh
# Sends a pod's (or network namespace's) outbound TCP to kaizen-egress's transparent listener.
#
# Used by the Kubernetes init container (NET_ADMIN) and by the end-to-end tests; run it as root inside the
# network namespace to redirect. Settings (environment):
#   PROXY_UID                 the proxy's UID: its own connections are never redirected        (1337)
#   KAIZEN_TRANSPARENT_PORT   the proxy's transparent listener                                 (15001)
#   EXCLUDE_CIDRS             comma-separated destination CIDRs left alone (IPv4 and/or IPv6)  (none)
#   EXCLUDE_PORTS             comma-separated destination TCP ports left alone                 (none)
#   BLOCK_QUIC                1: reject outbound UDP 443 so HTTP/3 falls back to TCP           (1)
# Loopback is always left alone. Running it again replaces the rules it made.
set -eu

PROXY_UID=${PROXY_UID:-1337}
PORT=${KAIZEN_TRANSPARENT_PORT:-15001}
EXCLUDE_CIDRS=${EXCLUDE_CIDRS:-}
EXCLUDE_PORTS=${EXCLUDE_PORTS:-}
BLOCK_QUIC=${BLOCK_QUIC:-1}

rules() {  # rules IPTABLES LOOPBACK-CIDR FAMILY(4|6)
    ipt=$1 loopback=$2 family=$3
    # One chain of our own in the nat table, hooked into OUTPUT once.
    $ipt -t nat -N KAIZEN_OUTPUT 2>/dev/null || $ipt -t nat -F KAIZEN_OUTPUT
    $ipt -t nat -C OUTPUT -p tcp -j KAIZEN_OUTPUT 2>/dev/null || $ipt -t nat -A OUTPUT -p tcp -j KAIZEN_OUTPUT
    $ipt -t nat -A KAIZEN_OUTPUT -m owner --uid-owner "$PROXY_UID" -j RETURN
    $ipt -t nat -A KAIZEN_OUTPUT -o lo -j RETURN
    $ipt -t nat -A KAIZEN_OUTPUT -d "$loopback" -j RETURN
    for cidr in $(echo "$EXCLUDE_CIDRS" | tr ',' ' '); do
        case $cidr in
            *:*) [ "$family" = 6 ] && $ipt -t nat -A KAIZEN_OUTPUT -d "$cidr" -j RETURN ;;
            *) [ "$family" = 4 ] && $ipt -t nat -A KAIZEN_OUTPUT -d "$cidr" -j RETURN ;;
        esac
    done
    for port in $(echo "$EXCLUDE_PORTS" | tr ',' ' '); do
        $ipt -t nat -A KAIZEN_OUTPUT -p tcp --dport "$port" -j RETURN
    done
    $ipt -t nat -A KAIZEN_OUTPUT -p tcp -j REDIRECT --to-ports "$PORT"
    if [ "$BLOCK_QUIC" = 1 ]; then
        $ipt -N KAIZEN_QUIC 2>/dev/null || $ipt -F KAIZEN_QUIC
        $ipt -C OUTPUT -p udp --dport 443 -j KAIZEN_QUIC 2>/dev/null || $ipt -A OUTPUT -p udp --dport 443 -j KAIZEN_QUIC
        $ipt -A KAIZEN_QUIC -m owner --uid-owner "$PROXY_UID" -j RETURN
        $ipt -A KAIZEN_QUIC -j REJECT
    fi
}

rules iptables 127.0.0.0/8 4
if ip6tables -t nat -L OUTPUT >/dev/null 2>&1; then
    rules ip6tables ::1/128 6
else
    echo "iptables.sh: no IPv6 nat table here; only IPv4 is redirected" >&2
fi
echo "iptables.sh: outbound TCP goes to port $PORT (UID $PROXY_UID exempt)"
