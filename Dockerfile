# syntax=docker/dockerfile:1
# drainwait image: one static binary, no shell, non-root.
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/drainwait:0.1.0 .
# The binary is meant to be copied out (`drainwait install DIR` in an init
# container, or COPY --from in a derived image), so the image holds nothing else.

# Build on the builder's own platform and cross-compile: no emulation needed.
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
ARG TARGETARCH
ARG BUILDARCH
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /src

# arm64 from another arch needs Debian's cross linker and arm64 glibc (static
# archives for +crt-static). Versions pinned to bookworm's.
RUN if [ "$TARGETARCH" = arm64 ] && [ "$BUILDARCH" != arm64 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends \
           gcc-aarch64-linux-gnu=4:12.2.0-3 \
           libc6-dev-arm64-cross=2.36-8cross1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    rustup target add "$triple"; \
    echo "$triple" > /triple

COPY . .
# Cache mounts keep the crates.io download and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=drainwait-target-${TARGETARCH} \
    bin="$(scripts/build-static.sh "$(cat /triple)")" \
    && install -D -m 0755 "$bin" /out/drainwait

FROM scratch
ARG VERSION=0.1.0
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="drainwait" \
      org.opencontainers.image.description="Kubernetes preStop hook: keeps a terminating pod until its load balancer has let it go" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/drainwait /drainwait
# Any non-root uid works: the binary only needs to be readable and executable.
USER 65532:65532
ENTRYPOINT ["/drainwait"]
