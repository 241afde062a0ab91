#!/usr/bin/env bash
# Benchmarks with the release binary; medians of N runs, measured side by
# side in one run (never asserted in tests: machines here are shared).
#
#   scripts/bench.sh [SIZE_MIB] [RUNS]        (BENCH_LAB=0: loopback only)
#
# 1. Loopback: SIZE_MIB (default 1024) over direct TLS/TCP and over QUIC
#    (--force-path udp): rate, CPU seconds per side; iperf3 as a ceiling.
# 2. As root, in the lab: time from both peers started to the first data
#    byte, per topology; and SIZE_MIB over QUIC against TLS over TCP
#    (simultaneous open) through the same port-restricted NATs.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

size_mib=${1:-1024}
runs=${2:-3}
ensure_rust
command -v /usr/bin/time >/dev/null 2>&1 || apt_install time
command -v jq >/dev/null 2>&1 || apt_install jq
command -v iperf3 >/dev/null 2>&1 || apt_install iperf3
say "building ferry (release)"
cargo build --release --locked -p ferry
FERRY="$FERRY_ROOT/target/release/ferry"
LAB="$FERRY_ROOT/scripts/lab.sh"

work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
pids=()
lab_used=
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "$lab_used" ] && "$LAB" down >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

say "generating a ${size_mib} MiB random file"
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/bench.bin"

# wait_code FILE: the code a sender printed in its JSON output
wait_code() {
    local code=
    for _ in $(seq 1 400); do
        code=$(jq -r 'select(.event == "code") | .code' "$1" 2>/dev/null | head -n1)
        [ -n "$code" ] && { echo "$code"; return 0; }
        sleep 0.05
    done
    die "no code from the sender: $(cat "$1")"
}

# one_transfer SERVER WRAP_SEND WRAP_RECV [FLAGS...]: one transfer of bench.bin;
# prints "secs send_cpu recv_cpu first_byte_secs path"
one_transfer() {
    local server=$1 wrap_send=$2 wrap_recv=$3
    shift 3
    rm -rf "$work/dst" && mkdir -p "$work/dst"
    # shellcheck disable=SC2086
    $wrap_send /usr/bin/time -f "%U %S" -o "$work/send.time" "$FERRY" send --json --server "$server" "$@" "$work/bench.bin" >"$work/send.out" 2>"$work/send.log" &
    local sender=$! code start first=
    code=$(wait_code "$work/send.out")
    start=$EPOCHREALTIME
    # shellcheck disable=SC2086
    $wrap_recv /usr/bin/time -f "%U %S" -o "$work/recv.time" "$FERRY" receive --json --yes --server "$server" --out "$work/dst" "$@" "$code" 2>"$work/recv.log" \
        | while IFS= read -r line; do
            if [ -z "$first" ] && [[ $line == *'"progress"'* ]] && [[ $line != *'"bytes_done":0,'* ]]; then
                first=1
                echo "$EPOCHREALTIME" >"$work/first"
            fi
            echo "$line"
        done >"$work/recv.out"
    wait "$sender" || die "the sender failed: $(tail -3 "$work/send.out")"
    cmp -s "$work/bench.bin" "$work/dst/bench.bin" || die "the received file differs"
    local secs path first_byte
    secs=$(jq -r 'select(.event == "done") | .secs' "$work/recv.out")
    path=$(jq -r 'select(.event == "path") | .path' "$work/recv.out")
    first_byte=$(python3 -c "print(round(float(open('$work/first').read()) - $start, 3))" 2>/dev/null || echo nan)
    echo "$secs $(awk '{print $1+$2}' "$work/send.time") $(awk '{print $1+$2}' "$work/recv.time") $first_byte $path"
}

