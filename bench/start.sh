#!/usr/bin/env bash
# bench/start.sh — start-to-exit of /bin/true from an already-present image
# (Berth in its own user namespace, the default, and with userns = "host"):
# Berth (runtime library) beside `runc run`, `crun run` (with and without a user
# namespace), `docker run --rm`, `podman run --rm`, and where a Berth start goes
# stage by stage;
# then berthd's idle RSS and the memory each running container adds.
# Run as root from anywhere. Env: RUNS (50), WARMUP (3), COUNT (100), OUT (a
# markdown file to append the tables to), MEMORY=0 (skip the memory part),
# NO_BUILD=1 (use the release binaries as they are). Cleans up everything it starts.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-50}
WARMUP=${WARMUP:-3}
COUNT=${COUNT:-100}
OUT=${OUT:-}

need_root
ensure_pkgs runc:runc crun:crun dockerd:docker.io podman:podman tar:tar
build
snapshot_cgroups
snapshot_podman_cache

WORK=$(mktemp -d /tmp/berth-bench-start.XXXXXX)
# The userns bundles' mapped root must traverse it (mktemp makes it 0700).
chmod 755 "$WORK"
cleanup() {
    local rc=$?
    set +e
    log "cleaning up"
    local rt pre
    for rt in runc crun; do
        [ -d "$WORK/$rt" ] || continue
        pre=
        [ "$rt" = crun ] && pre=${NSENTER:-}
        for c in $($pre $rt --root "$WORK/$rt" list -q 2>/dev/null); do
            $pre $rt --root "$WORK/$rt" delete -f "$c" >/dev/null 2>&1
        done
    done
    cleanup_podman
    stop_dockerd
    unmount_under "$WORK"
    rm -rf "$WORK"
    remove_new_cgroups
    remove_podman_cache
    exit $rc
}
trap cleanup EXIT INT TERM

OUT_ARGS=()
if [ -n "$OUT" ]; then
    OUT_ARGS=(--out "$OUT")
fi

# The image: a busybox rootfs (every applet), and a tarball of it for docker/podman.
ROOTFS=$WORK/rootfs
"$REL/bench-start" rootfs --dir "$ROOTFS" --tar "$WORK/busybox.tar"

PEERS=()
UNAVAILABLE=()

# runc and crun on copies of the same rootfs (they create mount points in
# it), with what Berth has on: Docker's default seccomp profile (podman's
# /usr/share/containers/seccomp.json resolved for the capabilities, as podman
# does), Berth's 13 default capabilities, no_new_privs, the default masked and
# read-only paths. The `userns` bundles add a user namespace mapping 0..65536
# to 0x10000000.. over a copy of the rootfs chowned to that range (runc 1.1
# and crun 1.8 have no idmapped rootfs; Berth idmaps the shared layer).
USERNS_BASE=268435456
mkdir -p "$WORK/runc" "$WORK/crun"
for b in bundle bundle-userns; do
    mkdir -p "$WORK/$b"
    cp -a "$ROOTFS" "$WORK/$b/rootfs"
    (cd "$WORK/$b" && runc spec)
done
chown -R "$USERNS_BASE:$USERNS_BASE" "$WORK/bundle-userns/rootfs"
python3 - "$WORK/bundle/config.json" "$WORK/bundle-userns/config.json" "$USERNS_BASE" <<'EOF2'
import json, os, sys
caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]

