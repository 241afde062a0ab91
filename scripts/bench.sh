#!/usr/bin/env bash
# Benchmarks with the release binary: ONE summary table at the end, every
# figure measured side by side in one run, medians of RUNS, ratios printed
# under the table and never asserted (machines here are shared).
#
#   scripts/bench.sh [--peers] [--micro] [SIZE_MIB] [RUNS]   SIZE_MIB default 1024, RUNS default 3
#   BENCH_ONLY=loopback|relay-load|rendezvous-load|cluster-load|lab|peers|micro scripts/bench.sh ...   one section only
#
#   --peers  also ferry beside magic-wormhole, wormhole-william, croc and
#            sendme (scripts/bench-peers.sh SIZE_MIB RUNS: its own table,
#            printed after this one; root; BENCH_PEERS_SENDME=1 adds sendme)
#   --micro  also the criterion micro-benchmarks (scripts/bench-micro.sh,
#            its own table; BENCH_MICRO_QUICK=1 for a short run)
#
# Columns: path taken; MiB/s and MB/s (1e6 bytes); time (the receiver's own
# transfer time, or for the set-up and small-files rows from the sender's
# start to the receiver's exit); CPU seconds per GiB and CPU seconds of each
# side (user+system); each side's peak RSS (/usr/bin/time %M); time from the
# receiver's start to its first data byte; runs; a note. "-" where a column
# means nothing (iperf3, quic_bench; rates and per-GiB figures under 1 MiB).
# The load figures of sections 2, 2b and 2c have columns of their own: they
# are lines of their own in the table. Every file is checked (cmp; a folder
# with diff -r, once). Binaries come from CARGO_TARGET_DIR (default target/).
#
# 1. Loopback (BENCH_ONLY=loopback), against one local `ferry serve`:
#    - SIZE_MIB of random data over direct TLS/TCP, QUIC (--force-path udp)
#      and the relay (with the server's CPU s per GiB relayed), --no-upnp;
#    - ceilings: iperf3 TCP (-t 5) and iperf3 UDP (-u -b 0 -w 8M -t 3, the
#      rate the receiver got; iperf3 sizes the datagrams and, without GSO,
#      can fall below QUIC on 1500-byte links), on 127.0.0.1;
#    - the raw transports, without files or hashing: the quic_bench example
#      (TLS over TCP and QUIC over UDP, SIZE_MIB, RUNS; its own ratio);
#    - set-up: a 4 KiB file from the sender's start to the receiver's exit,
#      median of max(RUNS, 5), with and without --no-upnp (paths raced). As
#      root this runs in a network namespace of its own: loopback, and a
#      default route (from 10.99.0.2) into a veth pair it holds both ends of,
#      so the SSDP search reaches no real network and no gateway answers;
#      otherwise in this host's namespace;
#    - many small files: BENCH_SMALL_FILES (default 10000) files of 4 KiB in
#      50 folders over direct TCP and QUIC, from the sender's start to the
#      receiver's exit, received under the work folder in /var/tmp (a real
#      disk, not tmpfs: fsync counts), diff -r once.
# 2. Relay load on loopback (BENCH_ONLY=relay-load): BENCH_RELAY_PAIRS
#    (default 200) relayed pairs at once through one `ferry serve`, each
#    pushing BENCH_RELAY_MIB (default 16) MiB one way (the relay_load
#    example, which checks every byte): aggregate rate, the server's peak RSS
#    (VmRSS sampled every 100 ms, and VmHWM) and its CPU seconds; a fresh
#    server per run.
# 2b. Rendezvous load on loopback (BENCH_ONLY=rendezvous-load; the
#    rendezvous_load example, clients spread over many 127.B.C.D source
#    addresses, 8 each), once each, a fresh `ferry serve` per figure, its
#    VmHWM and CPU seconds reported:
#    - BENCH_IDLE (default 100000) idle signalling clients, each holding a
#      nameplate, heartbeats counted over BENCH_IDLE_WINDOW (default 60) s:
#      every one must be answered;
#    - churn: BENCH_CHURN_PAIRS (default 32) pairs repeating the whole
#      allocate/claim/exchange/release cycle for BENCH_CHURN_SECS (30) s;
#    - p50/p99 of one mailbox message (BENCH_LATENCY_SAMPLES, default 1000)
#      while BENCH_LATENCY_IDLE (default 50000) idle clients are connected.
#    Needs `ulimit -n` above BENCH_IDLE + 1024 for each process: the bench
#    raises it (root with CAP_SYS_RESOURCE for the hard limit; fs.nr_open
#    too if needed, restored at exit).
# 2c. Cluster load on loopback (BENCH_ONLY=cluster-load; the rendezvous_load
#    example, as in 2b), side by side: (a) one `ferry serve` in memory (no
#    --cluster), (b) one instance on Redis (--cluster redis://127.0.0.1:PORT/0
#    --instance-id one), (c) two instances on one Redis, each pair's sender
#    on instance one and its receiver (the claiming side) on instance two
#    (rendezvous_load --claim-server), so every mailbox message crosses Redis
#    pub/sub. A fresh redis-server (/usr/bin/redis-server, --save ''
#    --appendonly no, bound to 127.0.0.1 on a free port) and fresh instances
#    per figure:
#    - churn: BENCH_CLUSTER_PAIRS (default 16) pairs repeating the whole
#      allocate/claim/exchange/release cycle for BENCH_CLUSTER_SECS (20) s:
#      pairings per second, cycle p50/p99;
#    - p50/p99 of one mailbox message (BENCH_CLUSTER_SAMPLES, default 1000)
#      while BENCH_CLUSTER_IDLE (default 1000) idle clients hold nameplates
#      on instance one.
#    One table, a row per setup: the failed cycles and messages (timeouts
#    included: Redis pub/sub is at-most-once and an instance's inbox has a
#    bounded depth), the CPU seconds of every instance and of redis-server
#    (churn + latency); the first failure reasons under it. A failure makes
#    the bench exit non-zero, as in 2b.
# 3. Lab (BENCH_ONLY=lab; as root, BENCH_LAB=0 skips it; scripts/lab.sh,
#    the server on 203.0.113.10:443, a sends, b receives): per topology,
#    SIZE_MIB and the time from the receiver's start to the first data byte;
#    between two public hosts (the veth link without NATs) raced, QUIC, TCP
#    and relay side by side, with iperf3 TCP and UDP ceilings from a to b
#    (as on loopback); QUIC against TLS over TCP (simultaneous open) through
#    the same port-restricted NATs; raced through full-cone NATs, on one LAN,
#    with UDP blocked, with UPnP, behind a double NAT. BENCH_LAB_ONLY=REGEX
#    runs only the lab cases whose label matches (e.g. public).
#    FERRY_LAB_ID=X (1-3 of a-z0-9) is passed to scripts/lab.sh: a lab of
#    its own beside another one.
#
# Ratios under the table (of the MB/s medians, on the same link): QUIC /
# direct TCP, relay / direct TCP, each against the iperf3 TCP ceiling, QUIC
# against iperf3 UDP, and ferry against the raw transports of quic_bench.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

