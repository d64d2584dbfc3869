#!/usr/bin/env bash
# Runs the deterministic cluster simulation over any range of seeds and
# reports seeds per second and the failing seeds (each replays exactly:
# SIM_SEEDS=<seed>..<seed+1> SIM_TRACE=1 prints its event log).
#   ./scripts/soak.sh [FIRST..END]     (default 0..1000)
set -euo pipefail
cd "$(dirname "$0")/.."
SIM_SEEDS="${1:-${SIM_SEEDS:-0..1000}}" exec cargo test --release -p sheep sim::tests::soak -- --ignored --nocapture --exact