def seccomp():
    src = "/usr/share/containers/seccomp.json"
    if not os.path.exists(src):
        sys.exit(f"{src} is missing (apt-get install golang-github-containers-common)")
    d = json.load(open(src))
    arch = "amd64" if os.uname().machine == "x86_64" else "arm64"
    out = []
    for r in d["syscalls"]:
        inc, exc = r.get("includes", {}), r.get("excludes", {})
        if inc.get("caps") and not set(inc["caps"]) <= set(caps): continue
        if inc.get("arches") and arch not in inc["arches"]: continue
        if exc.get("caps") and set(exc["caps"]) & set(caps): continue
        if exc.get("arches") and arch in exc["arches"]: continue
        e = {"names": r["names"], "action": r["action"]}
        for k in ("args", "errnoRet"):
            if r.get(k) is not None: e[k] = r[k]
        out.append(e)
    archs = {"amd64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
             "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}[arch]
    s = {"defaultAction": d["defaultAction"], "architectures": archs, "syscalls": out}
    if d.get("defaultErrnoRet") is not None: s["defaultErrnoRet"] = d["defaultErrnoRet"]
    return s

for path, userns in ((sys.argv[1], False), (sys.argv[2], True)):
    c = json.load(open(path))
    c["process"]["args"] = ["/bin/true"]
    c["process"]["terminal"] = False
    c["process"]["noNewPrivileges"] = True
    c["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    c["root"] = {"path": "rootfs", "readonly": False}
    c["linux"]["seccomp"] = seccomp()
    if userns:
        m = [{"containerID": 0, "hostID": int(sys.argv[3]), "size": 65536}]
        c["linux"]["namespaces"].append({"type": "user"})
        c["linux"]["uidMappings"] = m
        c["linux"]["gidMappings"] = m
    json.dump(c, open(path, "w"), indent=1)
EOF2
PEERS+=(--peer "runc run=runc --root $WORK/runc run --bundle $WORK/bundle bench-{n}")
PEERS+=(--peer "runc run, userns=runc --root $WORK/runc run --bundle $WORK/bundle-userns bench-{n}")
# crun 1.8 refuses this hybrid host ("cgroups in hybrid mode not supported,
# drop all controllers from cgroupv2": the unified hierarchy holds hugetlb),
# so it runs in a mount namespace of its own where /sys/fs/cgroup/unified is
# unmounted (pure cgroup v1 there), entered with nsenter: one exec more than
# crun alone, measured as its own row.
CRUN_NS=$WORK/crun-mnt
touch "$CRUN_NS"
if unshare --mount="$CRUN_NS" --propagation private true &&
    nsenter --mount="$CRUN_NS" sh -c 'if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi'; then
    NSENTER="nsenter --mount=$CRUN_NS"
    PEERS+=(--peer "crun run=$NSENTER crun --root $WORK/crun run --bundle $WORK/bundle bench-{n}")
    PEERS+=(--peer "crun run, userns=$NSENTER crun --root $WORK/crun run --bundle $WORK/bundle-userns bench-{n}")
    PEERS+=(--peer "nsenter alone (crun's wrapper)=$NSENTER /bin/true")
else
    UNAVAILABLE+=(--unavailable "crun run=could not make a mount namespace without the cgroup2 mount")
fi

# docker: a private dockerd; the busybox tarball imported as an image.
DOCKER_IMAGE=berth-bench/busybox:1
if start_dockerd "$WORK"; then
    if err=$($DOCKER import "$WORK/busybox.tar" "$DOCKER_IMAGE" 2>&1 >/dev/null); then
        PEERS+=(--peer "docker run --rm=$DOCKER run --rm --network none $DOCKER_IMAGE /bin/true")
    else
        UNAVAILABLE+=(--unavailable "docker run --rm=docker import failed: $err")
    fi
else
    UNAVAILABLE+=(--unavailable "docker run --rm=$DOCKER_ERR")
fi

# podman: storage under WORK; on this hybrid (cgroup v1) host it needs runc,
# cgroupfs, file events and explicit ulimits (crun/systemd defaults fail).
PODMAN=$(podman_prefix "$WORK")
PODMAN_IMAGE=localhost/berth-bench/busybox:1
if err=$($PODMAN import "$WORK/busybox.tar" "$PODMAN_IMAGE" 2>&1 >/dev/null); then
    PEERS+=(--peer "podman run --rm=$PODMAN run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 $PODMAN_IMAGE /bin/true")
else
    UNAVAILABLE+=(--unavailable "podman run --rm=podman import failed: $err")
fi

log "start benchmark: $RUNS runs per case"
"$REL/bench-start" run --rootfs "$ROOTFS" --monitor "$REL/berth-monitor" \
    --state "$WORK/berth" --runs "$RUNS" --warmup "$WARMUP" \
    "${PEERS[@]}" "${UNAVAILABLE[@]}" "${OUT_ARGS[@]}"

if [ "${MEMORY:-1}" = 0 ]; then
    log "MEMORY=0: memory benchmark skipped"
    exit 0
fi
log "memory benchmark: $COUNT containers"
MEM_ARGS=()
if [ -n "${DOCKERD_PID:-}" ]; then
    MEM_ARGS=(--dockerd-pid "$DOCKERD_PID" --docker "$DOCKER" --docker-image "$DOCKER_IMAGE")
fi
"$REL/bench-start" memory --berthd "$REL/berthd" --monitor "$REL/berth-monitor" \
    --rootfs "$ROOTFS" --work "$WORK/mem" --count "$COUNT" \
    "${MEM_ARGS[@]}" "${OUT_ARGS[@]}"
