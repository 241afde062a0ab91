#!/usr/bin/env bash
# Stage 2 in the lab: in each topology, `ferry nat --json` run on a peer
# must report the behaviour the topology really has; coturn's RFC 5780
# natdiscovery must say the same of `ferry serve` as of coturn; ferry's
# STUN client must read the right mapped address from coturn and stund.
# Also the netcheck-style fields: hairpinning (the lab's Linux NATs do not
# hairpin: a packet from the LAN to the router's own WAN address is
# dropped), the port-mapping protocols found (miniupnpd speaks UPnP IGD,
# NAT-PMP and PCP; with --pmp only the last two), IPv6 (off in the lab:
# reported as not there), round trips, the TCP mapping across two server
# ports (masquerade keeps it; fully-random does not), the verdict per
# peer kind.
#
#   scripts/e2e-nat.sh      as root; needs target/release/ferry (or FERRY=path)
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

# positive FILE JQ: "yes" when the field is a number above zero
positive() { field "$1" "if ($2 | type) == \"number\" and $2 > 0 then \"yes\" else \"no: \" + ($2 | tostring) end"; }

# nat_case TOPOLOGY HOST MAPPING FILTERING VERDICT HAIRPIN [UP ARGS...]
# HAIRPIN: true, false, or null (no UDP mapping to test)
nat_case() {
    CASE="$1/$2"
    local topo=$1 host=$2 mapping=$3 filtering=$4 verdict=$5 hairpin=$6
    shift 6
    REPORT=/dev/null
    echo "== ferry nat in $topo, from $host"
    lab_up "$topo" "$@" || return 0
    if [ "$topo" = upnp ] || [ "$topo" = pmp ]; then lab stun stop >/dev/null; fi
    start_server || return 0
    local r
    r=$(nat_json "$host")
    expect "mapping" "$mapping" "$(field "$r" .udp.mapping)"
    expect "filtering" "$filtering" "$(field "$r" .udp.filtering)"
    expect "verdict" "$verdict" "$(field "$r" .verdict.code)"
    expect "rendezvous reachable" true "$(field "$r" .rendezvous.reachable)"
    expect "hairpinning" "$hairpin" "$(field "$r" .ipv4.hairpinning)"
    expect "IPv4 reachable = UDP answered" "$(field "$r" '.udp.mapped != null')" "$(field "$r" .ipv4.reachable)"
    # The lab has no IPv6 (off in every namespace) and the server no AAAA.
    expect "IPv6 reported absent" "false no_global_address" "$(field "$r" '"\(.ipv6.reachable) \(.ipv6.status)"')"
    expect "rendezvous TCP round trip measured" yes "$(positive "$r" .latency.rendezvous_tcp_ms)"
    expect "relay TCP round trip measured" yes "$(positive "$r" .latency.relay_tcp_ms)"
    expect "relay is the server's address" "$SIGNAL" "$(field "$r" .latency.relay)"
    if [ "$hairpin" != null ]; then
        expect "STUN round trip measured" yes "$(positive "$r" .ipv4.stun_rtt_ms)"
    fi
    for kind in no_nat cone symmetric udp_blocked; do
        expect "a sentence for a $kind peer" true "$(field "$r" ".verdict.peers.$kind.text | length > 10")"
    done
    if [ "$topo" != upnp ] && [ "$topo" != pmp ]; then
        expect "no port-mapping protocol found" "false false false" "$(field "$r" '"\(.portmap.upnp) \(.portmap.nat_pmp) \(.portmap.pcp)"')"
    fi
    REPORT=$r
}

nat_case public a none endpoint-independent open true
expect "mapped address" "198.51.100.66" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"
expect "TCP mapping the same towards two ports" false "$(field "$REPORT" .tcp.mapping_varies_by_dest_port)"

nat_case full-cone a endpoint-independent endpoint-independent direct false
expect "mapped address" "198.51.100.2" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"

