#!/usr/bin/env bash
# Checksum benchmark: what end-to-end object checksums cost, and the scrub.
# Two 1-node/1-copy clusters in the same run, one with checksums (the
# default) and one with SHEEP_CHECKSUMS=off, measured with fio over NBD,
# points interleaved; then the scrub's rate on an idle node (page cache
# dropped first when run as root) and a client's 4k random read rate while
# the scrub runs vs idle. Writes its section of docs/BENCHMARKS.md.
#   bench/checksums.sh [runtime_s_per_point] [repetitions]
# Honours CARGO_TARGET_DIR. Needs fio (nbd engine), nbdcopy, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNTIME=${1:-2}
REPS=${2:-5}
SIZE_MIB=512
for t in fio nbdcopy python3; do
    command -v $t >/dev/null || { echo "$t is missing (apt-get install fio libnbd-bin)" >&2; exit 1; }
done
bench_setup sdcsum

nbd_cluster on 1 1 $SIZE_MIB SHEEP_CHECKSUMS=on
nbd_cluster off 1 1 $SIZE_MIB SHEEP_CHECKSUMS=off
head -c $((SIZE_MIB << 20)) /dev/urandom >"$ROOT/data"
nbdcopy "$ROOT/data" "$NBD_on"
nbdcopy "$ROOT/data" "$NBD_off"
sync
[ -n "$(ls -A "$ROOT"/on0/obj/.*.csum 2>/dev/null)" ] || { echo "no checksum files written" >&2; exit 1; }
[ -z "$(ls -A "$ROOT"/off0/obj/.*.csum 2>/dev/null)" ] || { echo "checksum files with checksums off" >&2; exit 1; }

# fio_point URI RW BS QD: prints "iops MB/s"
fio_point() {
    fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
        --size=${SIZE_MIB}M --time_based --runtime="$RUNTIME" \
        --output-format=json --output="$ROOT/o.json" >/dev/null 2>"$ROOT/fio.err" ||
        { cat "$ROOT/fio.err" >&2; exit 1; }
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print(d["iops"], d["bw_bytes"] / 1e6)' "$ROOT/o.json"
}

RES=$ROOT/results.tsv
: >"$RES"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
WORKLOADS=("read 1M 4" "write 1M 4" "randread 4k 16" "randwrite 4k 16")
for rep in $(seq "$REPS"); do
    for w in "${WORKLOADS[@]}"; do
        set -- $w
        for t in on off; do
            uri_var=NBD_$t
            echo -e "$t\t$w\t$(fio_point "${!uri_var}" "$1" "$2" "$3" | tr ' ' '\t')" >>"$RES"
        done
    done
    echo "repetition $rep done" >&2
done

