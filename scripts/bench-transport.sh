#!/usr/bin/env bash
# The transport benchmark of issue #3 ("QUIC tuning"): p2pimg's QUIC chunk path, with each of
# quinn's congestion controllers, against plain TCP, on the same shaped link.
#
#   scripts/bench-transport.sh                       # as root: 100 and 1000 Mbit/s, 0 and 1% loss
#   RATES=100 LOSSES=0 SIZE_MB=50 scripts/bench-transport.sh      # a quick check (~30 s)
#
# Two network namespaces, p2pt-h0 (the sender, 10.78.0.1) and p2pt-h1 (the receiver,
# 10.78.0.2), joined by a veth pair, each side's egress limited by tc (htb, as
# scripts/bench/lib.sh shapes the swarm benchmark's hosts). Packet loss is emulated by an
# iptables `statistic` DROP rule on the receiver's INPUT (this kernel has no netem), so it
# hits data, not acknowledgements. Each run starts a fresh server in h0 and a client in h1 of
# `examples/transport.rs`, which transfers SIZE_MB of 1 MiB chunks:
#   quic-CC     p2pimg's mTLS endpoint and transport configuration with quinn's controller CC
#               (cubic: quinn's default, newreno, bbr); a request stream per chunk, IN_FLIGHT
#               requests at once, the server answering 2 at a time (as the agents do)
#   tcp-CC      the same chunk frames back to back on one unencrypted TCP connection with the
#               kernel's controller CC (cubic, bbr, reno); `tcp` alone: the system default
# and prints a table: rate, loss, method, MB/s (10^6 bytes), ratio to the first tcp method of
# the same rate and loss, CPU seconds of sender and receiver (getrusage), and the 1-minute
# load average when the run ended (the machine is shared).
#
# Environment (defaults shown):
#   RATES="100 1000"   Mbit/s of each side's egress
#   LOSSES="0 0.01"    probability of dropping each packet the receiver gets
#   METHODS="tcp-cubic tcp-bbr quic-cubic quic-newreno quic-bbr"
#   SIZE_MB=200        MB per transfer
#   IN_FLIGHT=4        QUIC requests in flight (the swarm's per-peer default)
#   TIMEOUT=120        seconds one transfer may take
#   MTU=1500           the veth pair's MTU (9000: jumbo frames)
#   TRANSPORT=path     use this build of the example instead of `cargo build --release`
#
# Needs root, iproute2 and iptables. Cleans up on exit (and after a crashed earlier run): the
# processes in the p2pt-* namespaces, the namespaces (and so the veths), /tmp/p2pt.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

RATES=${RATES:-100 1000}
LOSSES=${LOSSES:-0 0.01}
METHODS=${METHODS:-tcp-cubic tcp-bbr quic-cubic quic-newreno quic-bbr}
MTU=${MTU:-1500}
SIZE_MB=${SIZE_MB:-200}
IN_FLIGHT=${IN_FLIGHT:-4}
TIMEOUT=${TIMEOUT:-120}

# shellcheck source-path=SCRIPTDIR source=bench/lib.sh
source "$REPO/scripts/bench/lib.sh"
# lib.sh's helpers (log, die, calc, ratio, fmt_x, host_ns, host_addr, in_ns, shape) on this
# benchmark's own namespaces, addresses and directory.
# shellcheck disable=SC2034 # read by lib.sh's functions
R=/tmp/p2pt NS_PREFIX=p2pt- SUBNET=10.78.0
# First port of the servers: each run gets the next one, so no run waits for the last
# one's TIME_WAIT. The namespaces are private, so nothing else uses them.
PORT0=7790

