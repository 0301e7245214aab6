#!/usr/bin/env bash
# A local p2pimg cluster on one machine: N nodes, each a private dockerd and an agent
# listening on 127.0.0.(i+1):7701, with a cluster CA and a nodes.toml for `p2pimg push`.
#
#   scripts/cluster.sh up N [DIR]          start n1..nN (DIR defaults to ./.cluster)
#   scripts/cluster.sh down [DIR]          stop agents and daemons, remove DIR
#   scripts/cluster.sh status [DIR]        show nodes, agents and engines
#   scripts/cluster.sh docker NODE ARGS…   docker CLI against NODE's engine (n1, n2, …,
#                                          or seed); DIR from $CLUSTER_DIR or ./.cluster
#
# Needs root (dockerd), Debian's docker.io and a Rust toolchain; P2PIMG=path skips the
# cargo build. Then, for example:
#   p2pimg push app:1 --nodes DIR/nodes.toml --cluster-dir DIR/ca --docker-host unix://…
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

abs_dir() { realpath -m "${1:-${CLUSTER_DIR:-./.cluster}}"; }

# Set while `up` runs, so that the EXIT trap can tear down a half-started cluster.
UP_DIR=""

on_exit() {
    if [[ -n "$UP_DIR" ]]; then
        p2p_log "up failed: tearing down $UP_DIR"
        p2p_cluster_down "$UP_DIR"
    fi
}

cmd_up() {
    local n=${1:-} dir
    [[ -n "$n" ]] || usage
    dir="$(abs_dir "${2:-}")"
    [[ -e "$dir/nodes.toml" ]] && p2p_die "a cluster is already up in $dir (scripts/cluster.sh down $dir)"
    UP_DIR="$dir"
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    p2p_cluster_up "$n" "$dir"
    UP_DIR=""
    cat <<EOF
cluster of $n node(s) is up in $dir
  nodes:     $dir/nodes.toml
  CA:        $dir/ca
  docker:    $0 docker n1 images     (CLUSTER_DIR=$dir if not ./.cluster)
  push:      p2pimg push IMAGE --nodes $dir/nodes.toml --cluster-dir $dir/ca --docker-host unix:///…
  stop:      $0 down $dir
EOF
}

cmd_status() {
    local dir node engine pid
    dir="$(abs_dir "${1:-}")"
    [[ -f "$dir/.p2pimg-cluster" ]] || p2p_die "no cluster in $dir"
    for node in $(p2p_nodes "$dir") seed; do
        [[ -e "$dir/$node/engine" ]] || continue
        engine="$(p2p_engine_dir "$dir/$node")"
        pid="$(cat "$dir/$node/agent.pid" 2>/dev/null || true)"
        printf '%-6s engine %-8s %s\n' "$node" \
            "$(p2p_docker "$engine" version --format '{{.Server.Version}}' 2>/dev/null || echo down)" \
            "$(p2p_engine_host "$engine")"
        if [[ -n "$pid" ]]; then
            printf '%-6s agent  %-8s %s\n' "" \
                "$(p2p_pid_alive "$pid" && echo "pid $pid" || echo down)" \
                "$(head -n 1 "$dir/$node/agent.out" 2>/dev/null || true)"
        fi
    done
}

cmd_docker() {
    local node=${1:-} dir
    [[ -n "$node" ]] || usage
    shift
    dir="$(abs_dir "")"
    [[ -e "$dir/$node/engine" ]] || p2p_die "no node $node in $dir"
    p2p_docker "$(p2p_engine_dir "$dir/$node")" "$@"
}

main() {
    local cmd=${1:-}
    [[ -n "$cmd" ]] || usage
    shift
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) p2p_cluster_down "$(abs_dir "${1:-}")" ;;
        status) cmd_status "$@" ;;
        docker) cmd_docker "$@" ;;
        *) usage ;;
    esac
}

main "$@"
