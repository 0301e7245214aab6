# shellcheck shell=bash
# Functions for scripts/bench.sh: the emulated hosts (network namespaces on a bridge, tc
# shaping), their private dockerd daemons, p2pimg agents, sshd and the registry, the
# counter sampler, the benchmark image, and the arithmetic on what was measured.
# Source it after setting the configuration variables bench.sh sets; it runs nothing.
#
# Layout (everything this benchmark creates, and all that cleanup removes):
#   network namespaces  p2pb-br (the bridge br0 and one port vhI per host),
#                       p2pb-h0 (the seed), p2pb-h1 … p2pb-hN (the nodes); host I has
#                       eth0 = $SUBNET.(I+1)/24 and no other route: traffic between
#                       the hosts never leaves these namespaces
#   $R = /tmp/p2pb      hI/ (engine: daemon.json, data, exec, docker.sock, dockerd.log;
#                       agent.toml, state/, agent.log), ca/, ssh/, registry/, runs/

R=/tmp/p2pb
NS_PREFIX=p2pb-
BR_NS=${NS_PREFIX}br
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
AGENT_PORT=7701
REG_PORT=5000

T_START=$EPOCHREALTIME

# ---------------------------------------------------------------- small helpers

# log MSG: a progress line with the time since the benchmark started.
log() {
    local el
    el=$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN{s=int(b-a); printf "%02d:%02d", s/60, s%60}')
    printf '[%s] %s\n' "$el" "$*" >&2
}
die() { log "error: $*"; exit 1; }

now() { printf '%s\n' "$EPOCHREALTIME"; }
# calc EXPR: the awk expression EXPR (numbers already substituted), 3 decimals.
calc() { awk "BEGIN{printf \"%.3f\", $1}"; }
# fmt_s SECONDS, fmt_x RATIO, fmt_mb BYTES: table formatting; '-' stays '-'.
fmt_s() { [[ "$1" == - || -z "$1" ]] && { printf -- '-'; return; }; awk -v v="$1" 'BEGIN{printf "%.1f", v}'; }
fmt_x() { [[ "$1" == - || -z "$1" ]] && { printf -- '-'; return; }; awk -v v="$1" 'BEGIN{printf "%.2f", v}'; }
fmt_mb() { [[ "$1" == - || -z "$1" ]] && { printf -- '-'; return; }; awk -v v="$1" 'BEGIN{printf "%.1f", v/1e6}'; }
# ratio A B: A/B, or '-' if either is missing or B is 0.
ratio() {
    if [[ "$1" == - || "$2" == - || -z "$1" || -z "$2" ]]; then printf -- '-'; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN{if (b == 0) printf "-"; else printf "%.3f", a/b}'
}

host_ns() { printf '%s\n' "${NS_PREFIX}h$1"; }
host_addr() { printf '%s.%d\n' "$SUBNET" "$(($1 + 1))"; }
host_dir() { printf '%s/h%d\n' "$R" "$1"; }
host_sock() { printf 'unix://%s/h%d/docker.sock\n' "$R" "$1"; }
# in_ns I CMD...: runs CMD in host I's network namespace (nsenter: no /sys remount,
# which dockerd needs; see DESIGN.md "Testing on one machine").
in_ns() { local i=$1; shift; nsenter --net="/var/run/netns/$(host_ns "$i")" "$@"; }
# dk I ARGS...: the docker CLI against host I's engine (bench.sh isolates the CLI from the
# user's docker configuration: DOCKER_CONFIG=$R/cli, no DOCKER_HOST or context).
dk() { local i=$1; shift; docker -H "$(host_sock "$i")" "$@"; }

# ---------------------------------------------------------------- dependencies

