#!/usr/bin/env bash
# Stage 3 in the lab: a real `ferry serve` on the lab's public server, a
# real sender on peer a and a real receiver on peer b, behind real
# nftables NATs. Each case sends a 64 MiB random file and checks the bytes
# and the path that won (or the clean error when no direct path exists).
#
#   scripts/e2e-paths.sh       as root; needs target/release/ferry (or FERRY=path)
#   E2E_ONLY=REGEX             run only the cases whose name matches (bash =~),
#                              e.g. E2E_ONLY='UPnP|NAT-PMP'
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

# curl scrapes the server's metrics in the case that moves to QUIC.
command -v curl >/dev/null || apt_install curl

SIZE_MIB=${SIZE_MIB:-64}
SEND_EXTRA=()
RECV_EXTRA=()
SERVER_EXTRA=()
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$E2E_WORK/payload.bin"

# transfer CASE EXPECTED_PATH|fail EXPECTED_REMOTE_PREFIX [UP ARGS...]
#   EXPECTED_PATH: lan|tcp|quic|tcp-simultaneous-open|relay, or "fail" (exit 4, no path)
transfer() {
    CASE=$1
    local want=$2 remote_prefix=$3
    shift 3
    if [ -n "${E2E_ONLY:-}" ] && ! [[ $CASE =~ $E2E_ONLY ]]; then return 0; fi
    echo "== $CASE: expect ${want}"
    lab_up "$@" || return 0
    # miniupnpd's STUN server is done once it runs: free UDP 3478 for ferry's
    case " $* " in *" upnp "*|*" pmp "*|*" --upnp "*|*" --pmp "*) lab stun stop >/dev/null ;; esac
    if [ -n "${SEPARATE_RELAY:-}" ]; then
        # `ferry relay` on the server's second address; the rendezvous
        # names it to the clients and signs their tokens for it.
        "$LAB" exec server -- "$FERRY" relay --listen "$SEPARATE_RELAY" \
            --relay-secret-file "$E2E_WORK/relay.secret" \
            >"$E2E_WORK/relay.out" 2>"$E2E_WORK/relay.log" &
        RELAY_PID=$!
    fi
    start_server "${SERVER_EXTRA[@]}" || return 0
    local tag out send_out recv_out
    tag=${CASE//[^a-zA-Z0-9]/_}
    out="$E2E_WORK/out.$tag"
    send_out="$E2E_WORK/send.$tag.json"
    recv_out="$E2E_WORK/recv.$tag.json"
    mkdir -p "$out"
    local started=$SECONDS server_rx0
    server_rx0=$(server_rx_bytes)
    [ -n "${WANT_MOVE:-}" ] && block_direct
    start_send "$send_out" "${SEND_EXTRA[@]}" "$E2E_WORK/payload.bin" || return 0
    local sender=$SENDER_PID code=$CODE
    local recv_rc=0 send_rc=0 unblocker=
    if [ -n "${WANT_MOVE:-}" ]; then
        unblock_udp_on_relay "$recv_out" &
        unblocker=$!
    fi
    timeout 120 "$LAB" exec b -- "$FERRY" receive --json --yes --server "$SIGNAL" --out "$out" "${RECV_EXTRA[@]}" "$code" \
        >"$recv_out" 2>"$recv_out.log" || recv_rc=$?
    wait "$sender" || send_rc=$?
    if [ -n "$unblocker" ]; then
        kill "$unblocker" 2>/dev/null || true
        wait "$unblocker" 2>/dev/null || true
        unblock_all
    fi
    local took=$((SECONDS - started))
    [ -n "${WANT_MAPPED_BY:-}" ] && check_mapped_by "$WANT_MAPPED_BY" "$send_out.log"
    [ -n "${WANT_RECV_MAPPED_BY:-}" ] && check_mapped_by "$WANT_RECV_MAPPED_BY" "$recv_out.log" receiver nat-b
    [ -n "${WANT_SPRAY:-}" ] && check_spray "$send_out" "$recv_out"
    if [ "$want" != relay ] && [ "$want" != fail ]; then
        check_server_carried "$server_rx0" "$recv_out"
    fi
    [ -n "${WANT_FOUND:-}" ] && check_found_by_mapping "$send_out" "$recv_out" $WANT_FOUND
    if [ "$want" = fail ]; then
        expect "receiver exit code" 4 "$recv_rc"
        expect "sender exit code" 4 "$send_rc"
        expect "error says there is no path" true \
            "$(jq -r 'select(.event == "error") | .message | contains("no direct path")' "$recv_out" | head -n1)"
        expect "nothing written" 0 "$(find "$out" -type f | wc -l)"
        return 0
    fi
    expect "receiver exit code" 0 "$recv_rc"
    expect "sender exit code" 0 "$send_rc"
    if cmp -s "$E2E_WORK/payload.bin" "$out/payload.bin"; then
        pass "$SIZE_MIB MiB arrived intact"
    else
        fail "the received file differs (or is missing)"
    fi
    # The path that carried the transfer to its end: the last path or
    # moved event (a transfer may start on the relay and move).
    expect "path (receiver)" "$want" "$(final_path "$recv_out" .path)"
    expect "path (sender)" "$want" "$(final_path "$send_out" .path)"
    case ${WANT_MOVE:-} in
        back) check_move "$send_out" "$recv_out" quic
              check_back_on_relay "$send_out" "$recv_out" ;;
        ?*) check_move "$send_out" "$recv_out" "$want" ;;
    esac
    [ -n "${WANT_OUTCOME:-}" ] && check_outcome "$WANT_OUTCOME"
    local remote
    remote=$(final_path "$recv_out" .remote)
    case $remote in
        "$remote_prefix"*) pass "receiver's peer address $remote" ;;
        *) fail "receiver's peer address: expected $remote_prefix..., seen $remote" ;;
    esac
    if [ "$want" = relay ]; then
        local reason
        reason=$(jq -r 'select(.event == "path") | .relay_reason' "$recv_out" | head -n1)
        if [ -n "${WANT_REASON:-}" ]; then
            expect "why the relay (receiver)" "$WANT_REASON" "$reason"
            expect "why the relay (sender)" "$WANT_REASON" \
                "$(jq -r 'select(.event == "path") | .relay_reason' "$send_out" | head -n1)"
        elif [ -n "$reason" ] && [ "$reason" != null ]; then
            pass "the relay's reason is given: $reason"
        else
            fail "no reason given for the relay"
        fi
    fi
    local connect rate
    connect=$(jq -r 'select(.event == "path") | .connect_secs' "$recv_out" | head -n1)
    local moved_to
    moved_to=$(jq -r 'select(.event == "moved") | .path' "$recv_out" | head -n1)
    if [ -n "$moved_to" ]; then
        printf '          started on the relay, moved to %s after %.2f s\n' "$moved_to" \
            "$(jq -r 'select(.event == "moved") | .after_secs' "$recv_out" | head -n1)"
    fi
    rate=$(jq -r 'select(.event == "done") | .rate_bytes_per_sec / 1048576 | floor' "$recv_out" | head -n1)
    printf '          connected in %.2f s, %s MiB/s, whole case %d s\n' "$connect" "$rate" "$took"
    TABLE+=("$(printf '%-34s %-22s %8.2f s %6s MiB/s' "$CASE" "$want" "$connect" "$rate")")
}

