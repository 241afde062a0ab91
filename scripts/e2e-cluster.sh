#!/usr/bin/env bash
# Two `ferry serve` instances in one cluster, in the lab: edge-1 on the
# server's first address (203.0.113.10:443) and edge-2 on its second
# (203.0.113.11:443), both with their own STUN responder (RFC 5780, on
# different ports) and their own relay, sharing nameplates and mailboxes
# through a redis-server on the server's loopback (127.0.0.1:6379, nothing
# saved). The name ferry.lab resolves to both addresses in the peers'
# namespaces, in a different order in each (as round-robin DNS hands them
# out), so that a sender and a receiver using that one name reach different
# instances.
#   - port-restricted NATs on both sides: a sender on edge-1 and a receiver on
#     edge-2 (by the name), and the other way round (by address), pair across
#     the instances and go direct over QUIC; bytes compared, each instance's
#     metrics show whom it saw, neither relay carried anything
#   - a wrong code given on edge-2 burns the nameplate homed on edge-1: both
#     sides exit 3 with "the code did not match", nothing is written, and the
#     right code then finds no transfer on either instance
#   - edge-1 killed (SIGKILL) while a sender waits on it: the sender comes
#     back by the name through edge-2 and holds its nameplate again there
#     (taken over once edge-1's alive key expires), and its code still works;
#     edge-1, started again, joins the cluster again
#   - edge-1 stopped: both sides, by the name, end up on edge-2 and pair there
#   - symmetric NATs on both sides: the pair meets at the relay of the
#     sender's instance (edge-1), though the receiver came in through edge-2;
#     bytes compared, edge-1's relay carried them, edge-2's nothing
#   - symmetric NATs, edge-1 (the pair's home and relay) killed a third of the
#     way through a relayed transfer: both sides come back by the name through
#     edge-2, rejoin there and resume at edge-2's relay; bytes compared
#
#   scripts/e2e-cluster.sh     as root; needs target/release/ferry (or FERRY=path)
#   E2E_ONLY=REGEX             run only the cases whose name matches
#   FERRY_LAB_ID=X             in a lab of its own (scripts/lab.sh)
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

command -v redis-server >/dev/null || apt_install redis-server
command -v curl >/dev/null || apt_install curl

SIZE_MIB=${SIZE_MIB:-16}
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$E2E_WORK/payload.bin"
NAME=ferry.lab
EDGE1_IP=$SERVER_IP
EDGE2_IP=$SERVER_ALT_IP
REDIS_PORT=6379
CLUSTER_URL="redis://127.0.0.1:$REDIS_PORT/0"
# Each instance's metrics, on the server's loopback
declare -A METRICS_PORT=([edge-1]=9101 [edge-2]=9102)

REDIS_PID='' EDGE1_PID='' EDGE2_PID=''
HOSTS_DIRS=()

# stop_pid PID: stops a process this script started, at most 5 s, then KILL
stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_cluster() {
    stop_pid "$EDGE1_PID"
    stop_pid "$EDGE2_PID"
    stop_pid "$REDIS_PID"
    EDGE1_PID='' EDGE2_PID='' REDIS_PID=''
}

remove_hosts() {
    local d
    for d in "${HOSTS_DIRS[@]}"; do
        case $d in /etc/netns/?*) rm -rf "$d" ;; esac
    done
    HOSTS_DIRS=()
}

cluster_cleanup() {
    local rc=$?
    # Not under set -e: `(exit "$rc")` below would end this trap there,
    # before e2e_cleanup tears the lab down.
    set +e
    stop_cluster
    remove_hosts
    (exit "$rc")
    e2e_cleanup
}
trap cluster_cleanup EXIT

selected() { [ -z "${E2E_ONLY:-}" ] || [[ $1 =~ $E2E_ONLY ]]; }

