#!/usr/bin/env bash
# Idle benchmark: CPU of formatted, idle sheep (local driver, 6 nodes, no
# client I/O), from utime+stime in /proc/PID/stat over a fixed window.
# Writes its section of docs/BENCHMARKS.md.
#   bench/idle.sh [seconds] [nodes]
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECS=${1:-30}
NODES=${2:-6}
bench_setup sdidle
nbd_cluster idle "$NODES" 3 64
sleep 5 # joins, format and VDI creation settle
per_pid() { for p in "${PIDS[@]}"; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }
mapfile -t before < <(per_pid)
sleep "$SECS"
mapfile -t after < <(per_pid)
HZ=$(getconf CLK_TCK)
section=$(python3 - "$SECS" "$HZ" "$NODES" "$(date -u +%Y-%m-%d)" "${before[*]}" "${after[*]}" <<'PY'
import sys
secs, hz, nodes, day = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
b = [int(x) for x in sys.argv[5].split()]
a = [int(x) for x in sys.argv[6].split()]
pct = [(y - x) / hz / secs * 100 for x, y in zip(b, a)]
print("## Idle: CPU of formatted, idle sheep (local driver)")
print()
print(f"Command: `bench/idle.sh {int(secs)} {nodes}` ({day}). {nodes} sheep on one machine, local")
print("driver, formatted (3 copies) with one 64 MiB VDI and no client I/O; utime+stime from")
print(f"/proc/PID/stat over {int(secs)} s (clock tick 1/{hz} s, so one tick in the window is")
print(f"{100 / hz / secs:.3f} % of a core). Goal: ≤ 0.1 % of a core per sheep (the original: 0.15 %).")
print()
print("| measure | value |")
print("|---|---|")
ticks = [y - x for x, y in zip(b, a)]
print(f"| mean per sheep | {sum(pct) / len(pct):.3f} % of a core |")
print(f"| highest sheep | {max(pct):.3f} % of a core |")
print(f"| clock ticks per sheep in the window | {' '.join(map(str, ticks))} |")
PY
)
echo "$section"
write_section "Idle: " "$section"