# check_outcome LABEL: the server (started with --metrics $METRICS) counted
# the pairing's path, as its clients reported it, under LABEL, and nothing
# else (one report per pairing); scraped with curl, at most 10 s
check_outcome() {
    local want=$1 text='' got=0 total=0
    for _ in $(seq 1 50); do
        text=$(lab exec server -- curl -s --max-time 2 "http://$METRICS/metrics" 2>/dev/null || true)
        got=$(awk -v s="ferry_path_outcomes_total{path=\"$want\"}" '$1 == s { v = $2 } END { printf "%d", v + 0 }' <<<"$text")
        [ "$got" -ge 1 ] && break
        sleep 0.2
    done
    total=$(awk '$1 ~ /^ferry_path_outcomes_total\{/ { t += $2 } END { printf "%d", t + 0 }' <<<"$text")
    expect "the server's ferry_path_outcomes_total{path=\"$want\"}" 1 "$got"
    expect "path outcomes the server counted in all" 1 "$total"
}

# The bytes the server host received so far (its one interface's counter)
server_rx_bytes() { lab exec server -- cat /sys/class/net/eth0/statistics/rx_bytes 2>/dev/null || echo 0; }

# check_server_carried RX_BEFORE RECV_JSON: on a direct path the server
# host did not carry the file: it received at most what went over the
# relay before a move (plus 10% and 2 MiB for TLS, signalling and STUN),
# by its own interface counter, not ferry's word
check_server_carried() {
    local before=$1 relayed carried limit
    relayed=$(jq -r 'select(.event == "moved") | .bytes_before' "$2" | head -n1)
    carried=$(( $(server_rx_bytes) - before ))
    limit=$(( ${relayed:-0} * 11 / 10 + 2 * 1024 * 1024 ))
    if [ "$carried" -le "$limit" ]; then
        pass "the server host received $carried bytes (at most $limit: ${relayed:-0} relayed before a move)"
    else
        fail "the server host received $carried bytes, more than $limit: the file went through it"
    fi
}

