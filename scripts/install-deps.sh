#!/usr/bin/env bash
# Installs the Debian packages p2pimg's tests and demo need, only those missing, and says
# what it installs: docker.io (the engine each simulated node runs), busybox-static (test
# images), iproute2 (network namespaces), bsdutils (`script`, a pseudo-terminal). Needs
# root or sudo. Used by scripts/test.sh and scripts/demo.sh; safe to run again.
set -euo pipefail

# Debian packages the tests need, as "package:file-it-provides".
REQUIRED=(
    "docker.io:/usr/sbin/dockerd"      # the 20.10 engine each simulated node runs
    "busybox-static:/bin/busybox"      # the one static binary inside test images
    "iproute2:/usr/sbin/ip"            # network namespaces, veth, tc for multi-host tests
    "tar:/bin/tar"                     # the harness tars generated root filesystems
    "util-linux:/usr/bin/setsid"       # scripts/cluster.sh detaches daemons with it
    "mount:/bin/umount"                # scripts/lib.sh detaches a dead daemon's mounts
    "bsdutils:/usr/bin/script"         # util-linux `script`: the pseudo-terminal in tests/it/view.rs
)

# While packages install, this policy keeps their init scripts from starting services
# (docker.io would start a system-wide dockerd; the tests start private ones).
POLICY=/usr/sbin/policy-rc.d

log() { printf 'install-deps.sh: %s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo -n DEBIAN_FRONTEND=noninteractive "$@"
    else
        log "need root to run: $*"
        exit 1
    fi
}

missing_packages() {
    local entry pkg file
    for entry in "${REQUIRED[@]}"; do
        pkg=${entry%%:*}
        file=${entry#*:}
        # A file can be there without the package (busybox from another package is
        # not static), so ask dpkg too.
        if [[ ! -e "$file" ]] || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done
}

install_missing() {
    local -a need
    mapfile -t need < <(missing_packages)
    if ((${#need[@]} == 0)); then
        log "system packages present: ${REQUIRED[*]%%:*}"
        return
    fi
    log "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get -q -o DPkg::Lock::Timeout=300 update
    local added_policy=0 ok=0
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY" >/dev/null
        as_root chmod 755 "$POLICY"
        added_policy=1
    fi
    if as_root apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold "${need[@]}"; then
        ok=1
    fi
    if ((added_policy)); then
        as_root rm -f "$POLICY"
    fi
    ((ok)) || { log "apt-get install ${need[*]} failed"; exit 1; }
    log "installed: ${need[*]}"
}

install_missing
