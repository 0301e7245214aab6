#!/usr/bin/env bash
# The swarm benchmark of issue #3: p2pimg push vs scp fan-out vs a registry, on N+1
# emulated hosts with equally shaped uplinks, on one machine.
#
#   scripts/bench.sh                               # as root: N = 4 8 16, 100 Mbit/s, ~340 MB image
#   NS="2" RATE=200 RANDOM_MB=8 TEXT_MB=4 BIN_FILES= scripts/bench.sh     # a quick check (~3 min)
#
# Each host is a network namespace (p2pb-h0 = the seed, p2pb-h1..hN = the nodes) joined
# by a veth to a bridge in its own namespace (p2pb-br), with an address in $SUBNET.0/24
# that exists only there, its egress limited by tc (htb) to RATE Mbit/s, a private dockerd
# and, on the nodes, a p2pimg agent. For each N, in this order, with every node's images
# removed (and the agents' state emptied) between steps:
#   T_save    `docker save` of the image on the seed, to a file
#   T_load    all N engines `docker load` that file at once (the 2-core CPU floor)
#   p2pimg    `p2pimg push --json` from the seed to n1..nN
#   scp       scp of the saved tar from the seed's sshd to every node, at most
#             SCP_PARALLEL at once; each node `docker load`s its copy as soon as it has it
#   registry  docker-registry on the seed: `docker push` once, then all nodes pull at once
# and last a line for N=1 without shaping: `push` to one agent vs
# `docker save | docker load` between the same two engines.
#
# Environment (defaults shown):
#   NS="4 8 16"        node counts to run; NS= (empty) runs none, only the one-node line
#   RATE=100           Mbit/s of every host's uplink; RATES="16:50 8:100" overrides per N
#   METHODS="p2pimg scp registry"   which methods to run
#   SINGLE=1           run the N=1 unshaped line (0: skip)
#   REPEAT=1           p2pimg runs per N: the table shows the run with the median transfer,
#                      and the notes list every run's (the ratio moves by about ±0.05)
#   BASE=debian        debian (debootstrap --variant=minbase SUITE) or busybox (tiny)
#   SUITE=bookworm MIRROR=http://deb.debian.org/debian
#   BIN_FILES=/usr/sbin/dockerd   real binaries copied into one layer (empty: none)
#   TEXT_MB=40         MiB of log-like text in one layer (compresses about 4x)
#   RANDOM_MB=100      MiB of /dev/urandom in one layer (incompressible)
#   PUSH_ARGS=         extra arguments for `p2pimg push`, e.g. "--zstd-level 1"
#   DISK_IOPS=         if set, each agent's chunk store is on an emulated disk of that many
#                      operations per second (150 is a hard disk), DISK_MBPS=150 MB/s
#                      (qemu-storage-daemon's throttle filter; installs qemu-utils)
#   SCP_PARALLEL=10    copies at once in the scp fan-out
#   SUBNET=10.77.0     the emulated hosts' /24
#   TIMEOUT=1800       seconds one push, copy or pull may take
#   QUIET_WAIT=120     seconds to wait, before each measurement, for other work on the
#                      machine (a build) to stop using more than 20% of the CPU
#   P2PIMG=path        use this binary instead of `cargo build --release`
#   CACHE=/var/tmp/p2pimg-bench    the debootstrap tarball, results and logs
#   RESULTS=$CACHE/results/bench-DATE.txt   the full output; logs go to RESULTS.logs/
#
# Needs root. Installs what is missing of: docker.io, iproute2, debootstrap,
# openssh-server, docker-registry, jq, curl, busybox-static. Cleans up after itself (and after a crashed
# earlier run): processes in the p2pb-* namespaces, the namespaces, /tmp/p2pb.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

NS=${NS-4 8 16}
RATE=${RATE:-100}
RATES=${RATES:-}
METHODS=${METHODS:-p2pimg scp registry}
SINGLE=${SINGLE:-1}
REPEAT=${REPEAT:-1}
BASE=${BASE:-debian}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BIN_FILES=${BIN_FILES-/usr/sbin/dockerd}
TEXT_MB=${TEXT_MB:-40}
RANDOM_MB=${RANDOM_MB:-100}
PUSH_ARGS=${PUSH_ARGS:-}
DISK_IOPS=${DISK_IOPS:-}
DISK_MBPS=${DISK_MBPS:-150}
SCP_PARALLEL=${SCP_PARALLEL:-10}
SUBNET=${SUBNET:-10.77.0}
TIMEOUT=${TIMEOUT:-1800}
QUIET_WAIT=${QUIET_WAIT:-120}
CACHE=${CACHE:-/var/tmp/p2pimg-bench}
RESULTS=${RESULTS:-$CACHE/results/bench-$(date +%Y%m%d-%H%M%S).txt}
IMAGE=p2pb/app:1

# shellcheck source-path=SCRIPTDIR source=bench/lib.sh
source "$REPO/scripts/bench/lib.sh"

# The docker CLI talks only to the private engines, with a configuration of its own.
unset DOCKER_HOST DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
export DOCKER_CONFIG=$R/cli DOCKER_CLI_HINTS=false

