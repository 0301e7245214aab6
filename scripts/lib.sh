# shellcheck shell=bash
# Shell functions shared by scripts/cluster.sh and scripts/demo.sh: private dockerd
# daemons, agents, the local cluster's layout, and registry-free test images.
# Source it; it defines functions and a few variables and runs nothing.
#
# Cluster layout (DIR defaults to ./.cluster):
#   DIR/.p2pimg-cluster        marker: `down` removes only directories that have it
#   DIR/ca/                    cluster CA, pusher and node certificates (p2pimg init/cert)
#   DIR/nodes.toml             the node list `p2pimg push --nodes` reads
#   DIR/nI/agent.toml          node nI's agent config; agent.pid, agent.out, agent.log
#   DIR/nI/state/              node nI's agent state directory
#   DIR/nI/engine              node nI's dockerd directory (data, exec, docker.sock,
#                              dockerd.log), or a file naming a short /tmp directory when
#                              DIR's path is too long for unix sockets
#   DIR/seed/engine            the demo's seed engine, same layout

P2P_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Debian's docker.io installs the 20.10 engine here.
P2P_DOCKERD="${P2P_DOCKERD:-/usr/sbin/dockerd}"
# Agents listen on 127.0.0.(i+1):P2P_PORT; all of 127.0.0.0/8 is loopback on Linux.
P2P_PORT="${P2P_PORT:-7701}"
# Seconds to wait for a daemon's socket or an agent's `listening on` line.
P2P_START_TIMEOUT=60
# Longest engine directory path used in place: containerd's debug socket sits 38 bytes
# below it, and a unix socket path must fit in 108 bytes.
P2P_MAX_ENGINE_PATH=64

p2p_log() { printf '%s\n' "$*" >&2; }
p2p_die() { p2p_log "error: $*"; exit 1; }

# p2p_bin: the p2pimg binary; builds it (cargo build --release) unless P2PIMG is set.
p2p_bin() {
    if [[ -n "${P2PIMG:-}" ]]; then
        printf '%s\n' "$P2PIMG"
        return
    fi
    (cd "$P2P_REPO" && cargo build --release --bin p2pimg) >&2 ||
        p2p_die "cargo build --release failed"
    (cd "$P2P_REPO" && realpath "${CARGO_TARGET_DIR:-target}/release/p2pimg")
}

