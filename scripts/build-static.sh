#!/usr/bin/env bash
# Build a fully static drainwait binary (glibc, static-pie) for one target.
# Usage: scripts/build-static.sh [TARGET_TRIPLE]   (default x86_64-unknown-linux-gnu)
# Prints the path of the built binary on the last line of stdout.
# Honours CARGO_TARGET_DIR; the release profile (size-optimised) lives in Cargo.toml.
set -euo pipefail

triple="${1:-x86_64-unknown-linux-gnu}"
cd "$(dirname "$0")/.."

case "$triple" in
  x86_64-unknown-linux-gnu) ;;
  aarch64-unknown-linux-gnu)
    # Cross-linker from Debian's gcc-aarch64-linux-gnu (+ libc6-dev-arm64-cross).
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
    ;;
  *) echo "build-static: unsupported target '$triple' (x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu)" >&2; exit 2 ;;
esac

# crt-static on a -gnu target links glibc statically into a static-pie:
# the binary runs in an empty (FROM scratch) image or an emptyDir copy.
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --release --locked --target "$triple" --bin drainwait >&2

echo "${CARGO_TARGET_DIR:-target}/$triple/release/drainwait"
