#!/usr/bin/env bash
# bench/start.sh — start-to-exit of /bin/true from an already-present image
# (Berth in its own user namespace, the default, and with userns = "host"):
# Berth (runtime library) beside `runc run`, `docker run --rm`, `podman run --rm`;
# then berthd's idle RSS and the memory each running container adds.
# Run as root from anywhere. Env: RUNS (50), WARMUP (3), COUNT (100), OUT (a
# markdown file to append the tables to). Cleans up everything it starts.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-50}
WARMUP=${WARMUP:-3}
COUNT=${COUNT:-100}
OUT=${OUT:-}

need_root
ensure_pkgs runc:runc dockerd:docker.io podman:podman tar:tar
build
snapshot_cgroups
snapshot_podman_cache

WORK=$(mktemp -d /tmp/berth-bench-start.XXXXXX)
cleanup() {
    local rc=$?
    set +e
    log "cleaning up"
    if [ -d "$WORK/runc" ]; then
        for c in $(runc --root "$WORK/runc" list -q 2>/dev/null); do
            runc --root "$WORK/runc" delete -f "$c" >/dev/null 2>&1
        done
    fi
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

# runc on a copy of the same rootfs (runc creates mount points in it).
mkdir -p "$WORK/runc-bundle" "$WORK/runc"
cp -a "$ROOTFS" "$WORK/runc-bundle/rootfs"
(cd "$WORK/runc-bundle" && runc spec)
python3 - "$WORK/runc-bundle/config.json" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c["root"] = {"path": "rootfs", "readonly": False}
json.dump(c, open(p, "w"), indent=1)
EOF
PEERS+=(--peer "runc run=runc --root $WORK/runc run --bundle $WORK/runc-bundle bench-{n}")

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

log "memory benchmark: $COUNT containers"
MEM_ARGS=()
if [ -n "${DOCKERD_PID:-}" ]; then
    MEM_ARGS=(--dockerd-pid "$DOCKERD_PID" --docker "$DOCKER" --docker-image "$DOCKER_IMAGE")
fi
"$REL/bench-start" memory --berthd "$REL/berthd" --monitor "$REL/berth-monitor" \
    --rootfs "$ROOTFS" --work "$WORK/mem" --count "$COUNT" \
    "${MEM_ARGS[@]}" "${OUT_ARGS[@]}"
