#!/usr/bin/env bash
# The VM test tier: Berth on a pure cgroup v2 kernel. Downloads Debian's cloud
# kernel package with apt (cached in $BERTH_VM_CACHE), builds an initramfs
# (busybox, the kernel modules Berth needs, berthd/berth-monitor/berth-dns/
# berthctl and their libraries, nft, docker-registry with a pushed demo image,
# scripts/vm/{init,driver}.sh), boots it with qemu TCG and fails unless the
# guest's checks all pass (its marker line on the serial console).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "vm-test.sh: run as root (apt, registry)" >&2; exit 1; }
START=$(date +%s)
BIN=${BERTH_VM_BIN:-$PWD/target/debug}
CACHE=${BERTH_VM_CACHE:-/var/cache/berth-vm}
BOOT_TIMEOUT=${BERTH_VM_TIMEOUT:-600}   # whole guest run, seconds
MEM=${BERTH_VM_MEM:-2048}
WORK=$(mktemp -d /tmp/berth-vm.XXXXXX)
REG_PID=""; QEMU_PID=""
cleanup() {
  set +e
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
for tool in qemu-system-x86_64 busybox docker-registry umoci skopeo cpio curl objcopy; do
  command -v "$tool" >/dev/null || { echo "vm-test.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
[ -n "${BERTH_VM_NO_BUILD:-}" ] || cargo build --workspace --bins --locked

echo "== kernel: Debian's linux-image-cloud-amd64 (apt-get download, cached in $CACHE)"
mkdir -p "$CACHE"
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
PKG=$(kernel_pkg)
[ -n "$PKG" ] || { apt-get update -qq && PKG=$(kernel_pkg); }
[ -n "$PKG" ] || { echo "vm-test.sh: no linux-image-cloud-amd64 in apt's lists (apt-get update?)" >&2; exit 1; }
DEB=$(ls "$CACHE/${PKG}"_*.deb 2>/dev/null | tail -n1 || true)
if [ -z "$DEB" ]; then
  (cd "$CACHE" && apt-get download -q "$PKG" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  DEB=$(ls "$CACHE/${PKG}"_*.deb 2>/dev/null | tail -n1 || true)
  [ -n "$DEB" ] || { echo "vm-test.sh: apt-get download $PKG failed" >&2; exit 1; }
fi
dpkg-deb -x "$DEB" "$WORK/kernel"
KVER=${PKG#linux-image-}
VMLINUZ="$WORK/kernel/boot/vmlinuz-$KVER"
echo "kernel $KVER ($(basename "$DEB"))"

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc/berth-vm,lib/modules,registry,tmp,proc,sys,dev,run}

echo "== modules"
MODS=(overlay veth bridge br_netfilter nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_fib_ipv4
      nft_fib_inet nft_reject_inet nft_numgen nft_limit nf_conntrack nf_nat loop)
KMOD=$WORK/kernel/lib/modules/$KVER
mkdir -p "$ROOT/lib/modules/$KVER/kernel"
for d in fs/overlayfs net/netfilter net/ipv4/netfilter net/ipv6/netfilter net/bridge net/802 net/llc drivers/net/veth.ko drivers/block/loop.ko lib/libcrc32c.ko; do
  mkdir -p "$ROOT/lib/modules/$KVER/kernel/$(dirname "$d")"
  cp -a "$KMOD/kernel/$d" "$ROOT/lib/modules/$KVER/kernel/$d"
done
cp "$KMOD"/modules.{builtin,order} "$ROOT/lib/modules/$KVER/"
busybox depmod -b "$ROOT" "$KVER"
printf '%s\n' "${MODS[@]}" > "$ROOT/etc/berth-vm/modules"

echo "== binaries and their libraries"
cp /bin/busybox "$ROOT/bin/busybox"
for a in $(busybox --list); do [ -e "$ROOT/bin/$a" ] || ln -s busybox "$ROOT/bin/$a"; done
for b in berthd berth-monitor berth-dns berthctl; do
  # Debug symbols are most of a debug build's size; the guest needs none.
  objcopy --strip-debug "$BIN/$b" "$ROOT/usr/local/bin/$b"
done
cp "$(command -v nft)" "$ROOT/usr/sbin/nft"
cp "$(command -v docker-registry)" "$ROOT/usr/bin/docker-registry"
# busybox-static's wget crashes without glibc's NSS modules; curl is the HTTP client.
cp "$(command -v curl)" "$ROOT/usr/bin/curl"
# The state dir is an ext4 filesystem on a loop device (ext4 is built into
# the kernel): tmpfs takes idmapped mounts only from Linux 6.3, and user
# namespaces (Berth's default) need them for layers and volumes.
cp "$(command -v mkfs.ext4)" "$ROOT/usr/sbin/mkfs.ext4"
for f in "$ROOT"/usr/local/bin/* "$ROOT"/usr/sbin/nft "$ROOT"/usr/sbin/mkfs.ext4 "$ROOT"/usr/bin/*; do
  ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true
done | sort -u | while read -r lib; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
# Loader path for the libraries copied from /lib and /usr/lib.
[ -e "$ROOT/lib64" ] || ln -s lib "$ROOT/lib64" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$ROOT/etc/group"
printf '127.0.0.1 localhost\n' > "$ROOT/etc/hosts"
printf 'nameserver 127.0.0.1\n' > "$ROOT/etc/resolv.conf"
echo "$BOOT_TIMEOUT" > "$ROOT/etc/berth-vm/timeout"
install -m 755 scripts/vm/init.sh "$ROOT/init"
install -m 755 scripts/vm/driver.sh "$ROOT/driver.sh"

echo "== registry content: berth/demo:1 and :2 (busybox httpd, umoci + skopeo)"
REG_PORT=""
for p in $(seq 15500 15599); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then REG_PORT=$p; break; fi
done
[ -n "$REG_PORT" ] || { echo "vm-test.sh: no free loopback port in 15500-15599" >&2; exit 1; }
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $ROOT/registry } }
http: { addr: 127.0.0.1:$REG_PORT }
YML
docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
umoci init --layout "$WORK/oci"
for tag in 1 2; do
  umoci new --image "$WORK/oci:demo$tag"
  umoci unpack --image "$WORK/oci:demo$tag" "$WORK/bundle$tag" >/dev/null
  mkdir -p "$WORK/bundle$tag/rootfs/bin" "$WORK/bundle$tag/rootfs/www" "$WORK/bundle$tag/rootfs/tmp"
  cp /bin/busybox "$WORK/bundle$tag/rootfs/bin/busybox"
  ln -s busybox "$WORK/bundle$tag/rootfs/bin/sh"
  for a in tail sleep echo mknod; do ln -s busybox "$WORK/bundle$tag/rootfs/bin/$a"; done
  echo "<h1>hello from berth v$tag</h1>" > "$WORK/bundle$tag/rootfs/www/index.html"
  umoci repack --image "$WORK/oci:demo$tag" "$WORK/bundle$tag"
  skopeo copy -q --dest-tls-verify=false "oci:$WORK/oci:demo$tag" "docker://127.0.0.1:$REG_PORT/berth/demo:$tag"
done
kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true; REG_PID=""
cat > "$ROOT/etc/berth-vm/registry.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: /registry } }
http: { addr: 127.0.0.1:5000 }
YML

echo "== initramfs"
(cd "$ROOT" && find . | cpio -o -H newc --quiet) | gzip -1 > "$WORK/initrd.gz"
echo "initramfs $(du -m "$WORK/initrd.gz" | cut -f1) MiB"
PREP=$(($(date +%s) - START))

echo "== boot: qemu-system-x86_64 -accel tcg, 2 vCPUs, $MEM MiB (guest timeout ${BOOT_TIMEOUT}s)"
BOOT_START=$(date +%s)
timeout $((BOOT_TIMEOUT + 120)) qemu-system-x86_64 -accel tcg -smp 2 -m "$MEM" -nographic -no-reboot \
  -cpu max -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
  -append "console=ttyS0 panic=-1 loglevel=4 random.trust_cpu=on" \
  -nic none > "$WORK/console.log" 2>&1 &
QEMU_PID=$!
# Stream the guest's check lines as they come.
tail -n +1 -f --pid="$QEMU_PID" "$WORK/console.log" | grep --line-buffered -E '^(vm-check|vm-figure|vm-known-issue|vm-init|==|BERTH-VM-RESULT)' || true
QEMU_RC=0; wait "$QEMU_PID" || QEMU_RC=$?; QEMU_PID=""
RUN=$(($(date +%s) - BOOT_START))
BOOTED=$(grep -o 'booted in [0-9.]*s' "$WORK/console.log" | head -n1 || true)
RESULT=$(grep -a -o 'BERTH-VM-RESULT rc=[0-9]*' "$WORK/console.log" | tail -n1 || true)
PASSED=$(grep -a -c '^vm-check PASS' "$WORK/console.log" || true)
FAILED=$(grep -a -c '^vm-check FAIL' "$WORK/console.log" || true)
echo "vm-test: kernel $KVER, ${BOOTED:-no boot line}, guest run ${RUN}s, prep ${PREP}s, total $(($(date +%s) - START))s; checks: $PASSED passed, $FAILED failed"
if [ "$RESULT" != "BERTH-VM-RESULT rc=0" ] || [ "$FAILED" != 0 ] || [ "$PASSED" = 0 ]; then
  echo "vm-test: FAILED (${RESULT:-no result marker; qemu exit $QEMU_RC}); guest console tail:" >&2
  tail -n 120 "$WORK/console.log" >&2
  cp "$WORK/console.log" "${BERTH_VM_FAILED_LOG:-/tmp/berth-vm-failed-console.log}" 2>/dev/null && echo "vm-test: whole console log kept in ${BERTH_VM_FAILED_LOG:-/tmp/berth-vm-failed-console.log}" >&2
  exit 1
fi
grep -a '^vm-known-issue' "$WORK/console.log" || true
echo "vm-test: ok"
