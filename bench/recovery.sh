#!/usr/bin/env bash
# Failure detection and recovery benchmark, on this machine (loopback):
#  1. time from SIGKILL of a sheep to it leaving the others' view, with the
#     local driver and with ZooKeeper (session timeouts 3 s and 10 s);
#  2. time to full redundancy (3 copies) after a node loss for SIZE_MIB of
#     data on 4 nodes (ZooKeeper driver, sync writes);
#  3. client throughput (sdload: 4 workers, 4 KiB overwrites) before the
#     kill, while the dead node is still in the view, during recovery, and
#     after it.
# Prints a markdown section for docs/BENCHMARKS.md (also left in
# $ROOT/section.md when KEEP=1).
#   bench/recovery.sh [size_mib] [rounds]
# SKIP_LEAVE=1 skips part 1; KEEP=1 keeps the stores and logs.
# Needs ZooKeeper (./scripts/test.sh installs it) and the release binaries
# (built here; CARGO_TARGET_DIR is honoured).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
ROUNDS=${2:-5}
cargo build --release --bins >/dev/null
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
l_min=- l_med=- l_max=- z3_min=- z3_med=- z3_max=- z10_min=- z10_med=- z10_max=-
ZK_CP=${SD_ZK_CLASSPATH:-/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar}
ROOT=$(mktemp -d /var/tmp/sdrecov.XXXXXX)
PORT=$((17000 + RANDOM % 2000))
ZKPORT=$((PORT + 20))
declare -A PIDS=()
ZKPID=
LOADPID=

cleanup() {
    for p in "${PIDS[@]}" $ZKPID $LOADPID; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$ROOT"
}
trap cleanup EXIT

now() { date +%s.%N; }
dog() { "$BIN/dog" "$@"; }

# ---------------------------------------------------------------- ZooKeeper
mkdir -p "$ROOT/zk/conf" "$ROOT/zk/data"
cat > "$ROOT/zk/conf/zoo.cfg" <<EOF
tickTime=200
dataDir=$ROOT/zk/data
clientPort=$ZKPORT
clientPortAddress=127.0.0.1
minSessionTimeout=400
maxSessionTimeout=60000
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok
forceSync=no
EOF
java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$ROOT/zk/conf:$ZK_CP" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$ROOT/zk/conf/zoo.cfg" \
    > "$ROOT/zk/log" 2>&1 < /dev/null &
ZKPID=$!
for _ in $(seq 300); do
    if { exec 3<>/dev/tcp/127.0.0.1/$ZKPORT; } 2>/dev/null; then
        printf ruok >&3; r=$(timeout 1 cat <&3 || true); exec 3<&-
        [ "$r" = imok ] && break
    fi
    sleep 0.1
done

# ---------------------------------------------------------------- sheep
# start_node <tag> <i> <driver> [extra...]: sheep i of cluster <tag> on PORT+i, zone i.
start_node() {
    local tag=$1 i=$2 drv=$3; shift 3
    mkdir -p "$ROOT/$tag"
    "$BIN/sheep" "$ROOT/$tag/s$i" -f -c "$drv" -z "$i" -p $((PORT + i)) "$@" \
        2>> "$ROOT/$tag/err$i" > /dev/null < /dev/null &
    PIDS[$tag.$i]=$!
}
kill_node() { kill -9 "${PIDS[$1.$2]}" 2>/dev/null || true; wait "${PIDS[$1.$2]}" 2>/dev/null || true; unset "PIDS[$1.$2]"; }
count() { dog node list -r -p "$1" 2>/dev/null | wc -l; }
wait_count() { # <port> <n>: poll every 10 ms, up to 120 s
    for _ in $(seq 12000); do [ "$(count "$1")" = "$2" ] && return 0; sleep 0.01; done
    echo "cluster at $1 did not reach $2 nodes" >&2; exit 1
}
epoch() { dog cluster info -r -p "$1" 2>/dev/null | sed -n 3p | cut -d' ' -f2; }
recovered() { # <port>...: every node idle and on one epoch
    local e0 e p
    e0=$(epoch "$1")
    for p in "$@"; do
        e=$(epoch "$p"); [ -n "$e" ] && [ "$e" = "$e0" ] || return 1
        [ -z "$(dog node recovery -r -p "$p" 2>/dev/null)" ] || return 1
    done
}
stop_cluster() { local k; for k in "${!PIDS[@]}"; do [[ $k == "$1".* ]] && kill_node "$1" "${k#*.}"; done; return 0; }

