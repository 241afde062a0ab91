#!/usr/bin/env bash
# The relay's one-time tokens in the lab: a real `ferry serve` on the lab's
# public server (203.0.113.10:443, tokens valid TTL seconds), a genuine
# relayed pair between peers a and b behind symmetric NATs moving a paced
# SIZE_MIB pattern, and, while it moves, clients presenting
#   - a bogus token (32 random bytes; from `inet`, a host that never signalled),
#   - a reused token (each genuine side presents its own token once more,
#     from a and from b, after the pair joined),
#   - an expired token (from a: a fresh nameplate's token, presented TTL + 1 s
#     after it was issued).
# Each must be refused with relay-refused and the right reason; the genuine
# pair's bytes must all arrive intact; the server's log must count exactly
# these refusals and one joined pair.
#
#   scripts/e2e-relay-tokens.sh   as root; needs target/release/ferry and
#                                 target/release/examples/relay_probe
#                                 (or FERRY=path, RELAY_PROBE=path)
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

PROBE=${RELAY_PROBE:-$(dirname "$FERRY")/examples/relay_probe}
[ -x "$PROBE" ] || die "no relay_probe at $PROBE: run cargo build -p ferry-tests --example relay_probe (scripts/test.sh does)"
TTL=3
SIZE_MIB=${SIZE_MIB:-32}
# The genuine pair's data is spread over this long, so that every attack
# (the expired one takes TTL + 1 s) lands while it moves.
PACE_SECS=${PACE_SECS:-12}

# wait_event FILE EVENT: waits (at most 20 s) until FILE has a JSON line of that event
wait_event() {
    for _ in $(seq 1 400); do
        grep -q "\"event\":\"$2\"" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# event FILE EVENT JQ: a field of the first such event, "(none)" without one
event() {
    local v
    v=$(jq -r "select(.event == \"$2\") | $3" "$1" 2>/dev/null | head -n1)
    echo "${v:-(none)}"
}

# check_refusal LABEL FILE KIND WORDS: the probe's refusal event says relay-refused and WORDS
check_refusal() {
    local label=$1 file=$2 kind=$3 words=$4
    local outcome code message
    outcome=$(jq -r "select(.event == \"refusal\" and .kind == \"$kind\") | .outcome" "$file" 2>/dev/null | head -n1)
    code=$(jq -r "select(.event == \"refusal\" and .kind == \"$kind\") | .code" "$file" 2>/dev/null | head -n1)
    message=$(jq -r "select(.event == \"refusal\" and .kind == \"$kind\") | .message" "$file" 2>/dev/null | head -n1)
    expect "$label: outcome" refused "${outcome:-(none)}"
    expect "$label: error code" relay-refused "${code:-(none)}"
    case $message in
        *"$words"*) pass "$label: message says \"$words\"" ;;
        *) fail "$label: message should say \"$words\", it says: ${message:-(none)}" ;;
    esac
}

# refusals REFUSAL: how many relay connections the server's log says it refused for that reason
refusals() {
    grep -c "relay connection refused.*refusal=$1" "$SERVER_LOG" || true
}

# refused_from REFUSAL: the sorted peer addresses the server refused for that reason
refused_from() {
    grep "relay connection refused.*refusal=$1" "$SERVER_LOG" | sed -nE 's/.* peer=([0-9.]+):[0-9]+ .*/\1/p' \
        | sort | paste -sd' '
}

