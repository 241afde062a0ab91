#!/usr/bin/env bash
# Proves that scripts/lab.sh builds what it claims: for each topology it brings
# the lab up, measures the NATs with real tools (coturn's RFC 5780
# turnutils_natdiscovery against coturn's turnserver on `server`, nc, ping,
# upnpc, conntrack), compares with the expected behaviour, and tears it down.
#
#   scripts/lab-selftest.sh                 every topology (about a minute)
#   scripts/lab-selftest.sh TOPOLOGY...     only these (names as in lab.sh, plus
#                                           "mixed" and "knobs")
#
# Prints one line per check (ok / MISMATCH with expected and seen), then a table
# topology -> observed mapping / filtering. Exits 1 on any mismatch. Needs root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"
LAB="$HERE/lab.sh"
ALL="public full-cone port-restricted symmetric udp-blocked tcp443-only same-lan upnp double-nat mixed knobs"

[ "$(id -u)" -eq 0 ] || die "the lab self-test needs root"
lab() { "$LAB" "$@"; }

WORK=$(mktemp -d /tmp/ferry-lab-selftest.XXXXXX)
cleanup() {
    local rc=$?
    lab down >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FAILS=0
TABLE=()
ok() { printf '  ok        %s\n' "$*"; }
mismatch() { printf '  MISMATCH  %s\n' "$*"; FAILS=$((FAILS + 1)); }
# expect WHAT EXPECTED SEEN
expect() {
    if [ "$2" = "$3" ]; then ok "$1: $3"; else mismatch "$1: expected '$2', seen '$3'"; fi
}

# ------------------------------------------------------------------ probes

SERVER_IP=203.0.113.10

# natdisc HOST: runs RFC 5780 mapping + filtering discovery from HOST; sets
# MAPPING (EIM|ADM|APDM|none), FILTERING (EIF|ADF|APDF|none), REFLEXIVE (ip:port|none)
natdisc() {
    local out="$WORK/natdisc.$1"
    timeout 20 "$LAB" exec "$1" turnutils_natdiscovery -m -f "$SERVER_IP" >"$out" 2>&1 || true
    MAPPING=$(short "$(grep -oE 'NAT with [A-Za-z ]+ Mapping' "$out" | head -n1)")
    FILTERING=$(short "$(grep -oE 'NAT with [A-Za-z ]+ Filtering' "$out" | head -n1)")
    REFLEXIVE=$(sed -nE 's/.*UDP reflexive addr: *([0-9.]+:[0-9]+).*/\1/p' "$out" | head -n1)
    REFLEXIVE=${REFLEXIVE:-none}
}
short() {
    case $1 in
        *"Endpoint Independent"*) echo "${1##* }" | sed 's/Mapping/EIM/; s/Filtering/EIF/' ;;
        *"Address and Port Dependent"*) echo "${1##* }" | sed 's/Mapping/APDM/; s/Filtering/APDF/' ;;
        *"Address Dependent"*) echo "${1##* }" | sed 's/Mapping/ADM/; s/Filtering/ADF/' ;;
        "") echo none ;;
        *) echo "?($1)" ;;
    esac
}

