#!/usr/bin/env bash
# Stage 4 in the lab: transfers that survive a broken path. A sender on
# peer a and a receiver on peer b move a 64 MiB random file at 8 MiB/s
# (--limit-rate), and halfway through the path is broken for real:
#   - the NATs' state is flushed (conntrack -F on both routers), which
#     breaks a TCP path (the lab routers do not adopt mid-stream TCP);
#   - the same on a QUIC path (the NATs re-create the same mapping from
#     the next packet, so QUIC may ride it out without reconnecting);
#   - the server (rendezvous and relay) is killed and restarted 2 s later
#     in the middle of a relayed transfer;
#   - nothing passes the sender's NAT for 20 s in the middle of a QUIC
#     transfer (both sides give the path up after 15 s of silence);
#   - the server is killed for good in the middle of a direct transfer
#     (which needs it no more: no reconnect, same path to the end);
#   - the server restarts while the sender waits for its receiver (the
#     sender reconnects, holds its nameplate again, the code still works).
# Each case checks: both sides exit 0, the bytes are intact, the path on
# both sides, and for the breaking cases that both sides said they
# reconnected and that the receiver resumed (bytes_resumed > 0).
#
#   scripts/e2e-resilience.sh    as root; needs target/release/ferry (or FERRY=path)
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

SIZE_MIB=${SIZE_MIB:-64}
RATE=${RATE:-8M}
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$E2E_WORK/payload.bin"

# flush_nats: what a router reboot does to the flows through it
flush_nats() {
    lab exec nat-a -- conntrack -F >/dev/null 2>&1
    lab exec nat-b -- conntrack -F >/dev/null 2>&1
}

# link_down: nothing passes nat-a for 20 s (longer than the 15 s after
# which both sides call a silent path dead), then all is as before
link_down() {
    printf '%s\n' 'table inet labcut {' '  chain f {' \
        '    type filter hook forward priority -300; policy drop;' '  }' '}' \
        | "$LAB" exec nat-a -- nft -f - || return 1
    sleep 20
    lab exec nat-a -- nft delete table inet labcut
}

# restart_server: kills ferry serve with SIGKILL (every relayed flow
# breaks at once; SIGTERM would let relayed pairs drain for a few seconds)
# and starts it again on the same address 2 s later
restart_server() {
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    sleep 2
    start_server
}