# final_path JSON FIELD: FIELD of the path the transfer ended on (the last
# `path` or `moved` event)
final_path() {
    jq -rs "[.[] | select(.event == \"path\" or .event == \"moved\")] | last | $2" "$1"
}

# The WANT_MOVE cases: direct traffic between the two NATs' WAN addresses
# is dropped in inet (UDP and TCP each in their own table) until the
# transfer runs on the relay; then UDP passes again, the punch still under
# way succeeds, and the transfer moves to QUIC. TCP stays blocked.
MOVE_A=198.51.100.2
MOVE_B=198.51.100.18
block_direct() {
    local proto
    for proto in ${1:-udp tcp}; do
        lab exec inet -- nft -f - <<EOF2
table ip e2e_block_$proto {
    chain forward {
        type filter hook forward priority -10; policy accept;
        ip saddr $MOVE_A ip daddr $MOVE_B meta l4proto $proto drop
        ip saddr $MOVE_B ip daddr $MOVE_A meta l4proto $proto drop
    }
}
EOF2
    done
}
unblock_all() {
    lab exec inet -- nft delete table ip e2e_block_udp 2>/dev/null || true
    lab exec inet -- nft delete table ip e2e_block_tcp 2>/dev/null || true
}
# unblock_udp_on_relay RECV_JSON: once the receiver's path event says
# relay (at most 30 s), UDP passes again; with WANT_MOVE=back, once it
# says it moved (at most 30 s more), UDP is dropped again
unblock_udp_on_relay() {
    local _
    for _ in $(seq 1 300); do
        if [ "$(jq -r 'select(.event == "path") | .path' "$1" 2>/dev/null | head -n1)" = relay ]; then
            sleep 0.5
            lab exec inet -- nft delete table ip e2e_block_udp 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    [ "${WANT_MOVE:-}" = back ] || return 0
    for _ in $(seq 1 300); do
        if [ -n "$(jq -r 'select(.event == "moved") | .path' "$1" 2>/dev/null | head -n1)" ]; then
            sleep 1
            block_direct udp
            return 0
        fi
        sleep 0.1
    done
}

# check_move SEND_JSON RECV_JSON WANT: both sides started on the relay and
# moved to WANT, with bytes over the relay first; done lists the move
check_move() {
    local send_json=$1 recv_json=$2 want=$3 json side
    for side in sender receiver; do
        json=$send_json
        [ "$side" = receiver ] && json=$recv_json
        expect "first path ($side)" relay "$(jq -r 'select(.event == "path") | .path' "$json" | head -n1)"
        expect "moved from ($side)" relay "$(jq -r 'select(.event == "moved") | .from' "$json" | head -n1)"
        expect "moved to ($side)" "$want" "$(jq -r 'select(.event == "moved") | .path' "$json" | head -n1)"
        expect "moves in done ($side)" 1 "$(jq -r 'select(.event == "done") | .moves | length' "$json" | head -n1)"
        local before after
        before=$(jq -r 'select(.event == "moved") | .bytes_before' "$json" | head -n1)
        after=$(jq -r 'select(.event == "moved") | .after_secs' "$json" | head -n1)
        if [ "${before:-0}" -gt 0 ] 2>/dev/null; then
            pass "$side: $before bytes over the relay, moved after ${after} s"
        else
            fail "$side: no bytes over the relay before the move ($before)"
        fi
    done
    # After a reconnect, what the link before it moved counts as resumed.
    [ "${WANT_MOVE:-}" = back ] && return 0
    expect "the receiver's bytes this run" $((SIZE_MIB * 1024 * 1024)) \
        "$(jq -r 'select(.event == "done") | .bytes_transferred' "$recv_json" | head -n1)"
}

# check_back_on_relay SEND_JSON RECV_JSON: the direct path the transfer
# moved to broke, and both sides reconnected onto the relay
check_back_on_relay() {
    local json side
    for side in sender receiver; do
        json=$1
        [ "$side" = receiver ] && json=$2
        expect "reconnected ($side)" 1 "$(jq -r 'select(.event == "reconnected")' "$json" | jq -s length)"
        expect "second path ($side)" relay "$(jq -r 'select(.event == "path") | .path' "$json" | sed -n 2p)"
    done
}