SSH_OPTS=(-F /dev/null -i "$R/ssh/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o BatchMode=yes -o LogLevel=ERROR -o IdentitiesOnly=yes)
LOGS=$RESULTS.logs
declare -A RES=()     # "N|method|field" → value
SEED_ID=""
SAMPLER_PID=""
REGISTRY_PID=""  # set by registry_start

# ---------------------------------------------------------------- configuration checks

check_config() {
    local n v
    [[ $(id -u) -eq 0 ]] || die "run as root (network namespaces, dockerd)"
    for n in $NS; do
        if ! [[ "$n" =~ ^[0-9]+$ ]] || ((n < 1 || n > 250)); then die "NS: node counts are 1..250, got '$n'"; fi
    done
    for v in "$RATE" "$TEXT_MB" "$RANDOM_MB" "$SCP_PARALLEL" "$TIMEOUT" "$QUIET_WAIT" "$DISK_MBPS"; do
        [[ "$v" =~ ^[0-9]+$ ]] || die "RATE, TEXT_MB, RANDOM_MB, SCP_PARALLEL, TIMEOUT, QUIET_WAIT, DISK_MBPS are whole numbers"
    done
    [[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "REPEAT is a whole number of runs, 1 or more"
    [[ -z "$DISK_IOPS" || "$DISK_IOPS" =~ ^[1-9][0-9]*$ ]] || die "DISK_IOPS is a whole number of operations per second"
    [[ -n "${NS// /}" || "$SINGLE" == 1 ]] || die "nothing to run: NS is empty and SINGLE=0"
    [[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "SUBNET is the first three octets, like 10.77.0"
    [[ "$BASE" == debian || "$BASE" == busybox ]] || die "BASE is debian or busybox"
    for v in $METHODS; do
        [[ "$v" == p2pimg || "$v" == scp || "$v" == registry ]] || die "METHODS: p2pimg, scp, registry"
    done
}

# check_bin_files: after the packages are installed, since the default is dockerd's binary.
check_bin_files() {
    local v
    for v in $BIN_FILES; do [[ -f "$v" ]] || die "BIN_FILES: no file $v"; done
}

has_method() { [[ " $METHODS " == *" $1 "* ]]; }

# rate_for N: the link rate for N nodes (RATES entry "N:rate", else RATE).
rate_for() {
    local e
    for e in $RATES; do
        [[ "${e%%:*}" == "$1" ]] && { printf '%s\n' "${e#*:}"; return; }
    done
    printf '%s\n' "$RATE"
}

# shellcheck disable=SC2317 # run by the EXIT trap
on_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n "$SAMPLER_PID" ]] && kill "$SAMPLER_PID" 2>/dev/null
    log "saving daemon logs to $LOGS"
    if [[ -d "$R" ]]; then
        mkdir -p "$LOGS"
        for f in "$R"/h*/dockerd.log "$R/ssh/sshd.log" "$R/registry/registry.log"; do
            [[ -f "$f" ]] && tail -n 200 "$f" >"$LOGS/$(basename "$(dirname "$f")")-$(basename "$f")" 2>/dev/null
        done
    fi
    log "cleaning up: processes in the ${NS_PREFIX}* namespaces, the namespaces, $R"
    bench_cleanup
    ((rc == 0)) || log "benchmark failed (exit $rc); output so far in $RESULTS, logs in $LOGS"
    exit "$rc"
}

# ---------------------------------------------------------------- measurements

# cpu_mark: "epoch busy_jiffies total_jiffies our_cpu_ns", for cpu_between.
cpu_mark() {
    local u ni sy id io irq si st ours=0
    read -r _ u ni sy id io irq si st _ </proc/stat
    [[ -n "$CG" ]] && read -r ours <"$CG/cpuacct.usage"
    printf '%s %d %d %s\n' "$EPOCHREALTIME" $((u + ni + sy + irq + si + st)) $((u + ni + sy + id + io + irq + si + st)) "$ours"
}
# cpu_between MARK0 MARK1: "OURS OTHERS", % of all cores, as cpu_busy.
cpu_between() {
    printf '%s\n%s\n' "$1" "$2" | cpu_busy /dev/stdin 0 9e99
}

# wait_quiet: waits (up to QUIET_WAIT seconds) until the machine is nearly idle, so that
# a concurrent build or test run does not land in a measurement; says so if it waits.
# Once a wait has timed out, later calls only report how busy the machine is.
QUIET_GAVE_UP=0
wait_quiet() {
    local k m0 m1 busy said=0
    for ((k = 0; k < QUIET_WAIT || k == 0; k++)); do
        m0=$(cpu_mark)
        sleep 1
        m1=$(cpu_mark)
        busy=$(printf '%s\n%s\n' "$m0" "$m1" | awk 'NR == 1 {b = $2; a = $3} NR == 2 {printf "%.0f", 100 * ($2 - b) / ($3 - a)}')
        if ((busy < 20)); then
            ((!said)) || log "quiet after ${k}s"
            return 0
        fi
        if ((QUIET_GAVE_UP)); then
            log "warning: the machine is ${busy}% busy with other work (measuring anyway)"
            return 0
        fi
        ((said)) || log "the machine is ${busy}% busy with other work: waiting up to ${QUIET_WAIT}s for it to quiet down"
        said=1
    done
    QUIET_GAVE_UP=1
    log "warning: the machine is still ${busy}% busy after ${QUIET_WAIT}s: measuring anyway, and not waiting again"
}

# measure_save N: T_save, and the saved tar (F_tar) that scp copies and T_load loads.
measure_save() {
    local n=$1 t0 t1
    rm -f "$R/h0/image.tar"
    sync
    t0=$(now)
    dk 0 save -o "$R/h0/image.tar" "$IMAGE"
    t1=$(now)
    RES[$n|ref|t_save]=$(calc "$t1 - $t0")
    RES[$n|ref|f_tar]=$(stat -c %s "$R/h0/image.tar")
    log "N=$n: T_save $(fmt_s "${RES[$n|ref|t_save]}") s, docker save tar $(fmt_mb "${RES[$n|ref|f_tar]}") MB"
}

# measure_load N: T_load, all N engines loading the saved tar at once.
measure_load() {
    local n=$1 i t0 end c0 c1 ok=0 pids=() ours others
    local out=$R/runs/$n-load
    c0=$(cpu_mark)
    t0=$(now)
    for ((i = 1; i <= n; i++)); do
        { dk "$i" load -i "$R/h0/image.tar" >/dev/null 2>"$out.err.$i" && now >"$out.done.$i"; } &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    c1=$(cpu_mark)
    end=$(cat "$out".done.* 2>/dev/null | sort -n | tail -n 1) || true
    for ((i = 1; i <= n; i++)); do [[ "$(image_id "$i" "$IMAGE")" == "$SEED_ID" ]] && ok=$((ok + 1)); done
    ((ok == n)) || log "warning: T_load: only $ok/$n engines hold the image: $(cat "$out".err.* | head -n 3)"
    RES[$n|ref|t_load]=$(calc "${end:-$t0} - $t0")
    read -r ours others <<<"$(cpu_between "$c0" "$c1")"
    RES[$n|ref|load_cpu]=$ours
    RES[$n|ref|load_bg]=$others
    log "N=$n: T_load $(fmt_s "${RES[$n|ref|t_load]}") s ($n engines at once; CPU: benchmark $ours%, other processes $others% of the machine)"
    clean_nodes "$n"
}

# push_json N NODES_TOML OUT: runs p2pimg push --json in the seed's namespace; writes
# OUT.json, OUT.err and OUT.times (the push's user/system time). Returns its status.
push_json() {
    local out=$3
    # shellcheck disable=SC2086,SC2016 # PUSH_ARGS is a list of words; $1 etc. are the inner bash's
    timeout "$TIMEOUT" nsenter --net="/var/run/netns/$(host_ns 0)" bash -c \
        'o=$1; shift; "$@" >"$o.json" 2>"$o.err"; rc=$?; times >"$o.times"; exit $rc' _ "$out" \
        "$BIN" push "$IMAGE" --nodes "$2" --cluster-dir "$R/ca" --docker-host "$(host_sock 0)" --json $PUSH_ARGS
}

# times_children FILE: the children's user+system seconds from bash's `times` output.
times_children() {
    awk 'NR == 2 { s = 0; for (k = 1; k <= 2; k++) { split($k, p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] } printf "%.1f", s }' "$1"
}

# parse_push OUT.json: tab-separated: export_t export_secs bytes compressed last_loading_t
# nodes_loading loaded failed report_secs compressed_bytes success seed_uploaded
# from_peers first_failure
parse_push() {
    jq -cR 'fromjson? // empty' "$1" | jq -rs '
        (map(select(.event == "exported"))[0] // {}) as $e
        | (map(select(.event == "progress" and .progress.loading == true))
            | group_by(.node) | map(min_by(.t).t)) as $l
        | map(select(.event == "finished")) as $f
        | (map(select(.event == "report"))[0] // {}) as $r
        | [ ($e.t // "-"), ($e.secs // "-"), ($e.bytes // "-"), ($e.compressed // "-"),
            (if ($l | length) > 0 then ($l | max) else "-" end), ($l | length),
            ($f | map(select(.status.status == "loaded")) | length),
            ($f | map(select(.status.status == "failed")) | length),
            ($r.report.secs // "-"), ($r.report.compressed_bytes // "-"), ($r.success // false),
            (($r.report.seed_uploaded // []) | map(.bytes) | add // 0),
            (($r.report.pusher // "pusher") as $p | ($r.report.nodes // []) | map((.received // []) | map(select(.peer != $p) | .bytes) | add // 0) | add // 0),
            (($f | map(select(.status.status == "failed")) | .[0] | if . then "\(.node): \(.status.reason)" else "-" end)
              | gsub("[\t\n]"; " "))
          ] | @tsv'
}

run_p2pimg() {
    local n=$1
    local out=$R/runs/$n-p2pimg rc tx0 tx1 t0 t1 f stats i file samples
    samples=$out$RUN_TAG.samples
    log "N=$n p2pimg: restarting $n agents cold"
    agents_restart "$n"
    nodes_toml "$n" "$R/runs/nodes-$n.toml"
    tx0=$(host_tx 0)
    sampler_start "$samples" $((n + 1))
    log "N=$n p2pimg: push $IMAGE to $n nodes"
    t0=$(now)
    rc=0
    push_json "$n" "$R/runs/nodes-$n.toml" "$out" || rc=$?
    t1=$(now)
    sampler_stop
    tx1=$(host_tx 0)
    f=()
    IFS=$'\t' read -r -a f < <(parse_push "$out.json") || true
    while ((${#f[@]} < 14)); do f+=(-); done
    stats=$(agent_stats "$n")
    RES[$n|p2pimg|rc]=$rc
    RES[$n|p2pimg|t_export]=${f[0]}
    RES[$n|p2pimg|export_secs]=${f[1]}
    RES[$n|p2pimg|f_uncomp]=${f[2]}
    RES[$n|p2pimg|t_lastload]=${f[4]}
    RES[$n|p2pimg|loaded]="${f[6]}"
    RES[$n|p2pimg|failed]="${f[7]}"
    RES[$n|p2pimg|secs]=${f[8]}
    RES[$n|p2pimg|f_c]=${f[9]}
    RES[$n|p2pimg|report_seed]=${f[11]}
    RES[$n|p2pimg|received]=${f[12]}
    RES[$n|p2pimg|first_failure]=${f[13]}
    RES[$n|p2pimg|wall]=$(calc "$t1 - $t0")
    RES[$n|p2pimg|seed_tx]=$((tx1 - tx0))
    read -r "RES[$n|p2pimg|rss]" "RES[$n|p2pimg|rss_mean]" "RES[$n|p2pimg|agent_cpu]" "RES[$n|p2pimg|rss_each]" <<<"$stats"
    RES[$n|p2pimg|push_cpu]=$(times_children "$out.times" 2>/dev/null || printf -- '-')
    # Transfer only if every node got every byte (else the slowest node is missing from it).
    if [[ "${f[4]}" != - && "${f[0]}" != - && "${f[5]}" == "$n" ]]; then
        RES[$n|p2pimg|xfer]=$(calc "${f[4]} - ${f[0]}")
        RES[$n|p2pimg|cpu_xfer]=$(cpu_busy "$samples" "$(calc "$t0 + ${f[0]}")" "$(calc "$t0 + ${f[4]}")" | cut -d' ' -f1)
    else
        RES[$n|p2pimg|xfer]=-
        RES[$n|p2pimg|cpu_xfer]=-
    fi
    if [[ "${f[8]}" != - ]]; then RES[$n|p2pimg|e2e]=${f[8]}; else RES[$n|p2pimg|e2e]=-; fi
    read -r "RES[$n|p2pimg|cpu_all]" "RES[$n|p2pimg|cpu_bg]" <<<"$(cpu_busy "$samples" "$t0" "$t1")"
    RES[$n|p2pimg|net_xfer]=$(net_done "$samples" "$t0" "$n")
    RES[$n|p2pimg|verify]=$(verify_nodes "$n" "$IMAGE" "$SEED_ID")
    for ((i = 1; i <= n; i++)); do cp "$(host_dir "$i")/agent.log" "$LOGS/$n-p2pimg$RUN_TAG-n$i.agent.log"; done
    for file in "$out.json" "$out.err"; do
        [[ -f "$file" ]] && cp "$file" "$LOGS/$(basename "$file" | sed "s/-p2pimg\./-p2pimg$RUN_TAG./")"
    done
    if ((rc != 0)); then
        log "N=$n p2pimg: push exited $rc: $(tail -n 3 "$out.err")"
        [[ "${f[13]}" != - ]] && log "N=$n p2pimg: first failure: ${f[13]}"
    fi
    log "N=$n p2pimg: exit $rc, last node loading at $(fmt_s "${f[4]}") s (export $(fmt_s "${f[1]}") s), report $(fmt_s "${f[8]}") s, seed sent $(fmt_mb $((tx1 - tx0))) MB, ${RES[$n|p2pimg|verify]}"
    for ((i = 1; i <= n; i++)); do agent_stop "$i"; done
    clean_nodes "$n"
}

# run_p2pimg_repeated N: REPEAT runs of run_p2pimg N; RES keeps the run with the median
# transfer (the lower middle one of an even count) and, in RES[N|p2pimg|runs], every run's
# transfer in seconds. Logs of run R > 1 are named N-p2pimg-rR.*.
RUN_TAG=""
run_p2pimg_repeated() {
    local n=$1 r key xfers=() order median
    local -A kept=()
    for ((r = 1; r <= REPEAT; r++)); do
        RUN_TAG=""
        ((r > 1)) && RUN_TAG="-r$r"
        ((REPEAT > 1)) && log "N=$n p2pimg: run $r of $REPEAT"
        wait_quiet
        run_p2pimg "$n"
        xfers+=("${RES[$n|p2pimg|xfer]}")
        for key in "${!RES[@]}"; do
            [[ "$key" == "$n|p2pimg|"* ]] && kept["$r|${key#"$n|p2pimg|"}"]=${RES[$key]}
        done
    done
    RUN_TAG=""
    # A failed run ('-') sorts last, so it is the median only if most runs failed.
    order=$(for r in "${!xfers[@]}"; do printf '%s %d\n' "${xfers[$r]/#-/999999}" $((r + 1)); done | sort -n | cut -d' ' -f2)
    median=$(sed -n "$(((REPEAT + 1) / 2))p" <<<"$order")
    for key in "${!kept[@]}"; do
        [[ "$key" == "$median|"* ]] && RES["$n|p2pimg|${key#"$median|"}"]=${kept[$key]}
    done
    RES[$n|p2pimg|runs]="${xfers[*]}"
    RES[$n|p2pimg|median_run]=$median
}

# scp_job N I SEM OUT: copy to node I (holding one of SEM's tokens), then load.
scp_job() {
    local n=$1 i=$2 sem=$3 out=$4 t
    read -r -n 1 -u "$sem" _
    if timeout "$TIMEOUT" nsenter --net="/var/run/netns/$(host_ns "$i")" scp -q "${SSH_OPTS[@]}" \
        "root@$(host_addr 0):$R/h0/image.tar" "$(host_dir "$i")/image.tar" 2>"$out.err.$i"; then
        t=$(now)
        printf '%s\n' "$t" >"$out.copy.$i"
        printf x >&"$sem"
        log "N=$n scp: n$i has its copy"
        if dk "$i" load -i "$(host_dir "$i")/image.tar" >/dev/null 2>>"$out.err.$i"; then
            now >"$out.load.$i"
        fi
    else
        printf x >&"$sem"
        log "N=$n scp: copy to n$i failed: $(head -c 300 "$out.err.$i")"
    fi
}

run_scp() {
    local n=$1
    local out=$R/runs/$n-scp tx0 tx1 t0 t1 sem k i tc tl c pids=()
    tx0=$(host_tx 0)
    sampler_start "$out.samples" $((n + 1))
    log "N=$n scp: copying the saved tar to $n nodes, $SCP_PARALLEL at once, each loading when its copy is done"
    mkfifo "$out.sem"
    exec {sem}<>"$out.sem"
    for ((k = 0; k < SCP_PARALLEL; k++)); do printf x >&"$sem"; done
    t0=$(now)
    for ((i = 1; i <= n; i++)); do scp_job "$n" "$i" "$sem" "$out" & pids+=($!); done
    wait "${pids[@]}" || true
    t1=$(now)
    exec {sem}>&-
    sampler_stop
    tx1=$(host_tx 0)
    c=$(find "$R/runs" -name "$n-scp.copy.*" | wc -l)
    tc=$(cat "$out".copy.* 2>/dev/null | sort -n | tail -n 1) || true
    tl=$(cat "$out".load.* 2>/dev/null | sort -n | tail -n 1) || true
    RES[$n|scp|copied]=$c
    RES[$n|scp|loaded]=$(find "$R/runs" -name "$n-scp.load.*" | wc -l)
    RES[$n|scp|xfer]=$([[ -n "$tc" ]] && calc "$tc - $t0" || printf -- '-')
    # End to end includes the docker save that made the tar.
    RES[$n|scp|e2e]=$([[ -n "$tl" ]] && calc "${RES[$n|ref|t_save]} + $tl - $t0" || printf -- '-')
    RES[$n|scp|seed_tx]=$((tx1 - tx0))
    RES[$n|scp|cpu_xfer]=$([[ -n "$tc" ]] && cpu_busy "$out.samples" "$t0" "$tc" | cut -d' ' -f1 || printf -- '-')
    read -r "RES[$n|scp|cpu_all]" "RES[$n|scp|cpu_bg]" <<<"$(cpu_busy "$out.samples" "$t0" "$t1")"
    RES[$n|scp|net_xfer]=$(net_done "$out.samples" "$t0" "$n")
    RES[$n|scp|verify]=$(verify_nodes "$n" "$IMAGE" "$SEED_ID")
    log "N=$n scp: copies done at $(fmt_s "${RES[$n|scp|xfer]}") s, loads done at $(fmt_s "$(calc "${tl:-$t1} - $t0")") s, seed sent $(fmt_mb $((tx1 - tx0))) MB, ${RES[$n|scp|verify]}"
    clean_nodes "$n"
}

run_registry() {
    local n=$1
    local out=$R/runs/$n-registry ref tx0 tx1 t0 t1 t2 t3 i tl pids=()
    ref=$(host_addr 0):$REG_PORT/p2pb/app:1
    registry_start
    dk 0 tag "$IMAGE" "$ref"
    log "N=$n registry: docker push to the seed's registry"
    t0=$(now)
    dk 0 push "$ref" >"$out.push.log" 2>&1 || { tail -n 5 "$out.push.log" >&2; log "N=$n registry: push failed"; }
    t1=$(now)
    RES[$n|registry|push]=$(calc "$t1 - $t0")
    RES[$n|registry|f_gz]=$(find "$R/registry/data" -type f -name data -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    log "N=$n registry: pushed in $(fmt_s "${RES[$n|registry|push]}") s ($(fmt_mb "${RES[$n|registry|f_gz]}") MB of blobs); $n nodes pull at once"
    tx0=$(host_tx 0)
    sampler_start "$out.samples" $((n + 1))
    t2=$(now)
    for ((i = 1; i <= n; i++)); do
        { timeout "$TIMEOUT" docker -H "$(host_sock "$i")" pull -q "$ref" >/dev/null 2>"$out.err.$i" && now >"$out.pull.$i"; } &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    t3=$(now)
    sampler_stop
    tx1=$(host_tx 0)
    tl=$(cat "$out".pull.* 2>/dev/null | sort -n | tail -n 1) || true
    RES[$n|registry|loaded]=$(find "$R/runs" -name "$n-registry.pull.*" | wc -l)
    RES[$n|registry|pull]=$([[ -n "$tl" ]] && calc "$tl - $t2" || printf -- '-')
    RES[$n|registry|xfer]=$(net_done "$out.samples" "$t2" "$n")
    RES[$n|registry|e2e]=$([[ -n "$tl" ]] && calc "$tl - $t0" || printf -- '-')
    RES[$n|registry|seed_tx]=$((tx1 - tx0))
    RES[$n|registry|cpu_xfer]=$(cpu_busy "$out.samples" "$t2" "$(calc "$t2 + ${RES[$n|registry|xfer]}")" | cut -d' ' -f1)
    read -r "RES[$n|registry|cpu_all]" "RES[$n|registry|cpu_bg]" <<<"$(cpu_busy "$out.samples" "$t2" "$t3")"
    RES[$n|registry|verify]=$(verify_nodes "$n" "$ref" "$SEED_ID")
    log "N=$n registry: last byte at $(fmt_s "${RES[$n|registry|xfer]}") s, last pull done at $(fmt_s "${RES[$n|registry|pull]}") s, seed sent $(fmt_mb $((tx1 - tx0))) MB, ${RES[$n|registry|verify]}"
    [[ "${RES[$n|registry|loaded]}" == "$n" ]] || log "N=$n registry: pulls failed: $(cat "$out".err.* | head -n 3)"
    dk 0 rmi "$ref" >/dev/null
    registry_stop
    clean_nodes "$n"
}

# ---------------------------------------------------------------- output

# bound N F: F/u · max(1, N/(N+1)) seconds for N nodes at the N's rate.
bound() {
    [[ "$2" == - || -z "$2" ]] && { printf -- '-'; return; }
    awk -v n="$1" -v f="$2" -v r="$(rate_for "$1")" 'BEGIN{ m = n / (n + 1); if (m < 1) m = 1; printf "%.3f", f / (r * 125000) * m }'
}

ROW_FMT='%-9s %9s %7s %7s %9s %7s %7s %9s %6s %7s %5s %5s %5s  %s\n'

print_block() {
    local n=$1 fc ftar bc bt refc reft m xfer e2e note cpu
    fc=${RES[$n|p2pimg|f_c]:--}
    ftar=${RES[$n|ref|f_tar]}
    bc=$(bound "$n" "$fc")
    bt=$(bound "$n" "$ftar")
    refc=$([[ "$bc" != - ]] && calc "${RES[$n|ref|t_save]} + $bc + ${RES[$n|ref|t_load]}" || printf -- '-')
    reft=$(calc "${RES[$n|ref|t_save]} + $bt + ${RES[$n|ref|t_load]}")
    printf '\nN=%d nodes, every uplink %s Mbit/s (u = %s MB/s)\n' "$n" "$(rate_for "$n")" "$(awk -v r="$(rate_for "$n")" 'BEGIN{printf "%.2f", r / 8}')"
    printf '  F_c   = %s MB (compressed, what p2pimg carried)   bound F_c/u·max(1,N/(N+1))   = %s s\n' "$(fmt_mb "$fc")" "$(fmt_s "$bc")"
    printf '  F_tar = %s MB (docker save tar)                  bound F_tar/u·max(1,N/(N+1)) = %s s\n' "$(fmt_mb "$ftar")" "$(fmt_s "$bt")"
    printf '  T_save = %s s   T_load (%d engines at once) = %s s (CPU %s%%, bg %s%%)   e2e reference T_save+bound+T_load = %s s (F_c), %s s (F_tar)\n' \
        "$(fmt_s "${RES[$n|ref|t_save]}")" "$n" "$(fmt_s "${RES[$n|ref|t_load]}")" "${RES[$n|ref|load_cpu]}" "${RES[$n|ref|load_bg]}" "$(fmt_s "$refc")" "$(fmt_s "$reft")"
    # shellcheck disable=SC2059 # the format is a constant
    printf "  $ROW_FMT" method transfer/s xB_Fc xB_Ftar e2e/s xRef_Fc xRef_Ft seed_upMB xF_c RSS_MB CPUx% CPUa% bg% notes
    for m in p2pimg scp registry; do
        has_method "$m" || continue
        xfer=${RES[$n|$m|xfer]:--}
        e2e=${RES[$n|$m|e2e]:--}
        cpu="${RES[$n|$m|cpu_xfer]:--}"
        case $m in
            p2pimg)
                note="transfer = last node loading:true ($(fmt_s "${RES[$n|p2pimg|t_lastload]:--}") s from push start) minus export ($(fmt_s "${RES[$n|p2pimg|export_secs]:--}") s);"
                note+=" last byte received by a node (data, acks, requests) at $(fmt_s "${RES[$n|p2pimg|net_xfer]:--}") s from push start; e2e = report secs; CPU agents $(fmt_s "${RES[$n|p2pimg|agent_cpu]:--}") s + push $(fmt_s "${RES[$n|p2pimg|push_cpu]:--}") s;"
                note+=" agent RSS mean $(fmt_mb "${RES[$n|p2pimg|rss_mean]:--}") MB (MB each: ${RES[$n|p2pimg|rss_each]:--});"
                note+=" report: nodes got $(fmt_mb "${RES[$n|p2pimg|report_seed]:--}") MB from the seed, $(fmt_mb "${RES[$n|p2pimg|received]:--}") MB from peers;"
                note+=" exit ${RES[$n|p2pimg|rc]:--}, ${RES[$n|p2pimg|loaded]:--}/$n loaded; ${RES[$n|p2pimg|verify]:--}"
                if ((REPEAT > 1)); then
                    local x runs=""
                    for x in ${RES[$n|p2pimg|runs]}; do runs+=" $(fmt_x "$(ratio "$x" "$bc")")"; done
                    note+="; $REPEAT runs, transfer x bound:$runs (the row is run ${RES[$n|p2pimg|median_run]}, the median)"
                fi
                [[ "${RES[$n|p2pimg|first_failure]:--}" != - ]] && note+="; first failure: ${RES[$n|p2pimg|first_failure]}"
                ;;
            scp)
                note="scp (OpenSSH, sshd on the seed), $SCP_PARALLEL at once; transfer = all copies done; e2e = T_save + until the last load;"
                note+=" ${RES[$n|scp|copied]:--}/$n copied, ${RES[$n|scp|loaded]:--}/$n loaded; ${RES[$n|scp|verify]:--}"
                ;;
            registry)
                note="docker push $(fmt_s "${RES[$n|registry|push]:--}") s ($(fmt_mb "${RES[$n|registry|f_gz]:--}") MB gzip blobs); transfer = pull phase until the last node's last byte on the wire;"
                note+=" pulls (transfer+extract) $(fmt_s "${RES[$n|registry|pull]:--}") s; e2e = push + pulls; ${RES[$n|registry|loaded]:--}/$n pulled; ${RES[$n|registry|verify]:--}"
                ;;
        esac
        # shellcheck disable=SC2059
        printf "  $ROW_FMT" "$m" "$(fmt_s "$xfer")" "$(fmt_x "$(ratio "$xfer" "$bc")")" "$(fmt_x "$(ratio "$xfer" "$bt")")" \
            "$(fmt_s "$e2e")" "$(fmt_x "$(ratio "$e2e" "$refc")")" "$(fmt_x "$(ratio "$e2e" "$reft")")" \
            "$(fmt_mb "${RES[$n|$m|seed_tx]:--}")" "$(fmt_x "$(ratio "${RES[$n|$m|seed_tx]:--}" "$fc")")" \
            "$(fmt_mb "${RES[$n|$m|rss]:--}")" "$cpu" "${RES[$n|$m|cpu_all]:--}" "${RES[$n|$m|cpu_bg]:--}" "$note"
    done
}

print_legend() {
    cat <<'EOF'

Columns: transfer/s = until the last node has every byte it needs (after the seed had the
image ready: export, save or push excluded); xB_Fc, xB_Ftar = transfer / bound for F_c and
F_tar; e2e/s = from the start (export, save or docker push) until the image is loaded on
every node; xRef = e2e / (T_save + bound + T_load); seed_upMB = bytes the seed's eth0 sent
(its own counter, all protocol overhead included); xF_c = that / F_c; RSS_MB = largest agent
VmHWM; CPUx%, CPUa% = CPU used by the benchmark's processes (engines, agents, push, scp,
registry; 100% = all cores) during transfer / the whole method; bg% = CPU used by other
processes on the machine meanwhile (a concurrent build skews every figure: rerun if high).
Without a cpuacct cgroup to put the benchmark in, CPU% is the whole machine's and bg% is '-'.
EOF
}

# ---------------------------------------------------------------- N = 1, no shaping

run_single() {
    local t0 t1 pipe rc out=$R/runs/1-single f
    log "N=1 unshaped: docker save | docker load, then push to one agent"
    shape 0 0
    shape 1 0
    clean_node 1
    sync
    wait_quiet
    t0=$(now)
    dk 0 save "$IMAGE" | dk 1 load >/dev/null
    t1=$(now)
    pipe=$(calc "$t1 - $t0")
    [[ "$(image_id 1 "$IMAGE")" == "$SEED_ID" ]] || log "warning: save | load did not give the seed's image ID"
    clean_node 1
    sync
    agents_restart 1
    nodes_toml 1 "$R/runs/nodes-1.toml"
    wait_quiet
    rc=0
    t0=$(now)
    push_json 1 "$R/runs/nodes-1.toml" "$out" || rc=$?
    t1=$(now)
    f=()
    IFS=$'\t' read -r -a f < <(parse_push "$out.json") || true
    while ((${#f[@]} < 14)); do f+=(-); done
    cp "$out.json" "$LOGS/1-single.json" 2>/dev/null || true
    cp "$(host_dir 1)/agent.log" "$LOGS/1-single-n1.agent.log"
    agent_stop 1
    [[ "$(image_id 1 "$IMAGE")" == "$SEED_ID" ]] || log "warning: push to one node did not give the seed's image ID"
    clean_node 1
    printf '\nN=1, no shaping (two namespaces on the bridge): push to one agent vs docker save | docker load between the same engines\n'
    printf '  docker save | docker load  %s s\n' "$(fmt_s "$pipe")"
    printf '  p2pimg push                %s s (report secs; command %s s; export %s s; exit %s)   ratio %s (target <= 1.3)\n' \
        "$(fmt_s "${f[8]}")" "$(fmt_s "$(calc "$t1 - $t0")")" "$(fmt_s "${f[1]}")" "$rc" "$(fmt_x "$(ratio "${f[8]}" "$pipe")")"
}

# ---------------------------------------------------------------- main

main() {
    local nmax=1 n i
    check_config
    mkdir -p "$(dirname "$RESULTS")"
    exec > >(tee -a "$RESULTS") 2>&1
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    bench_install_deps
    check_bin_files
    log "removing leftovers of an earlier run, if any"
    bench_cleanup
    cg_enter
    mkdir -p "$R/runs" "$LOGS"
    for n in $NS; do ((n > nmax)) && nmax=$n; done
    bench_bin
    log "p2pimg: $("$BIN" --version) from $REPO at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n "$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]] && echo ' + uncommitted changes')"
    log "network: $((nmax + 1)) hosts on a bridge, $SUBNET.1 (seed) .. $SUBNET.$((nmax + 1))"
    net_up $((nmax + 1))
    log "starting $((nmax + 1)) dockerd daemons"
    for ((i = 0; i <= nmax; i++)); do dockerd_start "$i"; done
    for ((i = 0; i <= nmax; i++)); do dockerd_wait "$i"; done
    log "building $IMAGE on the seed (base: $BASE)"
    build_image
    SEED_ID=$(image_id 0 "$IMAGE")
    agents_prepare "$nmax"
    if [[ -n "$DISK_IOPS" ]]; then
        log "putting the agents' chunk stores on disks of $DISK_IOPS operations/s, $DISK_MBPS MB/s"
        for ((i = 1; i <= nmax; i++)); do disk_up "$i"; done
    fi
    has_method scp && sshd_start
    {
        printf '\n== p2pimg benchmark, %s ==\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        printf 'machine: %s cores, %s, kernel %s; docker %s\n' "$(nproc)" \
            "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)" "$(uname -r)" \
            "$(dk 0 version --format '{{.Server.Version}}')"
        printf 'p2pimg: %s (git %s)   push args: %s\n' "$("$BIN" --version)" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" "${PUSH_ARGS:-none}"
        [[ -n "$DISK_IOPS" ]] && printf 'agent chunk stores: emulated disks of %s operations/s, %s MB/s\n' "$DISK_IOPS" "$DISK_MBPS"
        printf 'config: NS="%s" RATE=%s RATES="%s" METHODS="%s" BASE=%s BIN_FILES="%s" TEXT_MB=%s RANDOM_MB=%s SCP_PARALLEL=%s\n' \
            "$NS" "$RATE" "$RATES" "$METHODS" "$BASE" "$BIN_FILES" "$TEXT_MB" "$RANDOM_MB" "$SCP_PARALLEL"
        printf 'image %s (%s), %s MB as docker reports it; layers:\n' "$IMAGE" "${SEED_ID:7:12}" \
            "$(fmt_mb "$(dk 0 image inspect --format '{{.Size}}' "$IMAGE")")"
        dk 0 history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | awk -F '\t' '$1 != "0B" { printf "  %8s  %s\n", $1, ($2 == "" ? "(imported base)" : substr($2, 1, 100)) }'
    }
    for n in $NS; do
        log "== N=$n: shaping h0..h$n to $(rate_for "$n") Mbit/s"
        for ((i = 0; i <= n; i++)); do shape "$i" "$(rate_for "$n")"; done
        clean_nodes "$n"
        wait_quiet
        measure_save "$n"
        wait_quiet
        measure_load "$n"
        if has_method p2pimg; then run_p2pimg_repeated "$n"; fi
        if has_method scp; then wait_quiet; run_scp "$n"; fi
        if has_method registry; then wait_quiet; run_registry "$n"; fi
        print_block "$n" | tee "$R/runs/block-$n.txt"
    done
    ((SINGLE)) && has_method p2pimg && run_single | tee "$R/runs/single.txt"
    {
        printf '\n==================== summary ====================\n'
        printf '%s\n' "config: NS=\"$NS\" RATE=$RATE RATES=\"$RATES\" BASE=$BASE BIN_FILES=\"$BIN_FILES\" TEXT_MB=$TEXT_MB RANDOM_MB=$RANDOM_MB PUSH_ARGS=\"$PUSH_ARGS\" DISK_IOPS=\"$DISK_IOPS\" REPEAT=$REPEAT"
        for n in $NS; do cat "$R/runs/block-$n.txt"; done
        [[ -f "$R/runs/single.txt" ]] && cat "$R/runs/single.txt"
        print_legend
        printf '\nfull output: %s   logs: %s\n' "$RESULTS" "$LOGS"
    }
}

main "$@"; exit $?