# wait_port HOST PROTO(u|t) PORT: until something listens there (max 3 s)
wait_port() {
    for _ in $(seq 1 30); do
        lab exec "$1" ss -H -n -l -"$2" "sport = :$3" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

# udp_arrives LISTENER PORT SENDER DST_IP DST_PORT: does one datagram from
# SENDER to DST_IP:DST_PORT reach a UDP listener on LISTENER:PORT? (yes|no)
udp_arrives() {
    local out="$WORK/udp.$RANDOM" pid tag="probe-$RANDOM"
    timeout 3 "$LAB" exec "$1" nc -u -l -W 1 "$2" >"$out" 2>/dev/null &
    pid=$!
    wait_port "$1" u "$2" || true
    echo "$tag" | lab exec "$3" nc -u -w1 "$4" "$5" >/dev/null 2>&1 || true
    wait "$pid" 2>/dev/null || true
    if grep -q "$tag" "$out"; then echo yes; else echo no; fi
}

# tcp_arrives LISTENER IP PORT SENDER [DST_IP]: a TCP listener on LISTENER's IP:PORT;
# does a connection with data from SENDER to DST_IP:PORT (default IP) get through? (yes|no)
tcp_arrives() {
    local out="$WORK/tcp.$RANDOM" pid tag="probe-$RANDOM"
    timeout 4 "$LAB" exec "$1" nc -l "$2" "$3" >"$out" 2>/dev/null &
    pid=$!
    wait_port "$1" t "$3" || true
    echo "$tag" | timeout 3 "$LAB" exec "$4" nc -w2 -N "${5:-$2}" "$3" >/dev/null 2>&1 || true
    wait "$pid" 2>/dev/null || true
    if grep -q "$tag" "$out"; then echo yes; else echo no; fi
}

# mapped_port NAT PEER_IP PEER_PORT: the public port NAT's conntrack gave PEER_IP:PEER_PORT
mapped_port() {
    lab exec "$1" conntrack -L -p udp --orig-src "$2" --sport "$3" 2>/dev/null \
        | sed -nE 's/.*dport=([0-9]+)( .*)?$/\1/p' | head -n1
}

# open_mapping PEER PORT: PEER sends one datagram from PORT to the server (port 9)
open_mapping() { echo x | lab exec "$1" nc -u -p "$2" -w1 "$SERVER_IP" 9 >/dev/null 2>&1 || true; }

# loss_pct HOST: packet loss (%) of 200 pings from HOST to the server
loss_pct() {
    lab exec "$1" ping -q -n -c 200 -i 0.01 -W 1 "$SERVER_IP" 2>/dev/null \
        | sed -nE 's/.* ([0-9.]+)% packet loss.*/\1/p' | cut -d. -f1
}

up() { lab up "$@" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; mismatch "lab.sh up $* failed"; return 1; }; }

# check_nat TOPO PEER EXP_MAPPING EXP_FILTERING: natdiscovery from PEER; adds a table row
check_nat() {
    natdisc "$2"
    expect "$2 mapping" "$3" "$MAPPING"
    expect "$2 filtering" "$4" "$FILTERING"
    TABLE+=("$(printf '%-16s %-5s %-10s %-10s %-10s %-10s %s' "$1" "$2" "$3" "$MAPPING" "$4" "$FILTERING" "$REFLEXIVE")")
}

# fullcone_probe PEER NAT PEER_IP PORT: PEER opens a mapping by sending to the
# server; can an unrelated outside host (inet) then reach the mapped port? (yes|no)
fullcone_probe() {
    local port
    open_mapping "$1" "$4"
    port=$(mapped_port "$2" "$3" "$4")
    [ -n "$port" ] || { echo "no-mapping"; return 0; }
    udp_arrives "$1" "$4" inet "$(lab addr "$2")" "$port"
}

# ------------------------------------------------------------------ topologies

t_public() {
    up public --stun || return 0
    check_nat public a EIM EIF
    expect "a's reflexive address is its own" "$(lab addr a)" "${REFLEXIVE%:*}"
    expect "b reaches a's public address directly (TCP)" yes "$(tcp_arrives a "$(lab addr a)" 7000 b)"
}

t_full_cone() {
    up full-cone --stun || return 0
    check_nat full-cone a EIM EIF
    expect "unrelated host reaches a's mapped port after a's first packet" yes "$(fullcone_probe a nat-a 10.0.1.10 46000)"
    check_nat full-cone b EIM EIF
}

t_port_restricted() {
    up port-restricted --stun || return 0
    check_nat port-restricted a EIM APDF
    expect "unrelated host reaches a's mapped port" no "$(fullcone_probe a nat-a 10.0.1.10 46000)"
    open_mapping a 46100
    expect "mapping keeps the source port" 46100 "$(mapped_port nat-a 10.0.1.10 46100)"
}

t_symmetric() {
    up symmetric --stun || return 0
    check_nat symmetric a APDM APDF
}

