#!/usr/bin/env bash
# Demo: builds ferry, starts a rendezvous server on loopback, sends a
# generated 64 MiB file from one client to another, and shows the result.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

ensure_rust
say "building ferry (release)"
cargo build --release --locked -p ferry
FERRY="$FERRY_ROOT/target/release/ferry"

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
