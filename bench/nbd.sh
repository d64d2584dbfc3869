#!/usr/bin/env bash
# NBD benchmark: fio (ioengine=nbd, libnbd) against sheep's own NBD export on
# a 1-node/1-copy and a 3-node/3-copy cluster (sync writes, no -n), and
# against qemu-nbd serving a raw file on the same filesystem, in the same
# run, points interleaved. Writes its section of docs/BENCHMARKS.md.
#   bench/nbd.sh [runtime_s_per_point] [repetitions]
# Honours CARGO_TARGET_DIR. Needs fio (with the nbd engine), qemu-nbd,
# nbdcopy, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNTIME=${1:-1}
REPS=${2:-5}
SIZE_MIB=512
for t in fio qemu-nbd nbdcopy python3; do
    command -v $t >/dev/null || { echo "$t is missing (apt-get install fio qemu-utils libnbd-bin)" >&2; exit 1; }
done
bench_setup sdnbd

head -c $((SIZE_MIB << 20)) /dev/urandom >"$ROOT/data"
cp "$ROOT/data" "$ROOT/wt.raw"
qemu_nbd() { # NAME CACHE AIO
    local p; p=$(free_port)
    qemu-nbd -f raw -t -x x --cache="$2" --aio="$3" -b 127.0.0.1 -p "$p" "$ROOT/$1.raw" \
        2>>"$ROOT/qemu-nbd.log" &
    PIDS+=($!)
    wait_tcp "$p"
    printf -v "NBD_$1" '%s' "nbd://127.0.0.1:$p/x"
}
qemu_nbd wt writethrough threads
nbd_cluster one 1 1 $SIZE_MIB
nbd_cluster three 3 3 $SIZE_MIB
# Fill both VDIs completely so no point measures holes or allocation.
nbdcopy "$ROOT/data" "$NBD_one"
nbdcopy "$ROOT/data" "$NBD_three"
sync

TARGETS=(wt one three)
WORKLOADS=("randread 4k 1" "randread 4k 16" "randwrite 4k 1" "randwrite 4k 16" "read 1M 4" "write 1M 4")
RES=$ROOT/results.tsv
: >"$RES"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)
for rep in $(seq "$REPS"); do
    for w in "${WORKLOADS[@]}"; do
        set -- $w
        for t in "${TARGETS[@]}"; do
            uri_var=NBD_$t
            fio --name=b --ioengine=nbd --uri="${!uri_var}" --rw="$1" --bs="$2" --iodepth="$3" \
                --size=${SIZE_MIB}M --time_based --runtime="$RUNTIME" \
                --output-format=json --output="$ROOT/o.json" >/dev/null 2>"$ROOT/fio.err" ||
                { cat "$ROOT/fio.err" >&2; exit 1; }
            python3 - "$ROOT/o.json" "$t" "$w" "$rep" >>"$RES" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print(sys.argv[2], sys.argv[3], sys.argv[4], d["iops"], d["bw_bytes"] / 1e6, d["clat_ns"]["mean"] / 1e3, sep="\t")
PY
        done
    done
    echo "repetition $rep done ($(($(date +%s) - t0)) s)" >&2
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

CMD="bench/nbd.sh $RUNTIME $REPS"
section=$(python3 - "$RES" "$CMD" "$(date -u +%Y-%m-%d)" "$(nproc)" "$RUNTIME" "$REPS" "$LOAD0" "$LOAD1" <<'PY'
import sys, statistics as st
res, cmd, day, cores, runtime, reps, load0, load1 = sys.argv[1:]
rows = {}
for line in open(res):
    t, w, rep, iops, mbs, lat = line.rstrip("\n").split("\t")
    rows.setdefault((t, w), []).append((float(iops), float(mbs), float(lat)))
W = ["randread 4k 1", "randread 4k 16", "randwrite 4k 1", "randwrite 4k 16", "read 1M 4", "write 1M 4"]
sys.path.insert(0, "bench")
import fiostats
val = lambda t, w: fiostats.val(rows, t, w)
cell = lambda t, w: fiostats.cell(rows, t, w)
def ratio(t, w):
    return f"{val(t, w)[0] / val('wt', w)[0]:.2f}"
names = {"randread": "4k random read", "randwrite": "4k random write", "read": "1 MiB sequential read", "write": "1 MiB sequential write"}
out = [f"## NBD: sheep's NBD export vs qemu-nbd (fio, ioengine=nbd)", "",
       f"Command: `{cmd}` ({day}, {cores} cores shared with other engineers' builds;",
       f"load average {load0} at start, {load1} at end).",
       f"fio 3.33 `--ioengine=nbd` (libnbd, one connection), {runtime} s per run, {reps} runs per point,",
       "short runs interleaved across targets so that all see the same disk weather; the value is the",
       "median, ± is half the interquartile range relative to it.",
       "Every target holds the same 512 MiB of random data, written in full before measuring (no holes,",
       "no allocation on the write points); all on the same filesystem (/var/tmp, virtio disk).",
       "",
       "* **qemu-nbd wt** = baseline: `qemu-nbd -f raw -t -x x --cache=writethrough --aio=threads` —",
       "  page cache plus one `fdatasync` per write (checked with strace), i.e. exactly sheep's",
       "  semantics (buffered `pwrite` + `fdatasync` per object write, reads through the page cache).",
       "* **sheep 1n/1c** = 1 node, 1 copy; **sheep 3n/3c** = 3 local nodes, 3 copies (3× the fdatasyncs",
       "  on the same disk); both without `-n`, fio talks to node 0's `--nbd`.",
       "* Ratios are to qemu-nbd wt.",
       "* The machine is a 2-core VM shared with other engineers' builds and tests; its disk's",
       "  sync-write rate swung between 0.6k and 8k 4k-fdatasync/s in back-to-back 3 s runs that day,",
       "  so only ratios within one run mean much; ± shows how much a point moved between runs.",
       "",
       "| workload | QD | qemu-nbd wt | sheep 1n/1c | ratio | sheep 3n/3c | ratio |",
       "|---|---|---|---|---|---|---|"]
for w in W:
    rw, bs, qd = w.split()
    out.append(f"| {names[rw]} | {qd} | {cell('wt', w)} | {cell('one', w)} | {ratio('one', w)} | {cell('three', w)} | {ratio('three', w)} |")
out += ["", "Why 3n/3c small writes fall behind (profiled separately on 2026-11-21 with `perf stat`/`perf",
        "record`, not by this script): they are CPU-bound on this 2-core VM, not disk-bound — the three",
        "sheep together spent ≈ 620–740 µs of CPU and 26–37 context switches per 4k client write",
        "(1.2 CPUs busy at QD16, ≈ 2.1k IOPS), against ≈ 120 µs and 3 context switches for a bare",
        "`pwrite`+`fdatasync`; one 1-copy sheep spends ≈ 340 µs / 13 switches per 4k write and",
        "≈ 115 µs / 5.4 switches per 4k read (bare `pread`: 7 µs, 0), most of it thread hand-offs",
        "(futex/eventfd wake-ups, epoll parking) rather than sheep's own code."]
out += ["", "Mean completion latency (µs) at QD1 and QD16/4, medians:", "",
        "| workload | QD | qemu-nbd wt | sheep 1n/1c | sheep 3n/3c |", "|---|---|---|---|---|"]
for w in W:
    rw, bs, qd = w.split()
    out.append(f"| {names[rw]} | {qd} | " + " | ".join(f"{st.median(r[2] for r in rows[(t, w)]):,.0f}" for t in ["wt", "one", "three"]) + " |")
print("\n".join(out))
PY
)
echo "$section"
write_section "NBD: " "$section"
