#!/usr/bin/env bash
# The test command: installs what a fresh Debian 12 machine lacks for the tests (real
# dockerd daemons, a static busybox for test images, iproute2 for network namespaces),
# then runs `cargo test --release --all-targets` from the repository root. Extra
# arguments go to cargo test, e.g. `scripts/test.sh --test it harness::` (the integration
# tests are one binary, `it`, with a module per area).
#
# Idempotent: installs only what is missing and says what it installs. Needs root (or
# sudo) for apt-get and for the private dockerd daemons the tests start. Works with no
# stdin, as CI runs it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

ensure_cargo() {
    if ! command -v cargo >/dev/null && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck source=/dev/null
        source "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup)"; exit 1; }
}

main() {
    bash scripts/install-deps.sh
    ensure_cargo
    command -v docker >/dev/null || { log "no docker CLI on PATH (docker.io provides one)"; exit 1; }
    log "engine: $(/usr/sbin/dockerd --version); client: $(docker --version)"
    log "cargo test --release --all-targets $*"
    local out status
    out="$(mktemp)"
    set +e
    cargo test --release --all-targets "$@" 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    set -e
    # One closing line for the whole suite, over every test binary.
    awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$out"
    rm -f "$out"
    return "$status"
}

main "$@"