# ---------------------------------------------------------------- 1. leave latency
# leave <tag> <driver> [extra]: ROUNDS kills of a rotating victim on 4 nodes;
# prints "min median max" in seconds.
leave() {
    local tag=$1 drv=$2; shift 2
    local i r v o t0 t1 times=()
    for i in 0 1 2 3; do start_node "$tag" $i "$drv" -n "$@"; done
    wait_count $PORT 4
    dog cluster format -c 3 -p $PORT > /dev/null
    for r in $(seq "$ROUNDS"); do
        v=$((r % 4)); o=$(((v + 1) % 4))
        t0=$(now); kill_node "$tag" $v
        wait_count $((PORT + o)) 3
        t1=$(now); times+=("$(echo "$t1 - $t0" | bc -l)")
        start_node "$tag" $v "$drv" -n "$@"
        wait_count $((PORT + o)) 4
        until recovered $PORT $((PORT + 1)) $((PORT + 2)) $((PORT + 3)); do sleep 0.1; done
    done
    stop_cluster "$tag"
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f %.2f", a[1], a[int((NR+1)/2)], a[NR]}'
}
if [ -z "${SKIP_LEAVE:-}" ]; then
    read -r l_min l_med l_max <<< "$(leave local "local:$ROOT/shm")"
    read -r z3_min z3_med z3_max <<< "$(leave zk3 "zookeeper:127.0.0.1:$ZKPORT/leave3,timeout=3000")"
    read -r z10_min z10_med z10_max <<< "$(leave zk10 "zookeeper:127.0.0.1:$ZKPORT/leave10,timeout=10000")"
fi

# ---------------------------------------------------------------- 2./3. recovery
tag=rec
drv="zookeeper:127.0.0.1:$ZKPORT/rec,timeout=3000"
for i in 0 1 2 3; do start_node $tag $i "$drv"; done
wait_count $PORT 4
dog cluster format -c 3 -p $PORT > /dev/null
dog vdi create data "${SIZE_MIB}M" -p $PORT
dog vdi create load 64M -p $PORT
head -c $((SIZE_MIB << 20)) /dev/urandom > "$ROOT/data"
tw0=$(now)
dog vdi write data -p $PORT < "$ROOT/data"
tw1=$(now)
write_mbps=$(echo "$SIZE_MIB / ($tw1 - $tw0)" | bc -l)

# The load goes through node 0; node 3 dies.
"$BIN/sdload" write --addr 127.0.0.1:$PORT --vdi load --journal "$ROOT/load.journal" \
    --blocks 1024 --stride 65536 --workers 4 --report 0.5 --duration 100000 \
    > "$ROOT/load.out" 2> "$ROOT/load.err" &
LOADPID=$!
ts=$(now)
sleep 15
tk=$(now)
kill_node $tag 3
wait_count $PORT 3
tl=$(now)
until recovered $PORT $((PORT + 1)) $((PORT + 2)); do sleep 0.05; done
tr=$(now)
sleep 10
ta=$(now)
kill -TERM $LOADPID; wait $LOADPID || true; LOADPID=
# Full redundancy: every object of the data VDI on all three survivors.
vid=$(dog vdi list -r -p $PORT | awk '$2 == "data" {print $8}')
pre=$(printf '00%06x' "0x$vid")
objs=$(( (SIZE_MIB + 3) / 4 ))
copies=0
for i in 0 1 2; do copies=$((copies + $(ls "$ROOT/$tag/s$i/obj" | grep -c "^$pre" || true))); done
[ "$copies" = $((3 * objs)) ] || { echo "only $copies of $((3 * objs)) copies after recovery" >&2; exit 1; }
dog vdi read data -p $((PORT + 1)) | cmp - "$ROOT/data"
"$BIN/sdload" verify --addr 127.0.0.1:$((PORT + 2)) --vdi load --journal "$ROOT/load.journal" > "$ROOT/verify.out"

