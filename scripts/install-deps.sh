#!/usr/bin/env bash
# Installs the Debian packages p2pimg's tests and demo need, only those missing, and says
# what it installs: docker.io (the engine each simulated node runs), containerd, runc and
# podman (the other engines the tests start privately), protobuf-compiler (the build
# compiles containerd's gRPC protos), busybox-static (test images), iproute2 (network
# namespaces), bsdutils (`script`, a pseudo-terminal). Then puts Docker 26 from Debian
# trixie beside them (scripts/fetch-dockerd26.sh). Needs root or sudo. Used by
# scripts/test.sh and scripts/demo.sh; safe to run again.
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
    "containerd:/usr/bin/containerd"   # 1.6, run privately by the tests (ctr comes with it)
    "runc:/usr/sbin/runc"              # the OCI runtime of every engine here (crun refuses the hybrid cgroups)
    "podman:/usr/bin/podman"           # 4.3: its Docker-compatible API service, run privately
    "conmon:/usr/bin/conmon"           # podman's container monitor (a dependency; checked, as podman needs it to run one)
    "protobuf-compiler:/usr/bin/protoc" # the build compiles containerd's gRPC protos
)
# Not needed, so not installed: uidmap, slirp4netns, fuse-overlayfs, catatonit (podman's
# Recommends, for rootless use; the tests run podman as root with the kernel's overlay and
# `--network none`), crun (podman takes runc, which satisfies its `crun | runc`).

# System services these packages would start; the tests start private daemons only, so
# none of these may keep running after an install.
SERVICES=(docker.service docker.socket containerd.service podman.service podman.socket podman-restart.service)

# While packages install, this policy keeps their init scripts from starting services
# (docker.io would start a system-wide dockerd, containerd a containerd, podman its socket;
# the tests start private ones).
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
    local -a were_active
    mapfile -t were_active < <(active_services)
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
    stop_started_services "${were_active[@]}"
}

# The units of SERVICES that systemd runs now (none without systemd: nothing else
# starts services on install).
active_services() {
    [[ -d /run/systemd/system ]] || return 0
    local unit
    for unit in "${SERVICES[@]}"; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then
            printf '%s\n' "$unit"
        fi
    done
}

# policy-rc.d stops invoke-rc.d and deb-systemd-invoke from starting services, but a
# policy file that was already there may allow it: stop what the install started, and
# leave alone what ran before it (the machine's own Docker, say).
stop_started_services() {
    local unit before
    for unit in $(active_services); do
        for before in "$@"; do
            [[ $unit == "$before" ]] && continue 2
        done
        log "stopping $unit, which the install started (the tests start private daemons)"
        as_root systemctl stop "$unit" || true
    done
}

install_missing
bash "$(dirname "${BASH_SOURCE[0]}")/fetch-dockerd26.sh" >/dev/null
