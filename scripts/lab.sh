#!/usr/bin/env bash
# ferry's network-namespace lab: real NATs emulated with Linux network
# namespaces, veth pairs, nftables and tc, all on this one machine.
# Needs root. IPv4 only unless a topology or option asks for IPv6 (dual-stack,
# dual-stack-udp-blocked, v6-v4, --family-a/--family-b): otherwise IPv6 is
# disabled in every lab namespace.
#
# COMMANDS
#   lab.sh up TOPOLOGY [OPTIONS]   build a lab (tears down any previous one first)
#   lab.sh down [--force]          remove everything `up` made (processes, namespaces,
#                                  state); --force also removes stray fy-* namespaces
#   lab.sh exec HOST [--] CMD...   run CMD inside HOST's namespace (exit code is CMD's)
#   lab.sh addr HOST [N|--all]     HOST's main address (N: its N-th address, 1-based;
#                                  --all: all of them, one per line)
#   lab.sh status                  topology, hosts, addresses, NAT kinds, knobs, daemons
#   lab.sh set loss HOST PERCENT [in|out|both]   random loss on HOST's uplink
#                                  (PERCENT 0 removes it; default direction both)
#   lab.sh set rate HOST RATE      tc tbf rate limit on HOST's uplink, both directions
#                                  (RATE like 500kbit, 10mbit, 1gbit; "off" removes it)
#   lab.sh set delay RTT_MS|off    round-trip delay RTT_MS (e.g. 50, 12.5) on everything
#                                  inet forwards: ferry-lab-delay holds each packet RTT/2
#                                  in a TUN device in inet, each direction passes it once
#                                  ("off" removes it). Needs the binary: cargo build
#                                  --release -p ferry-tests --bin ferry-lab-delay (or
#                                  FERRY_LAB_DELAY_BIN=PATH). Its counters and CPU use:
#                                  /run/ferry-lab*/logs/delay.log. Also raises the TCP
#                                  buffer maxima (tcp_rmem/tcp_wmem) of a, b, server.
#   lab.sh stun start|stop         coturn STUN server (RFC 5780) on `server`, port 3478
#                                  (and 3479) on both server addresses
#   lab.sh ns HOST                 print the namespace name of HOST (for `ip netns exec`)
#   lab.sh hosts                   print the host names of the running lab
#
# TOPOLOGIES (presets of `nat`)
#   public            a and b have public addresses (their routers do not NAT)
#   full-cone         both NATs full cone (endpoint-independent mapping and filtering)
#   port-restricted   both NATs Linux masquerade: endpoint-independent mapping, port kept
#                     where possible, address-and-port-dependent filtering
#   symmetric         both NATs masquerade fully-random (new port per destination)
#   udp-blocked       both port-restricted, and UDP from LAN to WAN is dropped
#   tcp443-only       both port-restricted, and only TCP to port 443 may leave the LAN
#   proxy-only        nat-a of kind proxy-only (nothing from a's LAN is forwarded: only
#                     the router itself, where a proxy would run, gets out), nat-b
#                     port-restricted. The lab starts no proxy: scripts/e2e-proxy.sh runs
#                     tinyproxy and microsocks in nat-a, on its LAN address 10.0.1.1
#   same-lan          a and b on ONE LAN behind nat-a (port-restricted, no hairpinning);
#                     there is no nat-b
#   upnp              both port-restricted, each NAT runs miniupnpd (UPnP IGD + NAT-PMP/PCP)
#                     on its LAN (http://LAN-IP:5000/rootDesc.xml); a STUN server runs on
#                     `server` because miniupnpd learns its external address by STUN. It
#                     does so only at start: `lab.sh stun stop` afterwards frees UDP 3478
#                     for ferry's own server. miniupnpc 2.2.4 calls the IGD "not connected"
#                     (its external address is a documentation address): use `upnpc -i`.
#   pmp               like upnp, but miniupnpd speaks only NAT-PMP/PCP (UDP 5351 on the
#                     LAN address): UPnP IGD is off (enable_upnp=no), no HTTP on 5000
#   double-nat        a behind nat-a whose WAN is 100.64.1.2 (carrier-grade NAT space),
#                     behind `cgn` (port-restricted, public WAN); b behind port-restricted nat-b
#   dual-stack        both NATs port-restricted for IPv4; a and b also have public IPv6
#                     addresses (2001:db8::/32) behind a stateful firewall on their
#                     router (see IPv6 below); the server is on both families
#   dual-stack-udp-blocked   like dual-stack, and UDP from LAN to WAN is dropped on
#                     both families (only TCP leaves)
#   v6-v4             a is IPv6-only (no IPv4 address at all), b IPv4-only (IPv6 off),
#                     both behind port-restricted routers; the server on both families
#   nat               custom, with the options below
#   Every NAT router drops unsolicited traffic to its own WAN address, and does not
#   adopt TCP flows already under way after losing its state (conntrack -F):
#   nf_conntrack_tcp_loose=0, as many home routers after a reboot.
#
# OPTIONS of `up`
#   --a KIND, --b KIND   kind of nat-a / nat-b: none|full-cone|port-restricted|symmetric|
#                        udp-blocked|tcp443-only|proxy-only (default port-restricted,
#                        for `nat`)
#   --cgn KIND           put nat-a behind a carrier-grade NAT `cgn` of that kind
#   --same-lan           a and b share nat-a's LAN (b becomes 10.0.1.11; no nat-b)
#   --upnp               run miniupnpd on every NAT router that NATs (implies --stun)
#   --pmp                the same with UPnP IGD off: NAT-PMP/PCP only
#   --upnp-on a|b|both   which NATs run miniupnpd with --upnp/--pmp (or the upnp/pmp
#                        topologies): nat-a, nat-b, or both (default both)
#   --stun               start coturn's turnserver (STUN only, RFC 5780) on `server`
#   --loss HOST:PERCENT[:in|out|both]   like `set loss`, repeatable
#   --rate HOST:RATE                    like `set rate`, repeatable
#   --delay RTT_MS                      like `set delay`
#   --family-a dual|v4|v6, --family-b dual|v4|v6   address families of a / b (default
#                        v4); any but v4 builds the IPv6 part of the lab (not with --cgn
#                        or --same-lan)
#
# IPv6 (only in a lab with --family-a/--family-b other than v4, or the topologies
#   dual-stack, dual-stack-udp-blocked, v6-v4): every address is static, added
#   `nodad` with DAD, router advertisements and autoconf off, so nothing changes
#   after `up` returns; routers forward IPv6.
#   inet     2001:db8:10::1 (to server), 2001:db8:a0::1 (to nat-a), 2001:db8:b0::1
#   server   2001:db8:10::10 and 2001:db8:10::11 besides its IPv4 addresses
#   nat-a    WAN 2001:db8:a0::2, LAN 2001:db8:a1::1/64; a 2001:db8:a1::10
#   nat-b    WAN 2001:db8:b0::2, LAN 2001:db8:b1::1/64; b 2001:db8:b1::10
#   A router of kind other than none is a stateful IPv6 firewall (table ip6 labv6):
#   `ct state established,related accept`, new inbound from `wan` dropped, nothing
#   translated; udp-blocked and tcp443-only apply to IPv6 too. Kind none: open.
#   A peer's IPv6 address comes after its IPv4 one in `addr HOST --all` (a v6-only
#   peer has only it). Every namespace of such a lab resolves `server.test` to both
#   server addresses (203.0.113.10, 2001:db8:10::10) through /etc/netns/NS/hosts,
#   which `ip netns exec` (and `lab.sh exec`) mounts over /etc/hosts.
#
# HOSTS (namespace = fy-HOST) and ADDRESSES
#   inet     the "internet" router: 203.0.113.1 (to server), 198.51.100.1 (to nat-a),
#            198.51.100.17 (to nat-b), 198.51.100.33 (to cgn)
#   server   public host, TWO addresses: 203.0.113.10 (main) and 203.0.113.11
#   nat-a    WAN 198.51.100.2 (or 100.64.1.2 behind cgn); LAN 10.0.1.1/24
#   a        10.0.1.10 behind nat-a (kind none: 198.51.100.66, LAN 198.51.100.64/28)
#   nat-b    WAN 198.51.100.18; LAN 192.168.2.1/24
#   b        192.168.2.10 behind nat-b (kind none: 198.51.100.82, LAN 198.51.100.80/28;
#            same-lan: 10.0.1.11 on nat-a's LAN)
#   cgn      (only with --cgn / double-nat) WAN 198.51.100.34, LAN 100.64.1.1/24
#   `addr HOST` prints the main address: a NAT router's WAN address, a peer's own
#   (private) address, the server's first address, inet's 203.0.113.1.
#   Interface names: peers and server `eth0`; NAT routers `wan` and `lan` (the LAN is
#   a bridge); inet `to-server`, `to-nat-a`, `to-nat-b`, `to-cgn`.
#   A host's "uplink" (for loss/rate) is `wan` on NAT routers and `eth0` elsewhere.
#   Loss is an nftables `numgen random` drop on the uplink (prerouting for "in",
#   postrouting for "out"); with "both" a ping round trip loses 1-(1-p)^2.
#   On a peer (a, b, server) "out" loses UDP but hardly TCP: a packet netfilter drops
#   on its sender's way out is an error to the socket and TCP sends it again at once.
#   For loss both see, put it on a router: `set loss nat-a P` (a plain router in public).
#   Rate is a tc tbf qdisc on both ends of the uplink veth.
#   No netem here, so delay is user space: `set delay` starts ferry-lab-delay in inet
#   with a TUN device `delay0`, and policy routing (rules "iif to-* lookup 100", table
#   100 "default dev delay0", priority 100) sends every packet inet forwards into it;
#   what it writes back (iif delay0) is routed by the main table as before. Traffic to
#   or from inet itself is not delayed. Without `set delay` none of this exists.
#   Accuracy: tokio's 1 ms timer, so each direction is held RTT/2 within about +-0.5 ms.
#
# STATE  /run/ferry-lab/ : namespaces (list, written before each is created),
#   hosts (NAME ROLE KIND UPLINK ADDRS), topology, pids/ (daemons the lab started),
#   logs/ (their output), knobs/, conf/. Only one lab at a time (flock on
#   /run/ferry-lab.lock serializes up/down/set).
#
# Processes: `down` kills the daemons it started (by recorded PID, checked to live in a
# lab namespace), then whatever still runs inside a lab namespace (things started via
# `exec`), then deletes the namespaces; veths disappear with them. Nothing is ever
# configured in the root namespace.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# FERRY_LAB_ID=X runs a second, independent lab beside the default one
# (namespaces fyX-*, state /run/ferry-lab-X): for running lab tests in two
# checkouts at once. Unset: the default lab.
if [ -n "${FERRY_LAB_ID:-}" ]; then
    [[ $FERRY_LAB_ID =~ ^[a-z0-9]{1,3}$ ]] || die "FERRY_LAB_ID must be 1-3 lowercase letters or digits"
    PREFIX=fy$FERRY_LAB_ID-
    STATE=/run/ferry-lab-$FERRY_LAB_ID
