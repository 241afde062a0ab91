#!/usr/bin/env bash
# ferry beside other file-transfer tools, side by side in ONE run: one
# table, every figure measured on the same link in the same run, medians of
# RUNS, ratios never asserted (machines here are shared). Needs root.
#
#   scripts/bench-peers.sh [SIZE_MIB] [RUNS]    SIZE_MIB default 1024, RUNS default 3
#   BENCH_PEERS_SENDME=1 scripts/bench-peers.sh ...   adds sendme (cargo install: a long compile)
#
# The link: two network namespaces, a (sender, 198.51.100.1) and b
# (receiver, 198.51.100.2), joined by one veth pair; a third namespace, s,
# holds every server (198.51.100.100 on its loopback, reached from a and b
# over a veth pair each; s does not forward, so a and b meet only on their
# own pair, and the relayed rows cross two links as through a real relay).
# No namespace has a default route or any route out of this machine: every
# tool is pointed at servers this script runs in s, and whatever a tool
# tries beyond them (a public relay, DNS, n0's relays) fails at once with
# "network unreachable". All three namespaces are on this machine, so
# sender, receiver and servers share its CPUs.
#
# Rows (a tool that cannot be installed gets a row "not installed: why"):
#   iperf3 TCP (ceiling)       iperf3 -t 5 from a to b, one stream
#   magic-wormhole direct      `wormhole send/receive` (Python, from PyPI in a
#                              venv), our mailbox (`twist wormhole-mailbox`)
#                              and transit relay (`twist transitrelay`)
#   magic-wormhole via relay   the same with --no-listen on both sides: no
#                              direct hints, so only the transit relay is left
#   wormhole-william           Debian's wormhole-william, our mailbox; its CLI
#                              has no transit-relay flag, so a hosts file in a
#                              and b points its built-in relay name at ours;
#                              it races direct and relay as it likes
#   croc                       Debian's croc with `croc relay` in s, if Debian
#                              has a package (bookworm has none: this path
#                              was written for croc v10 and never run)
#   sendme                     only with BENCH_PEERS_SENDME=1: `cargo install
#                              sendme --locked` into the cache; --relay
#                              disabled, an addresses-only ticket
#   ferry direct TCP / QUIC / relay   --force-path tcp / udp / relay, --no-upnp,
#                              one `ferry serve` in s (relay rate limits off)
#
# Columns: MB/s = SIZE_MIB MiB (in 1e6 bytes) over the wall time from the
# sender's start to the receiver's exit (code entry, key exchange, the
# sender's hashing if any, and the transfer all count); × magic-wormhole:
# that rate over magic-wormhole direct's; CPU s per GiB, both sides: user +
# system seconds of sender and receiver together (/usr/bin/time), per GiB
# sent; RSS MB send/recv: each side's peak RSS (/usr/bin/time %M), in MB of
# 1e6 bytes; 4 KiB set-up s: a 4 KiB file, sender's start to receiver's
# exit, median of max(RUNS, 5). Servers' CPU is not counted. Each run sends
# a random file from tmpfs into a fresh tmpfs folder, checks the copy with
# cmp and deletes it. Codes are fixed on the sending side (--code): the
# wormhole tools' receivers start with their senders (either may claim the
# nameplate first); ferry's receiver starts once the sender's --json code
# event shows the nameplate held (a ferry receiver that comes first is
# refused), and sendme's once its ticket is printed (polled every 10 ms).
# The "link" line under the table tells from the sender's byte counters
# whether the big file went over the a-b veth (direct) or through s.
#
# Installs what is missing: iperf3, time, jq, wormhole-william, croc
# (apt-get, when Debian has them), python3-venv and a venv under
# BENCH_PEERS_CACHE (default /var/cache/ferry-bench) with magic-wormhole,
# magic-wormhole-mailbox-server and magic-wormhole-transit-relay from PyPI
# (versions below). ferry comes from CARGO_TARGET_DIR (default target/),
# built here. BENCH_PEERS_TIMEOUT (default 120 + SIZE_MIB) bounds each run,
# in seconds. Exits non-zero when a ferry row failed; other tools' failures
# are shown in their rows.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