want_peers=
want_micro=
while [ $# -gt 0 ]; do
    case $1 in
        --peers) want_peers=1 ;;
        --micro) want_micro=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d'
            exit 0
            ;;
        -*) die "unknown option $1 (try --help)" ;;
        *) break ;;
    esac
    shift
done
size_mib=${1:-1024}
runs=${2:-3}
[[ $size_mib =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a whole number of MiB, 1 or more"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a whole number, 1 or more"
only=${BENCH_ONLY:-}
case $only in "" | loopback | relay-load | rendezvous-load | cluster-load | lab | peers | micro) ;; *) die "BENCH_ONLY must be loopback, relay-load, rendezvous-load, cluster-load, lab, peers or micro" ;; esac
# The peers and micro sections have tables and set-up of their own: run
# them and stop when they are the only section asked for.
if [ "$only" = peers ]; then exec "$FERRY_ROOT/scripts/bench-peers.sh" "$size_mib" "$runs"; fi
if [ "$only" = micro ]; then exec "$FERRY_ROOT/scripts/bench-micro.sh"; fi
# section NAME: whether to run that section
section() { [ -z "$only" ] || [ "$only" = "$1" ]; }
ensure_rust
command -v /usr/bin/time >/dev/null 2>&1 || apt_install time
command -v jq >/dev/null 2>&1 || apt_install jq
command -v iperf3 >/dev/null 2>&1 || apt_install iperf3
say "building ferry (release)"
cargo build --release --locked -p ferry
TARGET=${CARGO_TARGET_DIR:-$FERRY_ROOT/target}
FERRY="$TARGET/release/ferry"
if section loopback; then
    cargo build --release --locked -p ferry-tests --example quic_bench
fi
if section relay-load; then
    cargo build --release --locked -p ferry-tests --example relay_load
fi
if section rendezvous-load || section cluster-load; then
    cargo build --release --locked -p ferry-tests --example rendezvous_load
fi
if section cluster-load; then
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
fi
QUIC_BENCH="$TARGET/release/examples/quic_bench"
RELAY_LOAD="$TARGET/release/examples/relay_load"
RENDEZVOUS_LOAD="$TARGET/release/examples/rendezvous_load"
LAB="$FERRY_ROOT/scripts/lab.sh"

work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
pids=()
lab_used=
nr_open_was=
setup_ns=
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "$nr_open_was" ] && sysctl -qw fs.nr_open="$nr_open_was"
    [ -n "$lab_used" ] && "$LAB" down >/dev/null 2>&1
    [ -n "$setup_ns" ] && ip netns del "$setup_ns" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

if section loopback || section lab; then
    say "generating a ${size_mib} MiB random file"
    head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/bench.bin"
fi
size_bytes=$((size_mib * 1024 * 1024))

# forget_pid PID: after it was waited for, so cleanup never kills a reused PID
forget_pid() {
    local keep=() pid
    for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    pids=("${keep[@]}")
}

# stop_tree PID: stops a process this script started and its children (a
# wrapper such as /usr/bin/time or ip netns exec, then ferry under it)
stop_tree() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do kill "$child" 2>/dev/null || true; done
    kill "$1" 2>/dev/null || true
}