else
    PREFIX=fy-
    STATE=/run/ferry-lab
fi
LOCK=$STATE.lock
KINDS="none full-cone port-restricted symmetric udp-blocked tcp443-only proxy-only"
TOPOLOGIES="public full-cone port-restricted symmetric udp-blocked tcp443-only proxy-only same-lan upnp pmp double-nat dual-stack dual-stack-udp-blocked v6-v4 nat"
FAMILIES="dual v4 v6"
SERVER_NAME=server.test
STUN_PORT=3478

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------- small helpers

need_root() { [ "$(id -u)" -eq 0 ] || die "the lab needs root (network namespaces, nftables)"; }

# ensure_tools: installs what the lab needs, once.
ensure_tools() {
    local want=()
    command -v nft >/dev/null || want+=(nftables)
    command -v ip >/dev/null || want+=(iproute2)
    command -v tc >/dev/null || want+=(iproute2)
    command -v conntrack >/dev/null || want+=(conntrack)
    command -v miniupnpd >/dev/null || want+=(miniupnpd-nftables)
    command -v upnpc >/dev/null || want+=(miniupnpc)
    command -v turnserver >/dev/null || want+=(coturn)
    command -v stun >/dev/null || want+=(stun-client)
    command -v stund >/dev/null || want+=(stun-server)
    command -v nc >/dev/null || want+=(netcat-openbsd)
    command -v ping >/dev/null || want+=(iputils-ping)
    [ ${#want[@]} -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt_install "${want[@]}"
    stop_system_services
}

# stop_system_services: Debian's packages may start system-wide daemons in the
# root namespace; the lab wants none of them.
stop_system_services() {
    local svc
    for svc in miniupnpd coturn; do
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$svc" ]; then
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
    done
}

ns() { printf '%s%s' "$PREFIX" "$1"; }
# nsx HOST CMD...: run CMD in HOST's namespace
nsx() { local h=$1; shift; ip netns exec "$(ns "$h")" "$@"; }
host_exists() { [ -e "/run/netns/$(ns "$1")" ]; }
lab_is_up() { [ -f "$STATE/topology" ]; }

lock() {
    mkdir -p "$(dirname "$LOCK")"
    exec 9>"$LOCK"
    flock -w 60 9 || die "another lab.sh up/down/set is still running (lock $LOCK)"
}

# host_field HOST N: field N of HOST's line in the hosts table
# (1 NAME, 2 ROLE, 3 KIND, 4 UPLINK, 5 ADDRS comma-separated, 6 UPLINK-PEER ns:if)
host_field() {
    [ -f "$STATE/hosts" ] || die "no lab is up (run: lab.sh up TOPOLOGY)"
    local v
    v=$(awk -v h="$1" -v n="$2" '$1 == h { print $n; found=1 } END { exit !found }' "$STATE/hosts") \
        || die "no host '$1' in the lab (hosts: $(cut -d' ' -f1 "$STATE/hosts" | tr '\n' ' '))"
    printf '%s\n' "$v"
}

# ---------------------------------------------------------------- building blocks

# add_host NAME ROLE KIND: a namespace with lo up, IPv6 off, forwarding on for routers
add_host() {
    local name=$1 role=$2 kind=$3 n fwd=0
    n=$(ns "$name")
    echo "$n" >>"$STATE/namespaces"          # recorded first, so `down` finds it after a crash
    ip netns add "$n"
    [ "$role" = router ] && fwd=1
    local v6="sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"
    if [[ " ${V6_HOSTS:-} " == *" $name "* ]]; then
        # IPv6 on, deterministic: no DAD, no router advertisements, no
        # autoconf (the defaults, set before any interface exists, apply to
        # every interface made later); routers forward.
        v6="sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0
            sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
            sysctl -qw net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0
            sysctl -qw net.ipv6.conf.all.autoconf=0 net.ipv6.conf.default.autoconf=0
            sysctl -qw net.ipv6.conf.all.forwarding=$fwd net.ipv6.conf.default.forwarding=$fwd"
    fi
    ip netns exec "$n" sh -c "
        [ -d /proc/sys/net/ipv6 ] && { $v6; }
        sysctl -qw net.ipv4.ip_forward=$fwd
        sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
        ip link set lo up"
    HOSTS_ROLE[$name]=$role
    HOSTS_KIND[$name]=$kind
    HOST_ORDER+=("$name")
}

# link H1 IF1 H2 IF2: a veth pair created directly between two lab namespaces
link() {
    ip -n "$(ns "$1")" link add "$2" type veth peer name "$4" netns "$(ns "$3")"
    ip -n "$(ns "$1")" link set "$2" up
    ip -n "$(ns "$3")" link set "$4" up
}

# bridge HOST NAME: a bridge (no STP, no multicast snooping) in HOST
bridge() {
    ip -n "$(ns "$1")" link add "$2" type bridge stp_state 0 mcast_snooping 0
    ip -n "$(ns "$1")" link set "$2" up
}
enslave() { ip -n "$(ns "$1")" link set "$2" master "$3"; }
addr_add() { ip -n "$(ns "$1")" addr add "$3" dev "$2"; }
route_add() { local h=$1; shift; ip -n "$(ns "$h")" route add "$@"; }

# record HOST UPLINK ADDRS UPLINK-PEER: a line of the hosts table
record() {
    HOSTS_UPLINK[$1]=$2
    HOSTS_ADDRS[$1]=$3
    HOSTS_PEER[$1]=$4
}

# nat_ruleset KIND: the nftables ruleset of a NAT router of that kind ("lan" -> "wan")
nat_ruleset() {
    local kind=$1
    cat <<EOF
table ip lab {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        ct state invalid drop
EOF
    case $kind in
        udp-blocked) echo '        iifname "lan" oifname "wan" meta l4proto udp drop' ;;
        tcp443-only) echo '        iifname "lan" oifname "wan" tcp dport 443 accept'
                     echo '        iifname "lan" oifname "wan" drop' ;;
        # Only the router's own connections (a proxy on it) leave the LAN.
        proxy-only) echo '        iifname "lan" oifname "wan" drop' ;;
    esac
    cat <<EOF
        # inbound that was DNATed (full-cone map, miniupnpd mappings) is solicited
        iifname "wan" ct status dnat accept
        # everything else new from outside: address-and-port-dependent filtering
        iifname "wan" drop
    }
    chain input {
        # Like most home routers, unsolicited traffic to the router's own
        # WAN address is dropped ("stealth"). Besides realism this matters
        # to hole punching: a peer's packet that arrives before our own
        # first outbound packet would otherwise be delivered to the router
        # itself, and its conntrack entry would then force masquerade onto
        # another port for our flow (TCP would also get a reset). Dropped,
        # its entry is never confirmed. The STUN check miniupnpd runs at
        # start needs the server's answers from its other address and port.
        type filter hook input priority filter; policy accept;
        iifname "wan" ip saddr 203.0.113.0/24 udp sport { 3478, 3479 } accept
        iifname "wan" ct state new drop
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade$([ "$kind" = symmetric ] && echo ' fully-random')
    }