t_udp_blocked() {
    up udp-blocked --stun || return 0
    local s e
    s=$(date +%s)
    natdisc a
    e=$(date +%s)
    expect "UDP from a blocked (no STUN answer, gave up in $((e - s)) s)" none "$REFLEXIVE"
    TABLE+=("$(printf '%-16s %-5s %-10s %-10s %-10s %-10s %s' udp-blocked a none "$MAPPING" none "$FILTERING" "$REFLEXIVE (UDP blocked)")")
    expect "TCP from a still works (server:80)" yes "$(tcp_arrives server "$SERVER_IP" 80 a)"
}

t_tcp443_only() {
    up tcp443-only --stun || return 0
    natdisc a
    expect "UDP from a blocked" none "$REFLEXIVE"
    TABLE+=("$(printf '%-16s %-5s %-10s %-10s %-10s %-10s %s' tcp443-only a none "$MAPPING" none "$FILTERING" "$REFLEXIVE (only TCP 443 out)")")
    expect "a -> server:443 (TCP)" yes "$(tcp_arrives server "$SERVER_IP" 443 a)"
    expect "a -> server:80 (TCP)" no "$(tcp_arrives server "$SERVER_IP" 80 a)"
    expect "b -> server:443 (TCP)" yes "$(tcp_arrives server "$SERVER_IP" 443 b)"
}

t_same_lan() {
    up same-lan --stun || return 0
    check_nat same-lan a EIM APDF
    expect "b is on a's LAN" 10.0.1.11 "$(lab addr b)"
    expect "a -> b private address (TCP)" yes "$(tcp_arrives b 10.0.1.11 7000 a)"
    expect "b -> a private address (UDP)" yes "$(udp_arrives a 7001 b 10.0.1.10 7001)"
    local port
    open_mapping b 47000
    port=$(mapped_port nat-a 10.0.1.11 47000)
    expect "no hairpinning: a -> nat-a public:$port (b's mapping)" no "$(udp_arrives b 47000 a "$(lab addr nat-a)" "${port:-47000}")"
}

t_upnp() {
    up upnp || return 0
    check_nat upnp a EIM APDF
    local wan out
    wan=$(lab addr nat-a)
    expect "before UPnP: server -> $wan:40000 reaches a" no "$(udp_arrives a 40000 server "$wan" 40000)"
    out=$(timeout 15 "$LAB" exec a upnpc -i -e ferry-selftest -a 10.0.1.10 40000 40000 UDP 2>&1 || true)
    if grep -q "is redirected to internal 10.0.1.10:40000" <<<"$out"; then ok "upnpc -a from a: $(grep -o 'external .*' <<<"$out")"
    else mismatch "upnpc -a from a: expected a mapping, seen: $(tail -n 3 <<<"$out" | tr '\n' ' ')"; fi
    out=$(timeout 15 "$LAB" exec a upnpc -i -l 2>&1 || true)
    if grep -qE 'UDP +40000->10\.0\.1\.10:40000' <<<"$out"; then ok "upnpc -l lists the mapping"
    else mismatch "upnpc -l: expected UDP 40000->10.0.1.10:40000, seen: $(grep -E '^ *[0-9]+ ' <<<"$out" | tr '\n' ' ')"; fi
    expect "after UPnP: server -> $wan:40000 reaches a" yes "$(udp_arrives a 40000 server "$wan" 40000)"
    expect "after UPnP: inet -> $wan:40000 reaches a" yes "$(udp_arrives a 40000 inet "$wan" 40000)"
    out=$(timeout 15 "$LAB" exec b upnpc -i -e ferry-selftest -a 192.168.2.10 40010 40010 TCP 2>&1 || true)
    if grep -q "is redirected to internal" <<<"$out"; then ok "upnpc -a from b (TCP)"
    else mismatch "upnpc -a from b (TCP): expected a mapping, seen: $(tail -n 2 <<<"$out" | tr '\n' ' ')"; fi
    expect "after UPnP: server -> nat-b:40010 (TCP) reaches b" yes "$(tcp_arrives b 192.168.2.10 40010 server "$(lab addr nat-b)")"
}