nat_case port-restricted a endpoint-independent address-and-port-dependent direct false
expect "UDP port preserved" true "$(field "$REPORT" .udp.port_preserved)"
expect "TCP port preserved" true "$(field "$REPORT" .tcp.port_preserved)"
expect "TCP mapping the same towards two ports (masquerade)" false "$(field "$REPORT" .tcp.mapping_varies_by_dest_port)"
expect "a's interface class" private "$(field "$REPORT" '.interfaces[] | select(.addr == "10.0.1.10") | .class')"
expect "with a symmetric peer: direct (port spraying)" direct "$(field "$REPORT" .verdict.peers.symmetric.code)"
expect "with a cone peer: direct" direct "$(field "$REPORT" .verdict.peers.cone.code)"

# A symmetric NAT is direct overall: port spraying with cone peers; the
# relay only with other symmetric ones.
nat_case symmetric b address-and-port-dependent address-and-port-dependent direct false
expect "mapped address" "198.51.100.18" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"
expect "with a cone peer: direct" direct "$(field "$REPORT" .verdict.peers.cone.code)"
expect "with a cone peer: by port spraying" true "$(field "$REPORT" '.verdict.peers.cone.text | contains("port spraying")')"
expect "with a symmetric peer: relay" relay "$(field "$REPORT" .verdict.peers.symmetric.code)"
expect "TCP mapping varies by destination port (fully-random)" true "$(field "$REPORT" .tcp.mapping_varies_by_dest_port)"

nat_case udp-blocked a unknown unknown direct-tcp null
expect "UDP blocked" true "$(field "$REPORT" .udp.blocked)"
expect "IPv4 UDP: no answer" no_answer "$(field "$REPORT" .ipv4.status)"
expect "TCP mapped address" "198.51.100.2" "$(field "$REPORT" '.tcp.mapped | split(":")[0]')"

nat_case tcp443-only a unknown unknown relay null
expect "UDP blocked" true "$(field "$REPORT" .udp.blocked)"
expect "rendezvous seen from" "198.51.100.2" "$(field "$REPORT" '.rendezvous.observed | split(":")[0]')"
expect "TCP mapping comparison: not possible (STUN over TCP blocked)" null "$(field "$REPORT" .tcp.mapping_varies_by_dest_port)"

nat_case same-lan b endpoint-independent address-and-port-dependent direct false
expect "b's private address" private "$(field "$REPORT" '.interfaces[] | select(.addr == "10.0.1.11") | .class')"

nat_case double-nat a endpoint-independent address-and-port-dependent direct false
expect "mapped by the outer NAT" "198.51.100.34" "$(field "$REPORT" '.udp.mapped | split(":")[0]')"

nat_case upnp a endpoint-independent address-and-port-dependent direct false
expect "UPnP gateway found" true "$(field "$REPORT" '.upnp.gateway != null')"
expect "UPnP external address" 198.51.100.2 "$(field "$REPORT" .upnp.external_ip)"
expect "UPnP test mapping" mapped "$(field "$REPORT" .upnp.test_mapping.status)"
expect "no UPnP in other topologies" true "$(field "$E2E_WORK/nat.double-nat_a.a.json" '.upnp.gateway == null')"
expect "port mapping found: UPnP NAT-PMP PCP" "true true true" "$(field "$REPORT" '"\(.portmap.upnp) \(.portmap.nat_pmp) \(.portmap.pcp)"')"
expect "port mapping gateway" 10.0.1.1 "$(field "$REPORT" .portmap.gateway)"

nat_case pmp a endpoint-independent address-and-port-dependent direct false
expect "port mapping found: NAT-PMP and PCP, no UPnP" "false true true" "$(field "$REPORT" '"\(.portmap.upnp) \(.portmap.nat_pmp) \(.portmap.pcp)"')"
expect "PCP/NAT-PMP test mapping" true "$(field "$REPORT" '.pmp.external != null')"

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
    # The classic client tests hairpinning too: ferry's check must agree.
    local hairpin=true
    case $theirs_classic in *"no hairpin"*) hairpin=false ;; esac
    expect "hairpinning: ferry nat = RFC 3489 stun client ($theirs_classic)" "$hairpin" "$(field "$r" .ipv4.hairpinning)"
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