tokens_case() {
    CASE="relay tokens, symmetric <-> symmetric"
    echo "== $CASE"
    lab_up symmetric || return 0
    # Refusals are logged at debug level: the server's own record of them.
    RUST_LOG=ferry_relay=debug,ferry=info NO_COLOR=1 start_server --relay-token-ttl "$TTL" || return 0
    SERVER_LOG="$E2E_WORK/server.${CASE//\//_}.log"
    local w=$E2E_WORK
    # The genuine pair: a sends, b receives; each presents its token again once joined.
    timeout 120 "$LAB" exec a -- "$PROBE" send --server "$SIGNAL" --mib "$SIZE_MIB" --secs "$PACE_SECS" --reuse \
        >"$w/send.json" 2>"$w/send.log" &
    local sender=$! receiver nameplate
    if ! wait_event "$w/send.json" nameplate; then
        fail "the sender got no nameplate: $(tail -3 "$w/send.log")"
        kill "$sender" 2>/dev/null || true
        wait "$sender" 2>/dev/null || true
        return 0
    fi
    nameplate=$(event "$w/send.json" nameplate .nameplate)
    timeout 120 "$LAB" exec b -- "$PROBE" recv --server "$SIGNAL" --nameplate "$nameplate" --mib "$SIZE_MIB" --reuse \
        >"$w/recv.json" 2>"$w/recv.log" &
    receiver=$!
    if wait_event "$w/send.json" joined && wait_event "$w/recv.json" joined; then
        pass "the genuine pair joined through the relay"
    else
        fail "the genuine pair did not join: $(tail -2 "$w/send.log") $(tail -2 "$w/recv.log")"
    fi

    # The attacks, while the pair moves its data.
    local bogus_rc=0 expired_rc=0 bogus expired
    timeout 30 "$LAB" exec inet -- "$PROBE" bogus --server "$SIGNAL" >"$w/bogus.json" 2>"$w/bogus.log" &
    bogus=$!
    timeout 60 "$LAB" exec a -- "$PROBE" expired --server "$SIGNAL" --after $((TTL + 1)) \
        >"$w/expired.json" 2>"$w/expired.log" &
    expired=$!
    wait "$bogus" || bogus_rc=$?
    wait "$expired" || expired_rc=$?
    if grep -q '"event":"done"' "$w/recv.json"; then
        fail "the pair finished before the attacks did (raise PACE_SECS)"
    else
        pass "all attacks ran while the pair was moving data"
    fi

    local send_rc=0 recv_rc=0
    wait "$receiver" || recv_rc=$?
    wait "$sender" || send_rc=$?

    expect "bogus probe exit code (0: refused)" 0 "$bogus_rc"
    check_refusal "bogus token from inet" "$w/bogus.json" bogus "unknown relay token"
    expect "expired probe exit code (0: refused)" 0 "$expired_rc"
    check_refusal "expired token from a" "$w/expired.json" expired "expired"
    check_refusal "reused token from a" "$w/send.json" reused "already used"
    check_refusal "reused token from b" "$w/recv.json" reused "already used"

    expect "receiver exit code" 0 "$recv_rc"
    expect "sender exit code" 0 "$send_rc"
    expect "bytes received" $((SIZE_MIB * 1024 * 1024)) "$(event "$w/recv.json" "done" .bytes)"
    expect "every byte as sent" true "$(event "$w/recv.json" "done" .intact)"

    stop_server
    expect "server log: refused as unknown" 1 "$(refusals UnknownToken)"
    expect "server log: refused as reused" 2 "$(refusals Reused)"
    expect "server log: refused as expired" 1 "$(refusals Expired)"
    expect "server log: other refusals" 0 "$(grep -c 'relay connection refused' "$SERVER_LOG" | awk '{print $1 - 4}')"
    expect "server log: pairs joined" 1 "$(grep -c 'relay pair joined; copying' "$SERVER_LOG" || true)"
    # Each refusal was of the host that presented it (as the server saw it: its NAT's WAN).
    expect "server log: unknown token from inet" "$(lab addr inet)" "$(refused_from UnknownToken)"
    expect "server log: expired token from nat-a" "$(lab addr nat-a)" "$(refused_from Expired)"
    expect "server log: reused tokens from nat-a and nat-b" \
        "$(printf '%s\n' "$(lab addr nat-a)" "$(lab addr nat-b)" | sort | paste -sd' ')" \
        "$(refused_from Reused)"
    local rate
    rate=$(jq -r "select(.event == \"done\") | .bytes / 1048576 / .secs | floor" "$w/recv.json" 2>/dev/null | head -n1)
    printf '          genuine pair: %s MiB in %.1f s (paced over %s s), %s MiB/s\n' \
        "$SIZE_MIB" "$(event "$w/recv.json" "done" .secs)" "$PACE_SECS" "${rate:-?}"
}

tokens_case
summary
