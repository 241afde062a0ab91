#!/usr/bin/env bash
# IPv6 in the lab: real `ferry serve` on the server, reachable on both
# families (signalling on [::]:443, which takes IPv4 too; STUN with RFC
# 5780 on IPv4 and plain STUN on the server's IPv6 address; the relay on
# the signalling port), a sender on a and a receiver on b behind routers
# that NAT IPv4 and are stateful firewalls for IPv6 (scripts/lab.sh, the
# dual-stack topologies). Each case sends a random file and checks the
# bytes, the path and the address family of the path that won; `ferry nat`
# must report both families as they are.
#
#   scripts/e2e-ipv6.sh        as root; needs target/release/ferry (or FERRY=path)
#   E2E_ONLY=REGEX             run only the cases whose name matches (bash =~)
#   SIZE_MIB=N                 the file's size (default 16)
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

SIZE_MIB=${SIZE_MIB:-16}
SERVER_IP6=2001:db8:10::10
SERVER_ALT_IP6=2001:db8:10::11
# The name every namespace of an IPv6 lab resolves to both server addresses
SERVER_NAME=server.test:443
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$E2E_WORK/payload.bin"
TABLE=()
NAT_HUMAN=()

tag() { printf '%s' "${CASE//[^a-zA-Z0-9]/_}"; }

# start_server_both: ferry serve on both families
start_server_both() {
    local out
    out="$E2E_WORK/server.$(tag).out"
    "$LAB" exec server -- "$FERRY" serve --json --listen "[::]:443" \
        --stun-listen "$SERVER_IP:3478" --stun-alt-ip "$SERVER_ALT_IP" \
        --stun-other-family-ip "$SERVER_IP6" --stun-other-family-alt-ip "$SERVER_ALT_IP6" \
        >"$out" 2>"$out.log" &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        grep -q '"listening"' "$out" 2>/dev/null && return 0
        sleep 0.05
    done
    fail "ferry serve did not start: $(tail -3 "$out.log")"
    return 1
}

# family ADDR: ipv6 for [..]:port, ipv4 for a.b.c.d:port
family() { case $1 in \[*) echo ipv6 ;; [0-9]*.*) echo ipv4 ;; *) echo "none($1)" ;; esac; }

final_path() {
    jq -rs "[.[] | select(.event == \"path\" or .event == \"moved\")] | last | $2" "$1"
}

# transfer CASE EXPECTED_PATH EXPECTED_FAMILY SERVER_A SERVER_B [UP ARGS...]
#   SERVER_A/B: what sender and receiver pass to --server
transfer() {
    CASE=$1
    local want=$2 want_family=$3 server_a=$4 server_b=$5
    shift 5
    if [ -n "${E2E_ONLY:-}" ] && ! [[ $CASE =~ $E2E_ONLY ]]; then return 0; fi
    echo "== $CASE: expect $want over $want_family"
    lab_up "$@" || return 0
    start_server_both || return 0
    local t out send_out recv_out
    t=$(tag)
    out="$E2E_WORK/out.$t" send_out="$E2E_WORK/send.$t.json" recv_out="$E2E_WORK/recv.$t.json"
    mkdir -p "$out"
    "$LAB" exec a -- "$FERRY" send --json --server "$server_a" "$E2E_WORK/payload.bin" \
        >"$send_out" 2>"$send_out.log" &
    local sender=$! code=''
    for _ in $(seq 1 200); do
        code=$(jq -r 'select(.event == "code") | .code' "$send_out" 2>/dev/null | head -n1)
        [ -n "$code" ] && break
        sleep 0.05
    done
    if [ -z "$code" ]; then
        fail "the sender printed no code: $(tail -3 "$send_out.log")"
        kill "$sender" 2>/dev/null || true
        return 0
    fi
    local recv_rc=0 send_rc=0
    timeout 120 "$LAB" exec b -- "$FERRY" receive --json --yes --server "$server_b" --out "$out" "$code" \
        >"$recv_out" 2>"$recv_out.log" || recv_rc=$?
    wait "$sender" || send_rc=$?
    expect "receiver exit code" 0 "$recv_rc"
    expect "sender exit code" 0 "$send_rc"
    if cmp -s "$E2E_WORK/payload.bin" "$out/payload.bin"; then
        pass "$SIZE_MIB MiB arrived intact"
    else
        fail "the received file differs (or is missing)"
    fi
    expect "path (receiver)" "$want" "$(final_path "$recv_out" .path)"
    expect "path (sender)" "$want" "$(final_path "$send_out" .path)"
    local remote_b remote_a
    remote_b=$(final_path "$recv_out" .remote)
    remote_a=$(final_path "$send_out" .remote)
    if [ "$want" = relay ]; then
        # Each side reaches the relay over its own family
        expect "receiver's relay family" "$WANT_FAMILY_B" "$(family "$remote_b")"
        expect "sender's relay family" "$WANT_FAMILY_A" "$(family "$remote_a")"
        # No family in common: known from the hellos, so the relay starts
        # at once (no head start for direct paths that cannot exist)
        local why="no address family in common (one side IPv4 only, the other IPv6 only)"
        expect "why the relay (receiver)" "$why" \
            "$(jq -r 'select(.event == "path") | .relay_reason' "$recv_out" | head -n1)"
        expect "why the relay (sender)" "$why" \
            "$(jq -r 'select(.event == "path") | .relay_reason' "$send_out" | head -n1)"
    else
        expect "receiver's peer address family ($remote_b)" "$want_family" "$(family "$remote_b")"
        expect "sender's peer address family ($remote_a)" "$want_family" "$(family "$remote_a")"
        if [ "$want_family" = ipv6 ]; then
            # The peer's own public address: no NAT on IPv6
            case $remote_b in "[2001:db8:a1::10]:"*) pass "receiver reached a's own address $remote_b" ;;
                *) fail "receiver's peer address: expected [2001:db8:a1::10]:..., seen $remote_b" ;; esac
            case $remote_a in "[2001:db8:b1::10]:"*) pass "sender reached b's own address $remote_a" ;;
                *) fail "sender's peer address: expected [2001:db8:b1::10]:..., seen $remote_a" ;; esac
        fi
    fi
    local connect rate
    connect=$(jq -r 'select(.event == "path") | .connect_secs' "$recv_out" | head -n1)
    rate=$(jq -r 'select(.event == "done") | .rate_bytes_per_sec / 1048576 | floor' "$recv_out" | head -n1)
    printf '          connected in %.2f s, %s MiB/s\n' "${connect:-0}" "${rate:-?}"
    TABLE+=("$(printf '%-46s %-22s %-6s %8.2f s' "$CASE" "$want" "$(family "$remote_b")" "${connect:-0}")")
}

