#!/bin/sh
# Rollout benchmark (issue 5): a Deployment of $PODS pods is restarted one pod
# at a time (maxSurge 1, maxUnavailable 0) under 200 requests/s through the
# ALB emulator, once per preStop strategy: no hook, the seed's `sleep 60`,
# drainwait. Every cluster delay is multiplied by $SCALE (1.0 = real timings).
# The defaults take about 18 minutes: the sleep strategy alone waits 20 x 30 s.
# Writes the table to target/bench/rollout.txt and the plot to bench/rollout.svg.
set -eu
cd "$(dirname "$0")/.."
PODS="${PODS:-20}"
SCALE="${SCALE:-0.5}"
SEED="${SEED:-1}"
out=target/bench/rollout
mkdir -p "$out"
cargo build --features sim --quiet
# A private copy: a rebuild of target/debug during the run must not change the hook.
bin="$out/drainwait"
cp "${CARGO_TARGET_DIR:-target}/debug/drainwait" "$bin"
"$bin" demo --bench rollout \
  --pods "$PODS" --time-scale "$SCALE" --seed "$SEED" --out "$out" | tee "$out.txt"
cp "$out/rollout.svg" bench/rollout.svg
echo "plot copied to bench/rollout.svg"