# Rates from sdload's cumulative reports: acked writes between two instants
# (seconds since sdload started) per second, in writes/s.
rate() {
    awk -v a="$1" -v b="$2" '
        $1 == "sdload:" { t = substr($2, 3) + 0; n = substr($3, 7) + 0 }
        $1 == "sdload:" && t <= a { na = n; ta = t }
        $1 == "sdload:" && t <= b { nb = n; tb = t }
        END { if (tb > ta) printf "%.0f", (nb - na) / (tb - ta); else print 0 }' "$ROOT/load.out"
}
rel() { echo "$1 - $ts" | bc -l; }
k=$(rel "$tk"); l=$(rel "$tl"); r=$(rel "$tr"); a=$(rel "$ta")
before=$(rate "$(echo "$k - 10" | bc -l)" "$k")
stalled=$(rate "$k" "$l")
during=$(rate "$l" "$r")
after=$(rate "$r" "$a")
pct() { echo "100 * $1 / $before" | bc -l | xargs printf '%.0f'; }
leave_s=$(echo "$tl - $tk" | bc -l)
rec_s=$(echo "$tr - $tl" | bc -l)
moved=$(echo "$SIZE_MIB * 3 / 4" | bc)
maxlat=$(grep -o 'max_latency=[0-9.]*s' "$ROOT/load.out" | cut -d= -f2)

section=$(cat <<MD
## Recovery: failure detection, time to full redundancy, client I/O during recovery

Command: \`bench/recovery.sh $SIZE_MIB $ROUNDS\` ($(date -u +%Y-%m-%d), $(nproc) cores, loopback,
ZooKeeper $(dpkg-query -W -f '${Version}' zookeeper 2>/dev/null || echo '?') standalone with tickTime 200 ms, load average
$(cut -d' ' -f1 /proc/loadavg) at the end: other engineers' jobs share the machine).

**SIGKILL to leaving the view**, 4 nodes, $ROUNDS kills each (dog polled every 10 ms on a survivor):

| driver | min | median | max |
|---|---|---|---|
| local | ${l_min} s | ${l_med} s | ${l_max} s |
| zookeeper, timeout=3000 | ${z3_min} s | ${z3_med} s | ${z3_max} s |
| zookeeper, timeout=10000 | ${z10_min} s | ${z10_med} s | ${z10_max} s |

**Node loss with ${SIZE_MIB} MiB of data**: 4 nodes in 4 zones, 3 copies, sync writes, ZooKeeper
timeout=3000. \`dog vdi write\` of the data: $(printf %.0f "$write_mbps") MiB/s. Node 3 is SIGKILLed and
stays down: its ~${moved} MiB of copies are re-created on the other three (checked:
$((3 * objs)) object files, data read back identical through another node).

| phase | time | client writes/s (sdload, 4 workers, 4 KiB) | vs before |
|---|---|---|---|
| before the kill (10 s) | — | $before | 100 % |
| kill → node leaves the view | $(printf %.1f "$leave_s") s | $stalled | $(pct "$stalled") % |
| leave → full redundancy (recovery) | $(printf %.1f "$rec_s") s | $during | $(pct "$during") % |
| after recovery (10 s) | — | $after | $(pct "$after") % |

Longest single client write: ${maxlat}; every acknowledged write verified afterwards
($(tail -1 "$ROOT/verify.out" | sed 's/sdload verify: //')).
MD
)
echo "$section" | tee "$ROOT/section.md"