# nat_run HOST SERVER: `ferry nat` on HOST, JSON and human (beside it, .txt);
# prints the JSON's path
nat_run() {
    local host=$1 server=$2 out
    out="$E2E_WORK/nat.$(tag).$host.json"
    timeout 60 "$LAB" exec "$host" -- "$FERRY" nat --json --server "$server" >"$out" 2>"$out.log" || true
    timeout 60 "$LAB" exec "$host" -- env NO_COLOR=1 "$FERRY" nat --server "$server" \
        >"${out%.json}.txt" 2>&1 || true
    echo "$out"
}

# nat_case CASE HOST V4_STATUS V6_STATUS [UP ARGS...]
nat_case() {
    CASE="ferry nat: $1 ($2)"
    local host=$2 v4=$3 v6=$4
    shift 4
    if [ -n "${E2E_ONLY:-}" ] && ! [[ $CASE =~ $E2E_ONLY ]]; then return 0; fi
    echo "== $CASE: expect IPv4 $v4, IPv6 $v6"
    lab_up "$@" || return 0
    start_server_both || return 0
    local r
    r=$(nat_run "$host" "$SERVER_NAME")
    NAT_HUMAN+=("== ferry nat --server $SERVER_NAME on $host in $1" "$(cat "${r%.json}.txt")")
    expect "IPv4 status" "$v4" "$(field "$r" .ipv4.status)"
    expect "IPv6 status" "$v6" "$(field "$r" .ipv6.status)"
    expect "IPv4 reachable" "$([ "$v4" = reachable ] && echo true || echo false)" "$(field "$r" .ipv4.reachable)"
    expect "IPv6 reachable" "$([ "$v6" = reachable ] && echo true || echo false)" "$(field "$r" .ipv6.reachable)"
    expect "rendezvous reachable" true "$(field "$r" .rendezvous.reachable)"
    if [ "$v6" = reachable ]; then
        # No NAT on IPv6: the server saw the host's own address
        expect "IPv6 mapped address is the host's own" "$(lab addr "$host" --all | grep : | head -n1)" \
            "$(field "$r" '.ipv6.mapped // "none" | sub("^\\[(?<a>[^]]*)\\]:.*"; "\(.a)")')"
        # No NAT, but a stateful firewall: answers only from where the
        # host sent to (RFC 5780 on the server's two IPv6 addresses)
        expect "IPv6 mapping, filtering (no NAT, stateful firewall)" "none address-and-port-dependent" \
            "$(field "$r" '"\(.ipv6.mapping) \(.ipv6.filtering)"')"
        expect "IPv6 STUN round trip measured" yes \
            "$(field "$r" 'if (.latency.stun_ipv6_ms | type) == "number" and .latency.stun_ipv6_ms > 0 then "yes" else "no" end')"
    fi
    # STUN over TCP asks over the rendezvous connection's family
    expect "STUN over TCP answered" null "$(field "$r" .tcp.error)"
    if [ "$v4" = reachable ]; then
        expect "IPv4 mapping (port-restricted NAT)" "endpoint-independent address-and-port-dependent" \
            "$(field "$r" '"\(.udp.mapping) \(.udp.filtering)"')"
    fi
}