# bench_install_deps: installs the Debian packages the benchmark needs, only those missing.
bench_install_deps() {
    local entry pkg file need=() added_policy=0 ok=0
    for entry in docker.io:/usr/sbin/dockerd iproute2:/usr/sbin/tc debootstrap:/usr/sbin/debootstrap \
        openssh-server:/usr/sbin/sshd openssh-client:/usr/bin/scp docker-registry:/usr/bin/docker-registry \
        jq:/usr/bin/jq curl:/usr/bin/curl util-linux:/usr/bin/nsenter busybox-static:/bin/busybox; do
        pkg=${entry%%:*} file=${entry#*:}
        [[ -e "$file" ]] || need+=("$pkg")
    done
    if [[ -n "${DISK_IOPS:-}" ]]; then
        [[ -e /usr/bin/qemu-storage-daemon ]] || need+=(qemu-utils)
        [[ -e /sbin/mkfs.ext4 ]] || need+=(e2fsprogs)
    fi
    ((${#need[@]} == 0)) && return 0
    log "installing missing packages: ${need[*]}"
    [[ $(id -u) -eq 0 ]] || die "need root to install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q -o DPkg::Lock::Timeout=300 update >&2
    # Keep package scripts from starting services (sshd, docker, the registry): the
    # benchmark starts private ones.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confold "${need[@]}" >&2 && ok=1
    ((added_policy)) && rm -f /usr/sbin/policy-rc.d
    ((ok)) || die "apt-get install ${need[*]} failed"
}

# bench_bin: the p2pimg binary to use, copied into $R so that a rebuild during the run
# does not change it. P2PIMG=path skips the build; a failed build falls back to the last
# built binary, with a warning.
bench_bin() {
    local src
    if [[ -n "${P2PIMG:-}" ]]; then
        src=$P2PIMG
    else
        src="${CARGO_TARGET_DIR:-$REPO/target}/release/p2pimg"
        log "cargo build --release (P2PIMG=path skips it)"
        if ! (cd "$REPO" && cargo build --release --bin p2pimg) >"$R/cargo-build.log" 2>&1; then
            tail -n 20 "$R/cargo-build.log" >&2
            [[ -x "$src" ]] || die "cargo build --release failed and there is no $src"
            log "warning: cargo build --release failed (the tree may be mid-change); using the last built $src"
        fi
    fi
    [[ -x "$src" ]] || die "no p2pimg binary at $src"
    mkdir -p "$R/bin"
    cp "$src" "$R/bin/p2pimg"
    BIN=$R/bin/p2pimg
}

# ---------------------------------------------------------------- cleanup

# bench_cleanup: ends every process this benchmark (or a crashed earlier run) started:
# all processes inside the p2pb-* namespaces (dockerd, containerd, agents, sshd, the
# registry, the sampler, pushes) and docker/scp clients still working on $R; then unmounts
# and deletes $R and the namespaces, which takes the veths and the bridge with them.
bench_cleanup() {
    local ns pids=() pid i mnt
    local -a spaces
    mapfile -t spaces < <(ip netns list 2>/dev/null | awk -v p="$NS_PREFIX" 'index($1, p) == 1 {print $1}')
    for ns in "${spaces[@]}"; do
        while read -r pid; do
            [[ "$pid" =~ ^[0-9]+$ && "$pid" != "$$" ]] && pids+=("$pid")
        done < <(ip netns pids "$ns" 2>/dev/null)
    done
    # Clients in the root namespace that work on $R (a crashed run's docker load, say).
    for pid in $(pgrep -x docker 2>/dev/null) $(pgrep -x scp 2>/dev/null); do
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$R/" && pids+=("$pid")
    done
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            local alive=0
            for pid in "${pids[@]}"; do
                [[ -d /proc/$pid ]] && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] && alive=1
            done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    if [[ -d "$R" ]]; then
        awk -v d="$R/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
            while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
        disks_cleanup
        rm -rf "$R"
    fi
    for ns in "${spaces[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    cg_leave
}

# ---------------------------------------------------------------- slow disks (DISK_IOPS)

# disk_up I: puts agent I's chunk store on a disk of its own that does DISK_IOPS operations
# per second (reads, writes and flushes alike) and DISK_MBPS MB/s, like a hard disk or a
# small cloud volume: a 4 GB file behind qemu-storage-daemon's throttle filter, exported
# through FUSE, attached to a loop device, ext4, mounted on hI/state. Only the store is on
# it; the node's dockerd keeps its data on the machine's disk.
disk_up() {
    local i=$1 d k loop
    d=$R/disk$i
    mkdir -p "$d" "$(host_dir "$i")/state"
    truncate -s 4G "$d/disk.raw"
    : >"$d/export.img"
    qemu-storage-daemon \
        --object "throttle-group,id=tg$i,x-iops-total=$DISK_IOPS,x-bps-total=$((DISK_MBPS * 1048576))" \
        --blockdev "driver=file,node-name=file$i,filename=$d/disk.raw" \
        --blockdev "driver=throttle,node-name=slow$i,throttle-group=tg$i,file=file$i" \
        --export "type=fuse,id=exp$i,node-name=slow$i,mountpoint=$d/export.img,writable=on" \
        </dev/null >"$d/qsd.log" 2>&1 &
    for ((k = 0; k < 100; k++)); do
        [[ "$(stat -c %s "$d/export.img" 2>/dev/null)" == 4294967296 ]] && break
        sleep 0.1
    done
    [[ "$(stat -c %s "$d/export.img")" == 4294967296 ]] ||
        { cat "$d/qsd.log" >&2; die "qemu-storage-daemon did not export $d/export.img"; }
    loop=$(losetup -f --show "$d/export.img") || die "no free loop device for the slow disk"
    printf '%s\n' "$loop" >"$d/loop"
    mkfs.ext4 -q -F "$loop" || die "mkfs.ext4 $loop failed"
    mount "$loop" "$(host_dir "$i")/state" || die "cannot mount $loop"
}

# disks_cleanup: detaches the slow disks' loop devices and stops their daemons (after the
# mounts are gone).
disks_cleanup() {
    local f pid
    for f in "$R"/disk*/loop; do
        [[ -f "$f" ]] && losetup -d "$(cat "$f")" 2>/dev/null
    done
    for pid in $(pgrep -f qemu-storage-daemon 2>/dev/null); do
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$R/" && kill -TERM "$pid" 2>/dev/null
    done
    return 0
}

# ---------------------------------------------------------------- network

# net_up NHOSTS: the bridge namespace and hosts h0..h(NHOSTS-1), each joined by a veth.
net_up() {
    local n=$1 i ns
    ip netns add "$BR_NS"
    ip -n "$BR_NS" link set lo up
    ip -n "$BR_NS" link add br0 type bridge
    # No STP, no forwarding delay: the ports forward at once.
    ip -n "$BR_NS" link set br0 type bridge stp_state 0 forward_delay 0
    ip -n "$BR_NS" link set br0 up
    for ((i = 0; i < n; i++)); do
        ns=$(host_ns "$i")
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "vh$i" netns "$BR_NS" type veth peer name eth0 netns "$ns"
        ip -n "$BR_NS" link set "vh$i" master br0 up
        ip -n "$ns" addr add "$(host_addr "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
}

# shape I RATE: limits host I's egress to RATE Mbit/s (htb, a bfifo of about 100 ms);
# RATE 0 removes the limit.
shape() {
    local i=$1 rate=$2 ns bps burst limit
    ns=$(host_ns "$i")
    tc -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
    [[ "$rate" == 0 ]] && return 0
    bps=$((rate * 125000))
    burst=$((bps / 100 > 65536 ? bps / 100 : 65536))
    limit=$((bps / 10 > 262144 ? bps / 10 : 262144))
    tc -n "$ns" qdisc add dev eth0 root handle 1: htb default 10
    tc -n "$ns" class add dev eth0 parent 1: classid 1:10 htb rate "${rate}mbit" ceil "${rate}mbit" \
        burst "$burst" cburst "$burst" quantum 60000
    tc -n "$ns" qdisc add dev eth0 parent 1:10 handle 10: bfifo limit "$limit"
}

# host_tx I / host_rx I: bytes host I's eth0 has sent / received (its own counters).
host_tx() { ip netns exec "$(host_ns "$1")" cat /sys/class/net/eth0/statistics/tx_bytes; }
host_rx() { ip netns exec "$(host_ns "$1")" cat /sys/class/net/eth0/statistics/rx_bytes; }

# tc_drops I: packets the shaper of host I dropped so far.
tc_drops() {
    tc -n "$(host_ns "$1")" -s qdisc show dev eth0 2>/dev/null |
        awk '/dropped/ {gsub(",", ""); for (k = 1; k <= NF; k++) if ($k == "dropped") s += $(k + 1)} END {print s + 0}'
}

# The benchmark's own cpuacct cgroup (cgroup v1, as on these machines): every process it
# starts lands there, so its CPU use can be told apart from other work on the machine (a
# concurrent `cargo build`, say). Empty if cpuacct is not available.
CG_ROOT=/sys/fs/cgroup/cpuacct
CG=""

# cg_enter: puts this shell (and so everything it starts from now on) into $CG_ROOT/p2pb.
cg_enter() {
    [[ -w "$CG_ROOT/tasks" ]] || return 0
    mkdir -p "$CG_ROOT/p2pb" 2>/dev/null || return 0
    printf '%d\n' "$$" >"$CG_ROOT/p2pb/tasks" 2>/dev/null || return 0
    CG=$CG_ROOT/p2pb
}

# cg_leave: moves whatever is left in $CG_ROOT/p2pb (this shell, a crashed run's
# stragglers) back to the root group and removes the group.
cg_leave() {
    local pid
    [[ -d "$CG_ROOT/p2pb" ]] || return 0
    while read -r pid; do
        printf '%d\n' "$pid" >"$CG_ROOT/tasks" 2>/dev/null || true
    done <"$CG_ROOT/p2pb/tasks"
    rmdir "$CG_ROOT/p2pb" 2>/dev/null || true
    CG=""
}

# sampler_start FILE NHOSTS: every 0.2 s, appends a line to FILE:
#   epoch_seconds cpu_busy_jiffies cpu_total_jiffies our_cpu_ns tx0 rx0 tx1 rx1 …
# where our_cpu_ns is the benchmark cgroup's CPU time (0 without one) and txI/rxI are host
# I's sent/received bytes, read from the bridge's port vhI in /proc/net/dev (the port
# receives what the host sends). Sets SAMPLER_PID.
sampler_start() {
    local file=$1 n=$2
    # nsenter, not ip netns exec: /proc/net/dev is per namespace, and /sys (with the
    # cgroup files) stays the root namespace's.
    # shellcheck disable=SC2016 # the script is for the inner bash
    nsenter --net="/var/run/netns/$BR_NS" bash -c '
        n=$1 cg=$2
        declare -A rx tx
        while :; do
            read -r _ u ni sy id io irq si st _ </proc/stat
            ours=0
            [[ -n "$cg" ]] && read -r ours <"$cg/cpuacct.usage"
            while IFS= read -r l; do
                [[ "$l" == *:* ]] || continue
                name=${l%%:*}
                name=${name// /}
                set -- ${l#*:}
                rx[$name]=$1
                tx[$name]=$9
            done </proc/net/dev
            line="$EPOCHREALTIME $((u + ni + sy + irq + si + st)) $((u + ni + sy + id + io + irq + si + st)) $ours"
            for ((i = 0; i < n; i++)); do line+=" ${rx[vh$i]:-0} ${tx[vh$i]:-0}"; done
            printf "%s\n" "$line"
            sleep 0.2
        done' _ "$n" "$CG" >"$file" 2>/dev/null &
    SAMPLER_PID=$!
    SAMPLER_FILE=$file
}
# sampler_stop: ends the sampler and keeps a copy of its file in $LOGS, if set.
sampler_stop() {
    sleep 0.3
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    [[ -z "${LOGS:-}" ]] || cp "$SAMPLER_FILE" "$LOGS/" 2>/dev/null || true
}

# cpu_busy FILE T0 T1: CPU use between T0 and T1 (epoch seconds) from the sampler's
# columns, in % of all cores: "OURS OTHERS" (the benchmark's processes, everything else);
# without the cgroup, "ALL -" (the whole machine).
cpu_busy() {
    awk -v t0="$2" -v t1="$3" -v ncpu="$(nproc)" '
        !have0 || $1 <= t0 { s0 = $1; b0 = $2; a0 = $3; c0 = $4; have0 = 1 }
        $1 <= t1 { s1 = $1; b1 = $2; a1 = $3; c1 = $4 }
        END {
            if (a1 <= a0 || s1 <= s0) { printf "- -"; exit }
            all = 100 * (b1 - b0) / (a1 - a0)
            if (c1 == 0) { printf "%.0f -", all; exit }
            ours = 100 * (c1 - c0) / 1e9 / (s1 - s0) / ncpu
            if (ours > 100) ours = 100
            others = all - ours; if (others < 0) others = 0
            printf "%.0f %.0f", ours, others
        }' "$1"
}

# net_done FILE T0 N: seconds from T0 until the last of hosts 1..N had received all the
# bytes it received in the whole sample (to within 0.2% or 64 kB): the transfer time
# seen on the wire. Meant for methods without a completion event (docker pull).
net_done() {
    awk -v t0="$2" -v n="$3" '
        $1 >= t0 - 0.25 && !base_set { for (i = 1; i <= n; i++) base[i] = $(6 + 2 * i); base_set = 1 }
        { t[NR] = $1; for (i = 1; i <= n; i++) rx[NR, i] = $(6 + 2 * i); last = NR }
        END {
            worst = 0
            for (i = 1; i <= n; i++) {
                total = rx[last, i] - base[i]; d = 0
                slack = total * 0.002; if (slack < 65536) slack = 65536
                for (r = 1; r <= last; r++)
                    if (t[r] >= t0 - 0.25 && rx[r, i] - base[i] >= total - slack) { d = t[r] - t0; break }
                if (d > worst) worst = d
            }
            printf "%.3f", worst
        }' "$1"
}

# ---------------------------------------------------------------- engines

# dockerd_start I: host I's private dockerd, in its namespace.
dockerd_start() {
    local i=$1 d
    d=$(host_dir "$i")
    mkdir -p "$d"
    # Own config file: ignore /etc/docker/daemon.json and keep the identity key private.
    printf '{"deprecated-key-path": "%s/key.json"}\n' "$d" >"$d/daemon.json"
    setsid nsenter --net="/var/run/netns/$(host_ns "$i")" "$DOCKERD" --config-file "$d/daemon.json" \
        --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/docker.pid" \
        -H "$(host_sock "$i")" --bridge=none --iptables=false --ip6tables=false \
        --storage-driver overlay2 --shutdown-timeout 3 \
        --insecure-registry "$(host_addr 0):$REG_PORT" \
        </dev/null >"$d/dockerd.log" 2>&1 &
}

dockerd_wait() {
    local i=$1 k
    for ((k = 0; k < 1200; k++)); do
        dk "$i" version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -n 30 "$(host_dir "$i")/dockerd.log" >&2
    die "dockerd of h$i did not answer within 120 s (log above)"
}

# clean_node I: removes every image from host I's engine.
clean_node() {
    local i=$1 ids
    ids=$(dk "$i" images -aq 2>/dev/null | sort -u)
    if [[ -n "$ids" ]]; then
        # shellcheck disable=SC2086 # one id per word
        dk "$i" rmi -f $ids >/dev/null 2>&1 || true
    fi
    dk "$i" image prune -af >/dev/null 2>&1 || true
    rm -f "$(host_dir "$i")/image.tar"
    [[ -z "$(dk "$i" images -aq 2>/dev/null)" ]] || log "warning: h$i still holds images after rmi + prune"
}

# clean_nodes N: clean_node 1..N in parallel, then sync so that writeback of the last
# run does not slow the next.
clean_nodes() {
    local i pids=()
    for ((i = 1; i <= $1; i++)); do clean_node "$i" & pids+=($!); done
    wait "${pids[@]}" || true
    sync
}

# image_id I REF: the image ID of REF on host I, or '-'.
image_id() { dk "$1" image inspect --format '{{.Id}}' "$2" 2>/dev/null || printf -- '-'; }

# verify_nodes N REF WANT_ID: counts the nodes 1..N whose REF has image ID WANT_ID and
# runs a container from it on node 1; prints "K/N" (and "run failed" if the container
# did not run).
verify_nodes() {
    local n=$1 ref=$2 want=$3 i ok=0 out
    for ((i = 1; i <= n; i++)); do
        [[ "$(image_id "$i" "$ref")" == "$want" ]] && ok=$((ok + 1))
    done
    out="$ok/$n same image ID"
    if ! dk 1 run --rm --network none "$ref" /bin/sh -c 'test -d /opt/app || test -f /etc/os-release' >/dev/null 2>&1; then
        out+=", container on n1 failed to run"
    fi
    printf '%s\n' "$out"
}

# ---------------------------------------------------------------- the image

# build_image: builds $IMAGE on the seed's engine: a base (Debian minbase by debootstrap,
# cached in $CACHE, or busybox) imported with `docker import`, plus application layers by
# a legacy `docker build`: BIN_FILES (real binaries), TEXT_MB of log-like text (compresses
# about 4x) and RANDOM_MB of /dev/urandom (incompressible).
build_image() {
    local ctx=$R/ctx tarball rootfs f
    mkdir -p "$ctx/bin" "$ctx/text" "$CACHE"
    if [[ "$BASE" == debian ]]; then
        tarball=$CACHE/$SUITE-minbase.tar
        if [[ ! -s "$tarball" ]]; then
            rootfs=$CACHE/rootfs.tmp
            rm -rf "$rootfs"
            log "debootstrap --variant=minbase $SUITE (cached afterwards in $tarball)"
            debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
                { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
            # As Debian's official images: no downloaded .debs (apt-get clean), no package
            # lists; about 120 MB, like debian:bookworm.
            rm -f "$rootfs"/var/cache/apt/archives/*.deb
            rm -rf "$rootfs"/var/lib/apt/lists/*
            tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
            mv "$tarball.tmp" "$tarball"
            rm -rf "$rootfs"
        fi
        dk 0 import --change 'CMD ["/bin/bash"]' "$tarball" p2pb/base:1 >/dev/null
    else
        [[ -x /bin/busybox ]] || die "/bin/busybox missing: apt-get install busybox-static"
        rootfs=$R/rootfs
        mkdir -p "$rootfs/bin" "$rootfs/etc"
        cp /bin/busybox "$rootfs/bin/busybox"
        for f in sh cat ls test true; do ln -s busybox "$rootfs/bin/$f"; done
        printf 'NAME=busybox\n' >"$rootfs/etc/os-release"
        tar -C "$rootfs" -cf - . | dk 0 import --change 'CMD ["/bin/sh"]' - p2pb/base:1 >/dev/null
        rm -rf "$rootfs"
    fi
    {
        printf 'FROM p2pb/base:1\n'
        if [[ -n "$BIN_FILES" ]]; then
            for f in $BIN_FILES; do cp "$f" "$ctx/bin/"; done
            printf 'COPY bin/ /opt/app/bin/\n'
        fi
        if ((TEXT_MB > 0)); then
            text_data $((TEXT_MB * 1048576)) >"$ctx/text/app.log"
            printf 'COPY text/ /opt/app/log/\n'
        fi
        if ((RANDOM_MB > 0)); then
            head -c $((RANDOM_MB * 1048576)) /dev/urandom >"$ctx/random.bin"
            printf 'COPY random.bin /opt/app/data/random.bin\n'
        fi
        printf 'WORKDIR /opt/app\n'
    } >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 dk 0 build -q -t "$IMAGE" "$ctx" >"$R/build.log" 2>&1 ||
        { cat "$R/build.log" >&2; die "docker build of $IMAGE failed"; }
    dk 0 rmi p2pb/base:1 >/dev/null
    rm -rf "$ctx"
}

# text_data BYTES: deterministic log-like text of about BYTES bytes.
text_data() {
    awk -v n="$1" 'BEGIN {
        srand(42); split("GET POST PUT DELETE PATCH", m, " ")
        split("INFO INFO INFO INFO WARN DEBUG ERROR", lv, " ")
        while (s < n) {
            line = sprintf("2024-05-%02d %02d:%02d:%02d.%03d %-5s [worker-%d] %s /api/v1/items/%d?user=%d status=%d bytes=%d took=%.3fms",
                1 + int(rand() * 28), int(rand() * 24), int(rand() * 60), int(rand() * 60), int(rand() * 1000),
                lv[1 + int(rand() * 7)], int(rand() * 16), m[1 + int(rand() * 5)], int(rand() * 100000),
                int(rand() * 5000), 200 + int(rand() * 3) * 100, int(rand() * 65536), rand() * 250)
            print line; s += length(line) + 1
        }
    }'
}

# ---------------------------------------------------------------- agents, sshd, registry

# agents_prepare NMAX: the cluster CA, a certificate per node and each node's agent.toml.
agents_prepare() {
    local n=$1 i d
    "$BIN" init --dir "$R/ca" >/dev/null
    for ((i = 1; i <= n; i++)); do
        "$BIN" cert issue "n$i" --dir "$R/ca" >/dev/null
        d=$(host_dir "$i")
        cat >"$d/agent.toml" <<EOF
name = "n$i"
listen = "$(host_addr "$i"):$AGENT_PORT"
state_dir = "$d/state"
docker_host = "$(host_sock "$i")"
ca = "$R/ca/ca.crt"
cert = "$R/ca/n$i.crt"
key = "$R/ca/n$i.key"
EOF
    done
}

# nodes_toml N FILE: the inventory of n1..nN.
nodes_toml() {
    local n=$1 i
    for ((i = 1; i <= n; i++)); do
        printf '[[node]]\nname = "n%d"\naddr = "%s:%d"\n\n' "$i" "$(host_addr "$i")" "$AGENT_PORT"
    done >"$2"
}

declare -A AGENT_PID=()

agent_stop() {
    local i=$1 pid=${AGENT_PID[$1]:-} k
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((k = 0; k < 100; k++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    AGENT_PID[$i]=""
}

# agents_restart N: stops agents 1..N, empties their state dirs (a cold start) and their
# logs, starts them again and waits for `listening on`.
agents_restart() {
    local n=$1 i d k
    for ((i = 1; i <= n; i++)); do agent_stop "$i"; done
    for ((i = 1; i <= n; i++)); do
        d=$(host_dir "$i")
        # Emptied, not removed: with DISK_IOPS it is a mount point.
        mkdir -p "$d/state"
        find "$d/state" -mindepth 1 -delete
        : >"$d/agent.log"
        : >"$d/agent.out"
        setsid nsenter --net="/var/run/netns/$(host_ns "$i")" "$BIN" agent --config "$d/agent.toml" \
            </dev/null >"$d/agent.out" 2>"$d/agent.log" &
        AGENT_PID[$i]=$!
    done
    for ((i = 1; i <= n; i++)); do
        d=$(host_dir "$i")
        for ((k = 0; k < 300; k++)); do
            grep -q '^listening on ' "$d/agent.out" 2>/dev/null && break
            [[ -d /proc/${AGENT_PID[$i]} ]] || break
            sleep 0.1
        done
        grep -q '^listening on ' "$d/agent.out" 2>/dev/null ||
            { tail -n 20 "$d/agent.log" >&2; die "agent n$i did not start (log above)"; }
    done
}

# agent_stats N: "PEAK_RSS_BYTES MEAN_PEAK_RSS_BYTES CPU_SECONDS EACH" over agents 1..N: the
# largest and the mean VmHWM, the sum of user+system time since they started, and each
# agent's VmHWM in MB (n1:45,n2:52,…).
agent_stats() {
    local n=$1 i pid hwm=0 sum=0 cnt=0 kb ticks=0 t tck each=""
    tck=$(getconf CLK_TCK)
    for ((i = 1; i <= n; i++)); do
        pid=${AGENT_PID[$i]:-}
        [[ -n "$pid" && -r /proc/$pid/status ]] || continue
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
        ((kb > hwm)) && hwm=$kb
        sum=$((sum + kb)) cnt=$((cnt + 1))
        each+="${each:+,}n$i:$((kb / 1024))"
        t=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$pid/stat")
        ticks=$((ticks + t))
    done
    printf '%d %d %s %s\n' $((hwm * 1024)) $((cnt ? sum * 1024 / cnt : 0)) "$(calc "$ticks / $tck")" "${each:--}"
}

sshd_start() {
    local d=$R/ssh
    mkdir -p "$d" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_ed25519" >/dev/null
    ssh-keygen -q -t ed25519 -N '' -f "$d/id_ed25519" >/dev/null
    cp "$d/id_ed25519.pub" "$d/authorized_keys"
    cat >"$d/sshd_config" <<EOF
ListenAddress $(host_addr 0):22
HostKey $d/host_ed25519
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
    setsid nsenter --net="/var/run/netns/$(host_ns 0)" /usr/sbin/sshd -D -e -f "$d/sshd_config" \
        </dev/null >"$d/sshd.log" 2>&1 &
    : "sshd pid $!"
    local k
    for ((k = 0; k < 100; k++)); do
        in_ns 1 ssh "${SSH_OPTS[@]}" "root@$(host_addr 0)" true 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$d/sshd.log" >&2
    die "sshd on the seed does not accept logins (log above)"
}

# registry_start: a fresh docker-registry (empty storage) on the seed's $REG_PORT.
registry_start() {
    local d=$R/registry k
    registry_stop
    rm -rf "$d"
    mkdir -p "$d/data"
    cat >"$d/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $d/data
  delete:
    enabled: true
http:
  addr: $(host_addr 0):$REG_PORT
EOF
    setsid nsenter --net="/var/run/netns/$(host_ns 0)" /usr/bin/docker-registry serve "$d/config.yml" \
        </dev/null >"$d/registry.log" 2>&1 &
    REGISTRY_PID=$!
    for ((k = 0; k < 100; k++)); do
        in_ns 0 curl -fs "http://$(host_addr 0):$REG_PORT/v2/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$d/registry.log" >&2
    die "docker-registry did not answer (log above)"
}

registry_stop() {
    [[ -n "${REGISTRY_PID:-}" ]] || return 0
    kill -TERM "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
    REGISTRY_PID=""
}
