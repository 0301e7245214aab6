#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 60) and
# prints executions, time, coverage and corpus size per target.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#   FUZZ_JOBS=2 fuzz/run.sh 300        # two targets at a time
#
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain provide them. Corpora grow in fuzz/work/corpus/<target>
# (ignored), seeded read-only from fuzz/corpus/<target> (committed) and
# fuzz/work/seeds/<target> (generated archives). Crashes land in
# fuzz/artifacts/<target>/; logs in fuzz/work/logs/.
set -euo pipefail

cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
shift || true
ALL_TARGETS=(frame message manifest save_raw save_structured)
TARGETS=("${@:-${ALL_TARGETS[@]}}")
JOBS=${FUZZ_JOBS:-1}
export RUSTC_BOOTSTRAP=1

# Per-input limits. A single allocation above MALLOC_MB is a finding: the
# largest the library should ever make from input is a 64 MiB announce
# frame. TIMEOUT_S flags an input that takes seconds (a hang).
MALLOC_MB=256
TIMEOUT_S=20

# The parse_save targets keep a scratch chunk store under $TMPDIR: tmpfs
# when there is one, removed when this script ends.
scratch_root=/dev/shm
[ -d "$scratch_root" ] && [ -w "$scratch_root" ] || scratch_root=${TMPDIR:-/tmp}
TMPDIR=$(mktemp -d "$scratch_root/p2pimg-fuzz.XXXXXX")
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

mkdir -p work/logs work/seeds
echo "building fuzz targets and seeds..." >&2
cargo fuzz build >&2
cargo run --quiet --example gen_seeds -- work/seeds save_raw >&2

max_len() {
    case $1 in
        save_raw | save_structured) echo 65536 ;;
        manifest) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

# The structured targets need long inputs from the start to describe
# several layers and images; libFuzzer would otherwise grow lengths slowly.
len_control() {
    case $1 in
        save_structured | manifest) echo 0 ;;
        *) echo 100 ;;
    esac
}

run_one() {
    local target=$1 log="work/logs/$1.log"
    local dirs=("work/corpus/$target")
    for d in "corpus/$target" "work/seeds/$target"; do
        [ -d "$d" ] && dirs+=("$d")
    done
    mkdir -p "work/corpus/$target" "artifacts/$target"
    local status=ok
    cargo fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$target")" -len_control="$(len_control "$target")" \
        -malloc_limit_mb="$MALLOC_MB" -timeout="$TIMEOUT_S" \
        -print_final_stats=1 >"$log" 2>&1 || status=FAILED
    echo "$status" >"work/logs/$target.status"
    summarize "$target" "$log" "$status"
}

# One line per target from libFuzzer's log.
summarize() {
    local target=$1 log=$2 status=$3
    local runs secs rate last cov ft corp
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
    if [ "$status" != ok ]; then
        status="FAILED: $(grep -m1 -E '^(==[0-9]+== ERROR|ERROR: libFuzzer|thread .* panicked at)' "$log" || echo see log)"
        status="$status; artifact: $(grep -o 'artifacts/[^ ]*' "$log" | tail -1 || true)"
    fi
    printf '%-16s runs=%-10s time=%-6s exec/s=%-7s cov=%-6s ft=%-6s corpus=%-12s %s (log: fuzz/%s)\n' \
        "$target" "${runs:-?}" "${secs:-?}s" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$status" "$log"
}

if [ "$JOBS" -le 1 ]; then
    for t in "${TARGETS[@]}"; do run_one "$t"; done
else
    # Run JOBS targets at a time; each prints its line when it ends.
    for t in "${TARGETS[@]}"; do
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
        run_one "$t" &
    done
    wait
fi
for t in "${TARGETS[@]}"; do
    [ "$(cat "work/logs/$t.status")" = ok ] || exit 1
done
