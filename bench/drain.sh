#!/usr/bin/env bash
# One-drain benchmark (bench/RESULTS.md, "One drain"): builds the static release
# binary, then measures it against the simulated API server and ELBv2 on loopback.
#   bash bench/drain.sh            (RUNS=30 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(scripts/build-static.sh | tail -n 1)"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
DRAINWAIT_BIN="$bin" RUNS="${RUNS:-30}" cargo run --quiet --features sim --bin drainwait-bench-drain