EOF
    if [ "$kind" = full-cone ]; then
        # Full cone: remember public port -> internal address.port for every
        # outbound flow (after masquerade chose the port), and DNAT any new
        # inbound flow to that port back to the internal endpoint.
        cat <<'EOF'
    map fullcone {
        type inet_proto . inet_service : ipv4_addr . inet_service
        flags dynamic,timeout
        timeout 180s
    }
    chain fullcone_learn {
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname "wan" ct direction original meta l4proto { tcp, udp } update @fullcone { meta l4proto . th sport : ct original ip saddr . ct original proto-src }
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" meta l4proto { tcp, udp } dnat ip to meta l4proto . th dport map @fullcone
    }
EOF
    fi
    echo "}"
}

# add_nat NAME KIND WAN_CIDR WAN_GW LAN_CIDR: configure router NAME (its `wan` and
# `lan` interfaces must exist) as a NAT of KIND
setup_router() {
    local name=$1 kind=$2 wan_cidr=$3 wan_gw=$4 lan_cidr=$5
    addr_add "$name" wan "$wan_cidr"
    addr_add "$name" lan "$lan_cidr"
    route_add "$name" default via "$wan_gw"
    [ "$kind" = none ] && return 0
    nat_ruleset "$kind" | nsx "$name" nft -f - || die "nftables rules for $name ($kind) failed"
    # A router that lost its state (conntrack -F, a reboot) does not adopt
    # TCP flows already under way, as many home routers: their packets are
    # invalid and dropped, so the flow breaks and must be re-made. (Linux's
    # default, 1, silently re-creates the mapping mid-stream.)
    nsx "$name" sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0 \
        || die "cannot set nf_conntrack_tcp_loose on $name"
}

