#!/usr/bin/env bash
# Puts Docker Engine 26 (Debian trixie's docker.io, 26.1.5) at a fixed path for the tests
# that need the containerd image store, only if it is not there yet, and prints the path
# of its dockerd. The system's apt sources are not touched: apt-get reads a one-line
# trixie source list and keeps its lists and the .deb in a private cache; the .deb is
# unpacked with `dpkg-deb -x` and only dockerd and docker-proxy are copied out. Runs with
# bookworm's runc and containerd (trixie's runc needs a newer glibc) and bookworm's docker
# CLI. Needs root (or sudo) to write the install directory; safe to run again.
set -euo pipefail

# Where the tests look for it (tests/it/common/dockerd.rs, DOCKERD26); keep the two equal.
DEST=${P2PIMG_DOCKERD26_DIR:-/opt/p2pimg-test/docker26}
# The suite the 26.x engine comes from, and the version we expect from it.
SUITE=trixie
MIRROR=http://deb.debian.org/debian
WANT_VERSION="Docker version 26."

log() { printf 'fetch-dockerd26.sh: %s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo -n "$@"
    else
        log "need root to run: $*"
        exit 1
    fi
}

installed() {
    [[ -x $DEST/dockerd ]] && "$DEST/dockerd" --version 2>/dev/null | grep -q "^$WANT_VERSION"
}

fetch() {
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    echo "deb $MIRROR $SUITE main" >"$work/sources.list"
    local -a apt=(
        -o "Dir::Etc::sourcelist=$work/sources.list"
        -o "Dir::Etc::sourceparts=/dev/null"
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache=$work/cache"
        -o "APT::Sandbox::User=root"
    )
    log "downloading $SUITE's docker.io with apt-get (private lists in $work)"
    apt-get -q "${apt[@]}" update >&2
    (cd "$work" && apt-get -q "${apt[@]}" download docker.io >&2)
    local deb
    deb=$(ls "$work"/docker.io_*.deb)
    dpkg-deb -x "$deb" "$work/root"
    as_root mkdir -p "$DEST"
    as_root install -m 755 "$work/root/usr/sbin/dockerd" "$work/root/usr/sbin/docker-proxy" "$DEST/"
    log "installed $("$DEST/dockerd" --version) from $(basename "$deb") in $DEST"
}

if ! installed; then
    fetch
    installed || { log "$DEST/dockerd is not a Docker 26 engine"; exit 1; }
fi
printf '%s\n' "$DEST/dockerd"
