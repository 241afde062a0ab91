#!/usr/bin/env bash
# Stage 2 in the lab: in each topology, `ferry nat --json` run on a peer
# must report the behaviour the topology really has; coturn's RFC 5780
# natdiscovery must say the same of `ferry serve` as of coturn; ferry's
# STUN client must read the right mapped address from coturn and stund.
#
#   scripts/e2e-nat.sh      as root; needs target/release/ferry (or FERRY=path)
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

# nat_case TOPOLOGY HOST MAPPING FILTERING VERDICT [UP ARGS...]
nat_case() {
    CASE="$1/$2"
    local topo=$1 host=$2 mapping=$3 filtering=$4 verdict=$5
    shift 5
    REPORT=/dev/null
    echo "== ferry nat in $topo, from $host"
    lab_up "$topo" "$@" || return 0
    if [ "$topo" = upnp ]; then lab stun stop >/dev/null; fi
    start_server || return 0
    local r
    r=$(nat_json "$host")
    expect "mapping" "$mapping" "$(field "$r" .udp.mapping)"
    expect "filtering" "$filtering" "$(field "$r" .udp.filtering)"
    expect "verdict" "$verdict" "$(field "$r" .verdict.code)"
    expect "rendezvous reachable" true "$(field "$r" .rendezvous.reachable)"
    REPORT=$r
}

nat_case public a none endpoint-independent open
expect "mapped address" "198.51.100.66" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"

nat_case full-cone a endpoint-independent endpoint-independent direct
expect "mapped address" "198.51.100.2" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"

nat_case port-restricted a endpoint-independent address-and-port-dependent direct
expect "UDP port preserved" true "$(field "$REPORT" .udp.port_preserved)"
expect "TCP port preserved" true "$(field "$REPORT" .tcp.port_preserved)"
expect "a's interface class" private "$(field "$REPORT" '.interfaces[] | select(.addr == "10.0.1.10") | .class')"

nat_case symmetric b address-and-port-dependent address-and-port-dependent relay
expect "mapped address" "198.51.100.18" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"

nat_case udp-blocked a unknown unknown direct-tcp
expect "UDP blocked" true "$(field "$REPORT" .udp.blocked)"
expect "TCP mapped address" "198.51.100.2" "$(field "$REPORT" '.tcp.mapped | split(":")[0]')"

nat_case tcp443-only a unknown unknown relay
expect "UDP blocked" true "$(field "$REPORT" .udp.blocked)"
expect "rendezvous seen from" "198.51.100.2" "$(field "$REPORT" '.rendezvous.observed | split(":")[0]')"

nat_case same-lan b endpoint-independent address-and-port-dependent direct
expect "b's private address" private "$(field "$REPORT" '.interfaces[] | select(.addr == "10.0.1.11") | .class')"

nat_case double-nat a endpoint-independent address-and-port-dependent direct
expect "mapped by the outer NAT" "198.51.100.34" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"

nat_case upnp a endpoint-independent address-and-port-dependent direct
expect "UPnP gateway found" true "$(field "$REPORT" '.upnp.gateway != null')"
expect "UPnP external address" 198.51.100.2 "$(field "$REPORT" .upnp.external_ip)"
expect "UPnP test mapping" mapped "$(field "$REPORT" .upnp.test_mapping.status)"
expect "no UPnP in other topologies" true "$(field "$E2E_WORK/nat.double-nat_a.a.json" '.upnp.gateway == null')"

# compare_case TOPOLOGY "MAPPING FILTERING" PORT_KEPT: real STUN clients agree about ferry serve and coturn,
# and ferry's client reads coturn and stund right.
compare_case() {
    CASE="compare/$1"
    echo "== real STUN peers in $1: ferry serve against coturn and stund"
    lab_up "$1" || return 0
    start_server || return 0
    local ours_disc ours_classic theirs_disc theirs_classic r pid
    ours_disc=$(natdiscovery a)
    ours_classic=$(classic_stun a)
    stop_server
    lab stun start >/dev/null
    theirs_disc=$(natdiscovery a)
    theirs_classic=$(classic_stun a)
    expect "turnutils_natdiscovery on ferry serve" "$2" "$ours_disc"
    expect "turnutils_natdiscovery on ferry = on coturn" "$theirs_disc" "$ours_disc"
    expect "RFC 3489 stun client on ferry = on coturn" "$theirs_classic" "$ours_classic"
    # ferry's own client against coturn: coturn does RFC 5780 too.
    r=$(nat_json a)
    expect "ferry nat against coturn: mapping filtering" "$theirs_disc" \
        "$(field "$r" '.udp.mapping + " " + .udp.filtering')"
    expect "ferry nat against coturn: mapped address" 198.51.100.2 "$(field "$r" '.udp.mapped | split(":")[0]')"
    lab stun stop >/dev/null
    # ... and against the classic stund (RFC 3489: MAPPED-ADDRESS only).
    lab exec server -- stund -h "$SERVER_IP" -a "$SERVER_ALT_IP" >/dev/null 2>&1 &
    pid=$!
    sleep 0.3
    r=$(nat_json a)
    expect "ferry nat against stund: mapped address" 198.51.100.2 "$(field "$r" '.udp.mapped | split(":")[0]')"
    expect "ferry nat against stund: port kept" "$3" "$(field "$r" .udp.port_preserved)"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
compare_case port-restricted "endpoint-independent address-and-port-dependent" true
compare_case full-cone "endpoint-independent endpoint-independent" true
compare_case symmetric "address-and-port-dependent address-and-port-dependent" false

summary
