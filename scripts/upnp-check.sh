#!/usr/bin/env bash
# upnp-check.sh: check ferry-nat's UPnP module against a real miniupnpd.
#
# Builds three private network namespaces (all names start with `fyu-`),
# runs miniupnpd (UPnP IGD) on the router and the ignored test
# `upnp::tests::upnp_against_real_gateway` on the client, then tears it all
# down (trap), stopping only the processes it started, by PID.
#
#   fyu-client  eth0 10.77.0.2/24 ── lan 10.77.0.1/24  fyu-router
#                                    wan 203.0.113.77/24 ── eth0 203.0.113.1/24  fyu-inet
#
# fyu-router forwards and runs miniupnpd (listening on `lan`, external
# interface `wan`). miniupnpd refuses documentation-range addresses as
# "reserved" in ext_ip=, so it learns its external address by STUN
# (ext_perform_stun) from coturn's turnserver on fyu-inet, which also sends
# UDP datagrams to 203.0.113.77:$PORT so the test can see inbound traffic
# arrive through a mapping. No traffic leaves these namespaces.
#
# Usage: sudo scripts/upnp-check.sh [--keep]   (--keep: leave it up, print how to clean)
# Needs: root, iproute2, nftables, miniupnpd-nftables, coturn, cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=fyu-
CLIENT=${P}client ROUTER=${P}router INET=${P}inet
EXT_IP=203.0.113.77 INET_IP=203.0.113.1 INET_IP2=203.0.113.2 LAN_GW=10.77.0.1 LAN_IP=10.77.0.2 OTHER=10.77.0.3
PORT=${FERRY_UPNP_PORT:-47077}
KEEP=0
[ "${1:-}" = --keep ] && KEEP=1

STATE=$(mktemp -d /tmp/ferry-upnp-check.XXXXXX)
PIDS=()

