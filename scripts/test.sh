#!/usr/bin/env bash
# Runs all of ferry's tests: formatting, clippy, unit and integration tests
# (a real rendezvous server and real clients on loopback), then, as root,
# the network-namespace lab: the lab's self-test (real nftables NATs of each
# kind, measured with coturn's tools) and ferry's end-to-end tests in it.
# Installs what it needs on a fresh Debian machine.
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip fmt and clippy
#   scripts/test.sh --no-lab   skip the lab (also skipped, with a note, when not root)
#   FUZZ_SECONDS=N scripts/test.sh   fuzz each target N s (default 15; 0 only replays the seeds)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$FERRY_ROOT"

quick= lab=1
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        --no-lab) lab= ;;
        *) die "unknown option $arg (see the top of $0)" ;;
    esac
done

ensure_rust
# The cluster tests start a real redis-server on loopback (Debian's package).
[ "${FERRY_SKIP_REDIS:-}" = 1 ] || command -v redis-server >/dev/null 2>&1 || apt_install redis-server
if [ -z "$quick" ]; then
    say "cargo fmt --check"
    cargo fmt --all --check || die "code is not formatted: run cargo fmt --all"
    say "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi
say "cargo test (unit and loopback integration tests)"
cargo test --workspace --locked 2>&1
say "fuzzing (every target briefly; scripts/fuzz.sh runs longer)"
FUZZ_SECONDS=${FUZZ_SECONDS:-15} scripts/fuzz.sh

if [ -z "$lab" ]; then
    say "lab tests skipped (--no-lab)"
elif [ "$(id -u)" -ne 0 ]; then
    say "lab tests skipped: they need root for network namespaces (run: sudo scripts/test.sh)"
else
    # The binary cargo test built for the integration tests.
    export FERRY="$FERRY_ROOT/target/debug/ferry"
    [ -x "$FERRY" ] || cargo build --locked -p ferry
    # The relay token probe the lab runs beside the ferry binary.
    cargo build --locked -p ferry-tests --examples
    export RELAY_PROBE="$FERRY_ROOT/target/debug/examples/relay_probe"
    say "lab self-test: each NAT topology measured with real tools"
    scripts/lab-selftest.sh
    say "lab: ferry nat in every topology, against real STUN peers"
    scripts/e2e-nat.sh
    say "lab: 64 MiB transfers through every kind of NAT, checking bytes and path"
    scripts/e2e-paths.sh
    say "lab: IPv6: dual-stack peers go direct over IPv6 through stateful firewalls (QUIC punched; TCP simultaneous open with UDP blocked), an IPv6-only and an IPv4-only peer meet at the relay, ferry nat reports each family"
    scripts/e2e-ipv6.sh
    say "lab: transfers whose path breaks halfway (NAT state flushed, relay restarted) reconnect and resume; a server restart does not void a waiting sender's code"
    scripts/e2e-resilience.sh
    say "lab: bogus, expired and reused relay tokens refused while a genuine pair moves its bytes"
    scripts/e2e-relay-tokens.sh
    say "lab: through tinyproxy (HTTP CONNECT) and microsocks (SOCKS5) from a network that lets out only the proxy; NO_PROXY; wrong proxies fail clearly"
    scripts/e2e-proxy.sh
    say "lab: a cluster of two ferry serve instances sharing state through Redis: a pair split over them goes direct (QUIC) either way, a wrong code on one burns the other's nameplate, one stopped leaves the name to the other, a symmetric pair meets at the sender's instance's relay"
    scripts/e2e-cluster.sh
fi
say "all tests passed"