# table_row FIELDS...: one row of the summary table, tab-separated: key (for
# the ratios; may be empty), label (empty: not shown), path, MB/s, time s,
# CPU s send, recv, CPU s/GiB send, recv, peak RSS MiB send, recv, first
# byte s, runs, note. "" or nan shows as "-".
table_row() {
    [ $# -eq 14 ] || die "table_row wants 14 fields, got $#"
    local IFS=$'\t'
    printf '%s\n' "$*"
}

# What one_transfer sends (a file or a folder), and whether it checks the
# copy (cmp; diff -r for a folder).
xfer_src=$work/bench.bin
xfer_verify=1

# one_transfer SERVER WRAP_SEND WRAP_RECV [FLAGS...]: one transfer of
# $xfer_src into $work/dst; prints "secs send_cpu recv_cpu first_byte_secs
# path wall_secs send_rss_kib recv_rss_kib": secs is the receiver's own
# transfer time (its done event), first_byte_secs counts from the
# receiver's start, wall_secs from the sender's start to the receiver's exit.
one_transfer() {
    local server=$1 wrap_send=$2 wrap_recv=$3
    shift 3
    rm -rf "$work/dst" "$work/first" "$work/send.fifo"
    mkdir -p "$work/dst"
    mkfifo "$work/send.fifo"
    : >"$work/send.out"
    local t0=$EPOCHREALTIME sender sfd line code="" start first="" drain t1
    # shellcheck disable=SC2086
    $wrap_send /usr/bin/time -f "%U %S %M" -o "$work/send.time" "$FERRY" send --json --server "$server" "$@" "$xfer_src" >"$work/send.fifo" 2>"$work/send.log" &
    sender=$!
    exec {sfd}<"$work/send.fifo"
    # The code as soon as the sender prints it: no polling, so the set-up
    # figure counts no wait of ours.
    while IFS= read -r -t 30 -u "$sfd" line; do
        printf '%s\n' "$line" >>"$work/send.out"
        if [[ $line == *'"event":"code"'* && $line =~ \"code\":\"([^\"]+)\" ]]; then
            code=${BASH_REMATCH[1]}
            break
        fi
    done
    cat <&"$sfd" >>"$work/send.out" &
    drain=$!
    exec {sfd}<&-
    if [ -z "$code" ]; then
        stop_tree "$sender"
        die "no code from the sender: $(cat "$work/send.out") $(tail -3 "$work/send.log")"
    fi
    start=$EPOCHREALTIME
    # shellcheck disable=SC2086
    $wrap_recv /usr/bin/time -f "%U %S %M" -o "$work/recv.time" "$FERRY" receive --json --yes --server "$server" --out "$work/dst" "$@" "$code" 2>"$work/recv.log" \
        | while IFS= read -r line; do
            if [ -z "$first" ] && [[ $line == *'"progress"'* ]] && [[ $line != *'"bytes_done":0,'* ]]; then
                first=1
                echo "$EPOCHREALTIME" >"$work/first"
            fi
            echo "$line"
        done >"$work/recv.out" || {
        stop_tree "$sender"
        die "the receiver failed: $(tail -3 "$work/recv.out") $(tail -3 "$work/recv.log")"
    }
    t1=$EPOCHREALTIME
    wait "$sender" || die "the sender failed: $(tail -3 "$work/send.out")"
    wait "$drain" || true
    if [ "$xfer_verify" = 1 ]; then
        local got=$work/dst/${xfer_src##*/}
        if [ -d "$xfer_src" ]; then
            diff -r "$xfer_src" "$got" >/dev/null || die "the received folder differs (diff -r $xfer_src $got)"
        else
            cmp -s "$xfer_src" "$got" || die "the received file differs"
        fi
    fi
    local secs path first_byte=nan
    secs=$(jq -r 'select(.event == "done") | .secs' "$work/recv.out")
    path=$(jq -r 'select(.event == "path") | .path' "$work/recv.out" | head -n1)
    [ -f "$work/first" ] && first_byte=$(awk -v a="$(cat "$work/first")" -v b="$start" 'BEGIN {printf "%.4f", a - b}')
    # The last line of a time file: it starts with a note when the command failed.
    echo "$secs $(awk 'END {print $1 + $2}' "$work/send.time") $(awk 'END {print $1 + $2}' "$work/recv.time") $first_byte ${path:-?}" \
        "$(awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.4f", a - b}') $(awk 'END {print $3}' "$work/send.time") $(awk 'END {print $3}' "$work/recv.time")"
}

# median_report KEY LABEL BYTES secs|wall [NOTE] [FILES]: reads rows of
# one_transfer, prints one table row of their medians. The time is the
# receiver's transfer time (secs) or from the sender's start to the
# receiver's exit (wall); the rate is BYTES over the median time. Rates and
# CPU per GiB are left out under 1 MiB; FILES adds files per second to NOTE.
median_report() {
    python3 -c '
import math, statistics, sys
key, label, nbytes, timing = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
note = sys.argv[5] if len(sys.argv) > 5 else ""
files = int(sys.argv[6]) if len(sys.argv) > 6 else 0
rows = [l.split() for l in sys.stdin if l.strip()]
def med(i):
    v = [float(r[i]) for r in rows if r[i] != "nan"]
    return statistics.median(v) if v else math.nan
secs = med(0 if timing == "secs" else 5)
big = nbytes >= 2**20
per_gib = lambda c: c / (nbytes / 2**30) if big else math.nan
if files:
    note = ", ".join(x for x in (f"{files / secs:.0f} files/s", note) if x)
path = "/".join(sorted({r[4] for r in rows}))
send, recv = med(1), med(2)
fields = [key, label, path, nbytes / 1e6 / secs if big else math.nan, secs, send, recv,
          per_gib(send), per_gib(recv), med(6) / 1024, med(7) / 1024, med(3), len(rows), note]
print("\t".join(str(f) for f in fields))
' "$@"
}

# cpu_secs PID: user+system CPU seconds a process has used so far
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

# start_local_server WRAP OUT: a `ferry serve` on 127.0.0.1 (run under WRAP,
# e.g. nsenter into a namespace); sets server (its signalling address) and
# server_pid
start_local_server() {
    # shellcheck disable=SC2086
    $1 "$FERRY" serve --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0 --stun-second-port 0 --relay-rate off --relay-total-rate off --json >"$2" 2>"$2.log" &
    server_pid=$!
    pids+=("$server_pid")
    server=
    for _ in $(seq 1 100); do
        server=$(jq -r 'select(.event == "listening") | .signal' "$2" 2>/dev/null | head -n1)
        [ -n "$server" ] && break
        sleep 0.1
    done
    [ -n "$server" ] || die "ferry serve did not start: $(tail -3 "$2.log")"
}

# iperf_ceilings KEY_PREFIX LABEL WRAP_SERVER WRAP_CLIENT ADDR: iperf3 TCP
# (-t 5) and UDP (-u -b 0 -w 8M -t 3: as fast as it can, 8 MiB socket
# buffers, in iperf3's datagrams, sized from the link's MSS: 32 KiB on
# loopback, 1448 bytes on the lab's veths; the rate the receiver got, with
# the loss and the size in the note) from the client to a one-shot server
# bound to ADDR; appends two rows to results (PROTO in LABEL becomes TCP or
# UDP). iperf3 sends one datagram per system call (no GSO, unlike QUIC
# here), so on a 1500-byte link its UDP figure can fall below QUIC's.
iperf_ceilings() {
    local prefix=$1 label=$2 wrap_s=$3 wrap_c=$4 addr=$5 proto spid ok mbps note opts
    for proto in tcp udp; do
        opts=(-t 5)
        [ "$proto" = udp ] && opts=(-u -b 0 -w 8M -t 3)
        # shellcheck disable=SC2086
        $wrap_s iperf3 -s -1 -B "$addr" -p 5299 >/dev/null 2>&1 &
        spid=$!
        pids+=("$spid")
        ok=
        for _ in $(seq 1 50); do # until the server listens
            # iperf3 -J may exit 0 on an error ("connection refused"): its JSON says.
            # shellcheck disable=SC2086
            if $wrap_c iperf3 -c "$addr" -p 5299 -J "${opts[@]}" >"$work/iperf.json" 2>/dev/null \
                && jq -e 'has("error") | not' "$work/iperf.json" >/dev/null 2>&1; then
                ok=1
                break
            fi
            sleep 0.1
        done
        [ -n "$ok" ] || kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        forget_pid "$spid"
        mbps=nan
        note="iperf3 ${opts[*]} failed"
        if [ -n "$ok" ] && [ "$proto" = tcp ]; then
            mbps=$(jq -r '.end.sum_received.bits_per_second / 8e6' "$work/iperf.json")
            note="iperf3 ${opts[*]}"
        elif [ -n "$ok" ]; then
            mbps=$(jq -r '(.end.sum_received.bits_per_second // (.end.sum.bits_per_second * (100 - .end.sum.lost_percent) / 100)) / 8e6' "$work/iperf.json")
            note=$(jq -r --arg o "${opts[*]}" '"iperf3 \($o): received; \(.end.sum.lost_percent | floor)% lost, \((.end.sum_sent // .end.sum) | .bytes / .packets | floor)-byte datagrams"' "$work/iperf.json")
        fi
        results+=("$(table_row "$prefix:iperf-$proto" "${label//PROTO/${proto^^}}" - "$mbps" "" "" "" "" "" "" "" "" 1 "$note")")
    done
}

results=()
if section loopback; then
    say "loopback: $size_mib MiB, $runs runs each"
    start_local_server "" "$work/server.out"
    for label in "TLS over TCP (loopback)" "QUIC over UDP (loopback)" "relay (loopback)"; do
        case $label in
            QUIC*) key=quic flags=(--force-path udp --no-upnp) ;;
            TLS*) key=tcp flags=(--force-path tcp --no-upnp) ;;
            *) key=relay flags=(--force-path relay --no-upnp) ;;
        esac
        before=$(cpu_secs "$server_pid")
        rows=$(for _ in $(seq 1 "$runs"); do one_transfer "$server" "" "" "${flags[@]}"; done)
        after=$(cpu_secs "$server_pid")
        note=
        if [ "$key" = relay ]; then
            note=$(awk -v a="$after" -v b="$before" -v g="$((runs * size_mib))" 'BEGIN {printf "serve %.2f CPU s/GiB relayed", (a - b) * 1024 / g}')
        fi
        results+=("$(echo "$rows" | median_report "loopback:$key" "$label" "$size_bytes" secs "$note")")
    done
    iperf_ceilings loopback "iperf3 PROTO ceiling (loopback)" "" "" 127.0.0.1

    say "quic_bench (the raw transports): $size_mib MiB, $runs runs"
    "$QUIC_BENCH" "$size_mib" "$runs" >"$work/quic_bench.out" || die "quic_bench failed"
    # Its three lines: "TLS over TCP  N MB/s ...", "QUIC over UDP N MB/s ...", "QUIC / TCP R"
    raw_tcp=$(awk '/^TLS over TCP/ {print $4}' "$work/quic_bench.out")
    raw_quic=$(awk '/^QUIC over UDP/ {print $4}' "$work/quic_bench.out")
    raw_ratio=$(awk '/^QUIC \/ TCP/ {print $4}' "$work/quic_bench.out")
    results+=("$(table_row loopback:raw-tcp "quic_bench TLS over TCP (loopback)" - "$raw_tcp" "" "" "" "" "" "" "" "" "$runs" "raw transport: no files, no hashing")")
    results+=("$(table_row loopback:raw-quic "quic_bench QUIC over UDP (loopback)" - "$raw_quic" "" "" "" "" "" "" "" "" "$runs" "raw transport: no files, no hashing")")
    results+=("$(table_row loopback:raw-ratio "" - "$raw_ratio" "" "" "" "" "" "" "" "" "$runs" "")")

    small_files=${BENCH_SMALL_FILES:-10000}
    [[ $small_files =~ ^[0-9]+$ ]] || die "BENCH_SMALL_FILES must be a number of files"
    if [ "$small_files" -gt 0 ]; then
        say "many small files: $small_files x 4 KiB in 50 folders (loopback, into $work), $runs runs each"
        python3 -c '
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 50:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(4096))
' "$work/small" "$small_files"
        xfer_src=$work/small
        : >"$work/small-tcp.rows"
        : >"$work/small-quic.rows"
        for run in $(seq 1 "$runs"); do # interleaved; diff -r after the first of each
            xfer_verify=$((run == 1))
            one_transfer "$server" "" "" --force-path tcp --no-upnp >>"$work/small-tcp.rows"
            one_transfer "$server" "" "" --force-path udp --no-upnp >>"$work/small-quic.rows"
        done
        xfer_verify=1
        small_label="$small_files x 4 KiB files"
        results+=("$(median_report loopback:small-tcp "$small_label, TCP (loopback)" $((small_files * 4096)) wall "" "$small_files" <"$work/small-tcp.rows")")
        results+=("$(median_report loopback:small-quic "$small_label, QUIC (loopback)" $((small_files * 4096)) wall "" "$small_files" <"$work/small-quic.rows")")
        rm -rf "$work/small" "$work/dst"
    fi

    setup_runs=$((runs > 5 ? runs : 5))
    head -c 4096 /dev/urandom >"$work/setup.bin"
    setup_wrap=
    setup_note="this host's namespace"
    if [ "$(id -u)" -eq 0 ] && command -v nsenter >/dev/null; then
        # A namespace with loopback and a default route into a veth pair
        # whose both ends it holds: UPnP searches from 10.99.0.2 as on a LAN,
        # and nothing answers or leaves the namespace.
        setup_ns=ferry-bench-$$
        ip netns add "$setup_ns"
        ip -n "$setup_ns" link set lo up
        ip -n "$setup_ns" link add lan0 type veth peer name lan1
        ip -n "$setup_ns" addr add 10.99.0.2/24 dev lan0
        ip -n "$setup_ns" link set lan0 up
        ip -n "$setup_ns" link set lan1 up
        ip -n "$setup_ns" route add default via 10.99.0.1
        setup_wrap="nsenter --net=/run/netns/$setup_ns --"
        setup_note="own netns, no gateway"
        start_local_server "$setup_wrap" "$work/setup-server.out"
    fi
    say "set-up: a 4 KiB file, with and without --no-upnp ($setup_note), $setup_runs runs each"
    xfer_src=$work/setup.bin
    : >"$work/setup-upnp.rows"
    : >"$work/setup-noupnp.rows"
    for _ in $(seq 1 "$setup_runs"); do # interleaved
        one_transfer "$server" "$setup_wrap" "$setup_wrap" >>"$work/setup-upnp.rows"
        one_transfer "$server" "$setup_wrap" "$setup_wrap" --no-upnp >>"$work/setup-noupnp.rows"
    done
    xfer_src=$work/bench.bin
    results+=("$(median_report loopback:setup-upnp "set-up, 4 KiB (loopback)" 4096 wall "$setup_note" <"$work/setup-upnp.rows")")
    results+=("$(median_report loopback:setup-noupnp "set-up, 4 KiB, --no-upnp (loopback)" 4096 wall "$setup_note" <"$work/setup-noupnp.rows")")
fi

# rss_kib PID FIELD: a /proc/PID/status field in KiB (VmRSS, VmHWM)
rss_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
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

# start_rv_server OUT CONNECTIONS [FLAGS...]: a `ferry serve` for the
# rendezvous load on 127.0.0.1 (no STUN), sized for CONNECTIONS clients,
# with FLAGS (e.g. --cluster URL --instance-id NAME), its JSON events in OUT
# and its log in OUT.log; tracked in pids. Sets rv_addr (its signalling
# address) and rv_pid.
start_rv_server() {
    local out=$1 conns=$2 extra=()
    shift 2
    # A nameplate per idle client, when this server has the flag.
    if "$FERRY" serve --help | grep -q -- '--max-nameplates'; then
        extra+=(--max-nameplates $((conns + 4096)))
    fi
    "$FERRY" serve --listen 127.0.0.1:0 --no-stun --json \
        --max-connections $((conns + 4096)) "${extra[@]}" "$@" >"$out" 2>"$out.log" &
    rv_pid=$!
    pids+=("$rv_pid")
    rv_addr=
    for _ in $(seq 1 100); do
        rv_addr=$(jq -r 'select(.event == "listening") | .signal' "$out" 2>/dev/null | head -n1)
        [ -n "$rv_addr" ] && break
        kill -0 "$rv_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$rv_addr" ] || die "ferry serve did not start: $(tail -3 "$out.log")"
}

