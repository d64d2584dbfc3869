#!/usr/bin/env bash
# iSCSI benchmark: Debian's tgt (built-in sheepdog backing store, the
# original wire protocol) in front of one sheep (1 node, 1 copy, sync
# writes), driven over iSCSI by libiscsi: iscsi-perf for reads and
# crates/sd-testkit/tests/iscsi_rw.py (ctypes, async libiscsi) for writes
# (fio has no libiscsi engine here) and, to show that helper's own cost,
# for reads too. The same VDI through sheep's NBD export (fio) in the same
# run for comparison. Writes its section of docs/BENCHMARKS.md.
#   bench/iscsi.sh [runtime_s_per_point] [repetitions]
# Honours CARGO_TARGET_DIR. Needs tgtd/tgtadm (tgt), iscsi-perf
# (libiscsi-bin), fio, python3. tgtd needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNTIME=${1:-1}
REPS=${2:-5}
SIZE_MIB=512
HELPER=$PWD/crates/sd-testkit/tests/iscsi_rw.py
for t in tgtd tgtadm iscsi-perf fio python3; do
    command -v $t >/dev/null || { echo "$t is missing: run scripts/test.sh (installs tgt, libiscsi-bin, fio)" >&2; exit 1; }
done
cargo build --release --bins >/dev/null
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
ROOT=$(mktemp -d /var/tmp/sdiscsi.XXXXXX)
PIDS=()
TGT_PID= CTL=
cleanup() {
    if [ -n "$TGT_PID" ]; then
        # Targets first (closes the LUN: RELEASE_VDI), then tgtd itself.
        timeout 10 tgtadm -C "$CTL" --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
        timeout 10 tgtadm -C "$CTL" --mode system --op delete >/dev/null 2>&1 || true
        for _ in $(seq 60); do kill -0 "$TGT_PID" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$TGT_PID" 2>/dev/null || true
        rm -f "/var/run/tgtd/socket.$CTL" "/var/run/tgtd/socket.$CTL.lock"
    fi
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT

port_free() { python3 -c 'import socket,sys; s=socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1])))' "$1" 2>/dev/null; }

# tgt keeps four digits of the sheep port: stay at or below 9999.
while :; do SHEEP=$((7100 + RANDOM % 2900)); port_free $SHEEP && break; done
NBD=$(free_port)
"$BIN/sheep" "$ROOT/s0" -f -c "local:$ROOT/shm" -z 0 -p $SHEEP --nbd "127.0.0.1:$NBD" \
    2>>"$ROOT/sheep.log" >/dev/null &
PIDS+=($!)
wait_tcp $SHEEP || { cat "$ROOT/sheep.log" >&2; exit 1; }
for _ in $(seq 400); do [ "$("$BIN/dog" node list -r -p $SHEEP 2>/dev/null | wc -l)" = 1 ] && break; sleep 0.05; done
"$BIN/dog" cluster format -c 1 -p $SHEEP >/dev/null
"$BIN/dog" vdi create bench "${SIZE_MIB}M" -p $SHEEP
# Fill the VDI completely before tgt opens it (tgt caches the inode).
head -c $((SIZE_MIB << 20)) /dev/urandom | "$BIN/dog" vdi write bench -p $SHEEP
# The disk alone: 4k pwrite + fdatasync at QD1 on a file in the same
# filesystem, written (and synced) up front like the objects.
head -c $((256 << 20)) /dev/urandom >"$ROOT/disk.raw"
sync

start_tgtd() { # private control port and portal; a few attempts
    local attempt
    for attempt in 1 2 3 4 5; do
        # tgtd refuses control ports above 32767.
        while :; do CTL=$((10000 + RANDOM % 22000)); [ -e "/var/run/tgtd/socket.$CTL" ] || break; done
        PORTAL=$(free_port)
        tgtd -f --iscsi "portal=127.0.0.1:$PORTAL" --control-port "$CTL" >"$ROOT/tgtd.log" 2>&1 &
        TGT_PID=$!
        for _ in $(seq 200); do
            kill -0 $TGT_PID 2>/dev/null || break
            if (exec 3<>"/dev/tcp/127.0.0.1/$PORTAL") 2>/dev/null &&
                tgtadm -C "$CTL" --mode system --op show >/dev/null 2>&1; then
                return 0
            fi
            sleep 0.05
        done
        echo "tgtd attempt $attempt failed:" >&2; cat "$ROOT/tgtd.log" >&2
        kill -9 $TGT_PID 2>/dev/null || true
        wait $TGT_PID 2>/dev/null || true
        rm -f "/var/run/tgtd/socket.$CTL" "/var/run/tgtd/socket.$CTL.lock"
        TGT_PID=
    done
    echo "could not start tgtd" >&2
    exit 1
}
start_tgtd
IQN=iqn.2026-11.org.sheepdog.bench:bench
adm() { tgtadm -C "$CTL" --lld iscsi "$@"; }
adm --mode target --op new --tid 1 --targetname $IQN
adm --mode logicalunit --op new --tid 1 --lun 1 --bstype sheepdog --backing-store "tcp:127.0.0.1:$SHEEP:bench"
adm --mode target --op bind --tid 1 --initiator-address ALL
URL=iscsi://127.0.0.1:$PORTAL/$IQN/1
NBD_URI=nbd://127.0.0.1:$NBD/bench

# point TOOL RW BS QD -> "iops"
point() {
    local tool=$1 rw=$2 bs=$3 qd=$4
    case $tool in
    perf)
        local r=(); [ "$rw" = randread ] && r=(-r)
        timeout $((RUNTIME + 30)) iscsi-perf -t "$RUNTIME" "${r[@]}" -b $((bs / 512)) -m "$qd" "$URL" 2>&1 |
            tr '\r' '\n' | sed -n 's/^iops average \([0-9]*\).*/\1/p' | tail -1
        ;;
    py)
        timeout $((RUNTIME + 30)) python3 "$HELPER" bench "$URL" "$rw" "$bs" "$qd" "$RUNTIME" | cut -d' ' -f3
        ;;
    disk)
        fio --name=b --ioengine=psync --filename="$ROOT/disk.raw" --rw="$rw" --bs="$bs" --fdatasync=1 \
            --size=256M --time_based --runtime="$RUNTIME" \
            --output-format=json --output="$ROOT/o.json" >/dev/null 2>"$ROOT/fio.err" ||
            { cat "$ROOT/fio.err" >&2; exit 1; }
        python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(round(j["write"]["iops"]))' "$ROOT/o.json"
        ;;
    nbd)
        fio --name=b --ioengine=nbd --uri="$NBD_URI" --rw="$rw" --bs="$bs" --iodepth="$qd" \
            --size=${SIZE_MIB}M --time_based --runtime="$RUNTIME" \
            --output-format=json --output="$ROOT/o.json" >/dev/null 2>"$ROOT/fio.err" ||
            { cat "$ROOT/fio.err" >&2; exit 1; }
        python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; d=j["read"] if j["read"]["io_bytes"] else j["write"]; print(round(d["iops"]))' "$ROOT/o.json"
        ;;
    esac
}

