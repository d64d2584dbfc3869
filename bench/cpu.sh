#!/usr/bin/env bash
# CPU per I/O: how much CPU the sheep daemons spend for each client I/O,
# from /proc/PID/stat (utime + stime of every sheep of the cluster) over a
# fixed number of fio I/Os over NBD, beside the IOPS of the same points and
# of qemu-nbd (writethrough) on a raw file on the same filesystem.
#   * 4k random write QD16 on 3 nodes / 3 copies (summed over the 3 sheep),
#     without and with the journal (-j size=256M)
#   * 4k random read QD16 on 1 node / 1 copy
# Writes its section of docs/BENCHMARKS.md.
#   bench/cpu.sh [ios_per_point] [repetitions]
# Honours CARGO_TARGET_DIR. Needs fio (nbd engine), qemu-nbd, nbdcopy, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
IOS=${1:-20000}
REPS=${2:-3}
SIZE_MIB=256
for t in fio qemu-nbd nbdcopy python3; do
    command -v $t >/dev/null || { echo "$t is missing (apt-get install fio qemu-utils libnbd-bin)" >&2; exit 1; }
done
bench_setup sdcpu
TICK=$(getconf CLK_TCK)

head -c $((SIZE_MIB << 20)) /dev/urandom >"$ROOT/data"
cp "$ROOT/data" "$ROOT/wt.raw"
p=$(free_port)
qemu-nbd -f raw -t -x x --cache=writethrough --aio=threads -b 127.0.0.1 -p "$p" "$ROOT/wt.raw" \
    2>>"$ROOT/qemu-nbd.log" &
QPID=$!
PIDS+=($QPID)
wait_tcp "$p"
NBD_wt="nbd://127.0.0.1:$p/x"
n0=${#PIDS[@]}
nbd_cluster one 1 1 $SIZE_MIB
PIDS_one=("${PIDS[@]:$n0}")
n0=${#PIDS[@]}
nbd_cluster three 3 3 $SIZE_MIB
PIDS_three=("${PIDS[@]:$n0}")
n0=${#PIDS[@]}
SHEEP_ARGS="-j size=256M" nbd_cluster threej 3 3 $SIZE_MIB
PIDS_threej=("${PIDS[@]:$n0}")
nbdcopy "$ROOT/data" "$NBD_one"
nbdcopy "$ROOT/data" "$NBD_three"
nbdcopy "$ROOT/data" "$NBD_threej"
sync

ticks() { # PIDS...: utime + stime summed
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo $t
}
# point TARGET RW PIDS...: prints "iops cpu_us_per_io"
point() {
    local t=$1 rw=$2 uri_var=NBD_$1 before after
    shift 2
    before=$(ticks "$@")
    fio --name=b --ioengine=nbd --uri="${!uri_var}" --rw="$rw" --bs=4k --iodepth=16 \
        --size=${SIZE_MIB}M --number_ios="$IOS" \
        --output-format=json --output="$ROOT/o.json" >/dev/null 2>"$ROOT/fio.err" ||
        { cat "$ROOT/fio.err" >&2; exit 1; }
    after=$(ticks "$@")
    python3 - "$ROOT/o.json" "$((after - before))" "$TICK" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
ios = d["total_ios"]
print(d["iops"], int(sys.argv[2]) / int(sys.argv[3]) / ios * 1e6)
PY
}

RES=$ROOT/results.tsv
: >"$RES"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
    echo -e "wt\trandwrite\t$(point wt randwrite "$QPID" | tr ' ' '\t')" >>"$RES"
    echo -e "three\trandwrite\t$(point three randwrite "${PIDS_three[@]}" | tr ' ' '\t')" >>"$RES"
    echo -e "threej\trandwrite\t$(point threej randwrite "${PIDS_threej[@]}" | tr ' ' '\t')" >>"$RES"
    echo -e "wt\trandread\t$(point wt randread "$QPID" | tr ' ' '\t')" >>"$RES"
    echo -e "one\trandread\t$(point one randread "${PIDS_one[@]}" | tr ' ' '\t')" >>"$RES"
    echo "repetition $rep done" >&2
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

CMD="bench/cpu.sh $IOS $REPS"
section=$(python3 - "$RES" "$CMD" "$(date -u +%Y-%m-%d)" "$(nproc)" "$LOAD0" "$LOAD1" "$IOS" "$REPS" <<'PY'
import sys, statistics as st
res, cmd, day, cores, load0, load1, ios, reps = sys.argv[1:]
rows = {}
for line in open(res):
    t, w, iops, us = line.split("\t")
    rows.setdefault((t, w), []).append((float(iops), float(us)))
med = lambda t, w, i: st.median(r[i] for r in rows[(t, w)])
out = ["## CPU per I/O: sheep's CPU for each 4k client I/O over NBD", "",
       f"Command: `{cmd}` ({day}, {cores} cores; load average {load0} at start, {load1} at end).",
       f"fio `--ioengine=nbd --bs=4k --iodepth=16 --number_ios={ios}` per point, {reps} runs",
       f"interleaved, medians; {256} MiB VDIs filled with random data first; sync writes.",
       "CPU = utime + stime of every sheep of the cluster (of qemu-nbd for the baseline) from",
       "/proc/PID/stat across the point, divided by the I/Os. Goals: ≤ 100 µs per replicated",
       "write (3 sheep summed), ≤ 20 µs per read; IOPS ≥ 1.0× qemu-nbd for 3-copy writes.", "",
       "| workload | target | IOPS | ratio to qemu-nbd | CPU µs per I/O |", "|---|---|---|---|---|"]
for w, targets in [("randwrite", [("three", "3 nodes / 3 copies"), ("threej", "3 nodes / 3 copies, `-j size=256M`")]),
                   ("randread", [("one", "1 node / 1 copy")])]:
    base = med("wt", w, 0)
    out.append(f"| 4k random {w[4:]} QD16 | qemu-nbd writethrough | {base:,.0f} | 1.00 | {med('wt', w, 1):.0f} |")
    for t, name in targets:
        out.append(f"| 4k random {w[4:]} QD16 | sheep, {name} | {med(t, w, 0):,.0f} | {med(t, w, 0) / base:.2f} | {med(t, w, 1):.0f} |")
print("\n".join(out))
PY
)
echo "$section"
write_section "CPU per I/O" "$section"