size_mib=${1:-1024}
runs=${2:-3}
[[ $size_mib =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a whole number of MiB, 1 or more"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a whole number, 1 or more"
[ "$(id -u)" -eq 0 ] || die "bench-peers.sh needs root (network namespaces): sudo $0 $*"
cache=${BENCH_PEERS_CACHE:-/var/cache/ferry-bench}
run_timeout=${BENCH_PEERS_TIMEOUT:-$((120 + size_mib))}
[[ $run_timeout =~ ^[1-9][0-9]*$ ]] || die "BENCH_PEERS_TIMEOUT must be a whole number of seconds"
setup_runs=$((runs > 5 ? runs : 5))
PIP_PINS=(magic-wormhole==0.24.0 magic-wormhole-mailbox-server==0.8.0 magic-wormhole-transit-relay==0.5.0)
# Codes: a fresh nameplate for every transfer (code_seq), so that none
# meets a nameplate the server has not yet released from the transfer before.
code_seq=10
SERVER_IP=198.51.100.100
A_IP=198.51.100.1
B_IP=198.51.100.2

ensure_rust
command -v /usr/bin/time >/dev/null 2>&1 || apt_install time
command -v jq >/dev/null 2>&1 || apt_install jq
command -v ip >/dev/null 2>&1 || apt_install iproute2
command -v timeout >/dev/null 2>&1 || apt_install coreutils
say "building ferry (release)"
cargo build --release --locked -p ferry
FERRY=${CARGO_TARGET_DIR:-$FERRY_ROOT/target}/release/ferry

work=$(mktemp -d /dev/shm/ferry-bench-peers.XXXXXX)
ns_a=fbp$$a
ns_b=fbp$$b
ns_s=fbp$$s
pids=()
cleanup() {
    local pid ns
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "$ns_a" "$ns_b" "$ns_s"; do
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# forget_pid PID: after it was waited for, so cleanup never kills a reused PID
forget_pid() {
    local keep=() pid
    for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    pids=("${keep[@]}")
}

# --- installing the other tools; each sets its *_why to "" or why not ----

# try_apt PKG: installs PKG when Debian has it; prints why not otherwise
try_apt() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
    [ -n "$APT_UPDATED" ] || { apt-get update -qq >/dev/null 2>&1 && APT_UPDATED=1; } || true
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        echo "no Debian package $1 here (apt-cache policy $1)"
        return 1
    fi
    say "installing $1 (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1 \
        || { echo "apt-get install $1 failed"; return 1; }
}

# not_installed PKG: "" when Debian's PKG is (or now got) installed, or
# "not installed: why"
not_installed() {
    local why
    why=$(try_apt "$1") || echo "not installed: $why"
}
iperf_why=$(not_installed iperf3)
wwill_why=$(not_installed wormhole-william)
croc_why=$(not_installed croc)

VENV=$cache/venv
wormhole_why=
venv_has=$("$VENV/bin/pip" freeze 2>/dev/null || true)
venv_ok=1
for pin in "${PIP_PINS[@]}"; do grep -qxF "$pin" <<<"$venv_has" || venv_ok=; done
if [ -z "$venv_ok" ]; then
    if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
        wormhole_why=$(not_installed python3-venv)
    fi
    if [ -z "$wormhole_why" ]; then
        say "installing ${PIP_PINS[*]} into $VENV (pip)"
        mkdir -p "$cache"
        { /usr/bin/python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "${PIP_PINS[@]}"; } >"$work/pip.log" 2>&1 \
            || wormhole_why="not installed: pip install into $VENV failed: $(tail -1 "$work/pip.log")"
    fi
fi

sendme_why="skipped: set BENCH_PEERS_SENDME=1 (cargo install sendme, a long compile)"
SENDME=$cache/sendme/bin/sendme
if [ "${BENCH_PEERS_SENDME:-0}" = 1 ]; then
    sendme_why=
    if [ ! -x "$SENDME" ]; then
        say "installing sendme (cargo install sendme --locked, into $cache/sendme: this compiles for a long time)"
        mkdir -p "$cache/sendme"
        if CARGO_TARGET_DIR=$cache/sendme/target cargo install sendme --locked --root "$cache/sendme" >"$work/sendme-install.log" 2>&1; then
            rm -rf "$cache/sendme/target" # some 700 MB of build files
        else
            sendme_why="not installed: cargo install sendme failed: $(grep -m1 '^error' "$work/sendme-install.log")"
        fi
    fi
fi

# --- the namespaces -------------------------------------------------------
say "namespaces $ns_a (sender $A_IP), $ns_b (receiver $B_IP), $ns_s (servers $SERVER_IP)"
for ns in "$ns_a" "$ns_b" "$ns_s"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip netns exec "$ns_s" sysctl -qw net.ipv4.ip_forward=0
ip -n "$ns_a" link add ab0 type veth peer name ab1 netns "$ns_b"
ip -n "$ns_a" link add as0 type veth peer name as1 netns "$ns_s"
ip -n "$ns_b" link add bs0 type veth peer name bs1 netns "$ns_s"
ip -n "$ns_a" addr add "$A_IP/28" dev ab0
ip -n "$ns_b" addr add "$B_IP/28" dev ab1
ip -n "$ns_a" addr add 198.51.100.17/28 dev as0
ip -n "$ns_s" addr add 198.51.100.18/28 dev as1
ip -n "$ns_b" addr add 198.51.100.33/28 dev bs0
ip -n "$ns_s" addr add 198.51.100.34/28 dev bs1
ip -n "$ns_s" addr add "$SERVER_IP/32" dev lo
for link in "$ns_a ab0" "$ns_a as0" "$ns_b ab1" "$ns_b bs0" "$ns_s as1" "$ns_s bs1"; do
    read -r ns dev <<<"$link"
    ip -n "$ns" link set "$dev" up
done
ip -n "$ns_a" route add "$SERVER_IP/32" via 198.51.100.18
ip -n "$ns_b" route add "$SERVER_IP/32" via 198.51.100.34
# wormhole-william's CLI has no transit-relay flag: its built-in one
# (transit.magic-wormhole.io:4001) is made to resolve to our transit relay
# by a hosts file that `ip netns exec` mounts over /etc/hosts in a and b.
for ns in "$ns_a" "$ns_b"; do
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n%s transit.magic-wormhole.io\n' "$SERVER_IP" >"/etc/netns/$ns/hosts"
done

# nsx NS CMD...: runs CMD in namespace NS
nsx() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

# wait_port NS PORT: until something listens on TCP PORT in NS (10 s at most)
wait_port() {
    for _ in $(seq 1 100); do
        nsx "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

# start_server NAME PORT CMD...: a server in s, in the background, its
# output in $work/NAME.log; returns non-zero when PORT never listens
start_server() {
    local name=$1 port=$2
    shift 2
    (cd "$work" && exec ip netns exec "$ns_s" "$@") >"$work/$name.log" 2>&1 &
    pids+=("$!")
    wait_port "$ns_s" "$port"
}

say "starting the servers in $ns_s"
ip netns exec "$ns_s" "$FERRY" serve --listen "$SERVER_IP:4443" --stun-listen "$SERVER_IP:3478" --stun-second-port 0 \
    --relay-rate off --relay-total-rate off --json >"$work/ferry-serve.out" 2>"$work/ferry-serve.log" &
pids+=("$!")
wait_port "$ns_s" 4443 || die "ferry serve did not start: $(tail -3 "$work/ferry-serve.log")"
if [ -z "$wormhole_why" ]; then
    start_server mailbox 4000 "$VENV/bin/twist" wormhole-mailbox --port "tcp:4000:interface=$SERVER_IP" \
        --channel-db "$work/mailbox.sqlite" \
        || wormhole_why="failed: the mailbox server did not start: $(tail -1 "$work/mailbox.log")"
    start_server transit 4001 "$VENV/bin/twist" transitrelay --port "tcp:4001:interface=$SERVER_IP" \
        || wormhole_why="failed: the transit relay did not start: $(tail -1 "$work/transit.log")"
fi
if [ -z "$wwill_why" ] && [ -n "$wormhole_why" ]; then
    wwill_why="no mailbox server (it comes from the magic-wormhole venv): $wormhole_why"
fi
if [ -z "$croc_why" ]; then
    start_server croc-relay 9009 croc relay --host "$SERVER_IP" --ports 9009,9010,9011,9012,9013 \
        || croc_why="failed: croc relay did not start: $(tail -1 "$work/croc-relay.log")"
fi
RELAY_URL=ws://$SERVER_IP:4000/v1

say "generating a ${size_mib} MiB random file and a 4 KiB one (in $work, tmpfs)"
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/bench.bin"
head -c 4096 /dev/urandom >"$work/setup.bin"
size_bytes=$((size_mib * 1024 * 1024))

# --- one transfer -----------------------------------------------------------

# one_run TOOL SRC: sends SRC from a to b with TOOL's commands (tool_cmds),
# receives into a fresh $work/dst, checks it with cmp and deletes it; writes
# "wall_s send_cpu_s recv_cpu_s send_rss_kib recv_rss_kib path" to
# $work/run.out, or returns non-zero with the reason in $work/why. Not in a
# $(...) subshell: the PIDs it starts must reach cleanup.
one_run() {
    local tool=$1 src=$2 name=${2##*/}
    rm -rf "$work/dst" "$work/sendcwd"
    mkdir -p "$work/dst" "$work/sendcwd"
    # emptied here, not by the redirections: the background sender's may
    # come after the first look for its code below
    : >"$work/why"
    : >"$work/run.out"
    : >"$work/send.out"
    code_seq=$((code_seq + 1))
    tool_cmds "$tool" "$src"
    local t0 t1 sender rc=0 send_rc=0 ticket="" direct0 via0
    direct0=$(tx_bytes ab0)
    via0=$(tx_bytes as0)
    t0=$EPOCHREALTIME
    # timeout signals its whole process group: ip netns exec (which becomes
    # /usr/bin/time) and the tool under it
    (cd "$work/sendcwd" && exec timeout -k 5 "$run_timeout" ip netns exec "$ns_a" \
        /usr/bin/time -f "%U %S %M" -o "$work/send.time" "${send_cmd[@]}") \
        </dev/null >"$work/send.out" 2>"$work/send.log" &
    sender=$!
    pids+=("$sender")
    if [ "$tool" = sendme ]; then # its receiver needs the ticket the sender prints
        for _ in $(seq 1 $((run_timeout * 100))); do
            ticket=$(awk '$1 == "sendme" && $2 == "receive" {print $3; exit}' "$work/send.out")
            [ -n "$ticket" ] && break
            kill -0 "$sender" 2>/dev/null || break
            sleep 0.01
        done
        recv_cmd+=("$ticket")
    elif [[ $tool == ferry-* ]]; then
        # A ferry code names a nameplate the sender holds: a receiver that
        # comes first is told no transfer waits there. So it starts when the
        # sender's code event shows the nameplate held (polled every 10 ms).
        local held=
        for _ in $(seq 1 3000); do
            grep -qF "\"code\":\"$code_seq-orbit-lantern\"" "$work/send.out" && held=1 && break
            kill -0 "$sender" 2>/dev/null || break
            sleep 0.01
        done
        if [ -z "$held" ]; then
            kill "$sender" 2>/dev/null || true
            wait "$sender" 2>/dev/null || true
            forget_pid "$sender"
            echo "no code event from the sender: $(head -c 300 "$work/send.out") $(tail -c 300 "$work/send.log")" >"$work/why"
            return 1
        fi
    fi
    (cd "$work/dst" && exec timeout -k 5 "$run_timeout" ip netns exec "$ns_b" \
        /usr/bin/time -f "%U %S %M" -o "$work/recv.time" "${recv_cmd[@]}") \
        <<<"$recv_stdin" >"$work/recv.out" 2>"$work/recv.log" || rc=$?
    t1=$EPOCHREALTIME
    if [ "$rc" -ne 0 ]; then
        kill "$sender" 2>/dev/null || true # timeout passes it on to the sender's process group
    elif [ "$tool" = sendme ]; then # it serves until Ctrl-C: SIGINT to the tool under timeout and time
        local t s
        for t in $(pgrep -P "$sender" 2>/dev/null); do
            for s in $(pgrep -P "$t" 2>/dev/null); do kill -INT "$s" 2>/dev/null || true; done
        done
    fi
    wait "$sender" 2>/dev/null || send_rc=$?
    forget_pid "$sender"
    if [ "$rc" -ne 0 ]; then
        echo "receiver exit $rc$([ "$rc" = 124 ] && echo " (timed out after ${run_timeout}s)"): $(tail -c 300 "$work/recv.log" | tr -s '\r\n' '  ') $(grep -h '"event":"error"' "$work/recv.out" "$work/send.out" | head -c 300)" >"$work/why"
        return 1
    fi
    if [ "$send_rc" -ne 0 ] && [ "$tool" != sendme ]; then
        echo "sender exit $send_rc: $(tail -c 300 "$work/send.log" | tr -s '\r\n' '  ') $(grep -h '"event":"error"' "$work/send.out" | head -c 300)" >"$work/why"
        return 1
    fi
    if ! cmp -s "$src" "$work/dst/$name"; then
        echo "the received file differs or is missing (in dst: $(find "$work/dst" -maxdepth 1 -mindepth 1 -printf '%f ' | head -c 200))" >"$work/why"
        return 1
    fi
    rm -rf "$work/dst" "$work/sendcwd"
    echo "$(awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.4f", a - b}')" \
        "$(awk 'END {print $1 + $2}' "$work/send.time") $(awk 'END {print $1 + $2}' "$work/recv.time")" \
        "$(awk 'END {print $3}' "$work/send.time") $(awk 'END {print $3}' "$work/recv.time")" \
        "$(link_taken "$(($(tx_bytes ab0) - direct0))" "$(($(tx_bytes as0) - via0))" "$(stat -c %s "$src")")" >"$work/run.out"
}

# tool_cmds TOOL SRC: sets send_cmd, recv_cmd (arrays, run in $work/dst)
# and recv_stdin for one transfer of SRC with TOOL
tool_cmds() {
    local tool=$1 src=$2 name=${2##*/} code_wormhole=$code_seq-ferry-bench code_ferry=$code_seq-orbit-lantern
    recv_stdin=
    case $tool in
        wormhole | wormhole-relay)
            local listen=()
            [ "$tool" = wormhole-relay ] && listen=(--no-listen)
            send_cmd=("$VENV/bin/wormhole" --relay-url "$RELAY_URL" --transit-helper "tcp:$SERVER_IP:4001"
                send --hide-progress --no-qr "${listen[@]}" --code "$code_wormhole" "$src")
            recv_cmd=("$VENV/bin/wormhole" --relay-url "$RELAY_URL" --transit-helper "tcp:$SERVER_IP:4001"
                receive --hide-progress "${listen[@]}" --accept-file -o "$work/dst/$name" "$code_wormhole")
            ;;
        wormhole-william)
            send_cmd=(wormhole-william --relay-url "$RELAY_URL" send --hide-progress --code "$code_wormhole" "$src")
            recv_cmd=(wormhole-william --relay-url "$RELAY_URL" receive --hide-progress "$code_wormhole")
            recv_stdin=y
            ;;
        croc)
            # untested here (no croc package in bookworm): croc v10's flags
            send_cmd=(croc --relay "$SERVER_IP:9009" --pass pass123 send --code "$code_wormhole" "$src")
            recv_cmd=(env CROC_SECRET="$code_wormhole" croc --relay "$SERVER_IP:9009" --pass pass123 --yes --overwrite)
            ;;
        sendme)
            send_cmd=("$SENDME" send --relay disabled --ticket-type addresses --no-progress "$src")
            recv_cmd=("$SENDME" receive --relay disabled --no-progress)
            ;;
        ferry-tcp | ferry-quic | ferry-relay)
            local force=${tool#ferry-}
            [ "$force" = quic ] && force=udp
            send_cmd=("$FERRY" send --json --server "$SERVER_IP:4443" --code "$code_ferry" --force-path "$force" --no-upnp "$src")
            recv_cmd=("$FERRY" receive --json --yes --server "$SERVER_IP:4443" --out "$work/dst" --force-path "$force" --no-upnp "$code_ferry")
            ;;
        *) die "no commands for $tool" ;;
    esac
}