# kill_server: kills ferry serve for good (SIGKILL)
kill_server() {
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# survive CASE PATH BREAK MUST_RECONNECT [UP ARGS...]
#   BREAK: flush_nats | restart_server, run once the receiver holds a third
#   MUST_RECONNECT: yes (both sides must reconnect and resume) | maybe |
#     no (neither side may reconnect: the path never broke)
survive() {
    CASE=$1
    local want=$2 break_with=$3 must=$4
    shift 4
    echo "== $CASE: expect $want, broken by $break_with"
    lab_up "$@" || return 0
    start_server || return 0
    local tag out send_out recv_out
    tag=${CASE//[^a-zA-Z0-9]/_}
    out="$E2E_WORK/out.$tag"
    send_out="$E2E_WORK/send.$tag.json"
    recv_out="$E2E_WORK/recv.$tag.json"
    mkdir -p "$out"
    start_send "$send_out" --limit-rate "$RATE" "$E2E_WORK/payload.bin" || return 0
    local sender=$SENDER_PID code=$CODE
    timeout 300 "$LAB" exec b -- "$FERRY" receive --json --yes --server "$SIGNAL" --out "$out" "$code" \
        >"$recv_out" 2>"$recv_out.log" &
    local receiver=$! part="$out/payload.bin.ferry-part"
    # Once a third has arrived, break the path.
    if wait_part "$part" $((SIZE_MIB * 1024 * 1024 / 3)) "$receiver"; then
        echo "          breaking the path at $((HELD / 1048576)) MiB"
        "$break_with" || fail "$break_with failed"
    else
        fail "the transfer never got a third of the way (held $HELD bytes)"
    fi
    local recv_rc=0 send_rc=0
    wait "$receiver" || recv_rc=$?
    wait "$sender" || send_rc=$?
    expect "receiver exit code" 0 "$recv_rc"
    expect "sender exit code" 0 "$send_rc"
    if cmp -s "$E2E_WORK/payload.bin" "$out/payload.bin"; then
        pass "$SIZE_MIB MiB arrived intact"
    else
        fail "the received file differs (or is missing)"
    fi
    expect "no part file left" false "$([ -e "$part" ] && echo true || echo false)"
    expect "first path (receiver)" "$want" "$(jq -r 'select(.event == "path") | .path' "$recv_out" | head -n1)"
    expect "first path (sender)" "$want" "$(jq -r 'select(.event == "path") | .path' "$send_out" | head -n1)"
    local recv_mended send_mended resumed after paths
    recv_mended=$(jq -s '[.[] | select(.event == "reconnected")] | length' "$recv_out")
    send_mended=$(jq -s '[.[] | select(.event == "reconnected")] | length' "$send_out")
    resumed=$(jq -r 'select(.event == "done") | .bytes_resumed' "$recv_out" | head -n1)
    after=$(jq -r 'select(.event == "reconnected") | .after_secs' "$recv_out" | head -n1)
    paths=$(jq -r 'select(.event == "path") | .path' "$recv_out" | paste -sd' ')
    if [ "$must" = yes ]; then
        expect "receiver reconnected" 1 "$recv_mended"
        expect "sender reconnected" 1 "$send_mended"
        if [ "${resumed:-0}" -gt 0 ] 2>/dev/null; then
            pass "resumed from $((resumed / 1048576)) MiB already verified"
        else
            fail "nothing resumed (bytes_resumed=$resumed)"
        fi
        printf '          paths: %s; reconnected after %.1f s\n' "$paths" "${after:-0}"
        TABLE+=("$(printf '%-40s %-28s %6.1f s  resumed %3s MiB' "$CASE" "$paths" "${after:-0}" "$((${resumed:-0} / 1048576))")")
    elif [ "$must" = no ]; then
        expect "receiver reconnected" 0 "$recv_mended"
        expect "sender reconnected" 0 "$send_mended"
        expect "paths (receiver)" "$want" "$paths"
        TABLE+=("$(printf '%-40s %-28s reconnects: %s' "$CASE" "$paths" "$recv_mended")")
    else
        printf '          paths: %s; reconnected %s time(s)\n' "$paths" "$recv_mended"
        TABLE+=("$(printf '%-40s %-28s reconnects: %s' "$CASE" "$paths" "$recv_mended")")
    fi
    stop_server
}

# waiting_sender CASE [UP ARGS...]: the server restarts while the sender
# waits for its receiver; the receiver comes once the sender holds its
# nameplate again, with the code it was given before the restart
waiting_sender() {
    CASE=$1
    shift
    echo "== $CASE"
    lab_up "$@" || return 0
    start_server || return 0
    local out="$E2E_WORK/out.waiting" send_out="$E2E_WORK/send.waiting.json" recv_out="$E2E_WORK/recv.waiting.json"
    mkdir -p "$out"
    head -c 1048576 /dev/urandom >"$E2E_WORK/small.bin"
    start_send "$send_out" "$E2E_WORK/small.bin" || return 0
    local sender=$SENDER_PID code=$CODE back=
    restart_server || fail "restart_server failed"
    wait_event "$send_out" server-back after_secs "$sender" 20 || true
    back=$EVENT_VALUE
    if [ -n "$back" ]; then
        pass "the sender reached the server again after $(printf '%.1f' "$back") s"
    else
        fail "the sender never said it reached the server again: $(tail -3 "$send_out.log")"
    fi
    local recv_rc=0 send_rc=0
    timeout 120 "$LAB" exec b -- "$FERRY" receive --json --yes --server "$SIGNAL" --out "$out" "$code" \
        >"$recv_out" 2>"$recv_out.log" || recv_rc=$?
    wait "$sender" || send_rc=$?
    expect "receiver exit code" 0 "$recv_rc"
    expect "sender exit code" 0 "$send_rc"
    if cmp -s "$E2E_WORK/small.bin" "$out/small.bin"; then
        pass "1 MiB arrived intact with the code from before the restart"
    else
        fail "the received file differs (or is missing)"
    fi
    local lost
    lost=$(jq -s '[.[] | select(.event == "server-lost")] | length' "$send_out")
    if [ "$lost" -ge 1 ]; then pass "the sender said it lost the server ($lost tries)"; else fail "no server-lost event"; fi
    TABLE+=("$(printf '%-40s %-28s back after %.1f s, %s tries' "$CASE" "$(jq -r 'select(.event == "path") | .path' "$recv_out" | head -n1)" "${back:-0}" "$lost")")
    stop_server
}

TABLE=()
survive "TCP path, both NATs flushed halfway" tcp-simultaneous-open flush_nats yes udp-blocked
survive "QUIC path, both NATs flushed halfway" quic flush_nats maybe port-restricted
survive "relay killed and restarted halfway" relay restart_server yes symmetric
survive "QUIC path, sender's link down for 20 s" quic link_down yes port-restricted
survive "TCP path, server killed halfway" tcp-simultaneous-open kill_server no udp-blocked
waiting_sender "server restarted while the sender waits" port-restricted

echo
printf '%-40s %-28s %s\n' "case" "paths (receiver)" "break"
printf '%s\n' "${TABLE[@]}"
summary
