#!/usr/bin/env bash
# Runs every test of the project: installs what the tests need if missing,
# builds the release binaries and runs the whole workspace suite against
# real sheep processes.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cargo >/dev/null || { echo "cargo is required (install Rust stable)" >&2; exit 1; }
for pkg_cmd in "qemu-utils:qemu-img" "qemu-utils:qemu-io" "libnbd-bin:nbdinfo" "libnbd-bin:nbdcopy" "fio:fio" "tgt:tgtd" "libiscsi-bin:iscsi-test-cu" "python3:python3"; do
    pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd##*:}
    command -v "$cmd" >/dev/null || need+=("$pkg")
done
# ZooKeeper (started by the tests themselves) and python3 for the iSCSI helper.
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
command -v java >/dev/null || need+=(default-jre-headless)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q && $SUDO apt-get install -y -q $(printf "%s\n" "${need[@]}" | sort -u)
fi

cargo build --release --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --no-fail-fast
else
    cargo test --release --workspace --no-fail-fast
fi
