#!/bin/sh
# Storm benchmark (issue 5): $DRAINS pods are deleted at the same moment, each
# running the real drainwait binary as its preStop hook, all polling one fake
# ELBv2 whose Describe* calls share AWS's token bucket (40 burst, 10/s refill;
# the refill is divided by $SCALE so a faster run sees the same contention).
# Reports failed drains, DescribeTargetHealth calls and Throttling answers per
# drain. The defaults (real timings) take about a minute.
set -eu
cd "$(dirname "$0")/.."
DRAINS="${DRAINS:-100}"
SCALE="${SCALE:-1.0}"
SEED="${SEED:-1}"
out=target/bench/storm
mkdir -p "$out"
cargo build --features sim --quiet
# A private copy: a rebuild of target/debug during the run must not change the hook.
bin="$out/drainwait"
cp "${CARGO_TARGET_DIR:-target}/debug/drainwait" "$bin"
"$bin" demo --bench storm \
  --drains "$DRAINS" --time-scale "$SCALE" --seed "$SEED" --out "$out" | tee "$out.txt"