# tx_bytes DEV: bytes sent so far on DEV in a (ab0: to b; as0: to s)
tx_bytes() { ip netns exec "$ns_a" cat "/sys/class/net/$1/statistics/tx_bytes"; }

# link_taken DIRECT_BYTES VIA_S_BYTES SIZE: which link carried the file, from
# the sender's byte counters: "direct" (a to b), "relayed" (through s)
link_taken() {
    if [ "$1" -ge "$3" ] && [ "$2" -lt "$3" ]; then echo direct
    elif [ "$2" -ge "$3" ] && [ "$1" -lt "$3" ]; then echo relayed
    else echo "mixed($1/$2)"; fi
}

# --- the rows ---------------------------------------------------------------
rows=()
ferry_failed=
# row TOOL LABEL WHY: RUNS transfers of the big file and max(RUNS, 5) of
# the 4 KiB one, or a row that says WHY not
row() {
    local tool=$1 label=$2 why=$3
    if [ -n "$why" ]; then
        say "$label: $why"
        rows+=("$(printf '%s\t%s' "$label" "$why")")
        return 0
    fi
    say "$label: $size_mib MiB x $runs, 4 KiB x $setup_runs"
    : >"$work/big.rows"
    : >"$work/small.rows"
    local i out
    for i in $(seq 1 "$runs"); do
        if ! one_run "$tool" "$work/bench.bin"; then
            why="failed: $(cat "$work/why")"
            break
        fi
        out=$(cat "$work/run.out")
        say "  run $i: $out (wall s, CPU s send recv, RSS KiB send recv, path)"
        echo "$out" >>"$work/big.rows"
    done
    if [ -z "$why" ]; then
        for i in $(seq 1 "$setup_runs"); do
            if ! one_run "$tool" "$work/setup.bin"; then
                why="failed (4 KiB): $(cat "$work/why")"
                break
            fi
            cat "$work/run.out" >>"$work/small.rows"
        done
        say "  4 KiB: $(awk '{printf "%s ", $1}' "$work/small.rows")s"
    fi
    if [ -n "$why" ]; then
        say "  $why"
        rows+=("$(printf '%s\t%s' "$label" "$why")")
        [[ $tool == ferry-* ]] && ferry_failed=1
        return 0
    fi
    rows+=("$(python3 - "$label" "$size_bytes" "$work/big.rows" "$work/small.rows" <<'PY'
import statistics, sys
label, nbytes = sys.argv[1], float(sys.argv[2])
big = [l.split() for l in open(sys.argv[3]) if l.strip()]
small = [l.split() for l in open(sys.argv[4]) if l.strip()]
med = lambda rows, i: statistics.median(float(r[i]) for r in rows)
wall = med(big, 0)
cpu = statistics.median(float(r[1]) + float(r[2]) for r in big)
paths = "/".join(sorted({r[5] for r in big}))
print("\t".join(str(x) for x in (label, "", nbytes / 1e6 / wall, cpu / (nbytes / 2**30),
      med(big, 3) * 1024 / 1e6, med(big, 4) * 1024 / 1e6, med(small, 0), len(big), paths)))
PY
)")
}

