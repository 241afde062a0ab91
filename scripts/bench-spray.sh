#!/usr/bin/env bash
# How reliably port spraying finds a direct path, and how fast: runs the
# lab's spraying cases (port-restricted <-> symmetric, both orders) REPEAT
# times each (default 10, so 20 runs) and reports, per run, the path the
# transfer ended on, whether it started on the relay and moved, the probes
# the easy side sent, and the time from "both peers present" to the direct
# path; then the success rate and the median time.
#
#   scripts/bench-spray.sh            as root; FERRY=path (default target/release/ferry)
#   REPEAT=N                          runs per order
#
# Every probe stays inside the lab's namespaces: the spray's budget is
# bounded in packets and seconds (ferry_connect::spray::SprayConfig).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-10}
FERRY=${FERRY:-target/release/ferry}
export FERRY FERRY_LAB_ID=${FERRY_LAB_ID:-spr}
[ -x "$FERRY" ] || { echo "no $FERRY: cargo build --release -p ferry" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }

RUNS=()
KEPT=()
cleanup() { rm -rf "${KEPT[@]}"; }
trap cleanup EXIT

for i in $(seq 1 "$REPEAT"); do
    log=$(E2E_KEEP=1 E2E_ONLY='(port-restricted <-> symmetric|symmetric <-> port-restricted) \(spraying\)' \
        timeout 300 bash scripts/e2e-paths.sh 2>&1 || true)
    dir=$(grep -oE '/tmp/ferry-e2e\.[A-Za-z0-9]+' <<<"$log" | tail -n1 || true)
    if [ -z "$dir" ]; then
        echo "run $i: no logs; its output ends: $(tail -n3 <<<"$log")" >&2
        continue
    fi
    [ -n "$dir" ] && KEPT+=("$dir")
    for recv in "$dir"/recv.*spraying*.json; do
        [ -f "$recv" ] || continue
        case $recv in *port_restricted_____symmetric*) order="pr->sym" ;; *) order="sym->pr" ;; esac
        path=$(jq -rs '[.[] | select(.event == "path" or .event == "moved")] | last | .path // "none"' "$recv")
        moved=$(jq -rs '[.[] | select(.event == "moved")] | length' "$recv")
        connect=$(jq -rs '[.[] | select(.event == "path")][0].connect_secs // 0' "$recv")
        after=$(jq -rs '[.[] | select(.event == "moved")][0].after_secs // 0' "$recv")
        send=${recv/\/recv./\/send.}
        # The easy side's probes (the other side sprayed from sockets).
        probes=$(for json in "$send" "$recv"; do
            jq -rs '[.[] | select(.event == "path" or .event == "moved")] | last | .found_by.probes // empty' "$json"
        done | head -n1)
        direct=$(awk -v c="$connect" -v a="$after" 'BEGIN { printf "%.2f", c + a }')
        RUNS+=("$(printf '%2d %-8s %-6s moved=%s probes=%-5s direct_after=%ss' "$i" "$order" "$path" "$moved" "${probes:--}" "$direct")")
        echo "${RUNS[-1]}"
    done
done

echo
total=${#RUNS[@]}
ok=$(printf '%s\n' "${RUNS[@]}" | grep -c ' quic ' || true)
median=$(printf '%s\n' "${RUNS[@]}" | { grep ' quic ' || true; } | grep -oE 'direct_after=[0-9.]+' | cut -d= -f2 | sort -n \
    | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
moves=$(printf '%s\n' "${RUNS[@]}" | grep -c 'moved=1' || true)
echo "spraying: $ok of $total runs direct (QUIC), $moves of them after starting on the relay; median time to the direct path ${median} s"