POINTS=("perf randread 4096 1" "perf randread 4096 16" "perf read 1048576 4"
    "py randread 4096 1" "py randread 4096 16"
    "py randwrite 4096 1" "py randwrite 4096 16" "py write 1048576 4"
    "nbd randread 4096 1" "nbd randread 4096 16" "nbd read 1048576 4"
    "nbd randwrite 4096 1" "nbd randwrite 4096 16" "nbd write 1048576 4"
    "disk randwrite 4096 1")
export ISCSI_RW_SPAN=$((SIZE_MIB << 20))
RES=$ROOT/results.tsv
: >"$RES"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)
for rep in $(seq "$REPS"); do
    for p in "${POINTS[@]}"; do
        v=$(point $p)
        [ -n "$v" ] || { echo "no result for $p" >&2; cat "$ROOT/tgtd.log" >&2; exit 1; }
        printf '%s\t%s\t%s\n' "$p" "$rep" "$v" >>"$RES"
    done
    echo "repetition $rep done ($(($(date +%s) - t0)) s)" >&2
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

CMD="bench/iscsi.sh $RUNTIME $REPS"
section=$(python3 - "$RES" "$CMD" "$(date -u +%Y-%m-%d)" "$(nproc)" "$RUNTIME" "$REPS" "$LOAD0" "$LOAD1" <<'PY'
import sys, statistics as st
res, cmd, day, cores, runtime, reps, load0, load1 = sys.argv[1:]
rows = {}
for line in open(res):
    p, rep, v = line.rstrip("\n").split("\t")
    rows.setdefault(p, []).append(float(v))
def cell(tool, rw, bs, qd):
    xs = rows[f"{tool} {rw} {bs} {qd}"]
    m = st.median(xs)
    q = st.quantiles(xs, n=4) if len(xs) > 1 else [m, m, m]
    spread = (q[2] - q[0]) / 2 / m * 100 if m else 0
    if int(bs) >= 1 << 20:
        return f"{m * int(bs) / 1e6:,.0f} MB/s (±{spread:.0f}%)"
    return f"{m:,.0f} IOPS (±{spread:.0f}%)"
ref = {"randread 4096": "5.5k IOPS", "randwrite 4096": "1.6k IOPS", "write 1048576": "≈ 260 MB/s"}
W = [("4k random read", "randread", 4096, 1), ("4k random read", "randread", 4096, 16),
     ("4k random write", "randwrite", 4096, 1), ("4k random write", "randwrite", 4096, 16),
     ("1 MiB sequential read", "read", 1 << 20, 4), ("1 MiB sequential write", "write", 1 << 20, 4)]
out = ["## iSCSI: tgt's sheepdog backing store in front of our sheep", "",
       f"Command: `{cmd}` ({day}, {cores} cores shared with other engineers' builds;",
       f"load average {load0} at start, {load1} at end).",
       "One sheep, 1 copy, sync writes (no `-n`); Debian tgt 1.0.85 (`--bstype sheepdog",
       "--backing-store tcp:127.0.0.1:PORT:bench`, 16 I/O threads, one sheep connection per thread);",
       "512 MiB VDI filled with random data before tgt opened it (no holes, no allocation).",
       f"{runtime} s per run, {reps} runs per point, short runs interleaved across points; value =",
       "median, ± = half the interquartile range relative to it.",
       "",
       "* **reads, iscsi-perf**: `iscsi-perf -t T [-r] -b 8|2048 -m QD URL` (libiscsi, C; random LBAs",
       "  are 512-byte aligned).",
       "* **python helper**: `crates/sd-testkit/tests/iscsi_rw.py bench URL MODE BS QD T` — async",
       "  libiscsi through ctypes, 4k-aligned random offsets. fio 3.33 here has no libiscsi engine, so",
       "  writes are measured with it; its reads show what the helper itself costs (compare with",
       "  iscsi-perf: the helper adds Python time per request, so its QD1 numbers are a lower bound).",
       "* **NBD**: the same VDI on the same sheep through its `--nbd` export (fio `--ioengine=nbd`).",
       "* The machine is a 2-core VM shared with other engineers' builds and tests; its disk's",
       "  sync-write rate swung between 0.6k and 8k 4k-fdatasync/s in back-to-back 3 s runs that day,",
       "  so only ratios within one run mean much; ± shows how much a point moved between runs.",
       "* **reference**: the ORIGINAL C sheep through tgt on this machine, 1 node, 1 copy, sync",
       "  (earlier measurement, given to us; queue depth not recorded).",
       "",
       "| workload | QD | reference: C sheep via tgt | ours via tgt, iscsi-perf | ours via tgt, python helper | ours via NBD (fio) |",
       "|---|---|---|---|---|---|"]
for name, rw, bs, qd in W:
    r = ref.get(f"{rw} {bs}", "—")
    perf = cell("perf", rw, bs, qd) if rw.endswith("read") else "— (reads only)"
    py = cell("py", rw, bs, qd) if f"py {rw} {bs} {qd}" in rows else "—"
    out.append(f"| {name} | {qd} | {r} | {perf} | {py} | {cell('nbd', rw, bs, qd)} |")
out += ["", f"The disk alone in the same run (what one sync write costs here): 4k `pwrite` +",
        f"`fdatasync` at QD1 on a file in the same filesystem (fio psync, `--fdatasync=1`):",
        f"{cell('disk', 'randwrite', 4096, 1)}."]
print("\n".join(out))
PY
)
echo "$section"
write_section "iSCSI: " "$section"