# iperf3 from a to b: the ceiling of the link
if [ -z "$iperf_why" ]; then
    say "iperf3 TCP ceiling: -t 5, a to b"
    ip netns exec "$ns_b" iperf3 -s -1 -B "$B_IP" >"$work/iperf-server.log" 2>&1 &
    iperf_server=$!
    pids+=("$iperf_server")
    if wait_port "$ns_b" 5201 && timeout 30 ip netns exec "$ns_a" iperf3 -c "$B_IP" -t 5 -J >"$work/iperf.json" 2>"$work/iperf.log"; then
        rows+=("$(printf 'iperf3 TCP (ceiling)\t\t%s\t\t\t\t\t1\t-' "$(jq -r '.end.sum_received.bits_per_second / 8e6' "$work/iperf.json")")")
    else
        rows+=("$(printf 'iperf3 TCP (ceiling)\tfailed: %s' "$(tail -1 "$work/iperf.log")")")
    fi
    kill "$iperf_server" 2>/dev/null || true # gone already after its one test, unless the client failed
    wait "$iperf_server" 2>/dev/null || true
    forget_pid "$iperf_server"
else
    rows+=("$(printf 'iperf3 TCP (ceiling)\t%s' "$iperf_why")")
fi

row wormhole "magic-wormhole direct" "$wormhole_why"
row wormhole-relay "magic-wormhole via its transit relay" "$wormhole_why"
row wormhole-william "wormhole-william" "$wwill_why"
row croc "croc" "$croc_why"
row sendme "sendme" "$sendme_why"
row ferry-tcp "ferry direct TCP" ""
row ferry-quic "ferry QUIC (--force-path udp)" ""
row ferry-relay "ferry relay (--force-path relay)" ""

