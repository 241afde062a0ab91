#!/usr/bin/env bash
# QUIC against TCP over a long fat path in the lab (issue 11): two public
# hosts, a and b, with a 50 ms round trip (ferry-lab-delay in `inet`) and a
# 1 Gbit/s tc tbf rate limit on both peers' uplinks; then the same with 1%
# random loss each way on nat-a's uplink (nat-a is a plain router in
# `public`). Not on a's own uplink: a packet that netfilter drops on its
# sender's way out is an error to the sending socket, and TCP simply sends it
# again (iperf3 counted 0 retransmits), while a UDP send just fails: the
# loss must be where packets are forwarded. Medians of RUNS transfers.
#
#   scripts/bench-rtt.sh                 (as root)
#   SIZE_MIB=256 RUNS=1 FERRY_LAB_ID=d scripts/bench-rtt.sh
#
# SIZE_MIB (default 1024) and RUNS (default 3); BENCH_RTT_MS (default 50),
# BENCH_RATE (default 1gbit), BENCH_LOSS (default 1, percent). Uses the
# default lab, or FERRY_LAB_ID's. Prints MiB/s and the share of the link
# rate, beside iperf3 (TCP) on the same path as a ceiling.
# Machines here are shared: figures vary from run to run; never asserted.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

size_mib=${SIZE_MIB:-1024}
runs=${RUNS:-3}
rtt_ms=${BENCH_RTT_MS:-50}
rate=${BENCH_RATE:-1gbit}
loss=${BENCH_LOSS:-1}
if ! [[ $size_mib =~ ^[0-9]+$ ]] || [ "$size_mib" -eq 0 ]; then die "SIZE_MIB must be a positive whole number"; fi
if ! [[ $runs =~ ^[0-9]+$ ]] || [ "$runs" -eq 0 ]; then die "RUNS must be a positive whole number"; fi
[ "$(id -u)" -eq 0 ] || die "the lab needs root"
ensure_rust
command -v /usr/bin/time >/dev/null 2>&1 || apt_install time
command -v jq >/dev/null 2>&1 || apt_install jq
command -v iperf3 >/dev/null 2>&1 || apt_install iperf3
say "building ferry and ferry-lab-delay (release)"
# two builds, not one: together cargo would unify the two packages' dependency
# features and rebuild what bench.sh's `-p ferry` build already has
cargo build --release --locked -p ferry
cargo build --release --locked -p ferry-tests --bin ferry-lab-delay
target=${CARGO_TARGET_DIR:-$FERRY_ROOT/target}
FERRY="$target/release/ferry"
export FERRY_LAB_DELAY_BIN="$target/release/ferry-lab-delay"
LAB="$FERRY_ROOT/scripts/lab.sh"
# link rate in MiB/s, for the percentages
link_mibs=$(python3 -c "
import re, sys
n, u = re.fullmatch(r'(\d+)(bit|kbit|mbit|gbit)', sys.argv[1]).groups()
print(int(n) * {'bit': 1, 'kbit': 1e3, 'mbit': 1e6, 'gbit': 1e9}[u] / 8 / 2**20)" "$rate") \
    || die "BENCH_RATE must look like 500kbit, 10mbit or 1gbit"

work=$(mktemp -d /var/tmp/ferry-bench-rtt.XXXXXX)
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

# wait_code FILE: the code a sender printed in its JSON output (as in bench.sh)
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
# prints "secs send_cpu recv_cpu first_byte_secs path" (copied from bench.sh)
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

# median_report LABEL: reads rows of one_transfer, prints the medians and the
# share of the link rate
median_report() {
    python3 -c '
import sys, statistics
label, size, link = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [l.split() for l in sys.stdin if l.strip()]
med = lambda i: statistics.median(float(r[i]) for r in rows)
secs = med(0)
rate = size / secs
print(f"{label:<30} {rows[0][4]:<22} {rate:7.1f} MiB/s {100 * rate / link:5.1f}% of link  cpu send {med(1):6.2f} s  recv {med(2):6.2f} s  first byte {med(3):6.3f} s  (median of {len(rows)})")
' "$1" "$size_mib" "$link_mibs"
}

# iperf3_report LABEL: iperf3 TCP a -> b for 10 s, the receiver's rate
iperf3_report() {
    local b_ip out mibs
    b_ip=$("$LAB" addr b)
    "$LAB" exec b -- iperf3 -s -1 -B "$b_ip" -p 5201 >"$work/iperf3-s.log" 2>&1 &
    local spid=$!
    pids+=("$spid")
    sleep 0.5
    out=$("$LAB" exec a -- iperf3 -J -c "$b_ip" -p 5201 -t 10) || { say "iperf3 failed"; return 0; }
    wait "$spid" 2>/dev/null || true
    mibs=$(jq -r '.end.sum_received.bits_per_second / 8 / 1048576' <<<"$out")
    python3 -c '
import sys
label, rate, link, retr = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
what = "iperf3 TCP, 10 s"
print(f"{label:<30} {what:<22} {rate:7.1f} MiB/s {100 * rate / link:5.1f}% of link  retransmits {retr}")
' "$1" "$mibs" "$link_mibs" "$(jq -r '.end.sum_sent.retransmits' <<<"$out")"
}

# bench_case LABEL: QUIC and TCP transfers, RUNS each, and iperf3, on the lab as it is
results=()
bench_case() {
    local label=$1 path rows
    results+=("$(iperf3_report "$label")")
    for path in udp tcp; do
        rows=$(for _ in $(seq 1 "$runs"); do
            one_transfer 203.0.113.10:443 "$LAB exec a --" "$LAB exec b --" --force-path "$path"
        done)
        results+=("$(echo "$rows" | median_report "$label, $([ "$path" = udp ] && echo QUIC || echo TCP)")")
    done
}

lab_used=1
say "lab: public, round trip $rtt_ms ms, $rate on a and b"
"$LAB" up public --delay "$rtt_ms" --rate "a:$rate" --rate "b:$rate" >/dev/null
"$LAB" exec server -- "$FERRY" serve --listen 203.0.113.10:443 --stun-listen 203.0.113.10:3478 \
    --stun-alt-ip 203.0.113.11 --relay-rate off --relay-total-rate off >"$work/server.log" 2>&1 &
pids+=($!)
sleep 0.3
ping_rtt=$("$LAB" exec a -- ping -c 5 -i 0.2 "$("$LAB" addr b)" | awk -F/ '/^rtt/ { print $5 }')
say "ping a -> b: mean round trip ${ping_rtt} ms"

say "no loss: $size_mib MiB, $runs runs each"
bench_case "${rtt_ms} ms, $rate"
say "loss $loss% each way on nat-a's uplink: $size_mib MiB, $runs runs each"
"$LAB" set loss nat-a "$loss" >/dev/null
bench_case "${rtt_ms} ms, $rate, $loss% loss"

echo
echo "a <-> b (public), round trip $rtt_ms ms (ping: $ping_rtt ms), $rate each uplink (link = $(printf '%.1f' "$link_mibs") MiB/s), $size_mib MiB;" \
    "TCP congestion control $("$LAB" exec a -- sysctl -n net.ipv4.tcp_congestion_control)"
printf '%s\n' "${results[@]}"
# stopping the delay line makes it print its totals (and its CPU use)
"$LAB" set delay off >/dev/null
delay_log=/run/ferry-lab${FERRY_LAB_ID:+-$FERRY_LAB_ID}/logs/delay.log
if [ -f "$delay_log" ]; then
    totals=$(grep 'exit' "$delay_log" | tail -n 1 | sed 's/^ferry-lab-delay: //' || true)
    echo "ferry-lab-delay: $totals"
    # On a busy machine the delay line itself can become the bottleneck; its
    # packets then go out late and the real round trip is longer than asked.
    late_us=$(sed -n 's/.*late mean \([0-9]*\) us.*/\1/p' <<<"$totals")
    if [ -n "$late_us" ] && [ "$late_us" -gt 1000 ]; then
        say "warning: ferry-lab-delay sent packets ${late_us} us late on average (of ${rtt_ms} ms):" \
            "the machine was too busy for an exact delay, and round trips were longer"
    fi
fi