t_double_nat() {
    up double-nat --stun || return 0
    check_nat double-nat a EIM APDF
    expect "a's mapped address is cgn's public IP" "$(lab addr cgn)" "${REFLEXIVE%:*}"
    expect "nat-a's WAN is in 100.64.0.0/10" 100.64 "$(lab addr nat-a | cut -d. -f1-2)"
    check_nat double-nat b EIM APDF
    expect "b's mapped address is nat-b's WAN" "$(lab addr nat-b)" "${REFLEXIVE%:*}"
}

t_mixed() {
    up nat --a port-restricted --b symmetric --stun || return 0
    check_nat "nat pr/sym" a EIM APDF
    check_nat "nat pr/sym" b APDM APDF
    up nat --a full-cone --b none --stun || return 0
    check_nat "nat fc/none" a EIM EIF
    check_nat "nat fc/none" b EIM EIF
    expect "b (kind none) has a public address" 198.51.100.82 "${REFLEXIVE%:*}"
}

t_knobs() {
    up port-restricted --loss nat-a:20:out || return 0
    local l
    l=$(loss_pct a)
    if [ -n "$l" ] && [ "$l" -ge 10 ] && [ "$l" -le 30 ]; then ok "loss nat-a 20% out: ping lost $l%"
    else mismatch "loss nat-a 20% out: expected 10..30% ping loss, seen ${l:-?}%"; fi
    lab set loss nat-a 20 both
    l=$(loss_pct a)
    if [ -n "$l" ] && [ "$l" -ge 24 ] && [ "$l" -le 50 ]; then ok "loss nat-a 20% both: ping lost $l% (expected ~36%)"
    else mismatch "loss nat-a 20% both: expected 24..50% ping loss (1-0.8^2), seen ${l:-?}%"; fi
    lab set loss nat-a 0
    expect "loss removed: ping loss" 0 "$(loss_pct a)"
    lab set rate a 8mbit
    timeout 15 "$LAB" exec server nc -l "$SERVER_IP" 5001 >/dev/null 2>&1 &
    local pid=$! s e ms
    wait_port server t 5001 || true
    s=$(date +%s%N)
    head -c 2000000 /dev/zero | timeout 12 "$LAB" exec a nc -N "$SERVER_IP" 5001 || true
    e=$(date +%s%N)
    wait "$pid" 2>/dev/null || true
    ms=$(((e - s) / 1000000))
    # 2 MB at 8 Mbit/s is 2 s
    if [ "$ms" -ge 1500 ] && [ "$ms" -le 4000 ]; then ok "rate a 8mbit: 2 MB took $ms ms (expected ~2000)"
    else mismatch "rate a 8mbit: expected 2 MB in 1500..4000 ms, seen $ms ms"; fi
    lab set rate a off
}

# ------------------------------------------------------------------ main

topos=("$@")
[ ${#topos[@]} -gt 0 ] || read -r -a topos <<<"$ALL"
start=$(date +%s)
for t in "${topos[@]}"; do
    [[ " $ALL " == *" $t "* ]] || die "unknown topology '$t' (known: $ALL)"
    say "topology $t"
    "t_${t//-/_}"
    lab down >/dev/null 2>&1
done

echo
printf '%-16s %-5s %-10s %-10s %-10s %-10s %s\n' TOPOLOGY PEER MAP-WANT MAP-SEEN FILT-WANT FILT-SEEN "REFLEXIVE (seen)"
for row in "${TABLE[@]}"; do echo "$row"; done
echo
echo "EIM/ADM/APDM: endpoint-independent / address-dependent / address-and-port-dependent mapping; EIF/ADF/APDF: the same for filtering."
echo "took $(( $(date +%s) - start )) s"
if [ "$FAILS" -gt 0 ]; then
    echo "lab self-test: $FAILS MISMATCH(es)" >&2
    exit 1
fi
echo "lab self-test: all checks passed"
