#!/usr/bin/env bash
# Flame graphs of a real transfer on loopback: one local `ferry serve` on
# 127.0.0.1 (free ports, as scripts/bench.sh starts it), then SIZE_MIB of
# random data sent over QUIC (--force-path udp) and then direct TLS/TCP
# (--force-path tcp), --no-upnp, with each side under `perf record`. The
# server is not recorded. All traffic stays on 127.0.0.1.
#
#   scripts/flame.sh [SIZE_MIB]             SIZE_MIB default 256
#   FLAME_OUT=DIR scripts/flame.sh ...      where the graphs go (default CARGO_TARGET_DIR/flame)
#   FLAME_PATHS="udp" scripts/flame.sh ...  only these paths (default "udp tcp")
#   FLAME_CALL_GRAPH=fp scripts/flame.sh    frame-pointer stacks instead of DWARF (see below)
#
# Writes, per path P (udp, tcp) and side S (send, recv), into the folder it
# prints at the end:
#   P-S.svg      the flame graph (open it in a browser: click to zoom, Ctrl-F to search)
#   P-S.folded   the collapsed stacks (inferno-collapse-perf), for diffs
#                (inferno-diff-folded A B | inferno-flamegraph > diff.svg)
#   P-S.top.txt  the 10 functions with the most self time (samples whose
#                innermost frame they are), of all frames and of user space
#                only, also printed at the end
# Stacks: perf record -F 999 -g --call-graph dwarf (unwinds from a copy of
# each sample's stack, 8 KiB: it works without frame pointers, which Rust
# release builds omit; perf.data is tens of MiB per side and perf script
# takes a while). FLAME_CALL_GRAPH=fp is smaller and faster but its stacks
# stop at the first function without a frame pointer (most of them).
# Symbols: [profile.release] in Cargo.toml has debug = 1 (line tables and
# function names), so the usual release build serves; nothing is rebuilt
# with other settings. The binary comes from CARGO_TARGET_DIR (default
# target/). Needs perf (Debian: linux-perf), and inferno
# (`cargo install inferno --locked` when inferno-flamegraph is missing).
# perf needs kernel.perf_event_paranoid <= 2 for a user's own processes
# (root: any); kernel frames show only as root.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

size_mib=${1:-256}
[[ $size_mib =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a whole number of MiB, 1 or more"
call_graph=${FLAME_CALL_GRAPH:-dwarf}
case $call_graph in dwarf | fp) ;; *) die "FLAME_CALL_GRAPH must be dwarf or fp" ;; esac
paths=${FLAME_PATHS:-udp tcp}
for p in $paths; do
    case $p in udp | tcp) ;; *) die "FLAME_PATHS takes udp and tcp" ;; esac
done
ensure_rust
command -v jq >/dev/null 2>&1 || apt_install jq
command -v perf >/dev/null 2>&1 || apt_install linux-perf
if ! command -v inferno-flamegraph >/dev/null 2>&1 || ! command -v inferno-collapse-perf >/dev/null 2>&1; then
    say "installing inferno (cargo install inferno --locked)"
    # Its own build folder: not the workspace's target.
    env -u CARGO_TARGET_DIR cargo install inferno --locked
    command -v inferno-flamegraph >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
fi
say "building ferry (release, debug = 1 from Cargo.toml)"
cargo build --release --locked -p ferry
TARGET=${CARGO_TARGET_DIR:-$FERRY_ROOT/target}
FERRY="$TARGET/release/ferry"
out=${FLAME_OUT:-$TARGET/flame}
mkdir -p "$out"

