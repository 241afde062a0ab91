#!/usr/bin/env bash
# Benchmarks with the release binary; medians of N runs, measured side by
# side in one run (never asserted in tests: machines here are shared).
#
#   scripts/bench.sh [SIZE_MIB] [RUNS]        (BENCH_LAB=0: loopback only)
#   BENCH_ONLY=loopback|relay-load|rendezvous-load|lab scripts/bench.sh ...   one section only
#
# 1. Loopback: SIZE_MIB (default 1024) over direct TLS/TCP and over QUIC
#    (--force-path udp): rate, CPU seconds per side; iperf3 as a ceiling.
# 2. Relay load on loopback: BENCH_RELAY_PAIRS (default 200) relayed pairs
#    at once through one `ferry serve`, each pushing BENCH_RELAY_MIB
#    (default 16) MiB one way (the relay_load example, which checks every
#    byte): aggregate rate, the server's peak RSS (VmRSS sampled every
#    100 ms, and VmHWM) and its CPU seconds; a fresh server per run.
# 2b. Rendezvous load on loopback (the rendezvous_load example, clients
#    spread over many 127.B.C.D source addresses, 8 each), once each, a
#    fresh `ferry serve` per figure, its VmHWM and CPU seconds reported:
#    - BENCH_IDLE (default 100000) idle signalling clients, each holding a
#      nameplate, heartbeats counted over BENCH_IDLE_WINDOW (default 60) s:
#      every one must be answered;
#    - churn: BENCH_CHURN_PAIRS (default 32) pairs repeating the whole
#      allocate/claim/exchange/release cycle for BENCH_CHURN_SECS (30) s;
#    - p50/p99 of one mailbox message while BENCH_LATENCY_IDLE (default
#      50000) idle clients are connected.
#    Needs `ulimit -n` above BENCH_IDLE + 1024 for each process: the bench
#    raises it (root with CAP_SYS_RESOURCE for the hard limit; fs.nr_open
#    too if needed, restored at exit).
# 3. As root, in the lab: time from both peers started to the first data
#    byte, per topology; and SIZE_MIB over QUIC against TLS over TCP
#    (simultaneous open) through the same port-restricted NATs.
#    BENCH_LAB_ONLY=REGEX runs only the lab cases whose label matches.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

size_mib=${1:-1024}
runs=${2:-3}
only=${BENCH_ONLY:-}
case $only in "" | loopback | relay-load | rendezvous-load | lab) ;; *) die "BENCH_ONLY must be loopback, relay-load, rendezvous-load or lab" ;; esac
# section NAME: whether to run that section
section() { [ -z "$only" ] || [ "$only" = "$1" ]; }
ensure_rust
command -v /usr/bin/time >/dev/null 2>&1 || apt_install time
command -v jq >/dev/null 2>&1 || apt_install jq
command -v iperf3 >/dev/null 2>&1 || apt_install iperf3
say "building ferry (release)"
cargo build --release --locked -p ferry
FERRY="$FERRY_ROOT/target/release/ferry"
if section relay-load; then
    cargo build --release --locked -p ferry-tests --example relay_load
fi
if section rendezvous-load; then
    cargo build --release --locked -p ferry-tests --example rendezvous_load
fi
RELAY_LOAD="$FERRY_ROOT/target/release/examples/relay_load"
RENDEZVOUS_LOAD="$FERRY_ROOT/target/release/examples/rendezvous_load"
LAB="$FERRY_ROOT/scripts/lab.sh"

work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
pids=()
lab_used=
nr_open_was=
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "$nr_open_was" ] && sysctl -qw fs.nr_open="$nr_open_was"
    [ -n "$lab_used" ] && "$LAB" down >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

if section loopback || section lab; then
    say "generating a ${size_mib} MiB random file"
    head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/bench.bin"
fi

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

# cpu_secs PID: user+system CPU seconds a process has used so far
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

