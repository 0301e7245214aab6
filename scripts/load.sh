#!/usr/bin/env bash
# Load test (issue #5, scenario 8): N nodes on this machine, each a private dockerd and an
# agent on loopback, and IMAGES images of about MB MiB each pushed to all of them in one
# `p2pimg push`. Prints, per agent, its resident memory before the push and its peak
# (the kernel's VmHWM), and the most QUIC connections it had open at once (its metrics);
# then the push's time and result. Exits non-zero if the push failed.
#
#   scripts/load.sh [N] [IMAGES] [MB]       defaults: 16 nodes, 5 images, 8 MiB each
#
# Needs root (dockerd), Debian's docker.io and busybox-static, and a Rust toolchain
# (P2PIMG=path skips the cargo build). Everything lives in a fresh /tmp/p2pimg-load-*
# directory, removed at the end, also on failure or Ctrl-C. On a 2-core machine the 16
# engines loading at once dominate: expect a few minutes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-16}
IMAGES=${2:-5}
MB=${3:-8}
# Each agent serves metrics on its own 127.0.0.(i+1), this port.
export P2P_METRICS_PORT=9770

DIR="$(mktemp -d /tmp/p2pimg-load-XXXXXX)"
cleanup() { p2p_cluster_down "$DIR" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# metric NODE NAME: the value of metric NAME in node NODE's metrics.
metric() {
    local addr host port line
    addr="$(sed -n 's/^metrics_listen = "\(.*\)"$/\1/p' "$DIR/$1/agent.toml")"
    host=${addr%:*} port=${addr##*:}
    exec 3<>"/dev/tcp/$host/$port"
    printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$host" >&3
    # The agent closes the connection after its answer: a reset may follow the text.
    line="$(grep "^$2 " <&3 2>/dev/null || true)"
    exec 3<&-
    printf '%s\n' "${line##* }"
}

# kib NODE FIELD: a /proc/PID/status field (VmRSS, VmHWM) of NODE's agent, in KiB.
kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$(cat "$DIR/$1/agent.pid")/status"; }

main() {
    local bin seed i refs=() node start secs code
    bin="$(p2p_bin)"
    P2PIMG=$bin p2p_cluster_up "$N" "$DIR"
    mkdir -p "$DIR/seed"
    seed="$(p2p_engine_dir "$DIR/seed")"
    p2p_dockerd_start "$seed"
    for ((i = 1; i <= IMAGES; i++)); do
        p2p_build_test_image "$seed" "load$i:1" "$MB"
        refs+=("load$i:1")
    done
    declare -A idle
    for node in $(p2p_nodes "$DIR"); do
        idle[$node]=$(kib "$node" VmRSS)
    done
    p2p_log "pushing ${refs[*]} (${IMAGES} x ~${MB} MiB) to $N nodes"
    start=$EPOCHREALTIME
    set +e
    "$bin" push "${refs[@]}" --nodes "$DIR/nodes.toml" --cluster-dir "$DIR/ca" \
        --docker-host "$(p2p_engine_host "$seed")" >"$DIR/push.out" 2>"$DIR/push.err"
    code=$?
    set -e
    secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    printf '%-5s %12s %12s %16s\n' node idle_rss_kib peak_rss_kib peak_connections
    for node in $(p2p_nodes "$DIR"); do
        printf '%-5s %12s %12s %16s\n' "$node" "${idle[$node]}" "$(kib "$node" VmHWM)" \
            "$(metric "$node" p2pimg_connections_peak)"
    done
    printf 'push of %d images to %d nodes: exit %d in %ss\n' "$IMAGES" "$N" "$code" "$secs"
    tail -n "$((N + 4))" "$DIR/push.out"
    [[ $code -eq 0 ]] || { cat "$DIR/push.err" >&2; exit "$code"; }
}

main "$@"
