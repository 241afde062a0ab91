#!/usr/bin/env bash
# Proxies in the lab: peer a sits on a network that lets out only its
# proxy (topology proxy-only: nat-a forwards nothing from its LAN; the
# proxies run on nat-a itself, at 10.0.1.1), with real proxies from
# Debian's packages: tinyproxy (HTTP CONNECT, only to port 443) and
# microsocks (SOCKS5), each also with a user and password. Peer b is on an
# ordinary NAT. Each transfer checks the bytes and the path (the relay:
# nothing else gets out of a's network); the failures check the exit code
# (4) and that the message names the proxy and what to do.
#
#   scripts/e2e-proxy.sh       as root; needs target/release/ferry (or FERRY=path)
#   E2E_ONLY=REGEX             run only the cases whose name matches
set -euo pipefail
source "$(dirname "$0")/e2e-lib.sh"

apt_install tinyproxy microsocks

SIZE_MIB=${SIZE_MIB:-8}
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$E2E_WORK/payload.bin"
PROXY_IP=10.0.1.1
SERVER_NAME=server.lab

# Only nat-a (where the proxies run) knows the server's name: a cannot
# resolve it, so socks5h:// and http:// must hand the name to the proxy.
# `ip netns exec` mounts /etc/netns/NS/hosts over /etc/hosts.
HOSTS_DIR= HOSTS_DIR_B= HOSTS_DIR_S=
proxy_cleanup() {
    local rc=$?
    # Not under set -e: with a failing rc, `(exit "$rc")` below would end
    # this trap there, and e2e_cleanup would never take the lab down.
    set +e
    [ -n "$HOSTS_DIR" ] && rm -rf "$HOSTS_DIR"
    [ -n "$HOSTS_DIR_B" ] && rm -rf "$HOSTS_DIR_B"
    [ -n "$HOSTS_DIR_S" ] && rm -rf "$HOSTS_DIR_S"
    (exit "$rc")
    e2e_cleanup
}
trap proxy_cleanup EXIT

# start_proxies: tinyproxy on 8888 (open) and 8889 (user ferry, password
# s3cret), microsocks on 1080 (open) and 1081 (user ferry, password
# s3cret), all on nat-a's LAN address. lab.sh down stops them (they run in
# a lab namespace).
start_proxies() {
    local port auth conf
    for port in 8888 8889; do
        conf="$E2E_WORK/tinyproxy.$port.conf"
        auth=
        [ "$port" = 8889 ] && auth="BasicAuth ferry s3cret"
        printf '%s\n' "Port $port" "Listen $PROXY_IP" "Allow 10.0.1.0/24" "Timeout 60" \
            "MaxClients 20" "LogLevel Info" "ConnectPort 443" "User nobody" "Group nogroup" \
            ${auth:+"$auth"} >"$conf"
        "$LAB" exec nat-a -- tinyproxy -d -c "$conf" >"$E2E_WORK/tinyproxy.$port.log" 2>&1 &
    done
    "$LAB" exec nat-a -- microsocks -i "$PROXY_IP" -p 1080 >"$E2E_WORK/microsocks.1080.log" 2>&1 &
    "$LAB" exec nat-a -- microsocks -i "$PROXY_IP" -p 1081 -u ferry -P s3cret \
        >"$E2E_WORK/microsocks.1081.log" 2>&1 &
    for port in 8888 8889 1080 1081; do
        for _ in $(seq 1 100); do
            lab exec a -- bash -c "exec 3<>/dev/tcp/$PROXY_IP/$port" 2>/dev/null && continue 2
            sleep 0.05
        done
        fail "no proxy listens on $PROXY_IP:$port"
        return 1
    done
}

# final_path JSON: the path that carried the transfer to its end
final_path() { jq -r 'select(.event == "path" or .event == "moved") | .path' "$1" 2>/dev/null | tail -n1; }

