#!/usr/bin/env bash
# Installs the p2pimg agent on this node, as a systemd service.
#
#   scripts/install.sh --name NODE --cert-dir DIR [--listen ADDR] [--engine KIND] [--binary PATH] [--no-start]
#   scripts/install.sh --uninstall
#
#   --name NODE      this node's name, as in nodes.toml and its certificate
#   --cert-dir DIR   holds ca.crt, NODE.crt and NODE.key (from `p2pimg cert issue NODE`);
#                    they are copied to /etc/p2pimg/ (key 0600, directory 0700)
#   --listen ADDR    UDP address for agent.toml (default 0.0.0.0:7701)
#   --engine KIND    the node's container engine for agent.toml: docker (default; classic or
#                    containerd image store), containerd (Kubernetes nodes, namespace k8s.io)
#                    or podman (needs its API socket: systemctl enable --now podman.socket)
#   --binary PATH    the p2pimg binary (default: target/release/p2pimg of this checkout)
#   --no-start       install only: neither enable nor start the service
#   --uninstall      stop and disable the service, remove the unit and the binary; keeps
#                    /etc/p2pimg and /var/lib/p2pimg
#
# Puts /usr/local/bin/p2pimg, /etc/systemd/system/p2pimg-agent.service and
# /etc/p2pimg/{agent.toml,ca.crt,NODE.crt,NODE.key} in place, then runs
# `systemctl daemon-reload` and `systemctl enable --now p2pimg-agent`. An existing
# /etc/p2pimg/agent.toml is never overwritten. Running it again is safe: unchanged files
# are left alone, and a running agent is restarted only when its binary, unit or
# certificates changed.
#
# P2PIMG_ROOT=DIR (for tests) prefixes every path it writes, and the paths it writes into
# agent.toml, and never calls systemctl.
set -euo pipefail
umask 077

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$SCRIPT_DIR")"
ROOT="${P2PIMG_ROOT:-}"
ROOT="${ROOT%/}"

UNIT_NAME=p2pimg-agent
UNIT_SRC="$SCRIPT_DIR/$UNIT_NAME.service"
# Where things go on the node (without ROOT): the unit file names these paths.
BIN_PATH=/usr/local/bin/p2pimg
UNIT_PATH=/etc/systemd/system/$UNIT_NAME.service
ETC_DIR=/etc/p2pimg
STATE_DIR=/var/lib/p2pimg
DEFAULT_LISTEN=0.0.0.0:7701