# rendezvous_load_run LABEL CONNECTIONS MAX_HWM_MIB -- GENERATOR ARGS...: the
# generator against a fresh `ferry serve` sized for CONNECTIONS clients;
# appends the generator's summary with the server's VmHWM, peak VmRSS
# (sampled every 100 ms) and CPU seconds to results. A failed generator
# (the server did not hold) or a VmHWM over MAX_HWM_MIB (0: no bound) is
# reported as FAILED and makes the bench exit non-zero at the end.
rendezvous_load_run() {
    local label=$1 conns=$2 max_hwm=$3 rv_addr rv_pid
    shift 4
    start_rv_server "$work/rv-serve.out" "$conns"
    local spid=$rv_pid addr=$rv_addr
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

# stop_pid PID: stops a process this script started, waits for it and
# forgets it
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# start_redis: a fresh redis-server on a free loopback port, nothing saved
# (--save '' --appendonly no), tracked in pids. Sets redis_url and
# redis_pid. The port is checked to be this redis-server's own (its
# process_id), not another one that took the port meanwhile.
start_redis() {
    local port owner
    redis_url=
    for _ in 1 2 3 4 5; do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
        redis_pid=$!
        pids+=("$redis_pid")
        for _ in $(seq 1 50); do
            owner=$(redis-cli -h 127.0.0.1 -p "$port" info server 2>/dev/null | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}' || true)
            if [ "$owner" = "$redis_pid" ]; then
                redis_url=redis://127.0.0.1:$port/0
                return 0
            fi
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        stop_pid "$redis_pid"
    done
    die "redis-server did not start: $(tail -3 "$work/redis.log")"
}

# cluster_run SETUP CONNECTIONS BOUND_SECS JSON -- GENERATOR ARGS...: for
# SETUP (memory: one instance without --cluster; redis-1: one instance on
# a fresh Redis; redis-2: two instances on a fresh Redis, the claiming side
# on the second) fresh instances sized for CONNECTIONS clients, then the
# generator (stopped after BOUND_SECS), its JSON in JSON; then everything
# is stopped. Sets cl_rc (the generator's exit code), cl_cpu (the CPU
# seconds of all instances during the run) and cl_redis_cpu ("-" without
# Redis).
cluster_run() {
    local setup=$1 conns=$2 bound=$3 json=$4 rv_addr rv_pid redis_url redis_pid=
    shift 5
    local spids=() addrs=() name n=0
    if [ "$setup" != memory ]; then start_redis; fi
    for name in one two; do
        n=$((n + 1))
        case $setup in memory | redis-1) [ "$n" -eq 1 ] || break ;; esac
        if [ "$setup" = memory ]; then
            start_rv_server "$work/cl-$name.out" "$conns"
        else
            start_rv_server "$work/cl-$name.out" "$conns" --cluster "$redis_url" --instance-id "$name"
        fi
        spids+=("$rv_pid")
        addrs+=("$rv_addr")
    done
    local claim=${addrs[${#addrs[@]} - 1]} before=0 rbefore=0 pid
    for pid in "${spids[@]}"; do before=$(awk -v a="$before" -v b="$(cpu_secs "$pid")" 'BEGIN {print a + b}'); done
    [ -n "$redis_pid" ] && rbefore=$(cpu_secs "$redis_pid")
    say "  $setup: rendezvous_load --server ${addrs[0]} --claim-server $claim $*"
    "$RENDEZVOUS_LOAD" --server "${addrs[0]}" --claim-server "$claim" "$@" >"$json" 2>"$json.log" &
    local lpid=$!
    pids+=("$lpid")
    for _ in $(seq 1 $((bound * 10))); do
        kill -0 "$lpid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$lpid" 2>/dev/null || true
    cl_rc=0
    wait "$lpid" || cl_rc=$?
    forget_pid "$lpid"
    local after=0
    for pid in "${spids[@]}"; do after=$(awk -v a="$after" -v b="$(cpu_secs "$pid")" 'BEGIN {print a + b}'); done
    cl_cpu=$(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", a - b}')
    cl_redis_cpu=-
    [ -n "$redis_pid" ] && cl_redis_cpu=$(awk -v a="$(cpu_secs "$redis_pid")" -v b="$rbefore" 'BEGIN {printf "%.2f", a - b}')
    for pid in "${spids[@]}"; do stop_pid "$pid"; done
    [ -z "$redis_pid" ] || stop_pid "$redis_pid"
    # The instances' warnings and errors, for the report.
    for name in one two; do
        [ -f "$work/cl-$name.out.log" ] || continue
        grep -E 'WARN|ERROR' "$work/cl-$name.out.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e "s/^/$setup instance $name: /" >>"$work/cl-warnings" || true
        rm -f "$work/cl-$name.out" "$work/cl-$name.out.log"
    done
}

if section cluster-load; then
    cl_pairs=${BENCH_CLUSTER_PAIRS:-16}
    cl_secs=${BENCH_CLUSTER_SECS:-20}
    cl_idle=${BENCH_CLUSTER_IDLE:-1000}
    cl_samples=${BENCH_CLUSTER_SAMPLES:-1000}
    for v in "$cl_pairs" "$cl_secs" "$cl_idle" "$cl_samples"; do
        [[ $v =~ ^[0-9]+$ ]] || die "BENCH_CLUSTER_PAIRS, _SECS, _IDLE and _SAMPLES must be whole numbers"
    done
    raise_nofile $((cl_idle + 1024))
    say "cluster load (loopback): churn $cl_pairs pairs for $cl_secs s; latency of $cl_samples messages with $cl_idle idle clients; redis $(redis-server --version | awk '{print $3}')"
    cl_started=$EPOCHREALTIME
    : >"$work/cl-rows"
    : >"$work/cl-warnings"
    for setup in memory redis-1 redis-2; do
        cluster_run "$setup" 4096 $((cl_secs + 120)) "$work/cl-$setup-churn.json" -- \
            churn --pairs "$cl_pairs" --secs "$cl_secs"
        churn_rc=$cl_rc churn_cpu=$cl_cpu churn_redis=$cl_redis_cpu
        cluster_run "$setup" "$cl_idle" 600 "$work/cl-$setup-latency.json" -- \
            latency --idle "$cl_idle" --samples "$cl_samples" --setup-secs 120 --budget-secs 120
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$setup" "$churn_rc" "$churn_cpu" "$churn_redis" \
            "$cl_rc" "$cl_cpu" "$cl_redis_cpu" "$work/cl-$setup" >>"$work/cl-rows"
        [ "$churn_rc" -eq 0 ] && [ "$cl_rc" -eq 0 ] || bench_failed=1
    done
    cl_took=$(awk -v a="$EPOCHREALTIME" -v b="$cl_started" 'BEGIN {printf "%.0f", a - b}')
    # The table's lines (no tab: shown as they are).
    while IFS= read -r line; do results+=("$line"); done < <(python3 - "$work/cl-rows" "$work/cl-warnings" "$cl_pairs" "$cl_secs" "$cl_idle" "$cl_samples" "$cl_took" <<'PY'
import json, sys
rows_file, warnings_file, pairs, secs, idle, samples, took = sys.argv[1:]
labels = {
    "memory": "(a) 1 instance, in memory",
    "redis-1": "(b) 1 instance on Redis",
    "redis-2": "(c) 2 instances on Redis",
}
def load(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
def num(d, k, spec):
    v = None if d is None else d.get(k)
    return "-" if v is None else format(v, spec)
out = [f"cluster load (loopback; churn {pairs} pairs x {secs} s, latency with {idle} idle; section took {took} s):",
       f"  {'setup':<27} {'pairings/s':>10} {'cycle p50':>9} {'p99 ms':>7} {'msg p50':>8} {'p99 ms':>7}"
       f" {'failed churn':>12} {'failed msg':>10} {'serve CPU s churn+lat':>21} {'redis CPU s':>12}"]
notes = []
for line in open(rows_file).read().splitlines():
    setup, crc, ccpu, credis, lrc, lcpu, lredis, base = line.split("\t")
    churn, lat = load(base + "-churn.json"), load(base + "-latency.json")
    cfail = "no report" if churn is None else f"{churn['failures']}/{churn['failures'] + churn['cycles']}"
    lfail = "no report" if lat is None else f"{int(samples) - lat['samples']}/{samples}"
    redis = "-" if credis == "-" else f"{float(credis):.2f}+{float(lredis):.2f}"
    flag = "" if crc == "0" and lrc == "0" else "  FAILED"
    out.append(f"  {labels[setup]:<27} {num(churn, 'cycles_per_sec', '.1f'):>10} {num(churn, 'cycle_ms_p50', '.2f'):>9}"
               f" {num(churn, 'cycle_ms_p99', '.2f'):>7} {num(lat, 'message_ms_p50', '.3f'):>8} {num(lat, 'message_ms_p99', '.3f'):>7}"
               f" {cfail:>12} {lfail:>10} {f'{float(ccpu):.2f}+{float(lcpu):.2f}':>21} {redis:>12}{flag}")
    for what, d, rc in (("churn", churn, crc), ("latency", lat, lrc)):
        if d is None:
            notes.append(f"    {labels[setup]} {what}: no report (exit {rc})")
            continue
        reasons = list(d.get("failure_reasons") or []) + list((d.get("idle") or {}).get("failure_reasons") or [])
        if rc != "0" or reasons:
            notes.append(f"    {labels[setup]} {what} (exit {rc}): {d.get('summary')}")
            for r in reasons[:5]:
                notes.append(f"      - {r}")
warnings = [l for l in open(warnings_file).read().splitlines() if l.strip()]
if warnings:
    notes.append(f"    instance warnings/errors: {len(warnings)}; the first:")
    notes += [f"      {w[:200]}" for w in warnings[:5]]
print("\n".join(out + notes))
PY
    )
fi

if ! section lab; then
    :
elif [ "$(id -u)" -eq 0 ] && [ "${BENCH_LAB:-1}" = 1 ]; then
    lab_used=1
    # lab_wanted LABEL: whether BENCH_LAB_ONLY lets that case run
    lab_wanted() { [ -z "${BENCH_LAB_ONLY:-}" ] || [[ $1 =~ $BENCH_LAB_ONLY ]]; }
    lab_case() { # KEY LABEL FLAGS... -- UP ARGS...   (KEY names the row for the ratios, or "")
        local key=$1 label=$2 flags=() up=()
        shift 2
        while [ "$1" != -- ]; do flags+=("$1"); shift; done
        shift
        up=("$@")
        lab_wanted "$label" || return 0
        "$LAB" up "${up[@]}" >/dev/null
        [ "${up[0]}" = upnp ] && "$LAB" stun stop >/dev/null
        "$LAB" exec server -- "$FERRY" serve --listen 203.0.113.10:443 --stun-listen 203.0.113.10:3478 \
            --stun-alt-ip 203.0.113.11 --relay-rate off --relay-total-rate off >/dev/null 2>&1 &
        local spid=$!
        pids+=("$spid")
        sleep 0.3
        local rows
        rows=$(for _ in $(seq 1 "$runs"); do
            one_transfer 203.0.113.10:443 "$LAB exec a --" "$LAB exec b --" "${flags[@]}"
        done)
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        forget_pid "$spid"
        results+=("$(echo "$rows" | median_report "$key" "$label" "$size_bytes" secs)")
    }
    # lab_ceilings KEY_PREFIX LABEL -- UP ARGS...: iperf3 TCP and UDP from a to b
    lab_ceilings() {
        local prefix=$1 label=$2
        shift 3
        lab_wanted "$label" || return 0
        "$LAB" up "$@" >/dev/null
        iperf_ceilings "$prefix" "$label" "$LAB exec b --" "$LAB exec a --" "$("$LAB" addr b)"
    }
    say "lab: per topology ($size_mib MiB, $runs runs each)"
    lab_case lab-public:auto "lab public <-> public" -- nat --a none --b none
    lab_case lab-public:quic "lab public <-> public, QUIC" --force-path udp -- nat --a none --b none
    lab_case lab-public:tcp "lab public <-> public, TCP" --force-path tcp -- nat --a none --b none
    lab_case lab-public:relay "lab public <-> public, relay" --force-path relay -- nat --a none --b none
    lab_ceilings lab-public "lab public <-> public, iperf3 PROTO ceiling" -- nat --a none --b none
    lab_case "" "lab port-restricted (race)" -- port-restricted
    lab_case "" "lab port-restricted, QUIC" --force-path udp -- port-restricted
    lab_case "" "lab port-restricted, TCP sim. open" --force-path tcp -- port-restricted
    lab_case "" "lab full-cone <-> full-cone" -- full-cone
    lab_case "" "lab same LAN" -- same-lan
    lab_case "" "lab UDP blocked" -- udp-blocked
    lab_case "" "lab UPnP" -- upnp
    lab_case "" "lab double NAT" -- double-nat
else
    say "skipping the lab benchmarks (not root, or BENCH_LAB=0)"
fi

# The summary table: rows of table_row (lines without a tab, from the load
# sections, are shown as they are), then the ratios of the MB/s medians,
# each between two rows of one link.
printf '%s\n' "${results[@]}" >"$work/results"
echo
python3 - "$work/results" <<'PY'
import math, sys

def num(v):
    try:
        x = float(v)
    except ValueError:
        return None
    return None if math.isnan(x) else x

def cell(v, spec, width, scale=1.0):
    x = num(v)
    return f"{'-' if x is None else format(x * scale, spec):>{width}}"

lines = open(sys.argv[1]).read().splitlines()
rows = [l.split("\t") if "\t" in l else l for l in lines if l.strip()]
table = [r for r in rows if isinstance(r, list) and r[1]]
lw = max([len(r[1]) for r in table] + [4])
pw = max([len(r[2]) for r in table] + [4])
print(f"{'':<{lw}}  {'':<{pw}}  {'':>7} {'':>7} {'':>8}  {'CPU s/GiB':>13}  {'CPU s':>13}  {'peak RSS MiB':>13}  {'first':>7}")
print(f"{'case':<{lw}}  {'path':<{pw}}  {'MiB/s':>7} {'MB/s':>7} {'time s':>8}  {'send':>6} {'recv':>6}  "
      f"{'send':>6} {'recv':>6}  {'send':>6} {'recv':>6}  {'byte s':>7} {'runs':>4}  note")
for r in rows:
    if not isinstance(r, list):
        print(r)
        continue
    if not r[1]:
        continue
    key, label, path, mbps, secs, cs, cr, gs, gr, rs, rr, first, n, note = r
    print(f"{label:<{lw}}  {path:<{pw}}  {cell(mbps, '.0f', 7, 1e6 / 2**20)} {cell(mbps, '.0f', 7)} {cell(secs, '.3f', 8)}  "
          f"{cell(gs, '.2f', 6)} {cell(gr, '.2f', 6)}  {cell(cs, '.2f', 6)} {cell(cr, '.2f', 6)}  "
          f"{cell(rs, '.1f', 6)} {cell(rr, '.1f', 6)}  {cell(first, '.3f', 7)} {n:>4}  {note}".rstrip())

vals = {r[0]: num(r[3]) for r in rows if isinstance(r, list) and r[0]}
links = [("loopback", "loopback"), ("lab-public", "lab public <-> public")]
pairs = [
    ("quic", "tcp", "QUIC / direct TCP"),
    ("relay", "tcp", "relay / direct TCP"),
    ("auto", "tcp", "raced / direct TCP"),
    ("tcp", "iperf-tcp", "direct TCP / iperf3 TCP"),
    ("quic", "iperf-tcp", "QUIC / iperf3 TCP"),
    ("relay", "iperf-tcp", "relay / iperf3 TCP"),
    ("auto", "iperf-tcp", "raced / iperf3 TCP"),
    ("quic", "iperf-udp", "QUIC / iperf3 UDP"),
    ("tcp", "raw-tcp", "direct TCP / quic_bench TLS over TCP"),
    ("quic", "raw-quic", "QUIC / quic_bench QUIC"),
    ("raw-ratio", None, "quic_bench QUIC / TCP (its own line)"),
    ("small-quic", "small-tcp", "small files QUIC / TCP"),
]
out = []
for prefix, name in links:
    got = []
    for a, b, what in pairs:
        x = vals.get(f"{prefix}:{a}")
        y = 1.0 if b is None else vals.get(f"{prefix}:{b}")
        if x is not None and y:
            over = "  (over the ceiling: see the note of its row)" if "iperf3" in what and x > y else ""
            got.append(f"  {name + ':':<23} {what:<38} {x / y:6.2f}{over}")
    out += got
if out:
    print()
    print("ratios of the MB/s medians above, each on one link (never asserted):")
    print("\n".join(out))
PY
if [ -n "$want_micro" ]; then
    say "criterion micro-benchmarks (scripts/bench-micro.sh)"
    "$FERRY_ROOT/scripts/bench-micro.sh" || bench_failed=1
fi
if [ -n "$want_peers" ]; then
    say "ferry beside other tools (scripts/bench-peers.sh $size_mib $runs)"
    "$FERRY_ROOT/scripts/bench-peers.sh" "$size_mib" "$runs" || bench_failed=1
fi
[ -z "$bench_failed" ] || die "some figures failed (FAILED above, or a section's own error)"