# through CASE WANT "SEND_ENV" "SEND_ARGS" "RECV_ENV" "RECV_ARGS": a
# transfer from a to b; each side's env and arguments are words (no
# spaces inside one). WANT: a path, or "fail:TEXT" (the sender exits 4
# and its error contains TEXT).
through() {
    CASE=$1
    local want=$2 send_env=$3 send_args=$4 recv_env=$5 recv_args=$6
    if [ -n "${E2E_ONLY:-}" ] && ! [[ $CASE =~ $E2E_ONLY ]]; then return 0; fi
    echo "== $CASE: expect $want"
    local tag=${CASE//[^a-zA-Z0-9]/_}
    local out="$E2E_WORK/out.$tag" send_out="$E2E_WORK/send.$tag.json" recv_out="$E2E_WORK/recv.$tag.json"
    mkdir -p "$out"
    # shellcheck disable=SC2086 # words on purpose
    "$LAB" exec a -- env $send_env "$FERRY" -v send --json $send_args "$E2E_WORK/payload.bin" \
        >"$send_out" 2>"$send_out.log" &
    local sender=$! code= send_rc=0 recv_rc=0
    for _ in $(seq 1 300); do
        code=$(jq -r 'select(.event == "code") | .code' "$send_out" 2>/dev/null | head -n1)
        [ -n "$code" ] && break
        kill -0 "$sender" 2>/dev/null || break
        sleep 0.05
    done
    if [[ $want == fail:* ]]; then
        [ -z "$code" ] || { kill "$sender" 2>/dev/null || true; }
        for _ in $(seq 1 600); do
            kill -0 "$sender" 2>/dev/null || break
            sleep 0.1
        done
        kill "$sender" 2>/dev/null || true
        wait "$sender" || send_rc=$?
        expect "sender exit code" 4 "$send_rc"
        local message
        message=$(jq -r 'select(.event == "error") | .message' "$send_out" | head -n1)
        if [[ $message == *"${want#fail:}"* ]]; then
            pass "the error says: $message"
        else
            fail "the error should contain '${want#fail:}': $message $(tail -2 "$send_out.log")"
        fi
        return 0
    fi
    if [ -z "$code" ]; then
        fail "the sender printed no code: $(tail -3 "$send_out.log")"
        kill "$sender" 2>/dev/null || true
        return 0
    fi
    # shellcheck disable=SC2086
    timeout 120 "$LAB" exec b -- env $recv_env "$FERRY" -v receive --json --yes --out "$out" \
        $recv_args "$code" >"$recv_out" 2>"$recv_out.log" || recv_rc=$?
    wait "$sender" || send_rc=$?
    expect "receiver exit code" 0 "$recv_rc"
    expect "sender exit code" 0 "$send_rc"
    if cmp -s "$E2E_WORK/payload.bin" "$out/payload.bin"; then
        pass "$SIZE_MIB MiB arrived intact"
    else
        fail "the received file differs (or is missing)"
    fi
    expect "path (sender)" "$want" "$(final_path "$send_out")"
    expect "path (receiver)" "$want" "$(final_path "$recv_out")"
}

CASE=setup
echo "== setup: topology proxy-only, ferry serve, tinyproxy and microsocks on nat-a"
lab_up proxy-only || { summary; exit 1; }
HOSTS_DIR="/etc/netns/$(lab ns nat-a)"
mkdir -p "$HOSTS_DIR"
printf '127.0.0.1 localhost\n%s %s\n' "$SERVER_IP" "$SERVER_NAME" >"$HOSTS_DIR/hosts"
start_server || { summary; exit 1; }
start_proxies || { summary; exit 1; }
if lab exec a -- timeout 3 bash -c "exec 3<>/dev/tcp/$SERVER_IP/443" 2>/dev/null; then
    fail "a reaches the server directly: the network should let out only the proxy"
else
    pass "a cannot reach the server without the proxy"
fi
if lab exec a -- getent hosts "$SERVER_NAME" >/dev/null; then
    fail "a resolves $SERVER_NAME: only the proxy should"
else
    pass "only the proxy resolves $SERVER_NAME"
fi

B="--server $SIGNAL"
through "HTTP CONNECT (tinyproxy), --proxy" relay \
    "" "--server $SIGNAL --proxy http://$PROXY_IP:8888" "" "$B"
through "HTTP CONNECT, the server by a name only the proxy knows" relay \
    "" "--server $SERVER_NAME:443 --proxy http://$PROXY_IP:8888" "" "$B"
through "SOCKS5 (microsocks), socks5h, the name to the proxy" relay \
    "" "--server $SERVER_NAME:443 --proxy socks5h://$PROXY_IP:1080" "" "$B"
through "HTTPS_PROXY with a user and password (tinyproxy BasicAuth)" relay \
    "HTTPS_PROXY=http://ferry:s3cret@$PROXY_IP:8889" "--server $SIGNAL" "" "$B"
through "ALL_PROXY socks5h with a user and password (microsocks)" relay \
    "ALL_PROXY=socks5h://ferry:s3cret@$PROXY_IP:1081" "--server $SERVER_NAME:443" "" "$B"
# b's network has no route to 10.0.1.1: only NO_PROXY gets it through.
through "NO_PROXY sends the receiver direct past an unreachable HTTPS_PROXY" relay \
    "" "--server $SIGNAL --proxy socks5h://$PROXY_IP:1080" \
    "HTTPS_PROXY=http://$PROXY_IP:8888 NO_PROXY=localhost,203.0.113.0/24" "$B"
through "a wrong proxy address" "fail:could not reach the HTTP proxy http://$PROXY_IP:9" \
    "" "--server $SIGNAL --proxy http://$PROXY_IP:9" "" "$B"
through "a wrong proxy password" "fail:the user name or password was not accepted" \
    "" "--server $SIGNAL --proxy http://ferry:guess@$PROXY_IP:8889" "" "$B"
through "SOCKS5 without the password it wants" "fail:socks5h://USER:PASS@HOST:PORT" \
    "" "--server $SIGNAL --proxy socks5h://$PROXY_IP:1081" "" "$B"
through "a port the proxy does not allow" "fail:many allow only 443" \
    "" "--server $SERVER_IP:8443 --proxy http://$PROXY_IP:8888" "" "$B"

CASE="ferry nat --proxy"
if [ -z "${E2E_ONLY:-}" ] || [[ $CASE =~ $E2E_ONLY ]]; then
    echo "== $CASE"
    report=$(nat_json a --proxy "socks5h://$PROXY_IP:1080")
    expect "rendezvous reachable through the proxy" true "$(field "$report" .rendezvous.reachable)"
    expect "the report names the proxy" "socks5h://$PROXY_IP:1080" "$(field "$report" .rendezvous.proxy)"
    expect "relay reached through the proxy" number "$(field "$report" '.latency.relay_tcp_ms | type')"
fi

# A relay on a host of its own, advertised by a name that only the proxy
# (and b, on an ordinary network) resolves: a, behind the proxy, must hand
# that name to the proxy, not resolve it itself.
CASE="a relay on its own host, by a name only the proxy knows"
if [ -z "${E2E_ONLY:-}" ] || [[ $CASE =~ $E2E_ONLY ]]; then
    stop_server
    RELAY_NAME=relay.lab
    printf '%s %s\n' "$SERVER_ALT_IP" "$RELAY_NAME" >>"$HOSTS_DIR/hosts"
    HOSTS_DIR_B="/etc/netns/$(lab ns b)"
    mkdir -p "$HOSTS_DIR_B"
    printf '127.0.0.1 localhost\n%s %s\n' "$SERVER_ALT_IP" "$RELAY_NAME" >"$HOSTS_DIR_B/hosts"
    # ferry serve checks that --relay-url resolves
    HOSTS_DIR_S="/etc/netns/$(lab ns server)"
    mkdir -p "$HOSTS_DIR_S"
    cp "$HOSTS_DIR_B/hosts" "$HOSTS_DIR_S/hosts"
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$E2E_WORK/relay.secret"
    "$LAB" exec server -- "$FERRY" relay --listen "$SERVER_ALT_IP:443" \
        --relay-secret-file "$E2E_WORK/relay.secret" \
        >"$E2E_WORK/relay.out" 2>"$E2E_WORK/relay.log" &
    RELAY_PID=$!
    if start_server --relay-url "$RELAY_NAME:443" --relay-secret-file "$E2E_WORK/relay.secret"; then
        if lab exec a -- getent hosts "$RELAY_NAME" >/dev/null; then
            fail "a resolves $RELAY_NAME: only the proxy should"
        fi
        through "a relay on its own host, by a name only the proxy knows (socks5h)" relay \
            "" "--server $SERVER_NAME:443 --proxy socks5h://$PROXY_IP:1080" "" "$B"
        through "a relay on its own host, by a name only the proxy knows (HTTP CONNECT)" relay \
            "" "--server $SIGNAL --proxy http://$PROXY_IP:8888" "" "$B"
        # b, not behind the proxy, joined the relay at its own address.
        local_case="a relay on its own host, by a name only the proxy knows (socks5h)"
        remote=$(jq -r 'select(.event == "path") | .remote' \
            "$E2E_WORK/recv.${local_case//[^a-zA-Z0-9]/_}.json" 2>/dev/null | tail -n1)
        expect "the receiver's relay is ferry relay's own address" "$SERVER_ALT_IP:443" "$remote"
    fi
    kill "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
fi

CASE="the dialer against these proxy programs (cargo test)"
if command -v cargo >/dev/null && { [ -z "${E2E_ONLY:-}" ] || [[ $CASE =~ $E2E_ONLY ]]; }; then
    echo "== $CASE"
    if (cd "$FERRY_ROOT" && cargo test -q -p ferry-proxy --test real_proxies -- --ignored) \
        >"$E2E_WORK/cargo-real-proxies.log" 2>&1; then
        pass "tinyproxy and microsocks on loopback: $(grep -o '[0-9]* passed' "$E2E_WORK/cargo-real-proxies.log" | tail -n1)"
    else
        fail "cargo test -p ferry-proxy --test real_proxies -- --ignored: $(tail -5 "$E2E_WORK/cargo-real-proxies.log")"
    fi
fi

stop_server
summary