work=$(mktemp -d /var/tmp/ferry-flame.XXXXXX)
pids=()
# Each pid is ferry serve or a perf record with ferry under it: the child first.
cleanup() {
    local pid child
    for pid in "${pids[@]}"; do
        for child in $(pgrep -P "$pid" 2>/dev/null); do kill "$child" 2>/dev/null || true; done
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# forget_pid PID: after it was waited for, so cleanup never kills a reused PID
forget_pid() {
    local keep=() pid
    for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    pids=("${keep[@]}")
}

# record NAME CMD...: CMD under perf record into $work/NAME.data
record() {
    local name=$1
    shift
    perf record -q -F 999 -g --call-graph "$call_graph" -o "$work/$name.data" -- "$@"
}

say "starting ferry serve on 127.0.0.1"
"$FERRY" serve --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0 --stun-second-port 0 \
    --relay-rate off --relay-total-rate off --json >"$work/server.out" 2>"$work/server.log" &
pids+=("$!")
server=
for _ in $(seq 1 100); do
    server=$(jq -r 'select(.event == "listening") | .signal' "$work/server.out" 2>/dev/null | head -n1)
    [ -n "$server" ] && break
    sleep 0.1
done
[ -n "$server" ] || die "ferry serve did not start: $(tail -3 "$work/server.log")"

say "generating a ${size_mib} MiB random file"
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/flame.bin"

# transfer PATH: one recorded transfer over --force-path PATH
transfer() {
    local path=$1 sender code="" taken
    rm -rf "$work/dst"
    mkdir -p "$work/dst"
    record "$path-send" "$FERRY" send --json --no-upnp --force-path "$path" --server "$server" \
        "$work/flame.bin" >"$work/send.out" 2>"$work/send.log" &
    sender=$!
    pids+=("$sender")
    for _ in $(seq 1 300); do
        code=$(jq -r 'select(.event == "code") | .code' "$work/send.out" 2>/dev/null | head -n1)
        [ -n "$code" ] && break
        sleep 0.1
    done
    [ -n "$code" ] || die "no code from the sender: $(tail -3 "$work/send.log")"
    FERRY_CODE=$code record "$path-recv" "$FERRY" receive --json --yes --no-upnp --force-path "$path" \
        --server "$server" --out "$work/dst" >"$work/recv.out" 2>"$work/recv.log" \
        || die "the receiver failed: $(tail -3 "$work/recv.out") $(tail -3 "$work/recv.log")"
    wait "$sender" || die "the sender failed: $(tail -3 "$work/send.out") $(tail -3 "$work/send.log")"
    forget_pid "$sender"
    cmp -s "$work/flame.bin" "$work/dst/flame.bin" || die "the received file differs"
    taken=$(jq -r 'select(.event == "path") | .path' "$work/recv.out" | head -n1)
    say "$path: path $taken, $(jq -r 'select(.event == "done") | .secs' "$work/recv.out") s (under perf)"
}

# render NAME: NAME.svg, NAME.folded and NAME.top.txt in $out from $work/NAME.data
render() {
    local name=$1 event unit
    perf script -i "$work/$name.data" 2>/dev/null >"$work/$name.perf"
    inferno-collapse-perf --all <"$work/$name.perf" >"$out/$name.folded"
    inferno-flamegraph --title "ferry $name, ${size_mib} MiB on loopback ($call_graph stacks)" \
        <"$out/$name.folded" >"$out/$name.svg"
    # The folded counts are perf's sample periods: nanoseconds with
    # cpu-clock (what perf falls back to without hardware counters, as in
    # most VMs and containers), events (cycles) otherwise.
    event=$(perf evlist -i "$work/$name.data" 2>/dev/null | awk 'NR == 1')
    case $event in cpu-clock* | task-clock*) unit="CPU ms" ;; *) unit="M ${event%%:*}" ;; esac
    {
        echo "all frames ($unit, share, function; [k]: kernel):"
        self_time "$out/$name.folded" | awk 'NR <= 10'
        echo "user space only ($unit, share of all, function):"
        self_time "$out/$name.folded" | awk '!/_\[k\]$/ && ++n <= 10'
    } >"$out/$name.top.txt"
    rm -f "$work/$name.perf" "$work/$name.data"
}

# self_time FOLDED: per innermost frame (self time), its summed count in
# millions, its share of all, and its name; most first
self_time() {
    awk '{n = $NF; s = $0; sub(/ [0-9]+$/, "", s); k = split(s, f, ";"); self[f[k]] += n; total += n}
        END {for (s in self) printf "%.1f\t%.1f%%\t%s\n", self[s] / 1e6, 100 * self[s] / total, s}' \
        "$1" | sort -t$'\t' -k1,1nr
}

for path in $paths; do
    say "recording a ${size_mib} MiB transfer over --force-path $path"
    transfer "$path"
    for side in send recv; do
        say "rendering $path-$side"
        render "$path-$side"
    done
done

echo
for path in $paths; do
    for side in send recv; do
        echo "top 10 self time, $path $side:"
        sed 's/^/  /' "$out/$path-$side.top.txt"
    done
done
echo
say "flame graphs in $out"
