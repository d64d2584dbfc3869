#!/usr/bin/env bash
# Core benchmark: sequential `dog vdi write` / `dog vdi read` of a 3-copy VDI
# on a 3-node local cluster, against the disk baseline measured in the same
# run, plus sheep RSS idle and under load. Appends a section to
# docs/BENCHMARKS.md.
#   bench/core.sh [size_mib]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZE_MIB=${1:-1024}
cargo build --release --bins >/dev/null
BIN=$PWD/target/release
ROOT=$(mktemp -d /var/tmp/sdbench.XXXXXX)
PORT=$((17000 + RANDOM % 2000))
cleanup() { pkill -9 -f "$BIN/sheep $ROOT/" 2>/dev/null || true; rm -rf "$ROOT"; }
trap cleanup EXIT

for i in 0 1 2; do
    "$BIN/sheep" "$ROOT/s$i" -c "local:$ROOT/shm" -z $i -p $((PORT + i))
done
for _ in $(seq 200); do
    [ "$("$BIN/dog" node list -r -p $PORT 2>/dev/null | wc -l)" = 3 ] && break; sleep 0.05
done
"$BIN/dog" cluster format -c 3 -p $PORT >/dev/null
"$BIN/dog" vdi create bench "${SIZE_MIB}M" -p $PORT
head -c $((SIZE_MIB << 20)) /dev/urandom > "$ROOT/data"
sleep 1

rss() { # total and max VmRSS in kB of the three sheep
    local total=0 max=0
    for p in $(pgrep -f "$BIN/sheep $ROOT/"); do
        r=$(awk '/VmRSS/{print $2}' /proc/$p/status); total=$((total + r)); [ "$r" -gt "$max" ] && max=$r
    done
    echo "$max"
}
idle_rss=$(rss)

now() { date +%s.%N; }
# Baseline: the bytes the cluster must make durable (3 copies), written
# by three parallel writers with 4 MiB writes and fdatasync each, to the
# same filesystem.
t0=$(now)
for c in 1 2 3; do
    dd if="$ROOT/data" of="$ROOT/base$c" bs=4M oflag=dsync status=none &
done
wait
t1=$(now)
base_mbps=$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l)
rm -f "$ROOT"/base*

peak=0
( while sleep 0.2; do r=$(rss); [ "$r" -gt "$peak" ] && peak=$r && echo "$peak" > "$ROOT/peak"; done ) &
mon=$!
t0=$(now)
"$BIN/dog" vdi write bench -p $PORT < "$ROOT/data"
t1=$(now)
"$BIN/dog" vdi read bench -p $PORT > "$ROOT/back"
t2=$(now)
kill $mon 2>/dev/null || true
cmp "$ROOT/data" "$ROOT/back"
load_rss=$(cat "$ROOT/peak" 2>/dev/null || rss)
w_mbps=$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l)
r_mbps=$(echo "$SIZE_MIB / ($t2 - $t1)" | bc -l)

section=$(cat <<MD
## Core: sequential dog vdi write/read, 3 copies, 3 local nodes

Command: \`bench/core.sh $SIZE_MIB\` ($(date -u +%Y-%m-%d), $(nproc) cores, sync writes).
Baseline: the same bytes written by 3 parallel \`dd bs=4M oflag=dsync\` to the
same filesystem (what 3 durable copies cost on this disk).

| measure | value | ratio to baseline |
|---|---|---|
| baseline, 3 parallel dd oflag=dsync | $(printf %.0f "$base_mbps") MiB/s of user data | 1.00 |
| \`dog vdi write\` ${SIZE_MIB} MiB | $(printf %.0f "$w_mbps") MiB/s | $(printf %.2f "$(echo "$w_mbps / $base_mbps" | bc -l)") |
| \`dog vdi read\` ${SIZE_MIB} MiB | $(printf %.0f "$r_mbps") MiB/s | — |
| sheep RSS idle (max of 3) | $((idle_rss / 1024)) MiB | target ≤ 32 MB |
| sheep RSS under load (max of 3) | $((load_rss / 1024)) MiB | — |
MD
)
echo "$section"
write_section "Core: " "$section"