# check_found_by_mapping SEND_JSON RECV_JSON SENDER_SIDE RECEIVER_SIDE:
# both sides say a port mapping found the path, on the side given (ours:
# the peer connected to our mapping; peer: we connected to the peer's;
# any: either)
check_found_by_mapping() {
    local json side want seen
    for side in sender receiver; do
        if [ "$side" = sender ]; then json=$1 want=$3; else json=$2 want=$4; fi
        seen=$(final_path "$json" '"\(.found_by.method // "none") \(.found_by.side // "")"')
        case $want in
            any) expect "found by ($side)" port-mapping "${seen%% *}" ;;
            *) expect "found by ($side)" "port-mapping $want" "$seen" ;;
        esac
    done
}

# check_spray SEND_JSON RECV_JSON: both sides (run with -v) say port
# spraying found the peer, in the log and in the path event's found_by
check_spray() {
    local json side line
    for side in sender receiver; do
        json=$1
        shift
        line=$(sed -E 's/\x1b\[[0-9;]*m//g' "$json.log" | grep -oE "port spraying found the peer.*" | head -n1 || true)
        if [ -n "$line" ]; then
            pass "the $side: $(cut -c1-110 <<<"$line")"
        else
            fail "no 'port spraying found the peer' in the $side's log"
        fi
        expect "found by ($side)" spray "$(final_path "$json" '.found_by.method // "none"')"
    done
}

# check_mapped_by WHAT LOG [SIDE ROUTER]: SIDE's (default the sender's) TCP
# port mapping was made by WHAT (a regex: "PCP|NAT-PMP"), ROUTER's (default
# nat-a's) miniupnpd saw it, and it was deleted on exit
check_mapped_by() {
    local what=$1 log=$2 side=${3:-sender} router=${4:-nat-a} line
    line=$(sed -E 's/\x1b\[[0-9;]*m//g' "$log" | grep -oE "port mapped by ($what) .*protocol=TCP.*" | head -n1 || true)
    if [ -n "$line" ]; then
        pass "the $side's TCP mapping: $(cut -c1-110 <<<"$line")"
    else
        fail "no 'port mapped by $what ... protocol=TCP' in the $side's log"
    fi
    local mlog
    mlog=$(lab_state_dir)/logs/miniupnpd-$router.log
    local seen
    seen=$(grep -E "PCP request received|PCP MAP|NAT-PMP.*(request|mapping)" "$mlog" 2>/dev/null | head -n1 | cut -c1-110 || true)
    if [ -n "$seen" ]; then
        pass "miniupnpd on $router saw: $seen"
    else
        fail "miniupnpd on $router logged no PCP/NAT-PMP request ($mlog)"
    fi
    # The guard deletes the mappings when the $side is done.
    local chain rules
    if chain=$(lab exec "$router" -- nft list chain inet upnpnat prerouting_miniupnpd 2>&1); then
        rules=$(grep -c dnat <<<"$chain" || true)
    else
        rules="(cannot list miniupnpd's chain: $chain)"
    fi
    expect "mappings left on $router after the transfer" 0 "$rules"
}
lab_state_dir() { if [ -n "${FERRY_LAB_ID:-}" ]; then echo "/run/ferry-lab-$FERRY_LAB_ID"; else echo /run/ferry-lab; fi; }

TABLE=()
SERVER_EXTRA=()
SEND_EXTRA=()
transfer "public <-> public" tcp 198.51.100.66 nat --a none --b none
transfer "full-cone <-> full-cone" quic 198.51.100.2 full-cone
transfer "port-restricted <-> port-restricted" quic 198.51.100.2 port-restricted
transfer "port-restricted <-> full-cone" quic 198.51.100.2 nat --a port-restricted --b full-cone
transfer "same LAN behind one NAT" lan 10.0.1.10 same-lan
transfer "UDP blocked, port-preserving NATs" tcp-simultaneous-open 198.51.100.2 udp-blocked
WANT_FOUND="any any"
transfer "UPnP gateways" tcp 198.51.100.2 upnp
WANT_FOUND="ours peer"
# UPnP IGD off: the sender maps its TCP port by PCP (or NAT-PMP). Behind a
# NAT that lets only TCP 443 out (no UDP, no simultaneous open), with no
# relay, that mapping is the only way in. (miniupnpd refuses to map behind a
# symmetric NAT: its STUN check sees its own port change.)
SEND_EXTRA=(-v)
WANT_MAPPED_BY="PCP|NAT-PMP"
SERVER_EXTRA=(--no-relay)
transfer "NAT-PMP/PCP, sender 443-only, no relay" tcp 198.51.100.2 nat --a tcp443-only --b port-restricted --pmp
WANT_FOUND="peer ours"
SERVER_EXTRA=()
WANT_MAPPED_BY=
SEND_EXTRA=()
# Only the receiver's gateway maps: the receiver behind a NAT that lets only
# TCP 443 out (no UDP, no simultaneous open, no connect to the sender), the
# sender's NAT without UPnP, no relay: the one way is the sender connecting
# to the receiver's mapped TCP port.
SERVER_EXTRA=(--no-relay)
transfer "UPnP on the receiver's gateway only, receiver 443-only, no relay" tcp 198.51.100.2 \
    nat --a port-restricted --b tcp443-only --upnp --upnp-on b