# --- the table ----------------------------------------------------------------
versions=(
    "ferry $("$FERRY" --version 2>/dev/null | awk '{print $2}')"
    "iperf3 $(iperf3 --version 2>/dev/null | awk 'NR == 1 {print $2}')"
)
[ -z "$wormhole_why" ] && versions+=("magic-wormhole $("$VENV/bin/pip" show magic-wormhole 2>/dev/null | awk '/^Version/ {print $2}')"
    "mailbox server $("$VENV/bin/pip" show magic-wormhole-mailbox-server 2>/dev/null | awk '/^Version/ {print $2}')"
    "transit relay $("$VENV/bin/pip" show magic-wormhole-transit-relay 2>/dev/null | awk '/^Version/ {print $2}')")
[ -z "$wwill_why" ] && versions+=("wormhole-william $(dpkg-query -W -f='${Version}' wormhole-william)")
[ -z "$croc_why" ] && versions+=("croc $(dpkg-query -W -f='${Version}' croc)")
[ -z "$sendme_why" ] && versions+=("sendme $("$SENDME" --version 2>/dev/null | awk '{print $2}')")
printf '%s\n' "${rows[@]}" >"$work/rows"
echo
python3 - "$work/rows" "$size_mib" "$runs" "$setup_runs" "$(nproc)" "$(printf '%s, ' "${versions[@]}")" <<'PY'
import math, sys
path, size_mib, runs, setup_runs, cpus, versions = sys.argv[1:7]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
def num(v):
    try:
        return float(v)
    except ValueError:
        return math.nan
