#!/usr/bin/env bash
# Demo. As root: builds a network-namespace lab with two peers behind
# different NATs (a port-restricted one and a full-cone one), runs
# `ferry serve` on the lab's public server, shows what `ferry nat` says on
# each side, sends a generated 64 MiB file from one peer to the other and
# shows the code, the path that won and the verified result.
# Without root: the same transfer between two clients on loopback.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

ensure_rust
say "building ferry (release)"
cargo build --release --locked -p ferry
FERRY="$FERRY_ROOT/target/release/ferry"

if [ "$(id -u)" -eq 0 ] && [ "${FERRY_DEMO_LOOPBACK:-}" != 1 ]; then
    LAB="$FERRY_ROOT/scripts/lab.sh"
    work=$(mktemp -d)
    server_pid=
    cleanup_lab() {
        [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
        "$LAB" down >/dev/null 2>&1 || true
        rm -rf "$work"
    }
    trap cleanup_lab EXIT INT TERM
    say "building the lab: peer a behind a port-restricted NAT, peer b behind a full-cone NAT"
    "$LAB" up nat --a port-restricted --b full-cone
    "$LAB" status
    say "starting ferry serve on the lab's public server (203.0.113.10, RFC 5780 with 203.0.113.11)"
    "$LAB" exec server -- "$FERRY" serve --listen 203.0.113.10:443 \
        --stun-listen 203.0.113.10:3478 --stun-alt-ip 203.0.113.11 >"$work/server.log" 2>&1 &
    server_pid=$!
    sleep 0.5
    for peer in a b; do
        say "ferry nat on peer $peer"
        "$LAB" exec "$peer" -- "$FERRY" nat --server 203.0.113.10:443
    done
    head -c $((64 * 1024 * 1024)) /dev/urandom >"$work/demo.bin"
    mkdir -p "$work/recv"
    say "peer a: ferry send demo.bin (64 MiB of random data)"
    "$LAB" exec a -- "$FERRY" send --server 203.0.113.10:443 "$work/demo.bin" >"$work/send.out" 2>&1 &
    sender=$!
    code=
    for _ in $(seq 1 100); do
        code=$(sed -nE 's/^Code: (.*)$/\1/p' "$work/send.out" | head -n1)
        [ -n "$code" ] && break
        sleep 0.1
    done
    [ -n "$code" ] || die "the sender printed no code: $(cat "$work/send.out")"
    say "peer b: ferry receive $code"
    "$LAB" exec b -- "$FERRY" receive --server 203.0.113.10:443 --yes --out "$work/recv" "$code"
    wait "$sender" || die "the sender failed: $(cat "$work/send.out")"
    say "peer a said:"
    cat "$work/send.out"
    want=$(sha256sum "$work/demo.bin" | cut -d' ' -f1)
    got=$(sha256sum "$work/recv/demo.bin" | cut -d' ' -f1)
    [ "$want" = "$got" ] || die "the received file differs from the sent one"
    say "demo.bin crossed two NATs intact (sha256 $got)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    say "not root: no network-namespace lab, so the demo runs on loopback (sudo scripts/demo.sh shows NAT traversal)"
fi

work=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

say "starting the rendezvous server on 127.0.0.1 (ferry serve)"
"$FERRY" serve --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0 --stun-second-port 0 --json >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
port=
for _ in $(seq 1 100); do
    port=$(sed -nE 's/.*"signal":"127\.0\.0\.1:([0-9]+)".*/\1/p' "$work/server.out" | head -n1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || die "the server did not start: $(cat "$work/server.log")"
server="127.0.0.1:$port"

mkdir -p "$work/send" "$work/recv"
head -c $((64 * 1024 * 1024)) /dev/urandom >"$work/send/demo.bin"
say "sending demo.bin (64 MiB of random data)"
"$FERRY" send --server "$server" "$work/send/demo.bin" >"$work/send.out" 2>&1 &
sender=$!
pids+=("$sender")
code=
for _ in $(seq 1 100); do
    code=$(sed -nE 's/^Code: (.*)$/\1/p' "$work/send.out" | head -n1)
    [ -n "$code" ] && break
    sleep 0.1
done
[ -n "$code" ] || die "the sender printed no code: $(cat "$work/send.out")"
say "receiving with code $code"
"$FERRY" receive --server "$server" --yes --out "$work/recv" "$code"
wait "$sender" || die "the sender failed: $(cat "$work/send.out")"
echo
say "sender said:"
cat "$work/send.out"
got=$(sha256sum "$work/recv/demo.bin" | cut -d' ' -f1)
want=$(sha256sum "$work/send/demo.bin" | cut -d' ' -f1)
[ "$want" = "$got" ] || die "the received file differs from the sent one"
say "demo.bin arrived intact (sha256 $got)"