results=()
if section loopback; then
    say "loopback: $size_mib MiB, $runs runs each"
    "$FERRY" serve --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0 --stun-second-port 0 --relay-rate off --relay-total-rate off --json >"$work/server.out" 2>/dev/null &
    pids+=($!)
    for _ in $(seq 1 100); do
        server=$(jq -r 'select(.event == "listening") | .signal' "$work/server.out" 2>/dev/null | head -n1)
        [ -n "$server" ] && break
        sleep 0.1
    done
    server_pid=${pids[-1]}
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
fi

# rss_kib PID FIELD: a /proc/PID/status field in KiB (VmRSS, VmHWM)
rss_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
# forget_pid PID: after it was waited for, so cleanup never kills a reused PID
forget_pid() {
    local keep=() pid
    for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    pids=("${keep[@]}")
}

# watch_load SERVER_PID LOAD_PID: samples the server's RSS every 100 ms while
# the load generator runs (at most an hour; the generators bound themselves
# too), then stops both. Sets the caller's locals load_rc (the generator's
# exit code), peak (KiB), hwm (VmHWM KiB) and after (the server's CPU s).
watch_load() {
    local spid=$1 lpid=$2 rss
    peak=0
    for _ in $(seq 1 36000); do
        kill -0 "$lpid" 2>/dev/null || break
        rss=$(rss_kib "$spid" VmRSS) && [ "${rss:-0}" -gt "$peak" ] && peak=$rss
        sleep 0.1
    done
    kill "$lpid" 2>/dev/null || true
    load_rc=0
    wait "$lpid" || load_rc=$?
    forget_pid "$lpid"
    after=$(cpu_secs "$spid")
    hwm=$(rss_kib "$spid" VmHWM)
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    forget_pid "$spid"
}