log() { printf 'upnp-check: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local rc=$? pid
    if [ "$KEEP" = 1 ]; then
        log "left up (--keep): logs in $STATE; kill ${PIDS[*]:-}; ip netns del $CLIENT; ip netns del $ROUTER; ip netns del $INET"
        return
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    for ns in "$CLIENT" "$ROUTER" "$INET"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        log "failed (exit $rc); logs:"
        tail -n 30 "$STATE"/*.log >&2 2>/dev/null || true
    fi
    rm -rf "$STATE"
}

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
for tool in ip nft miniupnpd turnserver cargo; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y iproute2 nftables miniupnpd-nftables coturn)"
done
for ns in "$CLIENT" "$ROUTER" "$INET"; do
    [ -e "/run/netns/$ns" ] && die "namespace $ns exists: another upnp-check running? (ip netns del $ns)"
done
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ network
for ns in "$CLIENT" "$ROUTER" "$INET"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
# Interfaces are created directly inside the namespaces: none ever exists
# in the root namespace.
ip -n "$ROUTER" link add lan type veth peer name eth0 netns "$CLIENT"
ip -n "$ROUTER" link add wan type veth peer name eth0 netns "$INET"
ip -n "$CLIENT" addr add "$LAN_IP/24" dev eth0
ip -n "$CLIENT" link set eth0 up
ip -n "$CLIENT" route add default via "$LAN_GW"
ip -n "$ROUTER" addr add "$LAN_GW/24" dev lan
ip -n "$ROUTER" addr add "$EXT_IP/24" dev wan
ip -n "$ROUTER" link set lan up
ip -n "$ROUTER" link set wan up
ip -n "$INET" addr add "$INET_IP/24" dev eth0
ip -n "$INET" addr add "$INET_IP2/24" dev eth0
ip -n "$INET" link set eth0 up
ip netns exec "$ROUTER" sysctl -qw net.ipv4.ip_forward=1

# ---------------------------------------------------------------- STUN + pings
# Two addresses: miniupnpd's STUN check uses RFC 5780 CHANGE-REQUEST and takes
# "420 Unknown attribute" for a restrictive NAT, which disables forwarding.
ip netns exec "$INET" turnserver -n -L "$INET_IP" -L "$INET_IP2" --listening-port 3478 \
    --no-auth --fingerprint --stun-only --no-tls --no-dtls --no-cli \
    --log-file=stdout --simple-log --pidfile "$STATE/turnserver.pid" \
    </dev/null >"$STATE/turnserver.log" 2>&1 &
PIDS+=($!)
# A datagram to the router's external port every 200 ms; the test expects one
# to arrive through its UDP mapping.
ip netns exec "$INET" bash -c \
    "while :; do printf 'ferry-upnp-ping' >/dev/udp/$EXT_IP/$PORT 2>/dev/null || true; sleep 0.2; done" \
    </dev/null >"$STATE/pinger.log" 2>&1 &
PIDS+=($!)

wait_listen() { # NS PROTO(t|u) REGEX NAME
    for _ in $(seq 1 100); do
        ip netns exec "$1" ss -H -n -l -"$2" | awk '{print $4}' | grep -qE -- "$3" && return 0
        sleep 0.1
    done
    die "$4 did not start; log: $(tail -n 20 "$STATE/$4.log" 2>/dev/null)"
}
wait_listen "$INET" u "^${INET_IP2//./\\.}:3479$" turnserver

# ---------------------------------------------------------------- miniupnpd
# miniupnpd's nftables tables, created before it starts (as scripts/lab.sh does).
ip netns exec "$ROUTER" nft -f - <<'EOF'
table inet upnp {
    chain miniupnpd { }
    chain forward { type filter hook forward priority filter - 5; policy accept; jump miniupnpd; }
}
table inet upnpnat {
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
    chain prerouting { type nat hook prerouting priority dstnat - 5; policy accept; jump prerouting_miniupnpd; }
    chain postrouting { type nat hook postrouting priority srcnat - 5; policy accept; jump postrouting_miniupnpd; }
}
EOF
# secure_mode=no: the test maps a port to another LAN host (10.77.0.3) to
# see how ferry handles "port in use by another host".
cat >"$STATE/miniupnpd.conf" <<EOF
ext_ifname=wan
listening_ip=lan
http_port=5000
enable_natpmp=no
enable_upnp=yes
ext_perform_stun=yes
ext_stun_host=$INET_IP
ext_stun_port=3478
upnp_table_name=upnp
upnp_nat_table_name=upnpnat
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
secure_mode=no
system_uptime=yes
notify_interval=30
clean_ruleset_interval=600
uuid=$(cat /proc/sys/kernel/random/uuid)
allow 1024-65535 10.77.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
ip netns exec "$ROUTER" miniupnpd -d -f "$STATE/miniupnpd.conf" -P "$STATE/miniupnpd.pid" \
    </dev/null >"$STATE/miniupnpd.log" 2>&1 &
PIDS+=($!)
wait_listen "$ROUTER" t ':5000$' miniupnpd
log "miniupnpd up on $ROUTER (LAN $LAN_GW, external $EXT_IP)"

# --------------------------------------------------------------------- test
cd "$ROOT"
# Build in the root namespace (the client namespace has no route to crates.io).
cargo test -p ferry-nat --lib --no-run --offline 2>&1 | tail -n 2 >&2
log "running the ignored test in $CLIENT"
ip netns exec "$CLIENT" env \
    FERRY_UPNP_EXTERNAL_IP="$EXT_IP" FERRY_UPNP_LAN_IP="$LAN_IP" \
    FERRY_UPNP_PORT="$PORT" FERRY_UPNP_OTHER_HOST="$OTHER" \
    cargo test -p ferry-nat --lib --offline -- --ignored --exact \
    upnp::tests::upnp_against_real_gateway --nocapture
log "OK: discovery, external address, same-port and router-chosen mappings, inbound UDP through a mapping, renewal, close, drop and probe all work against miniupnpd"
