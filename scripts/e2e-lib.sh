# Helpers for the lab end-to-end tests (scripts/e2e-*.sh). Source it.
# shellcheck shell=bash

E2E_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$E2E_HERE/common.sh"
LAB="$E2E_HERE/lab.sh"
FERRY=${FERRY:-$FERRY_ROOT/target/release/ferry}
SERVER_IP=203.0.113.10
SERVER_ALT_IP=203.0.113.11
SIGNAL="$SERVER_IP:443"

[ "$(id -u)" -eq 0 ] || die "the lab tests need root (network namespaces)"
[ -x "$FERRY" ] || die "no ferry binary at $FERRY: run cargo build --release -p ferry (scripts/test.sh does)"
command -v jq >/dev/null || apt_install jq

E2E_WORK=$(mktemp -d /tmp/ferry-e2e.XXXXXX)
PASSED=0
FAILED=0
FAILED_NAMES=()
e2e_cleanup() {
    local rc=$?
    "$LAB" down >/dev/null 2>&1 || true
    if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ] || [ -n "${E2E_KEEP:-}" ]; then
        echo "(logs kept in $E2E_WORK)" >&2
    else
        rm -rf "$E2E_WORK"
    fi
    exit "$rc"
}
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

lab() { "$LAB" "$@"; }

pass() { PASSED=$((PASSED + 1)); printf '  ok      %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); FAILED_NAMES+=("$CASE: $*"); printf '  FAILED  %s\n' "$*"; }
# wait_part PART MIN PID: waits (at most 60 s) until the part file PART
# holds MIN bytes, or PID ends; what it held last in HELD; fails unless MIN
wait_part() {
    local part=$1 min=$2 pid=$3
    HELD=0
    for _ in $(seq 1 600); do
        HELD=$(stat -c %s "$part" 2>/dev/null || echo 0)
        [ "$HELD" -ge "$min" ] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# wait_event JSON EVENT FIELD PID SECS: waits (at most SECS) until the
# JSON lines in JSON have an EVENT with FIELD, or PID ends; its value in
# EVENT_VALUE (empty when it never came); fails unless it came
wait_event() {
    local json=$1 event=$2 field=$3 pid=$4
    EVENT_VALUE=
    for _ in $(seq 1 $(($5 * 10))); do
        EVENT_VALUE=$(jq -r "select(.event == \"$event\") | .$field" "$json" 2>/dev/null | head -n1)
        [ -n "$EVENT_VALUE" ] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# expect WHAT EXPECTED SEEN
expect() { if [ "$2" = "$3" ]; then pass "$1: $3"; else fail "$1: expected '$2', seen '$3'"; fi; }

# summary: the closing line CI reads, and the exit code
summary() {
    echo
    if [ "$FAILED" -gt 0 ]; then
        printf 'failed: %s\n' "${FAILED_NAMES[@]}"
    fi
    echo "lab: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

# lab_up ARGS...: builds a topology (a case fails, not the script, if that breaks)
lab_up() {
    if ! lab up "$@" >"$E2E_WORK/up.log" 2>&1; then
        cat "$E2E_WORK/up.log" >&2
        fail "lab.sh up $* failed"
        return 1
    fi
}

# start_server [EXTRA ARGS]: ferry serve on the lab's server host, with RFC 5780
start_server() {
    local out="$E2E_WORK/server.${CASE//\//_}.out"
    # "$LAB" itself (not the lab function), so that $! is ferry serve: lab.sh
    # exec()s into it
    # SINGLE_IP=1: a server with one address (no RFC 5780), like most VPSs
    local alt=(--stun-alt-ip "$SERVER_ALT_IP")
    [ -n "${SINGLE_IP:-}" ] && alt=()
    "$LAB" exec server -- "$FERRY" serve --json --listen "$SIGNAL" \
        --stun-listen "$SERVER_IP:3478" "${alt[@]}" "$@" \
        >"$out" 2>"$E2E_WORK/server.${CASE//\//_}.log" &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        grep -q '"listening"' "$out" 2>/dev/null && return 0
        sleep 0.05
    done
    fail "ferry serve did not start: $(tail -3 "$E2E_WORK/server.${CASE//\//_}.log")"
    return 1
}

# start_send OUT ARGS...: `ferry send --json --server $SIGNAL ARGS...` on
# host a in the background, stdout to OUT (stderr to OUT.log); sets
# SENDER_PID and CODE. When no code shows within 10 s the case fails, the
# sender is stopped, and it returns 1.
start_send() {
    local out=$1
    shift
    "$LAB" exec a -- "$FERRY" send --json --server "$SIGNAL" "$@" >"$out" 2>"$out.log" &
    SENDER_PID=$!
    CODE=
    for _ in $(seq 1 200); do
        CODE=$(jq -r 'select(.event == "code") | .code' "$out" 2>/dev/null | head -n1)
        [ -n "$CODE" ] && return 0
        sleep 0.05
    done
    fail "the sender printed no code: $(tail -3 "$out.log")"
    kill "$SENDER_PID" 2>/dev/null || true
    return 1
}

# nat_json HOST: runs `ferry nat --json` on HOST; prints the report's path
nat_json() {
    local out="$E2E_WORK/nat.${CASE//\//_}.$1.json"
    timeout 60 "$LAB" exec "$1" -- "$FERRY" nat --json --server "$SIGNAL" "${@:2}" >"$out" 2>"$out.log" || true
    echo "$out"
}

# field FILE JQ: one field of a JSON report
field() { jq -r "$2" "$1" 2>/dev/null || echo "(no report)"; }

# stop_server: stops the ferry serve that start_server started (by PID)
stop_server() {
    if [ -n "${SERVER_PID:-}" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

# natdiscovery HOST [PORT]: coturn's RFC 5780 client against the lab server;
# prints "MAPPING FILTERING" in ferry's words
natdiscovery() {
    local out="$E2E_WORK/natdisc.${CASE//\//_}.$RANDOM"
    timeout 30 "$LAB" exec "$1" -- turnutils_natdiscovery -m -f -p "${2:-3478}" "$SERVER_IP" >"$out" 2>&1 || true
    printf '%s %s\n' \
        "$(behaviour_words "$(grep -oE 'NAT with [A-Za-z ]+ Mapping' "$out" | head -n1)")" \
        "$(behaviour_words "$(grep -oE 'NAT with [A-Za-z ]+ Filtering' "$out" | head -n1)")"
}
behaviour_words() {
    case $1 in
        *"Endpoint Independent"*) echo endpoint-independent ;;
        *"Address and Port Dependent"*) echo address-and-port-dependent ;;
        *"Address Dependent"*) echo address-dependent ;;
        "") echo none ;;
        *) echo "other($1)" ;;
    esac
}

# classic_stun HOST: the RFC 3489 `stun` client's verdict line against the lab server
classic_stun() {
    { timeout 30 "$LAB" exec "$1" -- stun "$SERVER_IP" 2>&1 || true; } | sed -nE 's/^Primary: (.*)$/\1/p' | head -n1 | sed 's/[[:space:]]*$//'
}
