#!/usr/bin/env bash
# Disk loss benchmark: time from a disk leaving a multi-disk node to full
# redundancy again. 3 nodes with 2 disks each (local driver, sync writes),
# 3 copies, SIZE_MIB written; then node 1's first disk is unplugged (the
# same path a disk failing with EIO takes once detected: the node drops the
# disk and recovers what it held from the other nodes onto its other disk)
# and the time until node 1 holds every object again is measured.
# Writes its section of docs/BENCHMARKS.md.
#   bench/disk_loss.sh [size_mib]
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZE_MIB=${1:-1024}
bench_setup sddisk
PORTS=()
for i in 0 1 2; do
    p=$(free_port)
    PORTS+=("$p")
    "$BIN/sheep" "$ROOT/n$i,$ROOT/n$i.d0,$ROOT/n$i.d1" -f -c "local:$ROOT/shm" -z $i -p "$p" \
        2>>"$ROOT/stderr" >/dev/null &
    PIDS+=($!)
done
for p in "${PORTS[@]}"; do wait_tcp "$p"; done
P0=${PORTS[0]} P1=${PORTS[1]}
for _ in $(seq 400); do
    [ "$("$BIN/dog" node list -r -p "$P0" 2>/dev/null | wc -l)" = 3 ] && break; sleep 0.05
done
"$BIN/dog" cluster format -c 3 -p "$P0" >/dev/null
"$BIN/dog" vdi create bench "${SIZE_MIB}M" -p "$P0"
head -c $((SIZE_MIB << 20)) /dev/urandom | "$BIN/dog" vdi write bench -p "$P0"
objects() { ls "$@" 2>/dev/null | grep -c '^[0-9a-f]\{16\}$' || true; }
TOTAL=$(objects "$ROOT/n0.d0" ; ) ; TOTAL=$((TOTAL + $(objects "$ROOT/n0.d1")))
LOST_BYTES=$(find "$ROOT/n1.d0" -maxdepth 1 -name '[0-9a-f]*' -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
LOST_OBJS=$(objects "$ROOT/n1.d0")
sync
t0=$(date +%s.%N)
"$BIN/dog" node md unplug -f "$ROOT/n1.d0" -p "$P1"
while [ "$(objects "$ROOT/n1.d1")" -lt "$TOTAL" ]; do sleep 0.05; done
t1=$(date +%s.%N)
section=$(python3 - "$SIZE_MIB" "$TOTAL" "$LOST_OBJS" "$LOST_BYTES" "$t0" "$t1" "$(date -u +%Y-%m-%d)" <<'PY'
import sys
size, total, objs, lost, t0, t1, day = sys.argv[1:]
secs = float(t1) - float(t0)
mb = int(lost) / 1e6
print("## Disk loss: a disk of a multi-disk node gone, time to full redundancy")
print()
print(f"Command: `bench/disk_loss.sh {size}` ({day}). 3 local nodes with 2 disks each (directories on")
print("the same filesystem), sync writes, 3 copies; a VDI written whole with random data; node 1's")
print("first disk unplugged (`dog node md unplug`, the path a disk found failing with EIO takes);")
print("measured until node 1 holds every object again on its other disk (fetched from the other")
print("nodes, then written and synced).")
print()
print("| measure | value |")
print("|---|---|")
print(f"| objects in the VDI (node 1 holds them all) | {total} |")
print(f"| objects on the lost disk | {objs} ({mb:,.0f} MB) |")
print(f"| time to full redundancy | {secs:.1f} s |")
print(f"| recovery rate | {mb / secs:,.0f} MB/s |")
print(f"| time for 1 GiB on the lost disk, at that rate | {1073.741824 / (mb / secs):.1f} s |")
PY
)
echo "$section"
write_section "Disk loss: " "$section"
