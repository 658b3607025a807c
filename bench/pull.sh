#!/usr/bin/env bash
# bench/pull.sh — cold pull of a ≈150 MB, 6-layer image with ~15k files from
# a registry on 127.0.0.1: Berth beside `docker pull` and `podman pull`, and
# beside this machine's lower bound (bench-pull-bound: download, sha256,
# gunzip and extraction each timed alone at full parallelism; the slowest).
# Run as root from anywhere. Env: RUNS (5), OUT (a markdown file to append the
# tables to), UNPACK_DIAG=1 (also run the per-layer unpack diagnostic),
# LAYERS (space-separated host dirs, one layer each), BENCH_FS (loop | host,
# default loop: see below). Cleans up everything it starts.
#
# Where the stores live matters more than anything the pullers do: on an ext4
# without a journal (this CI machine's root fs) the kernel will not reuse an
# inode freed in the last 60-360 s (fs/ext4/ialloc.c recently_deleted()), so
# every file created near a tree that was just deleted scans past thousands of
# such inodes — a run that follows another run's cleanup pays 3-10 s of system
# time that has nothing to do with the puller. With BENCH_FS=loop (default) the
# three stores share a fresh journaled ext4 (mkfs.ext4 defaults, as on a
# normal host) on a loop device; BENCH_FS=host keeps them on the host's fs.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-5}
BENCH_FS=${BENCH_FS:-loop}
OUT=${OUT:-}
UNPACK_DIAG=${UNPACK_DIAG:-0}
# ≈150 MB gzip in total on Debian 12 hosts with the usual -dev packages.
LAYERS=${LAYERS:-/usr/include /usr/lib/python3.11 /usr/lib/postgresql /usr/libexec /usr/share/doc}

need_root
ensure_pkgs dockerd:docker.io podman:podman umoci:umoci skopeo:skopeo docker-registry:docker-registry curl:curl
build
snapshot_cgroups
snapshot_podman_cache

WORK=$(mktemp -d /tmp/berth-bench-pull.XXXXXX)
STORES=$WORK
REGISTRY_PID=
cleanup() {
    local rc=$?
    set +e
    log "cleaning up"
    cleanup_podman
    stop_dockerd
    if [ -n "$REGISTRY_PID" ]; then
        kill -TERM "$REGISTRY_PID" 2>/dev/null
        wait "$REGISTRY_PID" 2>/dev/null
    fi
    unmount_under "$WORK"
    # `umount -l` of a loop mount detaches the loop device once it is idle.
    rm -rf "$WORK"
    remove_new_cgroups
    remove_podman_cache
    exit $rc
}
trap cleanup EXIT INT TERM

if [ "$BENCH_FS" = loop ]; then
    STORES=$WORK/fs
    mkdir -p "$STORES"
    truncate -s 40G "$WORK/fs.img"
    mkfs.ext4 -q -F "$WORK/fs.img"
    mount -o loop "$WORK/fs.img" "$STORES"
    log "stores on a fresh journaled ext4: $(findmnt -n -o SOURCE "$STORES") on $STORES"
fi

OUT_ARGS=()
if [ -n "$OUT" ]; then
    OUT_ARGS=(--out "$OUT")
fi

# The registry: docker-registry on 127.0.0.1 with storage under WORK.
PORT=$("$REL/bench-pull-prep" free-port)
REGISTRY=127.0.0.1:$PORT
mkdir -p "$WORK/registry/storage"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY
  secret: berth-bench
EOF
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 1 60); do
    curl -fs -o /dev/null "http://$REGISTRY/v2/" && break
    sleep 0.25
done
curl -fs -o /dev/null "http://$REGISTRY/v2/" || { cat "$WORK/registry/log" >&2; exit 1; }
log "registry on $REGISTRY"

# The image: busybox + one layer per host dir, built with umoci, pushed with skopeo.
LAYER_ARGS=()
for l in $LAYERS; do
    LAYER_ARGS+=(--layer "$l")
done
log "building and pushing $REGISTRY/bench/big:1"
"$REL/bench-pull-prep" build --registry "$REGISTRY" --image bench/big:1 \
    --work "$WORK/prep" "${LAYER_ARGS[@]}" "${OUT_ARGS[@]}"

PEER_ARGS=()
if start_dockerd "$STORES" --insecure-registry "$REGISTRY"; then
    PEER_ARGS+=(--docker "$DOCKER")
else
    PEER_ARGS+=(--unavailable "docker pull=$DOCKER_ERR")
fi
PODMAN=$(podman_prefix "$STORES")
if err=$($PODMAN info 2>&1 >/dev/null); then
    PEER_ARGS+=(--podman "$PODMAN")
else
    PEER_ARGS+=(--unavailable "podman pull=$err")
fi

log "lower bound: each stage alone, all layers in parallel"
"$REL/bench-pull-bound" --registry "$REGISTRY" --repo bench/big --tag 1 \
    --work "$STORES/bound" --rounds "$RUNS" --bound-out "$WORK/bound" "${OUT_ARGS[@]}"

log "pull benchmark: $RUNS cold pulls per case"
mkdir -p "$STORES/berth"
"$REL/bench-pull" --image "$REGISTRY/bench/big:1" --runs "$RUNS" --bound "$(cat "$WORK/bound")" \
    --berthd "$REL/berthd" --berthctl "$REL/berthctl" --work "$STORES/berth" \
    "${PEER_ARGS[@]}" "${OUT_ARGS[@]}"

if [ "$UNPACK_DIAG" = 1 ]; then
    log "unpack diagnostic"
    "$REL/bench-unpack" --registry "$REGISTRY" --repo bench/big --tag 1 \
        --work "$STORES/unpack" --rounds 2 "${OUT_ARGS[@]}"
fi
