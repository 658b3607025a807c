#!/usr/bin/env bash
# Installs what Berth's tests, demo and benchmarks need on a fresh Debian
# machine (as root): the registry, image tools, busybox, promtool, haproxy, wrk,
# qemu for the VM test tier (which downloads its kernel package itself).
set -euo pipefail
PKGS=(docker-registry busybox-static skopeo umoci prometheus haproxy wrk runc
      apache2-utils iproute2 nftables git curl libseccomp-dev pkg-config util-linux
      man-db groff-base systemd
      qemu-system-x86 cpio binutils)  # the VM test tier (scripts/vm-test.sh)
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