# relay_load_run PAIRS MIB: relay_load against a fresh `ferry serve`; prints
# "aggregate_MiB/s peak_rss_KiB hwm_KiB cpu_s idle_rss_KiB pair_median pair_min pairs_verified"
relay_load_run() {
    local pairs=$1 mib=$2 out=$work/relay-serve.out
    # relay_load spreads its clients over loopback source addresses (one
    # signalling and one relay connection each); the per-address limits are
    # raised all the same, so that a `--one-source` run fits too.
    "$FERRY" serve --listen 127.0.0.1:0 --no-stun --json --max-connections $((4 * pairs + 64)) \
        --max-connections-per-ip $((4 * pairs + 16)) --relay-max-per-ip $((2 * pairs + 8)) \
        --relay-max-pairs $((pairs + 8)) --relay-rate off --relay-total-rate off >"$out" 2>"$work/relay-serve.log" &
    local spid=$! addr=
    pids+=("$spid")
    for _ in $(seq 1 100); do
        addr=$(jq -r 'select(.event == "listening") | .signal' "$out" 2>/dev/null | head -n1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        kill "$spid" 2>/dev/null || true
        die "ferry serve did not start: $(tail -3 "$work/relay-serve.log")"
    fi
    local idle before
    idle=$(rss_kib "$spid" VmRSS)
    before=$(cpu_secs "$spid")
    "$RELAY_LOAD" --server "$addr" --pairs "$pairs" --mib "$mib" >"$work/relay-load.json" 2>"$work/relay-load.log" &
    local lpid=$! peak load_rc after hwm
    pids+=("$lpid")
    watch_load "$spid" "$lpid"
    [ "$load_rc" -eq 0 ] || die "relay_load failed (exit $load_rc): $(cat "$work/relay-load.json") $(tail -3 "$work/relay-load.log")"
    echo "$(jq -r '.aggregate_mib_per_sec' "$work/relay-load.json") $peak $hwm" \
        "$(python3 -c "print(round($after - $before, 2))") $idle" \
        "$(jq -r '"\(.pair_mib_per_sec_median) \(.pair_mib_per_sec_min) \(.pairs_ok)"' "$work/relay-load.json")"
}

if section relay-load; then
    relay_pairs=${BENCH_RELAY_PAIRS:-200}
    relay_mib=${BENCH_RELAY_MIB:-16}
    say "relay load: $relay_pairs pairs x $relay_mib MiB at once (loopback), $runs runs"
    # Not in a $(...) subshell: the PIDs it starts must reach cleanup.
    : >"$work/relay-rows"
    for run in $(seq 1 "$runs"); do
        relay_load_run "$relay_pairs" "$relay_mib" >>"$work/relay-rows"
        say "  run $run: $(tail -n1 "$work/relay-rows") (MiB/s, peak RSS KiB, VmHWM KiB, CPU s, idle RSS KiB, pair median/min MiB/s, pairs verified)"
    done
    results+=("$(python3 -c '
import sys, statistics
pairs, mib = sys.argv[1], sys.argv[2]
rows = [[float(x) for x in l.split()] for l in sys.stdin if l.strip()]
med = lambda i: statistics.median(r[i] for r in rows)
label = f"relay load {pairs} x {mib} MiB (loopback)"
what = f"{min(r[7] for r in rows):.0f}/{pairs} pairs verified"
print(f"{label:<34} {what:<22} {med(0):8.0f} MiB/s  serve peak RSS {med(1)/1024:6.1f} MiB (VmHWM {med(2)/1024:.1f}, idle {med(4)/1024:.1f})  serve CPU {med(3):6.2f} s  pair median {med(5):.1f} min {med(6):.1f} MiB/s  (median of {len(rows)})")
' "$relay_pairs" "$relay_mib" <"$work/relay-rows")")
fi

# raise_nofile N: lets this shell and its children open N files. Raising
# the hard limit needs root with CAP_SYS_RESOURCE (fs.nr_open is raised
# too when below N, and restored by cleanup).
raise_nofile() {
    local need=$1 hard nr_open
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
        nr_open=$(cat /proc/sys/fs/nr_open)
        if [ "$(id -u)" -eq 0 ] && [ "$nr_open" -lt "$need" ]; then
            nr_open_was=$nr_open
            sysctl -qw fs.nr_open="$need" || die "could not raise fs.nr_open to $need"
            say "  set fs.nr_open=$need (was $nr_open; restored at exit)"
        fi
        ulimit -Hn "$need" 2>/dev/null \
            || die "the rendezvous load needs $need open files per process, but the hard limit is $hard and cannot be raised here (that needs root with CAP_SYS_RESOURCE); run it where it can, or lower BENCH_IDLE and BENCH_LATENCY_IDLE below $((hard - 1024))"
    fi
    ulimit -Sn "$need"
}

# rendezvous_load_run LABEL CONNECTIONS MAX_HWM_MIB -- GENERATOR ARGS...: the
# generator against a fresh `ferry serve` sized for CONNECTIONS clients;
# appends the generator's summary with the server's VmHWM, peak VmRSS
# (sampled every 100 ms) and CPU seconds to results. A failed generator
# (the server did not hold) or a VmHWM over MAX_HWM_MIB (0: no bound) is
# reported as FAILED and makes the bench exit non-zero at the end.
rendezvous_load_run() {
    local label=$1 conns=$2 max_hwm=$3 out=$work/rv-serve.out extra=()
    shift 4
    # A nameplate per idle client, when this server has the flag.
    if "$FERRY" serve --help | grep -q -- '--max-nameplates'; then
        extra+=(--max-nameplates $((conns + 4096)))
    fi
    "$FERRY" serve --listen 127.0.0.1:0 --no-stun --json \
        --max-connections $((conns + 4096)) "${extra[@]}" >"$out" 2>"$work/rv-serve.log" &
    local spid=$! addr=
    pids+=("$spid")
    for _ in $(seq 1 100); do
        addr=$(jq -r 'select(.event == "listening") | .signal' "$out" 2>/dev/null | head -n1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || die "ferry serve did not start: $(tail -3 "$work/rv-serve.log")"
    local before
    before=$(cpu_secs "$spid")
    say "  $label: rendezvous_load --server $addr $*"
    "$RENDEZVOUS_LOAD" --server "$addr" "$@" >"$work/rv-load.json" 2>"$work/rv-load.log" &
    local lpid=$! peak load_rc after hwm
    pids+=("$lpid")
    watch_load "$spid" "$lpid"
    local summary line
    summary=$(jq -r '.summary' "$work/rv-load.json" 2>/dev/null || true)
    [ -n "$summary" ] || summary="no report: $(tail -3 "$work/rv-load.log")"
    line=$(awk -v l="$label" -v s="$summary" -v h="$hwm" -v p="$peak" -v c="$(awk -v a="$after" -v b="$before" 'BEGIN {print a - b}')" \
        'BEGIN {printf "%-34s %s; serve VmHWM %.1f MiB (peak VmRSS %.1f), CPU %.1f s", l, s, h / 1024, p / 1024, c}')
    if [ "$load_rc" -ne 0 ]; then
        line="FAILED $line; failures: $(jq -c '(.failure_reasons // []) + (.idle.failure_reasons // []) | .[:5]' "$work/rv-load.json" 2>/dev/null)"
        bench_failed=1
    elif [ "$max_hwm" -gt 0 ] && [ "$hwm" -ge $((max_hwm * 1024)) ]; then
        line="FAILED $line: VmHWM over $max_hwm MiB"
        bench_failed=1
    fi
    say "  $line"
    results+=("$line")
}

bench_failed=
if section rendezvous-load; then
    idle=${BENCH_IDLE:-100000}
    latency_idle=${BENCH_LATENCY_IDLE:-50000}
    most=$((idle > latency_idle ? idle : latency_idle))
    raise_nofile $((most + 1024))
    say "rendezvous load (loopback): ulimit -n $(ulimit -n); net.core.somaxconn $(cat /proc/sys/net/core/somaxconn)," \
        "ports $(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range), tcp_mem $(tr '\t' ' ' </proc/sys/net/ipv4/tcp_mem) pages"
    rendezvous_load_run "rendezvous idle (loopback)" "$idle" 1024 -- \
        idle --connections "$idle" --window-secs "${BENCH_IDLE_WINDOW:-60}"
    rendezvous_load_run "rendezvous churn (loopback)" 4096 0 -- \
        churn --pairs "${BENCH_CHURN_PAIRS:-32}" --secs "${BENCH_CHURN_SECS:-30}"
    rendezvous_load_run "rendezvous latency (loopback)" "$latency_idle" 0 -- \
        latency --idle "$latency_idle" --samples "${BENCH_LATENCY_SAMPLES:-1000}"
fi

if ! section lab; then
    :
elif [ "$(id -u)" -eq 0 ] && [ "${BENCH_LAB:-1}" = 1 ]; then
    lab_used=1
    lab_case() { # LABEL FLAGS... -- UP ARGS...
        local label=$1 flags=() up=()
        shift
        while [ "$1" != -- ]; do flags+=("$1"); shift; done
        shift
        up=("$@")
        if [ -n "${BENCH_LAB_ONLY:-}" ] && ! [[ $label =~ $BENCH_LAB_ONLY ]]; then return 0; fi
        "$LAB" up "${up[@]}" >/dev/null
        [ "${up[0]}" = upnp ] && "$LAB" stun stop >/dev/null
        "$LAB" exec server -- "$FERRY" serve --listen 203.0.113.10:443 --stun-listen 203.0.113.10:3478 \
            --stun-alt-ip 203.0.113.11 --relay-rate off --relay-total-rate off >/dev/null 2>&1 &
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
    lab_case "lab public <-> public, QUIC" --force-path udp -- nat --a none --b none
    lab_case "lab public <-> public, TCP" --force-path tcp -- nat --a none --b none
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
[ -z "$bench_failed" ] || die "some load figures failed (FAILED above)"