# fw6_ruleset KIND: the stateful IPv6 firewall of a router of that kind: no
# translation, replies and related errors in, nothing new from `wan`
fw6_ruleset() {
    local kind=$1
    cat <<'EOF'
table ip6 labv6 {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        ct state invalid drop
EOF
    case $kind in
        udp-blocked) echo '        iifname "lan" oifname "wan" meta l4proto udp drop' ;;
        tcp443-only) echo '        iifname "lan" oifname "wan" tcp dport 443 accept'
                     echo '        iifname "lan" oifname "wan" drop' ;;
    esac
    cat <<'EOF'
        iifname "wan" drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        # neighbour discovery must reach the router itself
        meta l4proto ipv6-icmp accept
        iifname "wan" ct state new drop
    }
}
EOF
}

# setup_v6: the IPv6 part of a lab (the hosts in V6_HOSTS), after the IPv4 part
setup_v6() {
    local side r up lan h n
    ip6_add() { ip -n "$(ns "$1")" -6 addr add "$3" dev "$2" nodad; }
    route6_add() { local h=$1; shift; ip -n "$(ns "$h")" -6 route add "$@"; }
    ip6_add inet to-server 2001:db8:10::1/64
    ip6_add server eth0 2001:db8:10::10/64
    ip6_add server eth0 2001:db8:10::11/64
    route6_add server default via 2001:db8:10::1
    HOSTS_ADDRS[inet]+=,2001:db8:10::1
    HOSTS_ADDRS[server]+=,2001:db8:10::10,2001:db8:10::11
    for side in a b; do
        [[ " $V6_HOSTS " == *" $side "* ]] || continue
        r=nat-$side up=2001:db8:${side}0 lan=2001:db8:${side}1
        ip6_add inet "to-$r" "$up::1/64"
        ip6_add "$r" wan "$up::2/64"
        ip6_add "$r" lan "$lan::1/64"
        route6_add "$r" default via "$up::1"
        route6_add inet "$lan::/64" via "$up::2"
        ip6_add "$side" eth0 "$lan::10/64"
        route6_add "$side" default via "$lan::1"
        HOSTS_ADDRS[inet]+=,$up::1
        HOSTS_ADDRS[$r]+=,$up::2
        if [ "${FAMILY[$side]}" = v6 ]; then
            # IPv6 only: the IPv4 address (and its routes) go
            ip -n "$(ns "$side")" -4 addr flush dev eth0
            HOSTS_ADDRS[$side]=$lan::10
        else
            HOSTS_ADDRS[$side]+=,$lan::10
        fi
        if [ "${HOSTS_KIND[$r]}" != none ]; then
            fw6_ruleset "${HOSTS_KIND[$r]}" | nsx "$r" nft -f - || die "IPv6 firewall rules for $r failed"
        fi
    done
    # A name for the server with both addresses, in every namespace
    for h in "${HOST_ORDER[@]}"; do
        n=$(ns "$h")
        mkdir -p "/etc/netns/$n"
        printf '127.0.0.1 localhost\n::1 localhost\n203.0.113.10 %s\n2001:db8:10::10 %s\n' \
            "$SERVER_NAME" "$SERVER_NAME" >"/etc/netns/$n/hosts"
    done
}

# ---------------------------------------------------------------- knobs

# apply_loss HOST: (re)writes HOST's loss table from $STATE/knobs/HOST.loss
apply_loss() {
    local h=$1 up pct dir f="$STATE/knobs/$1.loss"
    up=$(host_field "$h" 4)
    nsx "$h" nft delete table ip labloss 2>/dev/null || true
    [ -f "$f" ] || return 0
    read -r pct dir <"$f"
    [ "$pct" -gt 0 ] || { rm -f "$f"; return 0; }
    {
        echo "table ip labloss {"
        echo "  chain in { type filter hook prerouting priority raw - 10; policy accept;"
        [ "$dir" != out ] && echo "    iifname \"$up\" numgen random mod 100 < $pct drop"
        echo "  }"
        echo "  chain out { type filter hook postrouting priority srcnat + 50; policy accept;"
        [ "$dir" != in ] && echo "    oifname \"$up\" numgen random mod 100 < $pct drop"
        echo "  }"
        echo "}"
    } | nsx "$h" nft -f - || die "could not set loss on $h"
}

set_loss() {
    local h=$1 pct=$2 dir=${3:-both}
    if ! [[ $pct =~ ^[0-9]+$ ]] || [ "$pct" -gt 100 ]; then
        die "loss must be a whole percentage 0..100, not '$pct'"
    fi
    case $dir in in|out|both) ;; *) die "loss direction must be in, out or both, not '$dir'" ;; esac
    [ "$(host_field "$h" 4)" != - ] || die "host $h has no uplink to put loss on"
    mkdir -p "$STATE/knobs"
    echo "$pct $dir" >"$STATE/knobs/$h.loss"
    apply_loss "$h"
}

# rate_bytes RATE: bytes per second of a tc rate like 500kbit, 10mbit, 1gbit
rate_bytes() {
    local n u
    [[ $1 =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || die "rate must look like 500kbit, 10mbit or 1gbit, not '$1'"
    n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]}
    case $u in bit) echo $((n / 8)) ;; kbit) echo $((n * 1000 / 8)) ;; mbit) echo $((n * 1000000 / 8)) ;; gbit) echo $((n * 1000000000 / 8)) ;; esac
}

