#!/usr/bin/env bash
# The p2pimg demo on one machine: a 3-node local cluster (scripts/cluster.sh), a test
# image built on a fourth private engine acting as the seed, `p2pimg push` of that image
# to every node, then each node's `docker images` and a container run from the image.
# Everything it started is torn down when it exits, also on failure or Ctrl-C.
#
#   scripts/demo.sh [DIR]        DIR defaults to ./.cluster-demo
#   IMAGE_MB=64 scripts/demo.sh  a bigger image (default 16 MB of random data)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bash "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh"

DIR="$(realpath -m "${1:-./.cluster-demo}")"
NODES=3
IMAGE=p2pimg-demo:1

[[ -e "$DIR/nodes.toml" ]] && p2p_die "a cluster is already up in $DIR (scripts/cluster.sh down $DIR)"
trap 'p2p_cluster_down "$DIR"' EXIT
trap 'exit 130' INT TERM

step() { printf '\n==> %s\n' "$*"; }

step "cluster of $NODES nodes in $DIR"
p2p_cluster_up "$NODES" "$DIR"
BIN="$(p2p_bin)"

step "seed engine, and a test image on it"
mkdir -p "$DIR/seed"
SEED="$(p2p_engine_dir "$DIR/seed")"
p2p_dockerd_start "$SEED"
p2p_build_test_image "$SEED" "$IMAGE" "${IMAGE_MB:-16}"
p2p_docker "$SEED" images
SEED_ID="$(p2p_docker "$SEED" image inspect --format '{{.Id}}' "$IMAGE")"

step "p2pimg push $IMAGE to every node"
start=$SECONDS
"$BIN" push "$IMAGE" --nodes "$DIR/nodes.toml" --cluster-dir "$DIR/ca" \
    --docker-host "$(p2p_engine_host "$SEED")"
printf 'push took %d s\n' "$((SECONDS - start))"

failed=0
for node in $(p2p_nodes "$DIR"); do
    engine="$(p2p_engine_dir "$DIR/$node")"
    step "$node: docker images"
    p2p_docker "$engine" images
    id="$(p2p_docker "$engine" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    if [[ "$id" == "$SEED_ID" ]]; then
        printf '%s: same image ID as the seed; %s says: %s\n' "$node" /app/hello.txt \
            "$(p2p_docker "$engine" run --rm --network none "$IMAGE" cat /app/hello.txt)"
    else
        printf '%s: image ID %s, seed has %s\n' "$node" "${id:-none}" "$SEED_ID"
        failed=1
    fi
done

step "tearing down"
exit "$failed"