RECV_EXTRA=(-v)
WANT_RECV_MAPPED_BY="PCP|NAT-PMP"
transfer "NAT-PMP/PCP on the receiver's gateway only, receiver 443-only, no relay" tcp 198.51.100.2 \
    nat --a port-restricted --b tcp443-only --pmp --upnp-on b
WANT_RECV_MAPPED_BY=
WANT_FOUND=
RECV_EXTRA=()
SERVER_EXTRA=()
transfer "double NAT (outer in 100.64/10)" quic 198.51.100.34 double-nat
transfer "port-restricted, 2% loss" quic 198.51.100.2 port-restricted --loss nat-a:2 --loss nat-b:2
# Both NAT reports rule out a direct path: the relay starts at once.
WANT_REASON="symmetric NAT on both sides"
transfer "symmetric <-> symmetric" relay "$SIGNAL" symmetric
# The same with a one-address server (no RFC 5780): the NATs' behaviour
# shows from the STUN answers of the server's two ports.
SINGLE_IP=1
transfer "symmetric <-> symmetric, one-IP server" relay "$SIGNAL" symmetric
SINGLE_IP=
WANT_REASON=
# One NAT maps a new random port per destination, the other filters by
# port: port spraying (256 sockets on the hard side, random probes from the
# easy one) finds a pair, in either direction.
# The relay starts at once beside the spray and the transfer moves to
# the sprayed path when it comes; rate-limited, so that the transfer is
# still running then (unlimited, the lab's relay moves 64 MiB in 0.3 s).
SEND_EXTRA=(-v --limit-rate 16M)
RECV_EXTRA=(-v)
WANT_SPRAY=1
transfer "port-restricted <-> symmetric (spraying)" quic 198.51.100.2 nat --a port-restricted --b symmetric
transfer "symmetric <-> port-restricted (spraying)" quic 198.51.100.2 nat --a symmetric --b port-restricted
transfer "full-cone <-> symmetric (spraying)" quic 198.51.100.2 nat --a full-cone --b symmetric
WANT_SPRAY=
RECV_EXTRA=()
# A punch that gets through only after the transfer started on the relay:
# the transfer moves to QUIC mid-stream. Rate-limited so that it is still
# running when the punch succeeds.
WANT_MOVE=1
SEND_EXTRA=(--limit-rate 8M)
# The clients tell the server the transfer moved: its metrics count it.
METRICS=127.0.0.1:9109
SERVER_EXTRA=(--metrics "$METRICS")
WANT_OUTCOME=moved_to_direct
transfer "relay first, then a late punch: moves to QUIC" quic 198.51.100.2 port-restricted
SERVER_EXTRA=()
WANT_OUTCOME=
# ... and when that punched path breaks (UDP dropped again, TCP still
# is), both sides notice within QUIC's idle timeout and reconnect: the
# relay carries the rest. Slower, so that the transfer outlasts the break.
WANT_MOVE=back
SEND_EXTRA=(--limit-rate 2M)
transfer "relay, moved to QUIC, QUIC breaks: back on the relay" relay "$SIGNAL" port-restricted
WANT_MOVE=
SEND_EXTRA=()
transfer "only TCP 443 out, both sides" relay "$SIGNAL" tcp443-only
transfer "UDP blocked, TCP only to 443" relay "$SIGNAL" nat --a tcp443-only --b udp-blocked
# The relay apart from the rendezvous (on the server's second address).
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$E2E_WORK/relay.secret"
SEPARATE_RELAY="$SERVER_ALT_IP:443"
SERVER_EXTRA=(--relay-url "$SEPARATE_RELAY" --relay-secret-file "$E2E_WORK/relay.secret")
WANT_REASON="symmetric NAT on both sides"
transfer "symmetric <-> symmetric, relay on another host" relay "$SEPARATE_RELAY" symmetric
WANT_REASON=
if [ -n "${RELAY_PID:-}" ]; then
    kill "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
fi
SEPARATE_RELAY=
SERVER_EXTRA=(--no-relay)
transfer "symmetric <-> symmetric, server without relay" fail "" symmetric

echo
printf '%-34s %-22s %10s %12s\n' "case" "path" "connect" "rate"
printf '%s\n' "${TABLE[@]}"
summary