# names HOST FIRST SECOND: HOST's namespace resolves $NAME to FIRST, then SECOND
names() {
    local d
    d="/etc/netns/$(lab ns "$1")"
    mkdir -p "$d"
    HOSTS_DIRS+=("$d")
    printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "$2" "$NAME" "$3" "$NAME" >"$d/hosts"
    expect "$NAME in $1 resolves to" "$2 $3" \
        "$(lab exec "$1" -- getent ahostsv4 "$NAME" | awk '$2 == "STREAM" {print $1}' | tr '\n' ' ' | sed 's/ $//')"
}

# start_redis: redis-server on the server's loopback, nothing saved
start_redis() {
    "$LAB" exec server -- redis-server --save '' --appendonly no --port "$REDIS_PORT" \
        --bind 127.0.0.1 --daemonize no >"$E2E_WORK/redis.${CASE//[^a-zA-Z0-9]/_}.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        if [ "$(lab exec server -- redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
            pass "redis-server answers on the server's 127.0.0.1:$REDIS_PORT"
            return 0
        fi
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.05
    done
    fail "redis-server did not start: $(tail -3 "$E2E_WORK/redis.${CASE//[^a-zA-Z0-9]/_}.log")"
    return 1
}

# start_edge NAME IP STUN_PORT STUN_SECOND_PORT ALT_IP: an instance of the
# cluster; sets EDGE1_PID or EDGE2_PID
start_edge() {
    local id=$1 ip=$2 port=$3 second=$4 alt_ip=$5 pid
    local out="$E2E_WORK/$id.${CASE//[^a-zA-Z0-9]/_}.out" log="$E2E_WORK/$id.${CASE//[^a-zA-Z0-9]/_}.log"
    "$LAB" exec server -- "$FERRY" serve --json --listen "$ip:443" \
        --stun-listen "$ip:$port" --stun-second-port "$second" --stun-alt-ip "$alt_ip" \
        --cluster "$CLUSTER_URL" --instance-id "$id" --metrics "127.0.0.1:${METRICS_PORT[$id]}" \
        >"$out" 2>"$log" &
    pid=$!
    if [ "$id" = edge-1 ]; then EDGE1_PID=$pid; else EDGE2_PID=$pid; fi
    for _ in $(seq 1 100); do
        if grep -q '"listening"' "$out" 2>/dev/null; then
            if grep -q 'joined the cluster' "$log"; then
                pass "$id listens on $ip:443 (STUN $ip:$port and $second) and joined the cluster"
                return 0
            fi
            fail "$id listens but did not say it joined the cluster: $(tail -3 "$log")"
            return 1
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    fail "$id did not start: $(tail -3 "$log")"
    return 1
}

# cluster_up TOPOLOGY: the lab, the names, redis and both instances
cluster_up() {
    stop_cluster
    remove_hosts
    lab_up "$1" || return 1
    names a "$EDGE1_IP" "$EDGE2_IP"
    names b "$EDGE2_IP" "$EDGE1_IP"
    start_redis || return 1
    start_edge edge-1 "$EDGE1_IP" 3478 3479 "$EDGE2_IP" || return 1
    start_edge edge-2 "$EDGE2_IP" 3480 3481 "$EDGE1_IP" || return 1
}

# metric INSTANCE NAME: one sample of that instance's metrics (0 when absent)
metric() {
    { lab exec server -- curl -s --max-time 5 "http://127.0.0.1:${METRICS_PORT[$1]}/metrics" 2>/dev/null || true; } \
        | awk -v n="$2" '$1 == n { v = $2 } END { printf "%d\n", v + 0 }'
}
SIGNALLING='ferry_signal_connections_total{kind="signalling"}'
RELAY_BYTES=ferry_relay_bytes_total
RELAY_PAIRS=ferry_relay_pairs_total
BURNT='ferry_nameplates_closed_total{reason="burnt"}'
declare -A BEFORE=()
snapshot() {
    local id m
    for id in edge-1 edge-2; do
        for m in "$SIGNALLING" "$RELAY_BYTES" "$RELAY_PAIRS" "$BURNT"; do
            BEFORE[$id.$m]=$(metric "$id" "$m")
        done
    done
}
delta() { echo $(( $(metric "$1" "$2") - ${BEFORE[$1.$2]} )); }

# at_least WHAT MIN SEEN
at_least() {
    if [ "$3" -ge "$2" ] 2>/dev/null; then pass "$1: $3"; else fail "$1: expected at least $2, seen '$3'"; fi
}

server_rx_bytes() { lab exec server -- cat /sys/class/net/eth0/statistics/rx_bytes 2>/dev/null || echo 0; }

# final_path JSON FIELD: FIELD of the path the transfer ended on
final_path() {
    jq -rs "[.[] | select(.event == \"path\" or .event == \"moved\")] | last | $2" "$1" 2>/dev/null
}

# event_field JSON EVENT FIELD: FIELD of the first such event
event_field() { jq -r "select(.event == \"$2\") | .$3" "$1" 2>/dev/null | head -n1; }

# wait_pid PID SECS: waits at most SECS for PID (killed after); its exit
# code in WAIT_RC (not in a $(...): a subshell cannot wait for our child)
wait_pid() {
    local pid=$1 n=$(($2 * 10))
    WAIT_RC=0
    for _ in $(seq 1 "$n"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" || WAIT_RC=$?
}

# begin SENDER_SERVER [SEND ARGS...]: starts the sender on a; sets SEND_OUT, SENDER, CODE
begin() {
    local tag=${CASE//[^a-zA-Z0-9]/_}
    OUT="$E2E_WORK/out.$tag" SEND_OUT="$E2E_WORK/send.$tag.json" RECV_OUT="$E2E_WORK/recv.$tag.json"
    mkdir -p "$OUT"
    snapshot
    RX0=$(server_rx_bytes)
    local server=$1
    shift
    "$LAB" exec a -- "$FERRY" send --json --server "$server" "$@" "$E2E_WORK/payload.bin" \
        >"$SEND_OUT" 2>"$SEND_OUT.log" &
    SENDER=$!
    CODE=
    for _ in $(seq 1 200); do
        CODE=$(event_field "$SEND_OUT" code code)
        [ -n "$CODE" ] && return 0
        kill -0 "$SENDER" 2>/dev/null || break
        sleep 0.05
    done
    fail "the sender printed no code: $(tail -3 "$SEND_OUT.log")"
    kill "$SENDER" 2>/dev/null || true
    wait "$SENDER" 2>/dev/null || true
    return 1
}

# receive SERVER CODE [OUT_JSON]: the receiver on b (at most 60 s); its exit code in RECV_RC
receive() {
    RECV_RC=0
    timeout 60 "$LAB" exec b -- "$FERRY" receive --json --yes --server "$1" --out "$OUT" "$2" \
        >"${3:-$RECV_OUT}" 2>"${3:-$RECV_OUT}.log" || RECV_RC=$?
}

# transfer CASE PATH SENDER_SERVER SENDER_EDGE RECEIVER_SERVER RECEIVER_EDGE REMOTE
#   PATH quic or relay; REMOTE: the receiver's peer address (a prefix)
transfer() {
    CASE=$1
    local want=$2 send_server=$3 send_edge=$4 recv_server=$5 recv_edge=$6 remote_prefix=$7
    selected "$CASE" || return 0
    echo "== $CASE: expect $want"
    local started=$SECONDS
    begin "$send_server" || return 0
    receive "$recv_server" "$CODE"
    wait_pid "$SENDER" 30
    expect "receiver exit code" 0 "$RECV_RC"
    expect "sender exit code" 0 "$WAIT_RC"
    if cmp -s "$E2E_WORK/payload.bin" "$OUT/payload.bin"; then
        pass "$SIZE_MIB MiB arrived intact"
    else
        fail "the received file differs (or is missing)"
    fi
    expect "path (sender)" "$want" "$(final_path "$SEND_OUT" .path)"
    expect "path (receiver)" "$want" "$(final_path "$RECV_OUT" .path)"
    local remote
    remote=$(final_path "$RECV_OUT" .remote)
    case $remote in
        "$remote_prefix"*) pass "receiver's peer address $remote" ;;
        *) fail "receiver's peer address: expected $remote_prefix..., seen $remote" ;;
    esac
    at_least "$send_edge saw the sender's signalling" 1 "$(delta "$send_edge" "$SIGNALLING")"
    at_least "$recv_edge saw the receiver's signalling" 1 "$(delta "$recv_edge" "$SIGNALLING")"
    if [ "$want" = relay ]; then
        local reason
        reason=$(event_field "$RECV_OUT" path relay_reason)
        expect "why the relay (receiver)" "symmetric NAT on both sides" "$reason"
        expect "the sender's relay" "$remote_prefix" "$(final_path "$SEND_OUT" .remote)"
        at_least "bytes $send_edge's relay carried" $((SIZE_MIB * 1024 * 1024)) "$(delta "$send_edge" "$RELAY_BYTES")"
        expect "pairs $send_edge's relay joined" 1 "$(delta "$send_edge" "$RELAY_PAIRS")"
        expect "bytes $recv_edge's relay carried" 0 "$(delta "$recv_edge" "$RELAY_BYTES")"
    else
        expect "bytes the relays carried (edge-1 edge-2)" "0 0" \
            "$(delta edge-1 "$RELAY_BYTES") $(delta edge-2 "$RELAY_BYTES")"
        local carried=$(( $(server_rx_bytes) - RX0 )) limit=$((2 * 1024 * 1024))
        if [ "$carried" -le "$limit" ]; then
            pass "the server host received $carried bytes (at most $limit): the file went direct"
        else
            fail "the server host received $carried bytes, more than $limit: the file went through it"
        fi
    fi
    printf '          connected in %.2f s, whole case %d s\n' \
        "$(event_field "$RECV_OUT" path connect_secs)" $((SECONDS - started))
}

# wrong_code CASE: the sender on edge-1, a wrong code for its nameplate on edge-2
wrong_code() {
    CASE=$1
    selected "$CASE" || return 0
    echo "== $CASE: expect exit 3 on both sides, the nameplate burnt"
    begin "$EDGE1_IP:443" || return 0
    local nameplate=${CODE%%-*} wrong
    wrong=$nameplate-acorn-acorn
    [ "$CODE" = "$wrong" ] && wrong=$nameplate-actor-actor
    local message
    receive "$EDGE2_IP:443" "$wrong"
    wait_pid "$SENDER" 30
    expect "receiver exit code" 3 "$RECV_RC"
    expect "sender exit code" 3 "$WAIT_RC"
    for side in receiver sender; do
        local json=$RECV_OUT
        [ "$side" = sender ] && json=$SEND_OUT
        message=$(event_field "$json" error message)
        if [[ $message == *"the code did not match"* ]]; then
            pass "the $side says: $message"
        else
            fail "the $side should say the code did not match: $message $(tail -2 "$json.log")"
        fi
    done
    expect "files written" 0 "$(find "$OUT" -type f | wc -l)"
    expect "nameplates burnt (edge-1 edge-2)" "1 0" "$(delta edge-1 "$BURNT") $(delta edge-2 "$BURNT")"
    # Burnt: the right code finds no transfer, on either instance.
    local edge ip late
    for edge in edge-2 edge-1; do
        ip=$EDGE1_IP
        [ "$edge" = edge-2 ] && ip=$EDGE2_IP
        late="$E2E_WORK/late.$edge.${CASE//[^a-zA-Z0-9]/_}.json"
        receive "$ip:443" "$CODE" "$late"
        message=$(event_field "$late" error message)
        if [ "$RECV_RC" = 4 ] && [[ $message == *"no transfer is waiting under $nameplate"* ]]; then
            pass "the right code on $edge afterwards: exit 4, $message"
        else
            fail "the right code on $edge afterwards: expected exit 4 and 'no transfer is waiting', seen $RECV_RC: $message"
        fi
    done
}

# kill_edge1: SIGKILL, as a crash would (its alive key then expires by itself)
kill_edge1() {
    kill -KILL "$EDGE1_PID" 2>/dev/null || true
    wait "$EDGE1_PID" 2>/dev/null || true
    EDGE1_PID=''
}

# waiting_sender_killed_home CASE: the sender waits on edge-1 (a lists it
# first); edge-1 is killed; the sender must hold its nameplate again through
# edge-2, and the receiver (b lists edge-2 first) then pairs with that code
waiting_sender_killed_home() {
    CASE=$1
    selected "$CASE" || return 0
    echo "== $CASE: expect the sender back through edge-2, then quic"
    begin "$NAME:443" || return 0
    at_least "edge-1 saw the sender's signalling" 1 "$(delta edge-1 "$SIGNALLING")"
    kill_edge1
    if wait_event "$SEND_OUT" server-back after_secs "$SENDER" 30; then
        pass "the sender holds its nameplate again, through edge-2, after $(printf '%.1f' "$EVENT_VALUE") s"
    else
        fail "the sender never came back: $(tail -3 "$SEND_OUT.log")"
    fi
    receive "$NAME:443" "$CODE"
    wait_pid "$SENDER" 30
    expect "receiver exit code" 0 "$RECV_RC"
    expect "sender exit code" 0 "$WAIT_RC"
    if cmp -s "$E2E_WORK/payload.bin" "$OUT/payload.bin"; then
        pass "$SIZE_MIB MiB arrived intact with the code edge-1 had handed out"
    else
        fail "the received file differs (or is missing)"
    fi
    expect "path (receiver)" quic "$(final_path "$RECV_OUT" .path)"
    at_least "edge-2 saw both sides' signalling" 2 "$(delta edge-2 "$SIGNALLING")"
    start_edge edge-1 "$EDGE1_IP" 3478 3479 "$EDGE2_IP" || true
}

# relay_home_killed CASE: symmetric NATs, the pair relayed at edge-1 (the
# sender's instance); edge-1 killed a third of the way through
relay_home_killed() {
    CASE=$1
    selected "$CASE" || return 0
    echo "== $CASE: expect relay at edge-1, then relay at edge-2, resumed"
    begin "$NAME:443" --limit-rate "${RATE:-2M}" || return 0
    timeout 180 "$LAB" exec b -- "$FERRY" receive --json --yes --server "$NAME:443" --out "$OUT" "$CODE" \
        >"$RECV_OUT" 2>"$RECV_OUT.log" &
    local receiver=$!
    if wait_part "$OUT/payload.bin.ferry-part" $((SIZE_MIB * 1024 * 1024 / 3)) "$receiver"; then
        kill_edge1
        pass "edge-1 killed at $((HELD / 1048576)) MiB"
    else
        fail "the transfer never got a third of the way (held $HELD bytes)"
    fi
    local recv_rc=0
    wait "$receiver" || recv_rc=$?
    wait_pid "$SENDER" 60
    expect "receiver exit code" 0 "$recv_rc"
    expect "sender exit code" 0 "$WAIT_RC"
    if cmp -s "$E2E_WORK/payload.bin" "$OUT/payload.bin"; then
        pass "$SIZE_MIB MiB arrived intact"
    else
        fail "the received file differs (or is missing)"
    fi
    local first_remote
    first_remote=$(jq -r 'select(.event == "path") | "\(.path) \(.remote)"' "$RECV_OUT" | head -n1)
    expect "first path (receiver)" "relay $EDGE1_IP:443" "$first_remote"
    expect "receiver reconnected" 1 "$(jq -s '[.[] | select(.event == "reconnected")] | length' "$RECV_OUT")"
    expect "sender reconnected" 1 "$(jq -s '[.[] | select(.event == "reconnected")] | length' "$SEND_OUT")"
    local resumed
    resumed=$(event_field "$RECV_OUT" done bytes_resumed)
    if [ "${resumed:-0}" -gt 0 ] 2>/dev/null; then
        pass "resumed from $((resumed / 1048576)) MiB already verified"
    else
        fail "nothing resumed (bytes_resumed=$resumed)"
    fi
    expect "path after the rejoin (receiver)" "relay $EDGE2_IP:443" \
        "$(jq -r 'select(.event == "path") | "\(.path) \(.remote)"' "$RECV_OUT" | tail -n1)"
    at_least "bytes edge-2's relay carried" 1 "$(delta edge-2 "$RELAY_BYTES")"
    # Both came back through edge-2 at about the same moment: they must meet
    # on one channel there, not each wait out REJOIN_WAIT (40 s) alone.
    local after
    after=$(event_field "$RECV_OUT" reconnected after_secs)
    if awk -v a="${after:-999}" 'BEGIN { exit !(a < 40) }'; then
        pass "reconnected after $(printf '%.1f' "$after") s, without waiting out a rejoin alone"
    else
        fail "reconnected only after ${after:-never} s: the two rejoins did not meet at once"
    fi
}

CASES_PR=("port-restricted, sender on edge-1, receiver on edge-2 (by the name $NAME)"
    "port-restricted, sender on edge-2, receiver on edge-1 (by address)"
    "a wrong code on edge-2 burns edge-1's nameplate"
    "edge-1 stopped: the name $NAME leads both sides to edge-2"
    "edge-1 killed while the sender waits on it: its code works through edge-2")
CASES_SYM=("symmetric, sender on edge-1, receiver on edge-2: edge-1's relay"
    "symmetric, edge-1 (home and relay) killed mid-transfer: rejoined and resumed through edge-2")
any_selected() { local c; for c in "$@"; do selected "$c" && return 0; done; return 1; }

if any_selected "${CASES_PR[@]}"; then
    CASE="setup: port-restricted"
    echo "== $CASE: redis, edge-1 and edge-2 on the server, $NAME in a and b"
    if cluster_up port-restricted; then
        transfer "${CASES_PR[0]}" quic "$NAME:443" edge-1 "$NAME:443" edge-2 198.51.100.2
        transfer "${CASES_PR[1]}" quic "$EDGE2_IP:443" edge-2 "$EDGE1_IP:443" edge-1 198.51.100.2
        wrong_code "${CASES_PR[2]}"
        waiting_sender_killed_home "${CASES_PR[4]}"
        CASE=${CASES_PR[3]}
        if selected "$CASE"; then
            # a lists edge-1's address first: refused there, it must go on to edge-2's
            stop_pid "$EDGE1_PID"
            EDGE1_PID=''
            if lab exec a -- timeout 3 bash -c "exec 3<>/dev/tcp/$EDGE1_IP/443" 2>/dev/null; then
                fail "edge-1 still accepts on $EDGE1_IP:443 after it was stopped"
            else
                pass "edge-1 is stopped: $EDGE1_IP:443 refuses"
            fi
            transfer "$CASE" quic "$NAME:443" edge-2 "$NAME:443" edge-2 198.51.100.2
            expect "signalling connections edge-2 took (both sides)" 2 "$(delta edge-2 "$SIGNALLING")"
        fi
    fi
fi

if any_selected "${CASES_SYM[@]}"; then
    CASE="setup: symmetric"
    echo "== $CASE: redis, edge-1 and edge-2 on the server, $NAME in a and b"
    if cluster_up symmetric; then
        transfer "${CASES_SYM[0]}" relay "$NAME:443" edge-1 "$NAME:443" edge-2 "$EDGE1_IP:443"
        relay_home_killed "${CASES_SYM[1]}"
    fi
fi

stop_cluster
summary
