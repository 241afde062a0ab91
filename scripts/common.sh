# Shared helpers for ferry's scripts. Source it; do not run it.
# shellcheck shell=bash

FERRY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=
# apt_install PKG... : installs Debian packages that are missing (needs root).
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing packages ${missing[*]}: install them as root (apt-get install ${missing[*]})"
        SUDO=sudo
    else
        SUDO=
    fi
    say "installing ${missing[*]} (apt-get)"
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# ensure_rust: a C compiler for ring, and a Rust toolchain new enough for edition 2024.
ensure_rust() {
    command -v cc >/dev/null || apt_install build-essential
    command -v pkg-config >/dev/null || apt_install pkg-config
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        command -v curl >/dev/null || apt_install curl ca-certificates
        say "installing the Rust toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy \
            || die "could not install Rust; install it from https://rustup.rs and run this again"
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    local minor
    minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
    [ "${minor:-0}" -ge 85 ] || die "ferry needs Rust 1.85 or newer (found $(rustc --version)); run: rustup update stable"
}