# cleanup: ends the processes in this benchmark's namespaces, deletes the namespaces (the
# veth pair goes with them) and $R.
cleanup() {
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk -v p="$NS_PREFIX" 'index($1, p) == 1 {print $1}'); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            if [[ "$pid" != "$$" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$R"
}

# link_up: the two namespaces and the veth pair between them, eth0 on each side.
link_up() {
    local i
    ip netns add "$(host_ns 0)"
    ip netns add "$(host_ns 1)"
    ip link add eth0 netns "$(host_ns 0)" type veth peer name eth0 netns "$(host_ns 1)"
    for i in 0 1; do
        ip -n "$(host_ns "$i")" link set lo up
        ip -n "$(host_ns "$i")" addr add "$(host_addr "$i")/24" dev eth0
        ip -n "$(host_ns "$i")" link set eth0 mtu "$MTU" up
    done
}

# set_loss P: the receiver drops each incoming packet with probability P (0: none).
set_loss() {
    in_ns 1 iptables -w -F INPUT
    [[ "$1" == 0 ]] || in_ns 1 iptables -w -A INPUT -i eth0 -m statistic --mode random --probability "$1" -j DROP
}

# build: the example binary, copied into $R so that a rebuild during the run does not change it.
build() {
    local src=${TRANSPORT:-${CARGO_TARGET_DIR:-$REPO/target}/release/examples/transport}
    if [[ -z "${TRANSPORT:-}" ]]; then
        log "cargo build --release --example transport (TRANSPORT=path skips it)"
        (cd "$REPO" && cargo build --release --example transport) >"$R/cargo-build.log" 2>&1 ||
            { tail -n 20 "$R/cargo-build.log" >&2; die "cargo build --release --example transport failed"; }
    fi
    [[ -x "$src" ]] || die "no transport example at $src"
    cp "$src" "$R/transport"
    BIN=$R/transport
}

# field NAME FILE: the value of NAME= on the last line of FILE that has it, or '-'.
field() {
    local v
    v=$(grep -o "$1=[^ ]*" "$2" 2>/dev/null | tail -n 1 | cut -d= -f2)
    printf '%s\n' "${v:--}"
}

# run_one METHOD PORT OUT: one transfer; leaves the client's line in OUT.cli and the server's
# in OUT.srv.
run_one() {
    local method=$1 port=$2 out=$3 server=() client=() pid k
    local addr
    addr="$(host_addr 0):$port"
    case $method in
        quic-*)
            server=(quic-server --dir "$R/ca" --listen "$addr" --cc "${method#quic-}")
            client=(quic-client --dir "$R/ca" --connect "$addr" --cc "${method#quic-}" --in-flight "$IN_FLIGHT")
            ;;
        tcp | tcp-*)
            server=(tcp-server --listen "$addr")
            [[ "$method" == tcp ]] || server+=(--tcp-cc "${method#tcp-}")
            client=(tcp-client --connect "$addr")
            ;;
        *) die "unknown method $method (quic-cubic, quic-newreno, quic-bbr, tcp, tcp-cubic, tcp-bbr, tcp-reno)" ;;
    esac
    in_ns 0 "$BIN" "${server[@]}" >"$out.srv" 2>"$out.srv.err" &
    pid=$!
    for ((k = 0; k < 100; k++)); do
        grep -q '^listening on' "$out.srv" 2>/dev/null && break
        [[ -d /proc/$pid ]] || break
        sleep 0.05
    done
    grep -q '^listening on' "$out.srv" || { cat "$out.srv.err" >&2; die "$method server did not start (above)"; }
    if ! in_ns 1 timeout "$TIMEOUT" "$BIN" "${client[@]}" --mb "$SIZE_MB" >"$out.cli" 2>"$out.cli.err"; then
        log "$method: transfer failed or took over ${TIMEOUT}s: $(head -n 1 "$out.cli.err")"
    fi
    for ((k = 0; k < 100; k++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

main() {
    [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, tc, iptables): run it with sudo"
    command -v tc >/dev/null || die "tc missing: apt-get install iproute2"
    command -v iptables >/dev/null || die "iptables missing: apt-get install iptables"
    cleanup
    trap cleanup EXIT
    mkdir -p "$R/runs"
    build
    "$BIN" init "$R/ca"
    link_up
    local rate loss method port=$PORT0 out mbs ref row
    printf 'transport benchmark: %s MB per transfer, QUIC with %s requests in flight; system TCP default: %s; load average at start: %s\n\n' \
        "$SIZE_MB" "$IN_FLIGHT" "$(sysctl -n net.ipv4.tcp_congestion_control)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '| rate | loss | method | MB/s | × TCP | CPU s send | CPU s recv | load |\n'
    printf '|---|---|---|---|---|---|---|---|\n'
    for rate in $RATES; do
        shape 0 "$rate"
        shape 1 "$rate"
        for loss in $LOSSES; do
            set_loss "$loss"
            ref=-
            for method in $METHODS; do
                out=$R/runs/$rate-$loss-$method
                log "$rate Mbit/s, loss $loss: $method"
                run_one "$method" "$port" "$out"
                port=$((port + 1))
                mbs=$(field mb_per_s "$out.cli")
                [[ "$ref" == - && "$method" == tcp* ]] && ref=$mbs
                row="| $rate Mbit/s | $(awk -v p="$loss" 'BEGIN{printf "%g%%", p * 100}') | $method | $mbs"
                row+=" | $(fmt_x "$(ratio "$mbs" "$ref")") | $(field cpu_s "$out.srv") | $(field cpu_s "$out.cli")"
                printf '%s | %s |\n' "$row" "$(cut -d' ' -f1 /proc/loadavg)"
            done
        done
    done
    printf '\nload average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
}

main "$@"