log() { printf '%s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# systemd_running: true when systemd is PID 1 here and we install into the real root.
systemd_running() { [[ -z "$ROOT" && -d /run/systemd/system ]]; }

# OWNER: install(1) arguments making root the owner when we are root. The unit drops every
# capability, so the agent reads its files only as their owner.
OWNER=()
if [[ $EUID -eq 0 ]]; then OWNER=(-o 0 -g 0); fi

# CHANGED is set when a file the running agent uses was written.
CHANGED=0

# put SRC DEST MODE: copies SRC to DEST (atomically, through a temporary file beside it)
# unless DEST already has the same content; either way DEST ends with MODE and our owner.
put() {
    local src=$1 dest=$2 mode=$3 tmp
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        if [[ $EUID -eq 0 ]]; then chown 0:0 "$dest"; fi
        log "unchanged   $dest"
        return
    fi
    tmp="$dest.tmp.$$"
    install "${OWNER[@]}" -m "$mode" "$src" "$tmp" || { rm -f "$tmp"; die "cannot write $tmp"; }
    mv -f "$tmp" "$dest"
    CHANGED=1
    log "installed   $dest"
}

# make_dir DIR MODE: creates DIR (and parents) and sets its mode and owner.
make_dir() {
    install -d "${OWNER[@]}" -m "$2" "$1"
    chmod "$2" "$1"
}

# valid_name NAME: the naming rule of p2pimg certificates and nodes.toml.
valid_name() {
    [[ ${#1} -ge 1 && ${#1} -le 63 && "$1" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]]
}

write_config() {
    local conf=$1 name=$2 listen=$3 engine=$4 engine_host namespace=""
    case $engine in
        docker) engine_host="unix:///var/run/docker.sock" ;;
        containerd) engine_host="unix:///run/containerd/containerd.sock"
            namespace='containerd_namespace = "k8s.io"' ;;
        podman) engine_host="unix:///run/podman/podman.sock" ;;
    esac
    cat >"$conf.tmp.$$" <<EOF
# p2pimg agent configuration, written by scripts/install.sh, which never overwrites it.
# After editing it, run: systemctl restart p2pimg-agent

# This node's name; required, and must match the name in its certificate.
name = "$name"
# UDP address and port the agent listens on (QUIC). Default 0.0.0.0:7701.
listen = "$listen"
# Where verified chunks are kept. Default /var/lib/p2pimg, the unit's StateDirectory; the
# unit makes only that directory writable, so another one needs a ReadWritePaths= drop-in.
state_dir = "$ROOT$STATE_DIR"
# This node's container engine: "docker" (Docker Engine, with its classic or its containerd
# image store, which is detected), "containerd" (Kubernetes nodes) or "podman". Default "docker".
engine = "$engine"
# Its API socket. Default by engine: unix:///var/run/docker.sock,
# unix:///run/containerd/containerd.sock, unix:///run/podman/podman.sock.
engine_host = "$engine_host"
# containerd only: the namespace images go to; k8s.io is where the kubelet looks. Default k8s.io.
# With Docker's containerd image store, containerd_host and containerd_namespace name Docker's
# containerd when Docker does not say (Docker < 27): /run/containerd/containerd.sock and moby.
$namespace
# The cluster CA, and this node's certificate and key (mode 0600). Required.
ca = "$ROOT$ETC_DIR/ca.crt"
cert = "$ROOT$ETC_DIR/$name.crt"
key = "$ROOT$ETC_DIR/$name.key"
# Certificate names to refuse, e.g. ["old-node"] for a leaked or retired identity.
deny = []
# How long chunks of a finished push are kept (s, m, h or d). Default 24h.
retain = "24h"
# Most the chunk store may hold, e.g. "20GiB"; finished pushes are evicted oldest first.
# Default: unbounded (still limited by retain).
# store_budget = "20GiB"
EOF
    chmod 0644 "$conf.tmp.$$"
    if [[ $EUID -eq 0 ]]; then chown 0:0 "$conf.tmp.$$"; fi
    mv -f "$conf.tmp.$$" "$conf"
}

do_install() {
    local name=$1 cert_dir=$2 listen=$3 bin=$4 start=$5 engine=$6
    local f conf existing

    [[ -n "$name" ]] || die "--name NODE is required (the node's name, as in nodes.toml); see --help"
    [[ -n "$cert_dir" ]] || die "--cert-dir DIR is required (the directory holding ca.crt, $name.crt and $name.key); see --help"
    valid_name "$name" ||
        die "invalid node name '$name': use 1 to 63 of A-Z a-z 0-9 . _ -, not starting with . or -"
    [[ "$listen" =~ ^([0-9.]+|\[[0-9A-Fa-f:.]+\]):[0-9]+$ ]] ||
        die "invalid --listen '$listen': write IP:PORT, e.g. 0.0.0.0:7701 or [::]:7701"
    [[ "$engine" =~ ^(docker|containerd|podman)$ ]] ||
        die "invalid --engine '$engine': use docker, containerd or podman"
    [[ -d "$cert_dir" ]] || die "certificate directory $cert_dir does not exist (pass the directory holding ca.crt, $name.crt and $name.key)"
    [[ -f "$cert_dir/ca.crt" ]] ||
        die "missing $cert_dir/ca.crt: copy the cluster's ca.crt (from \`p2pimg init\`) into $cert_dir"
    for f in "$name.crt" "$name.key"; do
        [[ -f "$cert_dir/$f" ]] ||
            die "missing $cert_dir/$f: run \`p2pimg cert issue $name --dir CLUSTER_DIR\` where the cluster's ca.key is, and copy $name.crt and $name.key into $cert_dir"
    done
    [[ -f "$UNIT_SRC" ]] || die "missing $UNIT_SRC: run install.sh from a complete p2pimg checkout"
    [[ -f "$bin" ]] ||
        die "missing binary $bin: build it with \`cargo build --release\` in $REPO, or pass --binary PATH"
    bin="$(realpath "$bin")"
    [[ -x "$bin" ]] || die "$bin is not executable: chmod +x it, or pass another --binary"
    "$bin" --version >/dev/null 2>&1 ||
        die "$bin does not run here (\`$bin --version\` failed): is it built for this machine?"
    if [[ -z "$ROOT" && $EUID -ne 0 ]]; then
        die "installing into / needs root: run it with sudo"
    fi

    conf="$ROOT$ETC_DIR/agent.toml"
    if [[ -e "$conf" ]]; then
        existing="$(sed -n 's/^[[:space:]]*name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$conf" | head -n 1)"
        [[ "$existing" == "$name" ]] ||
            die "$conf exists and has name = \"$existing\", not \"$name\"; nothing was installed. Edit its name, cert and key lines, or remove it to have install.sh write a new one"
    fi

    make_dir "$ROOT$ETC_DIR" 0700
    make_dir "$ROOT$STATE_DIR" 0700
    # System directories: created if missing, never re-owned or re-moded.
    for f in "$ROOT$(dirname "$BIN_PATH")" "$ROOT$(dirname "$UNIT_PATH")"; do
        [[ -d "$f" ]] || install -d -m 0755 "$f"
    done

    put "$bin" "$ROOT$BIN_PATH" 0755
    put "$UNIT_SRC" "$ROOT$UNIT_PATH" 0644
    put "$cert_dir/ca.crt" "$ROOT$ETC_DIR/ca.crt" 0644
    put "$cert_dir/$name.crt" "$ROOT$ETC_DIR/$name.crt" 0644
    put "$cert_dir/$name.key" "$ROOT$ETC_DIR/$name.key" 0600
    if [[ -e "$cert_dir/ca.key" ]]; then
        log "note: $cert_dir/ca.key was not copied; nodes do not need the CA key, keep it only where you issue certificates"
    fi

    if [[ -e "$conf" ]]; then
        log "kept        $conf (it exists; install.sh never overwrites it)"
        if [[ "$listen" != "$DEFAULT_LISTEN" ]] && ! grep -E '^[[:space:]]*listen[[:space:]]*=' "$conf" | grep -qF "\"$listen\""; then
            log "warning: --listen $listen was not applied, because $conf exists: edit its listen line"
        fi
    else
        write_config "$conf" "$name" "$listen" "$engine"
        CHANGED=1
        log "wrote       $conf"
    fi

    if ! systemd_running; then
        if [[ -n "$ROOT" ]]; then
            log "P2PIMG_ROOT is set, so systemctl was not called and the service was not started."
        else
            log "systemd is not running on this machine (no /run/systemd/system), so the service was not started."
        fi
        log "On the node, with systemd, run:  systemctl daemon-reload && systemctl enable --now $UNIT_NAME"
        log "Or run the agent under another supervisor:  $ROOT$BIN_PATH agent --config $conf"
        return
    fi
    systemctl daemon-reload
    if [[ "$start" -eq 0 ]]; then
        log "--no-start: the service is installed but neither enabled nor started. Start it with:"
        log "  systemctl enable --now $UNIT_NAME"
        return
    fi
    if systemctl is-active --quiet "$UNIT_NAME" && [[ $CHANGED -eq 1 ]]; then
        systemctl enable "$UNIT_NAME"
        systemctl restart "$UNIT_NAME"
        log "restarted   $UNIT_NAME (its files changed)"
    else
        systemctl enable --now "$UNIT_NAME"
    fi
    sleep 2
    if ! systemctl is-active --quiet "$UNIT_NAME"; then
        journalctl -u "$UNIT_NAME" -n 20 --no-pager >&2 || true
        die "$UNIT_NAME is not running (its log is above): fix $ETC_DIR/agent.toml or the certificates, then run \`systemctl restart $UNIT_NAME\`"
    fi
    log "$UNIT_NAME is running. Logs: journalctl -u $UNIT_NAME -f"
}