# median_report LABEL: reads rows of one_transfer, prints the medians
median_report() {
    python3 -c '
import sys, statistics
label, size = sys.argv[1], float(sys.argv[2])
rows = [l.split() for l in sys.stdin if l.strip()]
med = lambda i: statistics.median(float(r[i]) for r in rows)
secs = med(0)
print(f"{label:<34} {rows[0][4]:<22} {size/secs:8.0f} MiB/s  cpu send {med(1):6.2f} s  recv {med(2):6.2f} s  first byte {med(3):6.3f} s  (median of {len(rows)})")
' "$1" "$size_mib"
}

say "loopback: $size_mib MiB, $runs runs each"
"$FERRY" serve --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0 --stun-second-port 0 --json >"$work/server.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 1 100); do
    server=$(jq -r 'select(.event == "listening") | .signal' "$work/server.out" 2>/dev/null | head -n1)
    [ -n "$server" ] && break
    sleep 0.1
done
server_pid=${pids[-1]}
# cpu_secs PID: user+system CPU seconds a process has used so far
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
results=()
for label in "TLS over TCP (loopback)" "QUIC over UDP (loopback)" "relay (loopback)"; do
    flags=()
    [[ $label == QUIC* ]] && flags=(--force-path udp --no-upnp)
    [[ $label == TLS* ]] && flags=(--force-path tcp --no-upnp)
    [[ $label == relay* ]] && flags=(--force-path relay --no-upnp)
    before=$(cpu_secs "$server_pid")
    rows=$(for _ in $(seq 1 "$runs"); do one_transfer "$server" "" "" "${flags[@]}"; done)
    after=$(cpu_secs "$server_pid")
    results+=("$(echo "$rows" | median_report "$label")")
    if [[ $label == relay* ]]; then
        results+=("$(python3 -c "print(f'relay process: {($after - $before) / ($runs * $size_mib / 1024):.2f} CPU s per GiB relayed')")")
    fi
done
if command -v iperf3 >/dev/null; then
    iperf3 -s -1 -B 127.0.0.1 -p 5299 >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.5
    ceiling=$(iperf3 -c 127.0.0.1 -p 5299 -t 5 -f M | awk '/receiver$/ {print $(NF-2)}')
    results+=("$(printf '%-34s %-22s %8.0f MiB/s' "iperf3 TCP ceiling (loopback)" "-" "$ceiling")")
fi

if [ "$(id -u)" -eq 0 ] && [ "${BENCH_LAB:-1}" = 1 ]; then
    lab_used=1
    lab_case() { # LABEL FLAGS... -- UP ARGS...
        local label=$1 flags=() up=()
        shift
        while [ "$1" != -- ]; do flags+=("$1"); shift; done
        shift
        up=("$@")
        "$LAB" up "${up[@]}" >/dev/null
        [ "${up[0]}" = upnp ] && "$LAB" stun stop >/dev/null
        "$LAB" exec server -- "$FERRY" serve --listen 203.0.113.10:443 --stun-listen 203.0.113.10:3478 \
            --stun-alt-ip 203.0.113.11 >/dev/null 2>&1 &
        local spid=$!
        sleep 0.3
        local rows
        rows=$(for _ in $(seq 1 "$runs"); do
            one_transfer 203.0.113.10:443 "$LAB exec a --" "$LAB exec b --" "${flags[@]}"
        done)
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        results+=("$(echo "$rows" | median_report "$label")")
    }
    say "lab: per topology ($size_mib MiB, $runs runs each)"
    lab_case "lab public <-> public" -- nat --a none --b none
    lab_case "lab port-restricted (race)" -- port-restricted
    lab_case "lab port-restricted, QUIC" --force-path udp -- port-restricted
    lab_case "lab port-restricted, TCP sim. open" --force-path tcp -- port-restricted
    lab_case "lab full-cone <-> full-cone" -- full-cone
    lab_case "lab same LAN" -- same-lan
    lab_case "lab UDP blocked" -- udp-blocked
    lab_case "lab UPnP" -- upnp
    lab_case "lab double NAT" -- double-nat
else
    say "skipping the lab benchmarks (not root, or BENCH_LAB=0)"
fi

echo
printf '%s\n' "${results[@]}"