set_rate() {
    local h=$1 rate=$2 up peer pns pif bps burst
    up=$(host_field "$h" 4)
    peer=$(host_field "$h" 6)
    [ "$up" != - ] || die "host $h has no uplink to limit"
    pns=${peer%%:*} pif=${peer#*:}
    mkdir -p "$STATE/knobs"
    if [ "$rate" = off ]; then
        nsx "$h" tc qdisc del dev "$up" root 2>/dev/null || true
        nsx "$pns" tc qdisc del dev "$pif" root 2>/dev/null || true
        rm -f "$STATE/knobs/$h.rate"
        return 0
    fi
    bps=$(rate_bytes "$rate")
    [ "$bps" -gt 0 ] || die "rate too small: $rate"
    burst=$((bps / 50)); [ "$burst" -lt 16000 ] && burst=16000    # >= 20 ms worth, >= 16 kB
    nsx "$h" tc qdisc replace dev "$up" root tbf rate "$rate" burst "$burst" latency 200ms
    nsx "$pns" tc qdisc replace dev "$pif" root tbf rate "$rate" burst "$burst" latency 200ms
    echo "$rate" >"$STATE/knobs/$h.rate"
}

DELAY_DEV=delay0
DELAY_TABLE=100

# delay_bin: path of the ferry-lab-delay binary (FERRY_LAB_DELAY_BIN, else the
# newest of the release and debug builds under CARGO_TARGET_DIR or target/)
delay_bin() {
    if [ -n "${FERRY_LAB_DELAY_BIN:-}" ]; then
        [ -x "$FERRY_LAB_DELAY_BIN" ] || die "FERRY_LAB_DELAY_BIN=$FERRY_LAB_DELAY_BIN is not an executable"
        printf '%s\n' "$FERRY_LAB_DELAY_BIN"; return 0
    fi
    local t=${CARGO_TARGET_DIR:-$FERRY_ROOT/target} b=''
    [ -x "$t/release/ferry-lab-delay" ] && b=$t/release/ferry-lab-delay
    if [ -x "$t/debug/ferry-lab-delay" ] && { [ -z "$b" ] || [ "$t/debug/ferry-lab-delay" -nt "$b" ]; }; then
        b=$t/debug/ferry-lab-delay
    fi
    [ -n "$b" ] || die "no ferry-lab-delay binary under $t; build it: cargo build --release -p ferry-tests --bin ferry-lab-delay (or set FERRY_LAB_DELAY_BIN)"
    printf '%s\n' "$b"
}

# delay_unroute: removes the policy rules (the table's route goes with the device)
delay_unroute() {
    local pref
    while read -r pref; do
        nsx inet ip rule del pref "$pref" 2>/dev/null || true
    done < <(nsx inet ip rule show | awk -v t="$DELAY_TABLE" '$NF == t { sub(":", "", $1); print $1 }')
    nsx inet ip route flush table "$DELAY_TABLE" 2>/dev/null || true
}

set_delay() {
    local rtt=$1 one_way ifs i
    [[ $rtt = off || $rtt =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "delay must be a round trip in ms (like 50 or 12.5) or off, not '$rtt'"
    host_exists inet || die "no lab is up"
    delay_unroute
    stop_daemon delay
    rm -f "$STATE/knobs/inet.delay"
    if [ "$rtt" = off ] || awk -v r="$rtt" 'BEGIN { exit !(r == 0) }'; then return 0; fi
    one_way=$(awk -v r="$rtt" 'BEGIN { printf "%.3f", r / 2 }')
    local bin rt=(); bin=$(delay_bin)
    # Real-time priority: on a busy machine a normal thread is descheduled for
    # whole time slices, and packets went out up to 86 ms late (TCP then saw
    # spurious losses). It sleeps between packets, so it cannot starve anyone.
    if command -v chrt >/dev/null && nsx inet chrt -f 20 true 2>/dev/null; then rt=(chrt -f 20); fi
    start_daemon delay inet "${rt[@]}" "$bin" --dev "$DELAY_DEV" --delay-ms "$one_way" --report-secs 10
    for _ in $(seq 1 50); do
        nsx inet ip link show dev "$DELAY_DEV" 2>/dev/null | grep -q '[<,]UP[,>]' && break
        daemon_alive delay || break
        sleep 0.1
    done
    nsx inet ip link show dev "$DELAY_DEV" 2>/dev/null | grep -q '[<,]UP[,>]' \
        || die "ferry-lab-delay did not bring up $DELAY_DEV; log: $(tail -n 20 "$STATE/logs/delay.log" 2>/dev/null)"
    # What comes back out of the device must not be dropped as martian or
    # spoofed: no rp_filter on it (the lab turns it off everywhere else).
    nsx inet sysctl -qw "net.ipv4.conf.$DELAY_DEV.rp_filter=0"
    # The kernel queues packets for the device's reader (txqueuelen 500 by
    # default) and drops beyond; a 1 Gbit/s burst overflows that.
    nsx inet ip link set dev "$DELAY_DEV" txqueuelen 10000
    nsx inet ip route add default dev "$DELAY_DEV" table "$DELAY_TABLE"
    mapfile -t ifs < <(nsx inet ip -o link show | awk -F': ' '{ sub("@.*", "", $2); print $2 }' | grep '^to-')
    for i in "${ifs[@]}"; do
        nsx inet ip rule add pref "$DELAY_TABLE" iif "$i" lookup "$DELAY_TABLE"
    done
    # A long path needs big windows: 1 Gbit/s x 50 ms is 6.25 MB, and Linux's
    # default tcp_wmem allows 4 MB. These are the namespaces' own sysctls.
    local h role
    while read -r h role _; do
        [ "$role" = host ] || continue
        nsx "$h" sysctl -qw net.ipv4.tcp_rmem="4096 131072 67108864" net.ipv4.tcp_wmem="4096 16384 67108864"
    done <"$STATE/hosts"
    echo "$rtt" >"$STATE/knobs/inet.delay"
}

# ---------------------------------------------------------------- daemons

# start_daemon NAME HOST PIDFILE-OR-- CMD...: runs CMD in HOST's namespace in the
# background, output to logs/NAME.log, PID recorded in pids/NAME
start_daemon() {
    local name=$1 host=$2; shift 2
    mkdir -p "$STATE/pids" "$STATE/logs"
    ip netns exec "$(ns "$host")" "$@" </dev/null >"$STATE/logs/$name.log" 2>&1 9>&- &
    echo "$! $(ns "$host")" >"$STATE/pids/$name"
}

daemon_alive() {
    local pid nsn
    [ -f "$STATE/pids/$1" ] || return 1
    read -r pid nsn <"$STATE/pids/$1"
    pid_in_ns "$pid" "$nsn"
}

# pid_in_ns PID NS: PID is alive and lives in lab namespace NS (guards against reuse)
pid_in_ns() {
    [ -e "/proc/$1" ] && [ -e "/run/netns/$2" ] || return 1
    [ "$(stat -L -c %i "/proc/$1/ns/net" 2>/dev/null)" = "$(stat -L -c %i "/run/netns/$2" 2>/dev/null)" ]
}

stop_daemon() {
    local pid nsn
    [ -f "$STATE/pids/$1" ] || return 0
    read -r pid nsn <"$STATE/pids/$1"
    if pid_in_ns "$pid" "$nsn"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do pid_in_ns "$pid" "$nsn" || break; sleep 0.1; done
        if pid_in_ns "$pid" "$nsn"; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$STATE/pids/$1"
}

# wait_listen HOST PROTO(u|t) ADDR-REGEX SECONDS NAME: waits until a socket listens
# on a local address matching ADDR-REGEX (e.g. '203\.0\.113\.11:3479' or '.*:5000')
wait_listen() {
    local h=$1 p=$2 what=$3 secs=$4 name=$5
    for _ in $(seq 1 $((secs * 10))); do
        nsx "$h" ss -H -n -l -"$p" 2>/dev/null | awk '{print $4}' | grep -qxE -- "$what" && return 0
        daemon_alive "$name" || break
        sleep 0.1
    done
    die "$name did not come up in $secs s (waiting for $what/$p on $h); log: $(tail -n 20 "$STATE/logs/$name.log" 2>/dev/null)"
}

stun_start() {
    host_exists server || die "no lab is up"
    daemon_alive stun && return 0
    local ip1 ip2
    ip1=$(addr_of server 1) ip2=$(addr_of server 2)
    start_daemon stun server turnserver -n -L "$ip1" -L "$ip2" --listening-port "$STUN_PORT" \
        --no-auth --fingerprint --stun-only --no-tls --no-dtls --no-cli \
        --log-file=stdout --simple-log --pidfile "$STATE/pids/stun.turnserver.pid"
    wait_listen server u "${ip2//./\\.}:$((STUN_PORT + 1))" 10 stun
}
stun_stop() { stop_daemon stun; }

# miniupnpd_start ROUTER [upnp|pmp]: miniupnpd on ROUTER's `lan`, external
# interface `wan`; it learns its external address by STUN from the lab's server
# (it refuses the documentation ranges as "private" otherwise). `pmp`: UPnP IGD
# off, NAT-PMP/PCP only.
miniupnpd_start() {
    local r=$1 mode=${2:-upnp} lan_cidr conf uuid enable_upnp=yes
    [ "$mode" = pmp ] && enable_upnp=no
    lan_cidr=$(nsx "$r" ip -4 -o addr show dev lan | awk '{print $4; exit}')
    mkdir -p "$STATE/conf"
    conf="$STATE/conf/miniupnpd-$r.conf"
    uuid=$(cat /proc/sys/kernel/random/uuid)
    # miniupnpd's own nftables tables, created before it starts. Our forward chain
    # (table ip lab) accepts DNATed inbound, so its forward chain only needs to accept.
    nsx "$r" nft -f - <<'EOF'
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
    cat >"$conf" <<EOF
# written by ferry's scripts/lab.sh
ext_ifname=wan
listening_ip=lan
http_port=5000
enable_natpmp=yes
enable_upnp=$enable_upnp
ext_perform_stun=yes
ext_stun_host=$(addr_of server 1)
ext_stun_port=$STUN_PORT
upnp_table_name=upnp
upnp_nat_table_name=upnpnat
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
secure_mode=yes
system_uptime=yes
notify_interval=30
clean_ruleset_interval=600
min_lifetime=60
max_lifetime=86400
uuid=$uuid
allow 1024-65535 $lan_cidr 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
    start_daemon "miniupnpd-$r" "$r" miniupnpd -d -f "$conf" -P "$STATE/pids/miniupnpd-$r.own.pid"
    if [ "$mode" = pmp ]; then
        wait_listen "$r" u '.*:5351' 10 "miniupnpd-$r"
    else
        wait_listen "$r" t '.*:5000' 10 "miniupnpd-$r"
    fi
}

# ---------------------------------------------------------------- up / down

addr_of() {
    local h=$1 n=${2:-1} addrs
    addrs=$(host_field "$h" 5)
    if [ "$n" = --all ]; then tr ',' '\n' <<<"$addrs"; return 0; fi
    [[ $n =~ ^[0-9]+$ ]] || die "usage: lab.sh addr HOST [N|--all]"
    local v
    v=$(tr ',' '\n' <<<"$addrs" | sed -n "${n}p")
    [ -n "$v" ] || die "host $h has no address number $n (it has: $addrs)"
    printf '%s\n' "$v"
}

write_state() {
    local h
    : >"$STATE/hosts.new"
    for h in "${HOST_ORDER[@]}"; do
        printf '%s %s %s %s %s %s\n' "$h" "${HOSTS_ROLE[$h]}" "${HOSTS_KIND[$h]}" \
            "${HOSTS_UPLINK[$h]:--}" "${HOSTS_ADDRS[$h]:--}" "${HOSTS_PEER[$h]:--}" >>"$STATE/hosts.new"
    done
    mv "$STATE/hosts.new" "$STATE/hosts"
}

cmd_up() {
    local topo=${1:-}; [ $# -gt 0 ] && shift
    [ -n "$topo" ] || die "usage: lab.sh up TOPOLOGY [options] (topologies: $TOPOLOGIES)"
    local ka=port-restricted kb=port-restricted kcgn='' same_lan='' upnp='' upnp_on=both stun='' losses=() rates=() delay=''
    local fa=v4 fb=v4
    case $topo in
        public) ka=none kb=none ;;
        full-cone|port-restricted|symmetric|udp-blocked|tcp443-only) ka=$topo kb=$topo ;;
        proxy-only) ka=proxy-only ;;
        same-lan) same_lan=1 ;;
        upnp) upnp=1 ;;
        pmp) upnp=pmp ;;
        double-nat) kcgn=port-restricted ;;
        dual-stack) fa=dual fb=dual ;;
        dual-stack-udp-blocked) ka=udp-blocked kb=udp-blocked fa=dual fb=dual ;;
        v6-v4) fa=v6 fb=v4 ;;
        nat) ;;
        *) die "unknown topology '$topo' (topologies: $TOPOLOGIES)" ;;
    esac
    while [ $# -gt 0 ]; do
        case $1 in
            --a) ka=${2:?--a needs a KIND}; shift ;;
            --b) kb=${2:?--b needs a KIND}; shift ;;
            --cgn) kcgn=${2:?--cgn needs a KIND}; shift ;;
            --same-lan) same_lan=1 ;;
            --upnp) upnp=1 ;;
            --pmp) upnp=pmp ;;
            --upnp-on) upnp_on=${2:?--upnp-on needs a, b or both}; shift ;;
            --stun) stun=1 ;;
            --loss) losses+=("${2:?--loss needs HOST:PERCENT[:DIR]}"); shift ;;
            --rate) rates+=("${2:?--rate needs HOST:RATE}"); shift ;;
            --delay) delay=${2:?--delay needs RTT_MS}; shift ;;
            --family-a) fa=${2:?--family-a needs dual, v4 or v6}; shift ;;
            --family-b) fb=${2:?--family-b needs dual, v4 or v6}; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option '$1' for up" ;;
        esac
        shift
    done
    local k
    for k in "$ka" "$kb" ${kcgn:+"$kcgn"}; do
        [[ " $KINDS " == *" $k "* ]] || die "unknown NAT kind '$k' (kinds: $KINDS)"
    done
    case $upnp_on in
        a|b|both) ;;
        *) die "--upnp-on takes a, b or both, not '$upnp_on'" ;;
    esac
    for k in "$fa" "$fb"; do
        [[ " $FAMILIES " == *" $k "* ]] || die "unknown address family '$k' (families: $FAMILIES)"
    done
    declare -gA FAMILY=([a]=$fa [b]=$fb)
    V6_HOSTS=''
    if [ "$fa" != v4 ] || [ "$fb" != v4 ]; then
        [ -z "$kcgn" ] || die "IPv6 (--family-a/--family-b) does not combine with --cgn"
        [ -z "$same_lan" ] || die "IPv6 (--family-a/--family-b) does not combine with --same-lan"
        V6_HOSTS="inet server"
        [ "$fa" != v4 ] && V6_HOSTS+=" nat-a a"
        [ "$fb" != v4 ] && V6_HOSTS+=" nat-b b"
    fi
    [ -n "$upnp" ] && stun=1
    local upnp_mode=upnp
    [ "$upnp" = pmp ] && upnp_mode=pmp
    if [ -n "$same_lan" ]; then kb=$ka; fi

    need_root
    ensure_tools
    lock
    do_down
    mkdir -p "$STATE"/{pids,logs,knobs,conf}
    : >"$STATE/namespaces"
    # From here a failure (die, or a failing command under set -e) leaves a
    # half-built lab: tear it down on the way out.
    trap 'say "lab.sh up failed; tearing down"; do_down' EXIT

    declare -gA HOSTS_ROLE=() HOSTS_KIND=() HOSTS_UPLINK=() HOSTS_ADDRS=() HOSTS_PEER=()
    HOST_ORDER=()

    # inet and server
    add_host inet router none
    add_host server host none
    link inet to-server server eth0
    addr_add inet to-server 203.0.113.1/24
    addr_add server eth0 203.0.113.10/24
    addr_add server eth0 203.0.113.11/24
    route_add server default via 203.0.113.1
    record inet - 203.0.113.1 -       # more addresses are appended as links are added
    record server eth0 203.0.113.10,203.0.113.11 "inet:to-server"

    # nat-a, either on inet directly or behind cgn
    add_host nat-a router "$ka"
    local a_wan
    if [ -n "$kcgn" ]; then
        add_host cgn router "$kcgn"
        link inet to-cgn cgn wan
        addr_add inet to-cgn 198.51.100.33/28
        HOSTS_ADDRS[inet]+=,198.51.100.33
        link cgn lan nat-a wan
        setup_router cgn "$kcgn" 198.51.100.34/28 198.51.100.33 100.64.1.1/24
        record cgn wan 198.51.100.34 "inet:to-cgn"
        [ "$kcgn" = none ] && route_add inet 100.64.1.0/24 via 198.51.100.34
        a_wan=100.64.1.2; local a_gw=100.64.1.1 a_wan_len=24 a_peer="cgn:lan"
    else
        link inet to-nat-a nat-a wan
        addr_add inet to-nat-a 198.51.100.1/28
        HOSTS_ADDRS[inet]+=,198.51.100.1
        a_wan=198.51.100.2; local a_gw=198.51.100.1 a_wan_len=28 a_peer="inet:to-nat-a"
    fi
    bridge nat-a lan
    local a_lan_net a_lan_gw a_ip
    if [ "$ka" = none ]; then
        a_lan_net=198.51.100.64/28 a_lan_gw=198.51.100.65 a_ip=198.51.100.66
        if [ -n "$kcgn" ]; then
            route_add cgn 198.51.100.64/28 via "$a_wan"
            [ "$kcgn" = none ] && route_add inet 198.51.100.64/28 via 198.51.100.34
        else
            route_add inet 198.51.100.64/28 via "$a_wan"
        fi
    else
        a_lan_net=10.0.1.0/24 a_lan_gw=10.0.1.1 a_ip=10.0.1.10
    fi
    setup_router nat-a "$ka" "$a_wan/$a_wan_len" "$a_gw" "$a_lan_gw/${a_lan_net#*/}"
    record nat-a wan "$a_wan" "$a_peer"

    add_host a host none
    link nat-a lan-a a eth0
    enslave nat-a lan-a lan
    addr_add a eth0 "$a_ip/${a_lan_net#*/}"
    route_add a default via "$a_lan_gw"
    record a eth0 "$a_ip" "nat-a:lan-a"

    # b: on nat-a's LAN (same-lan) or behind its own nat-b
    if [ -n "$same_lan" ]; then
        local b_ip=${a_ip%.*}.$(( ${a_ip##*.} + 1 ))
        add_host b host none
        link nat-a lan-b b eth0
        enslave nat-a lan-b lan
        addr_add b eth0 "$b_ip/${a_lan_net#*/}"
        route_add b default via "$a_lan_gw"
        record b eth0 "$b_ip" "nat-a:lan-b"
    else
        add_host nat-b router "$kb"
        link inet to-nat-b nat-b wan
        addr_add inet to-nat-b 198.51.100.17/28
        HOSTS_ADDRS[inet]+=,198.51.100.17
        bridge nat-b lan
        local b_lan_net b_lan_gw b_ip
        if [ "$kb" = none ]; then
            b_lan_net=198.51.100.80/28 b_lan_gw=198.51.100.81 b_ip=198.51.100.82
            route_add inet 198.51.100.80/28 via 198.51.100.18
        else
            b_lan_net=192.168.2.0/24 b_lan_gw=192.168.2.1 b_ip=192.168.2.10
        fi
        setup_router nat-b "$kb" 198.51.100.18/28 198.51.100.17 "$b_lan_gw/${b_lan_net#*/}"
        record nat-b wan 198.51.100.18 "inet:to-nat-b"
        add_host b host none
        link nat-b lan-b b eth0
        enslave nat-b lan-b lan
        addr_add b eth0 "$b_ip/${b_lan_net#*/}"
        route_add b default via "$b_lan_gw"
        record b eth0 "$b_ip" "nat-b:lan-b"
    fi

    [ -n "$V6_HOSTS" ] && setup_v6

    # rp_filter off on every interface (the "all" value is already 0)
    local h
    for h in "${HOST_ORDER[@]}"; do
        # shellcheck disable=SC2016  # $f expands in the namespace's shell
        nsx "$h" sh -c 'for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 >"$f"; done'
    done

    write_state
    {
        echo "TOPOLOGY=$topo"
        echo "KIND_A=$ka"
        echo "KIND_B=$([ -n "$same_lan" ] && echo same-lan-as-a || echo "$kb")"
        echo "KIND_CGN=${kcgn:-}"
        echo "SAME_LAN=${same_lan:-0}"
        echo "UPNP=${upnp:-0}"
        echo "UPNP_ON=$upnp_on"
        echo "FAMILY_A=$fa"
        echo "FAMILY_B=$fb"
    } >"$STATE/topology.new"

    # knobs
    local spec
    for spec in "${losses[@]}"; do
        IFS=: read -r h k d <<<"$spec"
        set_loss "$h" "$k" "${d:-both}"
    done
    for spec in "${rates[@]}"; do
        IFS=: read -r h k <<<"$spec"
        set_rate "$h" "$k"
    done
    [ -n "$delay" ] && set_delay "$delay"

    # daemons
    [ -n "$stun" ] && stun_start
    if [ -n "$upnp" ]; then
        local on=(nat-a nat-b)
        [ "$upnp_on" = a ] && on=(nat-a)
        [ "$upnp_on" = b ] && on=(nat-b)
        for h in "${on[@]}"; do
            host_exists "$h" && [ "${HOSTS_KIND[$h]}" != none ] && miniupnpd_start "$h" "$upnp_mode"
        done
    fi
    mv "$STATE/topology.new" "$STATE/topology"
    trap - EXIT
    say "lab up: $topo (nat-a: $ka, b: $(sed -n 's/^KIND_B=//p' "$STATE/topology")${kcgn:+, cgn: $kcgn}${upnp:+, miniupnpd ($upnp_mode, on $upnp_on)}${stun:+, stun on server}${V6_HOSTS:+, families a: $fa, b: $fb})"
}

# do_down [--force]: everything `up` made goes, in reverse order; bounded waits
do_down() {
    local force=${1:-} f n pid
    if [ -d "$STATE/pids" ]; then
        for f in "$STATE"/pids/*; do
            [ -f "$f" ] || continue
            case $f in *.pid) continue ;; esac      # daemons' own pid files
            stop_daemon "$(basename "$f")"
        done
    fi
    local nss=()
    [ -f "$STATE/namespaces" ] && mapfile -t nss <"$STATE/namespaces"
    if [ "$force" = --force ]; then
        mapfile -t -O "${#nss[@]}" nss < <(ip netns list | awk '{print $1}' | grep "^$PREFIX" || true)
    fi
    # whatever still runs inside a lab namespace was started through the lab (`exec`)
    local left=()
    for n in "${nss[@]}"; do
        [ -e "/run/netns/$n" ] || continue
        mapfile -t -O "${#left[@]}" left < <(ip netns pids "$n" 2>/dev/null || true)
    done
    if [ ${#left[@]} -gt 0 ]; then
        kill "${left[@]}" 2>/dev/null || true
        for _ in $(seq 1 30); do
            local alive=0
            for pid in "${left[@]}"; do [ -e "/proc/$pid" ] && alive=1; done
            [ $alive -eq 0 ] && break
            sleep 0.1
        done
        kill -9 "${left[@]}" 2>/dev/null || true
    fi
    for n in "${nss[@]}"; do
        [ -e "/run/netns/$n" ] && { ip netns delete "$n" 2>/dev/null || say "could not delete namespace $n"; }
        # the IPv6 labs' /etc/hosts of the namespace (setup_v6)
        case $n in "$PREFIX"*) rm -rf "/etc/netns/${n:?}" ;; esac
    done
    rm -rf "$STATE"
}

cmd_down() { need_root; lock; do_down "${1:-}"; }

# ---------------------------------------------------------------- status

cmd_status() {
    lab_is_up || { echo "no lab is up"; return 0; }
    echo "topology: $(sed -n 's/^TOPOLOGY=//p' "$STATE/topology")"
    sed -n 's/^\(KIND_A\|KIND_B\|KIND_CGN\|UPNP\|FAMILY_A\|FAMILY_B\)=\(..*\)$/  \1=\2/p' "$STATE/topology"
    printf '%-8s %-14s %-7s %-7s %-30s %s\n' HOST NAMESPACE ROLE UPLINK ADDRESSES "NAT/KNOBS"
    local name role kind up addrs peer extra
    while read -r name role kind up addrs peer; do
        extra=""
        [ "$role" = router ] && [ "$name" != inet ] && extra="nat=$kind lan=$(nsx "$name" ip -4 -o addr show dev lan 2>/dev/null | awk '{print $4}' | tr '\n' ' ')"
        [ -f "$STATE/knobs/$name.loss" ] && extra="$extra loss=$(awk '{print $1 "%/" $2}' "$STATE/knobs/$name.loss")"
        [ -f "$STATE/knobs/$name.rate" ] && extra="$extra rate=$(cat "$STATE/knobs/$name.rate")"
        [ -f "$STATE/knobs/$name.delay" ] && extra="$extra delay=$(cat "$STATE/knobs/$name.delay")ms-rtt"
        printf '%-8s %-14s %-7s %-7s %-30s %s\n' "$name" "$(ns "$name")" "$role" "$up" "$addrs" "$extra"
    done <"$STATE/hosts"
    local f d
    for f in "$STATE"/pids/*; do
        [ -f "$f" ] || continue
        d=$(basename "$f"); case $d in *.pid) continue ;; esac
        if daemon_alive "$d"; then echo "daemon $d: running (pid $(cut -d' ' -f1 "$f"), log $STATE/logs/$d.log)"
        else echo "daemon $d: DEAD (log $STATE/logs/$d.log)"; fi
    done
}

# ---------------------------------------------------------------- main

main() {
    local cmd=${1:-}; [ $# -gt 0 ] && shift
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        exec)
            local h=${1:?usage: lab.sh exec HOST [--] CMD...}; shift
            [ "${1:-}" = -- ] && shift
            [ $# -gt 0 ] || die "usage: lab.sh exec HOST [--] CMD..."
            host_exists "$h" || die "no host '$h' in the lab (is it up? hosts: $(cut -d' ' -f1 "$STATE/hosts" 2>/dev/null | tr '\n' ' '))"
            exec ip netns exec "$(ns "$h")" "$@" ;;
        addr) addr_of "${1:?usage: lab.sh addr HOST [N|--all]}" "${2:-1}" ;;
        ns) host_field "${1:?usage: lab.sh ns HOST}" 1 >/dev/null; ns "$1"; echo ;;
        hosts) host_field inet 1 >/dev/null; cut -d' ' -f1 "$STATE/hosts" ;;
        status) cmd_status ;;
        set)
            need_root; lab_is_up || die "no lab is up"; lock
            case ${1:-} in
                loss) set_loss "${2:?usage: lab.sh set loss HOST PERCENT [in|out|both]}" "${3:?percent}" "${4:-both}" ;;
                rate) set_rate "${2:?usage: lab.sh set rate HOST RATE|off}" "${3:?rate}" ;;
                delay) set_delay "${2:?usage: lab.sh set delay RTT_MS|off}" ;;
                *) die "usage: lab.sh set loss|rate HOST VALUE, or lab.sh set delay RTT_MS|off" ;;
            esac ;;
        stun)
            need_root; lab_is_up || die "no lab is up"; lock
            case ${1:-} in start) stun_start ;; stop) stun_stop ;; *) die "usage: lab.sh stun start|stop" ;; esac ;;
        -h|--help|help) usage ;;
        "") usage >&2; exit 2 ;;
        *) die "unknown command '$cmd' (try lab.sh --help)" ;;
    esac
}

main "$@"
