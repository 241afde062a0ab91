#!/usr/bin/env bash
# Benchmarks end-to-end transfers with the release binary over loopback:
# rate and CPU seconds (user+sys) per side, median of N runs, beside a
# ceiling (iperf3 on the same loopback, when installed).
#
#   scripts/bench.sh [SIZE_MIB] [RUNS]     default: 1024 MiB, 3 runs
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

size_mib=${1:-1024}
runs=${2:-3}
ensure_rust
command -v /usr/bin/time >/dev/null 2>&1 || apt_install time
say "building ferry (release)"
cargo build --release --locked -p ferry
FERRY="$FERRY_ROOT/target/release/ferry"

work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$FERRY" serve --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0 --stun-second-port 0 --json >"$work/server.out" 2>/dev/null &
pids+=($!)
port=
for _ in $(seq 1 100); do
    port=$(sed -nE 's/.*"signal":"127\.0\.0\.1:([0-9]+)".*/\1/p' "$work/server.out" | head -n1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || die "the server did not start"
server="127.0.0.1:$port"

mkdir -p "$work/src"
say "generating a ${size_mib} MiB random file"
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/src/bench.bin"

results=()
for run in $(seq 1 "$runs"); do
    rm -rf "$work/dst" && mkdir -p "$work/dst"
    /usr/bin/time -f "%U %S" -o "$work/send.time" "$FERRY" send --json --server "$server" "$work/src/bench.bin" >"$work/send.out" 2>&1 &
    sender=$!
    code=
    for _ in $(seq 1 200); do
        code=$(sed -nE 's/.*"code":"([^"]+)".*/\1/p' "$work/send.out" | head -n1)
        [ -n "$code" ] && break
        sleep 0.05
    done
    [ -n "$code" ] || die "no code from the sender"
    /usr/bin/time -f "%U %S" -o "$work/recv.time" "$FERRY" receive --json --yes --server "$server" --out "$work/dst" "$code" >"$work/recv.out" 2>&1
    wait "$sender"
    secs=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "\"done\"" in l][-1]["secs"])' "$work/recv.out")
    send_cpu=$(awk '{print $1+$2}' "$work/send.time")
    recv_cpu=$(awk '{print $1+$2}' "$work/recv.time")
    rate=$(python3 -c "print(round($size_mib/$secs,1))")
    printf 'run %d: %.2f s, %s MiB/s, cpu sender %.2f s, receiver %.2f s\n' "$run" "$secs" "$rate" "$send_cpu" "$recv_cpu"
    results+=("$secs $send_cpu $recv_cpu")
    cmp -s "$work/src/bench.bin" "$work/dst/bench.bin" || die "run $run: the received file differs"
done

printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
size = float(sys.argv[1])
secs = statistics.median(r[0] for r in rows)
print(f"median of {len(rows)}: {secs:.2f} s, {size/secs:.0f} MiB/s, "
      f"cpu sender {statistics.median(r[1] for r in rows):.2f} s, receiver {statistics.median(r[2] for r in rows):.2f} s "
      f"({size/1024:.2f} GiB, loopback, TLS 1.3 direct TCP)")
' "$size_mib"

if command -v iperf3 >/dev/null; then
    say "ceiling: iperf3 over the same loopback (TCP, 5 s)"
    iperf3 -s -1 -B 127.0.0.1 -p 5299 >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.5
    iperf3 -c 127.0.0.1 -p 5299 -t 5 -f M | grep -E "receiver$" || true
fi