do_uninstall() {
    local dropins="$ROOT/etc/systemd/system/$UNIT_NAME.service.d"
    if [[ -z "$ROOT" && $EUID -ne 0 ]]; then
        die "uninstalling from / needs root: run it with sudo"
    fi
    if systemd_running; then
        if systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
            systemctl disable --now "$UNIT_NAME"
            log "stopped and disabled $UNIT_NAME"
        fi
    elif [[ -z "$ROOT" ]]; then
        log "systemd is not running here: not stopping anything; stop an agent you started by hand yourself"
    fi
    local f
    for f in "$ROOT$UNIT_PATH" "$ROOT$BIN_PATH"; do
        if [[ -e "$f" ]]; then
            rm -f "$f"
            log "removed     $f"
        else
            log "absent      $f"
        fi
    done
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    if [[ -d "$dropins" ]]; then
        log "kept        $dropins (your drop-ins from \`systemctl edit\`; remove it yourself if unwanted)"
    fi
    log "kept        $ROOT$ETC_DIR (config, certificates, key) and $ROOT$STATE_DIR (chunks)."
    log "Remove them with \`rm -rf $ROOT$ETC_DIR $ROOT$STATE_DIR\` if this node leaves the cluster for good."
}

main() {
    local name="" cert_dir="" listen=$DEFAULT_LISTEN bin="$REPO/target/release/p2pimg"
    local start=1 uninstall=0 engine=docker
    while [[ $# -gt 0 ]]; do
        case $1 in
            --name|--cert-dir|--listen|--binary|--engine)
                [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value; see --help"
                case $1 in
                    --name) name=$2 ;;
                    --cert-dir) cert_dir=${2%/} ;;
                    --listen) listen=$2 ;;
                    --binary) bin=$2 ;;
                    --engine) engine=$2 ;;
                esac
                shift 2 ;;
            --name=*) name=${1#*=}; shift ;;
            --cert-dir=*) cert_dir=${1#*=}; cert_dir=${cert_dir%/}; shift ;;
            --listen=*) listen=${1#*=}; shift ;;
            --binary=*) bin=${1#*=}; shift ;;
            --engine=*) engine=${1#*=}; shift ;;
            --no-start) start=0; shift ;;
            --uninstall) uninstall=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument '$1'; see --help" ;;
        esac
    done
    if [[ $uninstall -eq 1 ]]; then
        do_uninstall
    else
        do_install "$name" "$cert_dir" "$listen" "$bin" "$start" "$engine"
    fi
}

main "$@"
