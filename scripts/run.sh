#!/usr/bin/env bash
# The main job: builds sheep and dog, starts a 3-node local cluster (local
# driver, no external services), formats it, creates a VDI, serves it over
# NBD and prints how to use and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${SD_ROOT:-/tmp/sheepdog-demo}
BASE_PORT=${SD_PORT:-7000}
VDI=${SD_VDI:-demo}
SIZE=${SD_SIZE:-10G}
NBD_PORT=${SD_NBD_PORT:-10809}

cargo build --release --bins
BIN=$PWD/target/release
mkdir -p "$ROOT"
for i in 0 1 2; do
    port=$((BASE_PORT + i))
    nbd=(); [ "$i" = 0 ] && nbd=(--nbd "127.0.0.1:$NBD_PORT")
    "$BIN/sheep" "$ROOT/store$i" -c "local:$ROOT/shm" -z "$i" -p "$port" -P "$ROOT/sheep$i.pid" "${nbd[@]}"
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
VDI '$VDI' ($SIZE, 3 copies) is served over NBD at nbd://127.0.0.1:$NBD_PORT/$VDI
(snapshots read-only as $VDI@<tag>), and by every sheep over the Sheepdog protocol:
  qemu-img info nbd://127.0.0.1:$NBD_PORT/$VDI
  qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://127.0.0.1:$NBD_PORT/$VDI
  qemu-system-x86_64 -drive file=nbd://127.0.0.1:$NBD_PORT/$VDI,format=raw,if=virtio ...
  echo hello | $BIN/dog vdi write $VDI 0 6 -p $BASE_PORT
  $BIN/dog vdi read $VDI 0 6 -p $BASE_PORT
  $BIN/dog cluster info -p $BASE_PORT
Stop it with:
  $BIN/dog cluster shutdown -p $BASE_PORT
MSG
