#!/usr/bin/env bash
# Installs what Berth's tests, demo and benchmarks need on a fresh Debian
# machine (as root): the registry, image tools, busybox, promtool, haproxy, wrk,
# qemu for the VM test tier (which downloads its kernel package itself),
# and the fuzzer (cargo-afl with AFL++).
set -euo pipefail
PKGS=(docker-registry busybox-static skopeo umoci prometheus haproxy wrk runc
      apache2-utils iproute2 nftables git curl libseccomp-dev pkg-config util-linux
      man-db groff-base systemd build-essential
      qemu-system-x86 cpio binutils  # the VM test tier (scripts/vm-test.sh)
      docker.io  # `docker save` archives for tests/archives.rs (a private dockerd)
      protobuf-compiler etcd-server)  # etcd-client builds its protos; fleet tests run etcd
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian registry package starts a system service; tests run their own.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
# Docker's service too: the archive test starts a private dockerd.
systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
# The fuzzer (scripts/fuzz.sh): cargo-afl, and AFL++ built from its sources
# for this rustc (needs make and a C compiler: build-essential).
if ! command -v cargo-afl >/dev/null; then
  echo "deps: installing cargo-afl"
  cargo install cargo-afl --locked --version 0.18.2 --quiet
fi
afl_out=$(cargo afl config --build 2>&1) || grep -q "already built" <<<"$afl_out" || {
  echo "$afl_out" >&2
  exit 1
}
