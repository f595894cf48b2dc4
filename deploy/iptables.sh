#!/bin/sh
# Sends a pod's (or network namespace's) outbound TCP to kaizen-egress's transparent listener.
#
# Used by the Kubernetes init container (NET_ADMIN) and by the end-to-end tests; run it as root inside the
# network namespace to redirect. Settings (environment):
#   PROXY_UID                 the proxy's UID: its own connections are never redirected        (1337)
#   KAIZEN_TRANSPARENT_PORT   the proxy's transparent listener                                 (15001)
#   EXCLUDE_CIDRS             comma-separated destination CIDRs left alone (IPv4 and/or IPv6)  (none)
#   EXCLUDE_PORTS             comma-separated destination TCP ports left alone                 (none)
#   BLOCK_UDP                 1: reject outbound UDP but to ALLOW_UDP_PORTS: the proxy cannot   (1)
#                             relay or report UDP, so what it cannot see does not leave
#   ALLOW_UDP_PORTS           comma-separated UDP ports still allowed with BLOCK_UDP=1 (DNS)    (53)
#   BLOCK_QUIC                with BLOCK_UDP=0: 1 rejects outbound UDP 443 only, so HTTP/3     (1)
#                             falls back to TCP
# Loopback is always left alone. Running it again replaces the rules it made.
set -eu

PROXY_UID=${PROXY_UID:-1337}
PORT=${KAIZEN_TRANSPARENT_PORT:-15001}
EXCLUDE_CIDRS=${EXCLUDE_CIDRS:-}
EXCLUDE_PORTS=${EXCLUDE_PORTS:-}
BLOCK_QUIC=${BLOCK_QUIC:-1}
BLOCK_UDP=${BLOCK_UDP:-1}
ALLOW_UDP_PORTS=${ALLOW_UDP_PORTS-53}

exempt() {  # exempt IPTABLES TABLE CHAIN LOOPBACK-CIDR FAMILY(4|6): what is never redirected nor rejected
    ipt=$1 table=$2 chain=$3 loopback=$4 family=$5
    $ipt -t "$table" -A "$chain" -m owner --uid-owner "$PROXY_UID" -j RETURN
    $ipt -t "$table" -A "$chain" -o lo -j RETURN
    $ipt -t "$table" -A "$chain" -d "$loopback" -j RETURN
    for cidr in $(echo "$EXCLUDE_CIDRS" | tr ',' ' '); do
        case $cidr in
            *:*) [ "$family" = 6 ] && $ipt -t "$table" -A "$chain" -d "$cidr" -j RETURN ;;
            *) [ "$family" = 4 ] && $ipt -t "$table" -A "$chain" -d "$cidr" -j RETURN ;;
        esac
    done
    for port in $(echo "$EXCLUDE_PORTS" | tr ',' ' '); do
        $ipt -t "$table" -A "$chain" -p tcp --dport "$port" -j RETURN
    done
}

redirect() {  # redirect IPTABLES LOOPBACK-CIDR FAMILY: outbound TCP to the proxy (nat table)
    ipt=$1 loopback=$2 family=$3
    # One chain of our own in the nat table, hooked into OUTPUT once.
    $ipt -t nat -N KAIZEN_OUTPUT 2>/dev/null || $ipt -t nat -F KAIZEN_OUTPUT
    $ipt -t nat -C OUTPUT -p tcp -j KAIZEN_OUTPUT 2>/dev/null || $ipt -t nat -A OUTPUT -p tcp -j KAIZEN_OUTPUT
    exempt "$ipt" nat KAIZEN_OUTPUT "$loopback" "$family"
    $ipt -t nat -A KAIZEN_OUTPUT -p tcp -j REDIRECT --to-ports "$PORT"
}

filter() {  # filter IPTABLES LOOPBACK-CIDR FAMILY REJECT-TCP(0|1): the filter table's rules
    ipt=$1 loopback=$2 family=$3 reject_tcp=$4
    # Each chain exists and is emptied on every run, so a run with other settings replaces what an earlier one
    # made (an empty chain lets everything through).
    $ipt -N KAIZEN_UDP 2>/dev/null || $ipt -F KAIZEN_UDP
    $ipt -C OUTPUT -p udp -j KAIZEN_UDP 2>/dev/null || $ipt -A OUTPUT -p udp -j KAIZEN_UDP
    $ipt -N KAIZEN_QUIC 2>/dev/null || $ipt -F KAIZEN_QUIC
    $ipt -C OUTPUT -p udp --dport 443 -j KAIZEN_QUIC 2>/dev/null || $ipt -A OUTPUT -p udp --dport 443 -j KAIZEN_QUIC
    $ipt -N KAIZEN_TCP 2>/dev/null || $ipt -F KAIZEN_TCP
    $ipt -C OUTPUT -p tcp -j KAIZEN_TCP 2>/dev/null || $ipt -A OUTPUT -p tcp -j KAIZEN_TCP
    if [ "$BLOCK_UDP" = 1 ]; then
        $ipt -A KAIZEN_UDP -m owner --uid-owner "$PROXY_UID" -j RETURN
        $ipt -A KAIZEN_UDP -o lo -j RETURN
        for port in $(echo "$ALLOW_UDP_PORTS" | tr ',' ' '); do
            $ipt -A KAIZEN_UDP -p udp --dport "$port" -j RETURN
        done
        $ipt -A KAIZEN_UDP -j REJECT
    elif [ "$BLOCK_QUIC" = 1 ]; then
        $ipt -A KAIZEN_QUIC -m owner --uid-owner "$PROXY_UID" -j RETURN
        $ipt -A KAIZEN_QUIC -j REJECT
    fi
    if [ "$reject_tcp" = 1 ]; then
        # TCP that cannot be redirected (no nat table for this family) is rejected, not let through unobserved.
        exempt "$ipt" filter KAIZEN_TCP "$loopback" "$family"
        $ipt -A KAIZEN_TCP -p tcp -j REJECT --reject-with tcp-reset
    fi
}

redirect iptables 127.0.0.0/8 4
filter iptables 127.0.0.0/8 4 0
if ip6tables -t nat -L OUTPUT >/dev/null 2>&1; then
    redirect ip6tables ::1/128 6
    filter ip6tables ::1/128 6 0
elif ip6tables -L OUTPUT >/dev/null 2>&1; then
    filter ip6tables ::1/128 6 1
    echo "iptables.sh: no IPv6 nat table here: outbound IPv6 TCP is rejected (it cannot be redirected), IPv6 UDP as IPv4's" >&2
else
    echo "iptables.sh: no ip6tables here; IPv6 is neither redirected nor filtered" >&2
fi
if [ "$BLOCK_UDP" = 1 ]; then
    udp="outbound UDP rejected but to port(s) ${ALLOW_UDP_PORTS:-none}"
elif [ "$BLOCK_QUIC" = 1 ]; then
    udp="outbound UDP 443 rejected, other UDP let through unobserved"
else
    udp="outbound UDP let through unobserved"
fi
echo "iptables.sh: outbound TCP goes to port $PORT; $udp (UID $PROXY_UID exempt)"
