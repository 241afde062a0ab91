#!/usr/bin/env bash
# Criterion micro-benchmarks of the hot pure code, then ONE summary table
# (bench, median time per iteration, throughput) read from criterion's own
# files (CARGO_TARGET_DIR/criterion/*/*/new/): only the benches of this run.
#
#   scripts/bench-micro.sh [FILTER]          FILTER: a regex on bench names (criterion's), e.g. hash/
#   BENCH_MICRO_QUICK=1 scripts/bench-micro.sh ...   --warm-up-time 1 --measurement-time 2 (about 1 min)
#
# The benches live beside the crates they test (crates/*/benches/, criterion
# with harness = false):
#   ferry-transfer codec   codec/data_256k/{encode,encode_header,decode}: one
#                          full data frame (256 KiB chunk); codec/offer_1000_files/
#                          {encode,decode,summarize}: the offer of 1000 files as
#                          a control frame, and the receiver's listing of it
#   ferry-transfer hash    hash/chunk_256k/{chunk_hash,blake3_hash}: one chunk;
#                          hash/whole_64m/{file_hash_256k_chunks,blake3_hash,
#                          blake3_hasher_update}: 64 MiB, ferry's chunked tree
#                          against plain single-threaded BLAKE3
#   ferry-proto pairing    pairing/spake2_pair: one whole pairing of two sides in
#                          memory; pairing/hello/{seal,open}: the sealed channel
#                          with a typical hello (throughput: its JSON bytes)
#   ferry-connect punch    punch/probe/{answer_ping,reject_forged}: verify a probe
#                          and answer it with a pong / refuse a forged one
# Throughput is bytes per second of the bench's input (the bytes in its
# name; encode_header: the 37 bytes it writes; decode of a data frame
# splits the chunk off without copying, so its figure only says it is
# no bottleneck); "-" where it means nothing. Figures vary on a shared machine:
# compare runs on the same machine, never assert them. Criterion keeps the
# previous run as its baseline, so its own output also says what changed.
# Builds with the bench profile (release); binaries and reports go to
# CARGO_TARGET_DIR (default target/).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

filter=${1:-}
ensure_rust
command -v python3 >/dev/null 2>&1 || apt_install python3
TARGET=${CARGO_TARGET_DIR:-$FERRY_ROOT/target}
args=(--noplot)
if [ "${BENCH_MICRO_QUICK:-0}" = 1 ]; then
    args+=(--warm-up-time 1 --measurement-time 2)
fi
[ -n "$filter" ] && args+=("$filter")

mkdir -p "$TARGET/criterion"
stamp=$(mktemp "$TARGET/criterion/.bench-micro.XXXXXX")
trap 'rm -f "$stamp"' EXIT INT TERM

say "running the micro-benchmarks (${args[*]})"
# The bench targets by name: --benches would run the libraries' test
# harnesses too, which do not take criterion's options.
cargo bench --locked -p ferry-transfer -p ferry-proto -p ferry-connect \
    --bench codec --bench hash --bench pairing --bench punch -- "${args[@]}"

echo
python3 - "$TARGET/criterion" "$stamp" <<'PY'
import json, os, sys

root, stamp = sys.argv[1], sys.argv[2]
since = os.path.getmtime(stamp)

def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.1f} ns"

def fmt_rate(per_sec):
    for unit, scale in (("GiB/s", 2**30), ("MiB/s", 2**20), ("KiB/s", 2**10)):
        if per_sec >= scale:
            return f"{per_sec / scale:.2f} {unit}"
    return f"{per_sec:.0f} B/s"

rows = []
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    est_path = os.path.join(dirpath, "estimates.json")
    if os.path.getmtime(est_path) < since:
        continue  # from an earlier run, or a bench this run filtered out
    with open(os.path.join(dirpath, "benchmark.json")) as f:
        bench = json.load(f)
    with open(est_path) as f:
        median = json.load(f)["median"]["point_estimate"]
    rate = "-"
    throughput = bench.get("throughput") or {}
    if "Bytes" in throughput:
        rate = fmt_rate(throughput["Bytes"] / (median / 1e9))
    elif "Elements" in throughput:
        rate = f"{throughput['Elements'] / (median / 1e9):.0f} /s"
    rows.append((bench["full_id"], fmt_time(median), rate))

if not rows:
    sys.exit("error: no criterion results from this run (a FILTER that matches nothing?)")
rows.sort()
w = max(len(r[0]) for r in rows)
print(f"{'bench':<{w}}  {'median':>10}  {'throughput':>12}")
for name, t, rate in rows:
    print(f"{name:<{w}}  {t:>10}  {rate:>12}")
PY