# p2p_engine_dir NODE_DIR: the engine directory of a node, creating it on first use.
p2p_engine_dir() {
    local link=$1/engine dir
    if [[ -f "$link" ]]; then
        cat "$link"
    elif [[ -d "$link" ]]; then
        printf '%s\n' "$link"
    elif (( ${#link} <= P2P_MAX_ENGINE_PATH )); then
        mkdir -p "$link" && printf '%s\n' "$link"
    else
        dir="$(mktemp -d /tmp/p2pimg-cluster-XXXXXX)"
        printf '%s\n' "$dir" >"$link"
        printf '%s\n' "$dir"
    fi
}

# p2p_engine_host ENGINE_DIR: the docker host URL of an engine.
p2p_engine_host() { printf 'unix://%s/docker.sock\n' "$1"; }

# p2p_docker ENGINE_DIR ARGS...: the docker CLI against an engine.
p2p_docker() {
    local dir=$1
    shift
    DOCKER_CLI_HINTS=false docker -H "$(p2p_engine_host "$dir")" "$@"
}

# p2p_dockerd_start ENGINE_DIR: starts a private dockerd and waits until it answers.
p2p_dockerd_start() {
    local dir=$1 i
    [[ -x "$P2P_DOCKERD" ]] || p2p_die "$P2P_DOCKERD missing: apt-get install docker.io"
    mkdir -p "$dir"
    # Own config file: ignore /etc/docker/daemon.json and keep the identity key private
    # (`deprecated-key-path` is a config key, not a flag, in dockerd 20.10).
    printf '{"deprecated-key-path": "%s/key.json"}\n' "$dir" >"$dir/daemon.json"
    # setsid: the daemon outlives this script and ignores the terminal's Ctrl-C.
    setsid "$P2P_DOCKERD" --config-file "$dir/daemon.json" \
        --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
        -H "$(p2p_engine_host "$dir")" \
        --bridge=none --iptables=false --ip6tables=false \
        --storage-driver overlay2 --shutdown-timeout 3 \
        </dev/null >"$dir/dockerd.log" 2>&1 &
    for ((i = 0; i < P2P_START_TIMEOUT * 10; i++)); do
        if p2p_docker "$dir" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$dir/dockerd.log" >&2
    p2p_die "dockerd in $dir did not answer within ${P2P_START_TIMEOUT}s (log above)"
}

# p2p_pid_stop PIDFILE MARK [GRACE]: SIGTERM the process in PIDFILE, wait GRACE seconds
# (default 20), then SIGKILL. Only a process whose command line contains MARK (its own
# directory) is signalled, so a stale pid file never hits an unrelated process.
p2p_pid_stop() {
    local pidfile=$1 mark=$2 grace=${3:-20} pid i
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && p2p_pid_mentions "$pid" "$mark"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            p2p_pid_alive "$pid" || break
            sleep 0.1
        done
        if p2p_pid_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# p2p_pid_alive PID: true if PID runs (a zombie does not count).
p2p_pid_alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# p2p_pid_mentions PID TEXT: true if PID runs and its command line contains TEXT.
p2p_pid_mentions() {
    p2p_pid_alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# p2p_dockerd_stop ENGINE_DIR: stops the daemon and its containerd, unmounts and
# removes the directory.
p2p_dockerd_stop() {
    local dir=$1 mnt
    [[ -d "$dir" ]] || return 0
    p2p_pid_stop "$dir/docker.pid" "$dir"
    p2p_pid_stop "$dir/exec/containerd/containerd.pid" "$dir" 5
    # Leftover mounts (a container that was still running), deepest first.
    awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    rm -rf "$dir"
}

# p2p_agent_start NODE_DIR BIN: starts the node's agent and waits for `listening on`.
p2p_agent_start() {
    local node_dir=$1 bin=$2 i pid
    setsid "$bin" agent --config "$node_dir/agent.toml" \
        </dev/null >"$node_dir/agent.out" 2>"$node_dir/agent.log" &
    pid=$!
    printf '%s\n' "$pid" >"$node_dir/agent.pid"
    for ((i = 0; i < P2P_START_TIMEOUT * 10; i++)); do
        if grep -q '^listening on ' "$node_dir/agent.out" 2>/dev/null; then
            return 0
        fi
        p2p_pid_alive "$pid" || break
        sleep 0.1
    done
    tail -n 30 "$node_dir/agent.log" >&2
    p2p_die "agent of $node_dir did not print 'listening on' (log above)"
}

# p2p_agent_stop NODE_DIR
p2p_agent_stop() { p2p_pid_stop "$1/agent.pid" "$1/agent.toml" 10; }

# p2p_node_addr I: the address node nI listens on.
p2p_node_addr() { printf '127.0.0.%d:%d\n' "$(($1 + 1))" "$P2P_PORT"; }

# p2p_write_agent_toml NODE_DIR NAME LISTEN DOCKER_HOST: the agent's config; paths
# relative to NODE_DIR, where the agent resolves them.
p2p_write_agent_toml() {
    local node_dir=$1 name=$2 listen=$3 host=$4
    cat >"$node_dir/agent.toml" <<EOF
name = "$name"
listen = "$listen"
state_dir = "state"
docker_host = "$host"
ca = "../ca/ca.crt"
cert = "../ca/$name.crt"
key = "../ca/$name.key"
EOF
    # P2P_METRICS_PORT set: each agent serves metrics on its own loopback address.
    if [[ -n "${P2P_METRICS_PORT:-}" ]]; then
        printf 'metrics_listen = "%s:%s"\n' "${listen%:*}" "$P2P_METRICS_PORT" >>"$node_dir/agent.toml"
    fi
}

# p2p_write_nodes_toml DIR N: DIR/nodes.toml listing n1..nN.
p2p_write_nodes_toml() {
    local dir=$1 n=$2 i
    {
        printf '# Written by scripts/cluster.sh: the nodes of the local cluster in %s.\n' "$dir"
        for ((i = 1; i <= n; i++)); do
            printf '\n[[node]]\nname = "n%d"\naddr = "%s"\nlabels = { role = "worker" }\n' \
                "$i" "$(p2p_node_addr "$i")"
        done
    } >"$dir/nodes.toml"
}

# p2p_nodes DIR: the node directories' names (n1 n2 …), in numeric order.
p2p_nodes() {
    local d
    for d in "$1"/n*/; do
        [[ -d "$d" ]] && basename "$d"
    done | sort -V
}

# p2p_cluster_up N DIR: CA, certificates, engines, agent configs, nodes.toml, agents.
p2p_cluster_up() {
    local n=$1 dir=$2 bin i node_dir engine
    if ! [[ "$n" =~ ^[0-9]+$ ]] || ((10#$n < 1 || 10#$n > 253)); then
        p2p_die "N must be 1..253, got '$n'"
    fi
    n=$((10#$n))
    [[ -e "$dir/nodes.toml" ]] && p2p_die "a cluster is already up in $dir (scripts/cluster.sh down $dir)"
    if [[ -d "$dir" && ! -f "$dir/.p2pimg-cluster" && -n "$(ls -A "$dir")" ]]; then
        p2p_die "$dir exists and is not a cluster directory: choose another DIR"
    fi
    bin="$(p2p_bin)"
    mkdir -p "$dir"
    touch "$dir/.p2pimg-cluster"
    if [[ ! -f "$dir/ca/ca.crt" ]]; then
        p2p_log "cluster CA: $bin init --dir $dir/ca"
        "$bin" init --dir "$dir/ca" >&2
    fi
    for ((i = 1; i <= n; i++)); do
        node_dir="$dir/n$i"
        mkdir -p "$node_dir/state"
        engine="$(p2p_engine_dir "$node_dir")"
        p2p_dockerd_start "$engine"
        [[ -f "$dir/ca/n$i.crt" ]] || "$bin" cert issue "n$i" --dir "$dir/ca" >&2
        p2p_write_agent_toml "$node_dir" "n$i" "$(p2p_node_addr "$i")" "$(p2p_engine_host "$engine")"
        p2p_log "n$i: engine $(p2p_engine_host "$engine")"
    done
    p2p_write_nodes_toml "$dir" "$n"
    for ((i = 1; i <= n; i++)); do
        p2p_agent_start "$dir/n$i" "$bin"
        p2p_log "n$i: agent $(head -n 1 "$dir/n$i/agent.out")"
    done
}

# p2p_cluster_down DIR: stops agents and engines (also the demo's seed) and removes DIR.
p2p_cluster_down() {
    local dir=$1 node
    if [[ ! -d "$dir" ]]; then
        p2p_log "no cluster in $dir"
        return 0
    fi
    [[ -f "$dir/.p2pimg-cluster" ]] || p2p_die "$dir is not a cluster directory (no .p2pimg-cluster): not removing it"
    for node in $(p2p_nodes "$dir"); do
        p2p_agent_stop "$dir/$node"
    done
    # Engines stop in parallel: each takes about a second.
    for node in $(p2p_nodes "$dir") seed; do
        if [[ -e "$dir/$node/engine" ]]; then
            p2p_dockerd_stop "$(p2p_engine_dir "$dir/$node")" &
        fi
    done
    wait
    rm -rf "$dir"
    p2p_log "cluster in $dir is down"
}

# p2p_build_test_image ENGINE_DIR TAG [MB]: a two-layer-plus-base image without a
# registry: `docker import` of a busybox rootfs with MB/2 MiB of random data and some
# text, then a legacy build adding MB/2 MiB of random data and /app/hello.txt.
p2p_build_test_image() {
    local engine=$1 tag=$2 mb=${3:-8} work base applet name=${2##*/}
    [[ -x /bin/busybox ]] || p2p_die "/bin/busybox missing: apt-get install busybox-static"
    work="$(mktemp -d)"
    if [[ "$name" == *:* ]]; then base="${tag%:*}-base:${tag##*:}"; else base="$tag-base"; fi
    mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/data" "$work/ctx"
    cp /bin/busybox "$work/rootfs/bin/busybox"
    for applet in sh cat ls echo wc head sha256sum sleep true; do
        ln -s busybox "$work/rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/rootfs/etc/passwd"
    head -c "$((mb * 512 * 1024))" /dev/urandom >"$work/rootfs/data/random.bin"
    seq 1 200000 >"$work/rootfs/data/numbers.txt"
    tar -C "$work/rootfs" -cf - . | p2p_docker "$engine" import --change 'CMD ["/bin/sh"]' - "$base" >/dev/null
    head -c "$((mb * 512 * 1024))" /dev/urandom >"$work/ctx/blob.bin"
    printf 'hello from %s\n' "$tag" >"$work/ctx/hello.txt"
    printf 'FROM %s\nCOPY blob.bin /app/blob.bin\nCOPY hello.txt /app/hello.txt\n' "$base" >"$work/ctx/Dockerfile"
    # The 28.x client warns that the legacy builder is deprecated: show its output only
    # if the build fails.
    if ! DOCKER_BUILDKIT=0 p2p_docker "$engine" build -q -t "$tag" "$work/ctx" >"$work/build.log" 2>&1; then
        cat "$work/build.log" >&2
        rm -rf "$work"
        p2p_die "docker build of $tag failed"
    fi
    rm -rf "$work"
}
