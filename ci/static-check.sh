#!/usr/bin/env bash
# Proves the release binary is static and self-contained: builds it with
# scripts/build-static.sh, checks it with file(1) and ldd(1), then runs it
# alone in an empty chroot, as root and as the image's uid 65532.
# Needs root (chroot). Honours CARGO_TARGET_DIR; never removes build output.
#   bash ci/static-check.sh [TARGET_TRIPLE]     (default x86_64-unknown-linux-gnu)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
fail() { echo "static-check: FAIL: $*" >&2; exit 1; }

triple="${1:-x86_64-unknown-linux-gnu}"
[ "$(id -u)" = 0 ] || fail "run as root (chroot needs it)"

step "build (scripts/build-static.sh $triple)"
bin="$(scripts/build-static.sh "$triple" | tail -n 1)"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -f "$bin" ] || fail "no binary at $bin"
echo "$bin"

step "file"
if ! command -v file >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq file >/dev/null
fi
info="$(file -b "$bin")"
echo "$info"
grep -q 'static' <<<"$info" || fail "file does not report a static binary"
grep -q 'not stripped' <<<"$info" && fail "binary is not stripped"

step "ldd"
ldd_out="$(ldd "$bin" 2>&1 || true)"
echo "$ldd_out"
grep -Eq 'not a dynamic executable|statically linked' <<<"$ldd_out" || fail "ldd lists shared libraries"

if [ "$triple" != "$(rustc -vV | sed -n 's/^host: //p')" ]; then
  step "skipping the chroot runs: $triple is not this machine's architecture"
else
  root="$(mktemp -d)"
  cleanup() {
    if mountpoint -q "$root/proc"; then umount "$root/proc" || return; fi
    rm -rf --one-file-system "$root"
  }
  trap cleanup EXIT
  chmod 0755 "$root"
  cp "$bin" "$root/drainwait"
  echo "chroot: $(cd "$root" && find . -mindepth 1 | tr '\n' ' ')"

  step "chroot DIR /drainwait --help"
  chroot "$root" /drainwait --help || fail "--help exited $?"

  # No /proc in the chroot: install falls back to argv[0] to find itself.
  step "chroot DIR /drainwait install /bin2"
  chroot "$root" /drainwait install /bin2 || fail "install /bin2 exited $?"
  [ -f "$root/bin2/drainwait" ] || fail "install did not create /bin2/drainwait"
  mode="$(stat -c %a "$root/bin2/drainwait")"
  [ "$mode" = 755 ] || fail "/bin2/drainwait has mode $mode, want 755"
  cmp -s "$bin" "$root/bin2/drainwait" || fail "/bin2/drainwait differs from the built binary"
  chroot "$root" /drainwait install /bin2 || fail "second install into /bin2 failed (must be idempotent)"
  chroot "$root" /bin2/drainwait --help >/dev/null || fail "the installed copy does not run"
  echo "/bin2/drainwait: mode $mode, identical, runs; reinstall ok"

  step "as uid 65532 into an emptyDir-like dir (what the init container does)"
  mkdir -m 0777 "$root/drainwait-bin"
  chroot --userspec=65532:65532 "$root" /drainwait install /drainwait-bin \
    || fail "install /drainwait-bin as uid 65532 exited $?"
  [ "$(stat -c %a "$root/drainwait-bin/drainwait")" = 755 ] || fail "/drainwait-bin/drainwait is not mode 755"
  chroot --userspec=8737:8737 "$root" /drainwait-bin/drainwait --help >/dev/null \
    || fail "argo-server's uid 8737 cannot run the installed copy"
  echo "installed by uid 65532, runs as uid 8737"

  # A pod's root has only what kubelet mounts: /etc/hosts and /etc/resolv.conf.
  # glibc's static resolver must read both without any shared library.
  step "name resolution in the empty root: /etc/hosts, then DNS"
  mkdir -p "$root/etc"
  echo "127.0.0.1 kube-api.hosts.drainwait.test" >"$root/etc/hosts"
  printf 'nameserver 127.0.0.1\noptions timeout:2 attempts:2\n' >"$root/etc/resolv.conf"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  servers_log="$root/servers.log"
  python3 ci/name_check_servers.py "$port" kube-api.dns.drainwait.test 120 >"$servers_log" 2>&1 &
  servers=$!
  trap 'kill "$servers" 2>/dev/null || true; cleanup' EXIT
  for _ in $(seq 50); do grep -q '^ready' "$servers_log" && break; sleep 0.1; done
  grep -q '^ready' "$servers_log" || fail "name-check servers did not start: $(cat "$servers_log")"
  for host in kube-api.hosts.drainwait.test kube-api.dns.drainwait.test; do
    cat >"$root/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://$host:$port"}}]
users: [{name: u, user: {}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: ns}}]
current-context: c
KUBECONFIG
    out="$(env -i KUBECONFIG=/kubeconfig POD_NAME=p POD_NAMESPACE=ns DRAINWAIT_LB=none \
      DRAINWAIT_EVENTS=false DRAINWAIT_LOG_TO_PID1=false DRAINWAIT_MAX_WAIT=20s \
      "$(command -v timeout)" 40 "$(command -v chroot)" "$root" /drainwait wait 2>&1)" \
      || fail "drain via $host exited $?: $out"
    grep -q 'pod-gone' <<<"$out" || fail "drain via $host did not reach the API: $out"
  done
  grep -q '^dns: kube-api.dns.drainwait.test type 1 -> 127.0.0.1' "$servers_log" \
    || fail "the DNS name was not resolved through the nameserver: $(cat "$servers_log")"
  n="$(grep -c '^api: GET /api/v1/namespaces/ns/pods/p -> 404' "$servers_log")"
  [ "$n" -ge 2 ] || fail "the API saw $n pod GETs, want 2: $(cat "$servers_log")"
  echo "resolved a name from /etc/hosts and one via DNS; each drain reached the API and ended pod-gone"
fi

step "size"
size="$(stat -c %s "$bin")"
awk -v b="$size" 'BEGIN { printf "drainwait (%s, stripped): %d bytes = %.2f MiB\n", ARGV[1], b, b / 1048576 }' "$triple"
