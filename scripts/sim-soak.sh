#!/usr/bin/env bash
# Runs the whole-cluster simulation (crates/sheep/src/cluster_sim.rs) over
# any range of seeds and reports seeds per second; a failing seed prints
# itself and replays identically.
#
#   scripts/sim-soak.sh [A..B]          default 0..100
#   CLUSTER_SIM_TRACE=1                  print a failing run's history
#   CLUSTER_SIM_FOCUS=<oid hex>          follow one object's copies in it
#   CLUSTER_SIM_HARSH=1 CLUSTER_SIM_EVENT_DELAY=300 CLUSTER_SIM_DELETE=1
#   CLUSTER_SIM_ORPHANS=0 CLUSTER_SIM_REPLACE=0 CLUSTER_SIM_RESEND=0 CLUSTER_SIM_EC=0
#                                        fault classes beyond the default (and checks to turn off)
set -euo pipefail
cd "$(dirname "$0")/.."
export CLUSTER_SIM_SEEDS=${1:-${CLUSTER_SIM_SEEDS:-0..100}}
exec cargo test --release -p sheep cluster_sim::tests::soak -- --ignored --nocapture --exact
