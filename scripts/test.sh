#!/usr/bin/env bash
# Runs all of ferry's tests: formatting, clippy, unit and integration tests
# (a real rendezvous server and real clients on loopback). Installs what it
# needs on a fresh Debian machine.
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip fmt and clippy
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

quick=
[ "${1:-}" = "--quick" ] && quick=1

ensure_rust
if [ -z "$quick" ]; then
    say "cargo fmt --check"
    cargo fmt --all --check || die "code is not formatted: run cargo fmt --all"
    say "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi
say "cargo test (unit and loopback integration tests)"
cargo test --workspace --locked 2>&1
say "all tests passed"