# lab_case: the IPv6 lab itself is what the cases assume: addresses final
# at once (no DAD), the server on both families, the firewalls stateful
lab_case() {
    CASE="lab: dual-stack and v6-v4"
    if [ -n "${E2E_ONLY:-}" ] && ! [[ $CASE =~ $E2E_ONLY ]]; then return 0; fi
    echo "== $CASE"
    lab_up dual-stack || return 0
    local h tentative=0
    for h in $(lab hosts); do
        lab exec "$h" ip -6 addr show | grep -q tentative && tentative=$((tentative + 1))
    done
    expect "hosts with tentative (DAD) addresses" 0 "$tentative"
    expect "a reaches the server over IPv6" ok \
        "$(lab exec a ping -6 -c1 -W2 "$SERVER_IP6" >/dev/null 2>&1 && echo ok || echo fail)"
    expect "a reaches the server over IPv4" ok \
        "$(lab exec a ping -4 -c1 -W2 "$SERVER_IP" >/dev/null 2>&1 && echo ok || echo fail)"
    expect "b's firewall drops a new inbound ping from a" dropped \
        "$(lab exec a ping -6 -c1 -W1 2001:db8:b1::10 >/dev/null 2>&1 && echo answered || echo dropped)"
    expect "server.test resolves to both families" "2001:db8:10::10 203.0.113.10" \
        "$(lab exec a getent ahosts server.test | awk '$2 == "STREAM" {print $1}' | sort | xargs)"
    lab_up v6-v4 || return 0
    expect "the IPv6-only peer has no IPv4 address" "" \
        "$(lab exec a ip -4 -o addr show dev eth0 | awk '{print $4}')"
    expect "the IPv4-only peer has no IPv6 address" "" \
        "$(lab exec b ip -6 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
    expect "addr a (v6-only)" 2001:db8:a1::10 "$(lab addr a)"
}

# ---------------------------------------------------------------- cases

lab_case

# Both peers dual-stack, the server by name (both families): signalling,
# STUN and punching over IPv6, through both stateful firewalls.
transfer "dual-stack <-> dual-stack (by name)" quic ipv6 "$SERVER_NAME" "$SERVER_NAME" dual-stack
# The same with the server by its IPv4 address: each side knows its NATed
# IPv4 mapping (STUN over IPv4) and its public IPv6 address; the IPv6
# address ranks above the mapping and wins.
transfer "dual-stack <-> dual-stack (server by IPv4)" quic ipv6 "$SIGNAL" "$SIGNAL" dual-stack
# A dual-stack sender that reached the server over IPv6 (by name) and an
# IPv4-only receiver: the sender asks STUN over IPv4 too, so its NATed
# IPv4 mapping is a candidate and the punch meets over IPv4.
transfer "dual-stack <-> IPv4-only (by name)" quic ipv4 "$SERVER_NAME" "$SERVER_NAME" \
    dual-stack --family-b v4
# UDP blocked on both families: TCP simultaneous open over IPv6 through
# both firewalls (the signalling connections' ports).
transfer "dual-stack, UDP blocked (by name)" tcp-simultaneous-open ipv6 "$SERVER_NAME" "$SERVER_NAME" \
    dual-stack-udp-blocked
# No family in common: they meet at the relay, each over its own family.
WANT_FAMILY_A=ipv6 WANT_FAMILY_B=ipv4
transfer "IPv6-only <-> IPv4-only" relay - "$SERVER_NAME" "$SERVER_NAME" v6-v4

nat_case dual-stack a reachable reachable dual-stack
nat_case v6-v4 a no_route reachable v6-v4
nat_case v6-v4 b reachable no_route v6-v4

echo
echo "topology (both families) -> path, family, time to connect:"
for line in "${TABLE[@]}"; do echo "  $line"; done
if [ -n "${E2E_NAT_HUMAN:-}" ]; then
    echo
    printf '%s\n' "${NAT_HUMAN[@]}"
fi
summary
