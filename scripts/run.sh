#!/usr/bin/env bash
# The main job: builds sheep and dog, starts a 3-node local cluster (local
# driver, no external services), formats it, creates a VDI and prints how
# to use and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${SD_ROOT:-/tmp/sheepdog-demo}
BASE_PORT=${SD_PORT:-7000}
VDI=${SD_VDI:-demo}
SIZE=${SD_SIZE:-10G}

cargo build --release --bins
BIN=$PWD/target/release
mkdir -p "$ROOT"
for i in 0 1 2; do
    port=$((BASE_PORT + i))
    "$BIN/sheep" "$ROOT/store$i" -c "local:$ROOT/shm" -z "$i" -p "$port" -P "$ROOT/sheep$i.pid"
done
for _ in $(seq 100); do
    [ "$("$BIN/dog" node list -r -p "$BASE_PORT" 2>/dev/null | wc -l)" = 3 ] && break
    sleep 0.1
done
if "$BIN/dog" cluster info -p "$BASE_PORT" | grep -q "Waiting for cluster to be formatted"; then
    "$BIN/dog" cluster format -c 3 -p "$BASE_PORT"
fi
"$BIN/dog" vdi list -r -p "$BASE_PORT" | grep -q "^= $VDI " ||
    "$BIN/dog" vdi create "$VDI" "$SIZE" -p "$BASE_PORT"
"$BIN/dog" node list -p "$BASE_PORT"
"$BIN/dog" vdi list -p "$BASE_PORT"
cat <<MSG

A 3-node Sheepdog cluster is running (stores under $ROOT, ports $BASE_PORT-$((BASE_PORT + 2))).
VDI '$VDI' ($SIZE, 3 copies) is served by every sheep over the Sheepdog protocol:
  echo hello | $BIN/dog vdi write $VDI 0 6 -p $BASE_PORT
  $BIN/dog vdi read $VDI 0 6 -p $BASE_PORT
  $BIN/dog cluster info -p $BASE_PORT
Stop it with:
  $BIN/dog cluster shutdown -p $BASE_PORT
MSG
