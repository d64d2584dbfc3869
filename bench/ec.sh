#!/usr/bin/env bash
# End-to-end erasure coding: sequential write and read throughput of a 4:2
# VDI against a 3-copy VDI on the same 6-node local cluster, in one run,
# through NBD (nbdcopy, 4 MiB requests, 16 in flight). Appends its section to docs/BENCHMARKS.md.
#   bench/ec.sh [size_mib] [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZE_MIB=${1:-512}
RUNS=${2:-3}
cargo build --release --bins >/dev/null
BIN=$PWD/target/release
ROOT=$(mktemp -d /var/tmp/sdbench.XXXXXX)
PORT=$((17000 + RANDOM % 2000))
NBD=$((PORT + 100))
cleanup() { pkill -9 -f "$BIN/sheep $ROOT/" 2>/dev/null || true; rm -rf "$ROOT"; }
trap cleanup EXIT

for i in 0 1 2 3 4 5; do
    "$BIN/sheep" "$ROOT/s$i" -c "local:$ROOT/shm" -z $i -p $((PORT + i)) --nbd 127.0.0.1:$((NBD + i))
done
for _ in $(seq 200); do
    [ "$("$BIN/dog" node list -r -p $PORT 2>/dev/null | wc -l)" = 6 ] && break; sleep 0.05
done
"$BIN/dog" cluster format -c 3 -p $PORT >/dev/null
head -c $((SIZE_MIB << 20)) /dev/urandom > "$ROOT/data"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { # policy -> "write_mibps read_mibps" medians
    local pol=$1 w=() r=()
    for run in $(seq "$RUNS"); do
        local vdi="b${pol/:/_}_$run"
        "$BIN/dog" vdi create -c "$pol" "$vdi" "${SIZE_MIB}M" -p $PORT
        local t0 t1 t2
        t0=$(now)
        nbdcopy --request-size=4194304 --requests=16 "$ROOT/data" "nbd://127.0.0.1:$NBD/$vdi"
        t1=$(now)
        nbdcopy --request-size=4194304 --requests=16 "nbd://127.0.0.1:$((NBD + 1))/$vdi" "$ROOT/back"
        t2=$(now)
        cmp "$ROOT/data" "$ROOT/back"
        w+=("$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l)")
        r+=("$(echo "$SIZE_MIB / ($t2 - $t1)" | bc -l)")
        "$BIN/dog" vdi delete "$vdi" -p $PORT
    done
    echo "$(printf '%s\n' "${w[@]}" | median) $(printf '%s\n' "${r[@]}" | median)"
}
read -r rw rr < <(measure 3)
read -r ew er < <(measure 4:2)

section=$(cat <<MD
## Erasure coding end to end: 4:2 vs 3 copies, 6 local nodes

Command: \`bench/ec.sh $SIZE_MIB $RUNS\` ($(date -u +%Y-%m-%d), $(nproc) cores, sync writes,
all six sheep on one disk). \`nbdcopy --request-size=4194304 --requests=16\` of ${SIZE_MIB} MiB of random data into the
VDI over NBD and back out; median of $RUNS runs each.

| VDI | write MiB/s | read MiB/s | bytes stored per byte written |
|---|---|---|---|
| 3 copies | $(printf %.0f "$rw") | $(printf %.0f "$rr") | 3.0 |
| 4:2 erasure coded | $(printf %.0f "$ew") | $(printf %.0f "$er") | 1.5 |
| ratio 4:2 / 3 copies | $(printf %.2f "$(echo "$ew / $rw" | bc -l)") | $(printf %.2f "$(echo "$er / $rr" | bc -l)") | 0.5 |
MD
)
echo "$section"
write_section "Erasure coding end to end" "$section"
