#!/usr/bin/env bash
# Runs the same probe as root in a Berth container (the runtime library with
# the defaults a manifest service gets) and in `docker run` (a private
# dockerd, as bench/lib.sh starts it), and prints them side by side:
# capability sets, no_new_privs, seccomp mode, syscalls outside and inside the
# profiles, device access (mknod and opening a host device node on a volume's
# tmpfs submount), mount flags of that submount, the uid map. Not run in CI;
# needs root, gcc (static libc) and docker.io (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../bench/lib.sh
source bench/lib.sh
need_root
ensure_pkgs dockerd:docker.io gcc:gcc

WORK=$(mktemp -d /tmp/berth-security-compare.XXXXXX)
cleanup() {
    stop_dockerd || true
    unmount_under "$WORK"
    remove_new_cgroups
    rm -rf "$WORK"
}
trap cleanup EXIT
snapshot_cgroups

log "cargo build (berth-monitor, bench-security)"
cargo build -q -p berth-agent --bin berth-monitor -p berth-bench --bin bench-security
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

# The probe image: busybox, a static program making one syscall, the script.
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,dev,proc,sys,tmp,etc,vol,ro}
cp /bin/busybox "$ROOTFS/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$ROOTFS/bin/$applet"
done
cat >"$WORK/sys.c" <<'EOF'
/* sys NR [ARG0]: makes syscall NR, prints its errno (0: it succeeded). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long nr = strtol(argv[1], 0, 0), a0 = argc > 2 ? strtol(argv[2], 0, 0) : 0;
    long r = syscall(nr, a0, 0, 0, 0, 0);
    printf("%d\n", r < 0 ? errno : 0);
    return 0;
}
EOF
gcc -static -O2 -o "$ROOTFS/bin/sys" "$WORK/sys.c"
cat >"$ROOTFS/probe.sh" <<'EOF'
st() { grep "^$1:" /proc/self/status | cut -f2; }
for k in CapEff CapInh CapBnd CapAmb NoNewPrivs Seccomp Seccomp_filters; do echo "$k=$(st $k)"; done
echo "unknown syscall 999=$(sys 999)"
echo "file_getattr (468, Linux 6.17)=$(sys 468)"
echo "listmount (458)=$(sys 458)"
echo "keyctl(9999)=$(sys 250 9999)"
echo "unshare(CLONE_NEWUSER)=$(sys 272 0x10000000)"
echo "io_uring_setup=$(sys 425)"
res() { out=$("$@" 2>&1) && echo ok || echo "${out##*: }"; }
echo "mknod c 1:1 in /tmp=$(res mknod /tmp/mem c 1 1)"
echo "mknod b 7:0 in /tmp=$(res mknod /tmp/loop b 7 0)"
echo "mknod c 1:1 on the volume's submount=$(res mknod /vol/sub/mem c 1 1)"
echo "open host /dev/kmsg node on the submount=$(res dd if=/vol/sub/kmsg of=/dev/null count=0)"
echo "mount flags of /vol/sub=$(awk '$5 == "/vol/sub" {print $6}' /proc/self/mountinfo)"
echo "mount flags of /ro/sub (ro volume)=$(awk '$5 == "/ro/sub" {print $6}' /proc/self/mountinfo)"
echo "write into /ro/sub=$(res touch /ro/sub/x)"
echo "uid_map=$(tr -s ' ' </proc/self/uid_map | sed 's/^ //')"
EOF
tar -C "$ROOTFS" -cf "$WORK/rootfs.tar" .

# A host volume with a tmpfs submount (no nodev) holding a host device node,
# and a second one bound read-only.
for v in vol ro; do
    mkdir -p "$WORK/$v/sub"
    mount -t tmpfs -o size=1m tmpfs "$WORK/$v/sub"
done
mknod "$WORK/vol/sub/kmsg" c 1 11

for userns in auto host; do
    log "Berth, userns = \"$userns\""
    "$BIN/bench-security" --rootfs "$ROOTFS" --state "$WORK/berth" --monitor "$BIN/berth-monitor" \
        --userns "$userns" --volume "$WORK/vol:/vol" --volume "$WORK/ro:/ro:ro" \
        -- /bin/sh /probe.sh >"$WORK/berth-$userns.out"
    rm -f "$WORK/vol/sub/mem"
done

log "docker"
DOCKER_OUT="docker unavailable"
if start_dockerd "$WORK"; then
    $DOCKER import "$WORK/rootfs.tar" berth-security/probe:1 >/dev/null
    DOCKER_VERSION=$($DOCKER version --format '{{.Server.Version}}')
    $DOCKER run --rm --network none -v "$WORK/vol:/vol" -v "$WORK/ro:/ro:ro" \
        berth-security/probe:1 /bin/sh /probe.sh >"$WORK/docker.out"
    DOCKER_OUT=
fi

printf '\n%-44s | %-24s | %-24s | %s\n' "probe (errno numbers: 1 EPERM, 38 ENOSYS)" "Berth (default)" "Berth userns=host" "docker run ${DOCKER_VERSION:-}"
printf '%s\n' "$(printf -- '-%.0s' $(seq 1 130))"
while IFS= read -r line; do
    key=${line%%=*}
    b=${line#*=}
    h=$(grep -F "$key=" "$WORK/berth-host.out" | head -1 | cut -d= -f2-)
    d=${DOCKER_OUT:-$(grep -F "$key=" "$WORK/docker.out" | head -1 | cut -d= -f2-)}
    printf '%-44s | %-24s | %-24s | %s\n' "$key" "$b" "$h" "$d"
done <"$WORK/berth-auto.out"
echo
echo "kernel $(uname -r); cgroup: $(stat -fc %T /sys/fs/cgroup)"