base = next((num(r[2]) for r in rows if r[0] == "magic-wormhole direct" and len(r) > 2), math.nan)
f = lambda x, spec: "-" if math.isnan(x) else format(x, spec)
print(f"{size_mib} MiB random file from tmpfs to tmpfs, a -> b over one veth pair (namespaces on one "
      f"{cpus}-CPU machine), wall clock from the sender's start to the receiver's exit, median of {runs} "
      f"(4 KiB: of {setup_runs}); magic-wormhole via relay: --no-listen on both sides.")
print()
print("| tool | MB/s | × magic-wormhole | CPU s per GiB, both sides | RSS MB send/recv | 4 KiB set-up s |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
notes = []
for r in rows:
    if len(r) == 2:
        print(f"| {r[0]} | {r[1]} | | | | |")
        continue
    label, _, mbps, cpu, rs, rr, setup, n, paths = r
    mbps = num(mbps)
    ratio = mbps / base if base == base and base > 0 else math.nan
    rss = "-" if math.isnan(num(rs)) else f"{num(rs):.0f} / {num(rr):.0f}"
    print(f"| {label} | {f(mbps, '.0f')} | {f(ratio, '.2f')} | {f(num(cpu), '.2f')} | {rss} | {f(num(setup), '.2f')} |")
    if paths not in ("-", ""):
        notes.append(f"{label}: {paths}")
print()
if notes:
    print("link that carried the file (the sender's byte counters: a-b veth or through s): " + "; ".join(notes))
print("versions: " + versions.rstrip(", "))
print("ratios are of the MB/s medians above, on this link, this run; never asserted.")
PY
[ -z "$ferry_failed" ] || die "a ferry row failed (above)"
