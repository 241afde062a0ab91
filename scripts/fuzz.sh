#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (libFuzzer, nightly Rust) for a
# bounded time each, starting from the committed seeds (fuzz/seeds/) and
# past crashes (fuzz/regressions/), and fails on the first crash.
# Installs nightly and cargo-fuzz when they are missing.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 20) s each
#   scripts/fuzz.sh 600             every target, 10 minutes each
#   scripts/fuzz.sh 60 stun path    only these targets
#   scripts/fuzz.sh 0               only replay the seeds and regressions
#   scripts/fuzz.sh --list          the targets
#   scripts/fuzz.sh --seeds         rewrite fuzz/seeds/ from real messages
#
# What libFuzzer learns goes to fuzz/corpus/<target>/ (not committed; it
# speeds up the next run). A crash stops the run and leaves its input in
# fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
# and, once fixed, commit that input under fuzz/regressions/<target>/.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

TARGETS=(signal_frame transfer_frame stun manifest path)
seconds=${FUZZ_SECONDS:-20}
chosen=()
for arg in "$@"; do
    case $arg in
        --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
        --seeds) seeds=1 ;;
        ''|*[!0-9]*)
            [[ " ${TARGETS[*]} " == *" $arg "* ]] || die "unknown target or option $arg (see the top of $0)"
            chosen+=("$arg") ;;
        *) seconds=$arg ;;
    esac
done
[ ${#chosen[@]} -gt 0 ] || chosen=("${TARGETS[@]}")

ensure_rust
if [ -n "${seeds:-}" ]; then
    say "writing fuzz/seeds/ from real messages"
    cargo run --locked --quiet --manifest-path fuzz/Cargo.toml -p ferry-fuzz-seedgen
    exit 0
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    say "installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal || die "could not install nightly Rust; run: rustup toolchain install nightly"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install)"
    cargo install cargo-fuzz --locked || die "could not install cargo-fuzz; run: cargo install cargo-fuzz --locked"
fi

say "building the fuzz targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build || die "the fuzz targets do not build"

# The path target makes a small output directory with symlinks in TMPDIR.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p fuzz/target/logs
for target in "${chosen[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    dirs=("$corpus" "fuzz/seeds/$target")
    [ -d "fuzz/regressions/$target" ] && dirs+=("fuzz/regressions/$target")
    log=fuzz/target/logs/$target.log
    if [ "$seconds" -eq 0 ]; then
        say "replaying the seeds and regressions of $target"
        budget=(-runs=0)
    else
        say "fuzzing $target for ${seconds} s"
        budget=(-max_total_time="$seconds")
    fi
    if ! TMPDIR=$scratch cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
        "${budget[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        die "fuzz target $target failed (log: $log; the input is in fuzz/artifacts/$target/)"
    fi
    grep -E '^(stat::number_of_executed_units|Done )' "$log" | tail -n 1 >&2 || true
done
say "fuzzing passed: ${chosen[*]} (${seconds} s each)"