# scrub_status: node 0's raw scrub line fields (state done total passes ...)
scrub_status() { "$BIN/dog" node scrub -r -p "$PORT_on" | awk '$1 == 0 {print $3, $4, $5, $6}'; }
scrub_pass() { # POLL_S: runs one pass to its end; prints seconds
    local before t0
    before=$(scrub_status | cut -d' ' -f4)
    t0=$(date +%s.%N)
    "$BIN/dog" node scrub start -p "$PORT_on"
    while [ "$(scrub_status | cut -d' ' -f4)" = "$before" ]; do sleep "$1"; done
    python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$(date +%s.%N)"
}
SCRUB_BYTES=$(du -sb --exclude='.*' "$ROOT/on0/obj" | cut -f1)
COLD=no
if [ "$(id -u)" = 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; COLD=yes; fi
SCRUB_COLD_S=$(scrub_pass 0.02)
SCRUB_WARM_S=$(scrub_pass 0.02)
# A client's 4k random reads with the scrub idle, then while it runs
# (passes restarted back to back for the whole point; polled rarely, as
# every poll is a dog process competing for the same two cores).
IDLE=$(fio_point "$NBD_on" randread 4k 16 | cut -d' ' -f1)
( end=$(( $(date +%s) + RUNTIME + 2 )); while [ "$(date +%s)" -lt "$end" ]; do scrub_pass 0.5 >/dev/null; done ) &
SCRUBBER=$!
sleep 0.5
BUSY=$(fio_point "$NBD_on" randread 4k 16 | cut -d' ' -f1)
wait $SCRUBBER
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

CMD="${SHEEP_ARGS:+SHEEP_ARGS=\"$SHEEP_ARGS\" }bench/checksums.sh $RUNTIME $REPS"
# With sheep options (e.g. the journal) the results get a section of their own.
TITLE="Checksums: object checksums on vs off, and the scrub${SHEEP_ARGS:+ (sheep $SHEEP_ARGS)}"
section=$(python3 - "$RES" "$CMD" "$(date -u +%Y-%m-%d)" "$(nproc)" "$RUNTIME" "$REPS" "$LOAD0" "$LOAD1" \
    "$SCRUB_BYTES" "$SCRUB_COLD_S" "$SCRUB_WARM_S" "$COLD" "$IDLE" "$BUSY" "$TITLE" <<'PY'
import sys, statistics as st
(res, cmd, day, cores, runtime, reps, load0, load1,
 sbytes, cold_s, warm_s, cold, idle, busy, title) = sys.argv[1:]
rows = {}
for line in open(res):
    t, w, iops, mbs = line.rstrip("\n").split("\t")
    rows.setdefault((t, w), []).append((float(iops), float(mbs)))
names = {"read": "1 MiB sequential read", "write": "1 MiB sequential write",
         "randread": "4k random read", "randwrite": "4k random write"}
sys.path.insert(0, "bench")
import fiostats
val = lambda t, w: fiostats.val(rows, t, w)
cell = lambda t, w: fiostats.cell(rows, t, w)
out = ["## " + title, "",
       f"Command: `{cmd}` ({day}, {cores} cores; load average {load0} at start, {load1} at end).",
       f"Two 1-node/1-copy clusters in the same run, sync writes, each VDI filled with the same 512 MiB",
       f"of random data first; one with checksums (default), one with `SHEEP_CHECKSUMS=off`. fio",
       f"`--ioengine=nbd`, {runtime} s per point, {reps} runs per point interleaved; median, ± half the",
       "interquartile range. Goal: checksums cost at most 5 % of 1 MiB sequential read/write and of",
       "4k random read (ratio ≥ 0.95). 4k random write is shown too: it pays one more `fdatasync`",
       "(the checksum file's, made durable before the data so a crash leaves verifiable bytes).", "",
       "| workload | QD | checksums on | checksums off | on / off |", "|---|---|---|---|---|"]
for w in ["read 1M 4", "write 1M 4", "randread 4k 16", "randwrite 4k 16"]:
    rw, bs, qd = w.split()
    out.append(f"| {names[rw]} | {qd} | {cell('on', w)} | {cell('off', w)} | {val('on', w)[0] / val('off', w)[0]:.2f} |")
mb = int(sbytes) / 1e6
out += ["", f"Scrub of the node's {mb:,.0f} MB of objects (read, CRC32C of every 4 KiB block, compare):", "",
        "| measure | value |", "|---|---|",
        f"| scrub rate, page cache dropped first ({'yes' if cold == 'yes' else 'no: not root'}) | {mb / float(cold_s):,.0f} MB/s |",
        f"| scrub rate, objects in page cache | {mb / float(warm_s):,.0f} MB/s |",
        f"| client 4k random read QD16, scrub idle | {float(idle):,.0f} IOPS |",
        f"| same, scrub running the whole time | {float(busy):,.0f} IOPS |",
        f"| ratio (goal ≥ 0.9) | {float(busy) / float(idle):.2f} |"]
print("\n".join(out))
PY
)
echo "$section"
# (the whole heading line: one title may begin another)
write_section "$TITLE"$'\n' "$section"
