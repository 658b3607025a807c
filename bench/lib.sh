# shellcheck shell=bash
# The one benchmark harness: every script under bench/ sources this file
# (rollout-lib.sh too). Sourced, not run. Functions (names are stable):
#
#   log MSG...                 a "[bench] MSG" line on stderr
#   need_root                  exits unless run as root
#   ensure_pkgs BIN:PKG...     apt-get installs the packages whose binary is missing
#   build                      release build of berthd, berth-monitor, berthctl and the
#                              bench binaries into $REL (CARGO_TARGET_DIR is honoured;
#                              NO_BUILD=1 uses what is there)
#   snapshot_cgroups           remembers which of $CGROUP_NAMES exist, so that
#   remove_new_cgroups         removes only those the run created (children first)
#   start_dockerd WORK [FLAGS...]
#                              the one private dockerd of every benchmark: its own
#                              socket ($DOCKER_SOCK, default /run/berth-bench-docker-PID.sock),
#                              data root, exec root and pidfile under WORK/docker, no
#                              iptables/ip6tables/masquerading/default bridge, overlay2,
#                              containers under cgroup $DOCKER_CG (default
#                              berth-bench-docker-PID); FLAGS are added (e.g.
#                              --insecure-registry 127.0.0.1:PORT). Sets DOCKER (CLI
#                              prefix with -H), DOCKERD_PID, DOCKER_SOCK and exports
#                              DOCKER_HOST (plain `docker` and docker-compose reach it).
#                              On failure: DOCKER_ERR says why, nothing is left, returns 1.
#   stop_dockerd               removes its containers and images, stops it, kills its
#                              containerd and shims, unmounts what it left under WORK/docker,
#                              removes its cgroups and socket (idempotent)
#   podman_prefix WORK         podman command with its storage under WORK
#   cleanup_podman             removes podman's containers and images ($PODMAN)
#   unmount_under DIR          lazily unmounts everything at or below DIR, deepest first
#   snapshot_podman_cache / remove_podman_cache
#                              podman's host-global cache files, removed if the run made them
#
# Variables: BENCH_DIR, ROOT (the repository), REL (release binaries), CGROUP_NAMES.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$CARGO_TARGET_DIR/release
CGROUP_NAMES="docker libpod_parent berth-bench berth-bench-agent"

log() { echo "[bench] $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "run as root (containers, cgroups, mounts)" >&2
        exit 1
    fi
}

# ensure_pkgs BINARY:PACKAGE ... — apt-get installs the packages whose binary is missing.
ensure_pkgs() {
    local missing=() pair bin pkg
    for pair in "$@"; do
        bin=${pair%%:*}
        pkg=${pair#*:}
        if [ ! -x "/usr/bin/$bin" ] && [ ! -x "/usr/sbin/$bin" ]; then
            missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build() {
    if [ "${NO_BUILD:-0}" = 1 ]; then
        log "NO_BUILD=1: using the binaries in $REL as they are"
        return 0
    fi
    log "cargo build --release (berthd, berth-monitor, berthctl, bench)"
    (cd "$ROOT" && cargo build --release -q -p berth-agent --bins -p berth-ctl -p berth-bench)
}

# Cgroup dirs that exist before we start are never removed by cleanup.
snapshot_cgroups() {
    PRE_CGROUPS=$(for n in $CGROUP_NAMES; do ls -d /sys/fs/cgroup/*/"$n" /sys/fs/cgroup/"$n" 2>/dev/null || true; done)
}

remove_new_cgroups() {
    local n d
    for n in $CGROUP_NAMES; do
        for d in /sys/fs/cgroup/*/"$n" /sys/fs/cgroup/"$n"; do
            [ -d "$d" ] || continue
            if ! grep -qxF "$d" <<<"${PRE_CGROUPS:-}"; then
                # Children first; rmdir only removes empty cgroups.
                find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
                [ -d "$d" ] && log "cgroup $d is not empty; left in place"
            fi
        done
    done
}

# start_dockerd WORK [dockerd flags...] — see the top of this file.
start_dockerd() {
    local work=$1
    shift
    DOCKER_SOCK=${DOCKER_SOCK:-/run/berth-bench-docker-$$.sock}
    DOCKER_CG=${DOCKER_CG:-berth-bench-docker-$$}
    DOCKERD_DIR=$work/docker
    mkdir -p "$DOCKERD_DIR"
    local cli=/usr/bin/docker
    [ -x "$cli" ] || cli=$(command -v docker)
    dockerd --host "unix://$DOCKER_SOCK" \
        --data-root "$DOCKERD_DIR/data" --exec-root "$DOCKERD_DIR/exec" \
        --pidfile "$DOCKERD_DIR/dockerd.pid" \
        --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
        --storage-driver overlay2 --cgroup-parent "$DOCKER_CG" "$@" \
        >"$DOCKERD_DIR/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    DOCKER="$cli -H unix://$DOCKER_SOCK"
    export DOCKER_HOST="unix://$DOCKER_SOCK"
    local i
    for i in $(seq 1 60); do
        if $DOCKER info >/dev/null 2>&1; then
            log "dockerd $DOCKERD_PID ready on $DOCKER_SOCK"
            return 0
        fi
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    DOCKER_ERR="dockerd did not come up: $(grep -iE 'level=(error|fatal)|failed' "$DOCKERD_DIR/dockerd.log" | tail -2 | tr '\n' ' ')"
    log "$DOCKER_ERR"
    stop_dockerd
    return 1
}

stop_dockerd() {
    [ -n "${DOCKERD_PID:-}" ] || return 0
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
        local ids
        ids=$($DOCKER ps -aq 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || $DOCKER rm -f $ids >/dev/null 2>&1 || true
        $DOCKER image prune -af >/dev/null 2>&1 || true
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 40); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    fi
    wait "$DOCKERD_PID" 2>/dev/null || true
    # containerd and shims of this dockerd (their command lines name our exec root).
    local p
    for p in $(pgrep -f -- "$DOCKERD_DIR" 2>/dev/null || true); do
        kill -KILL "$p" 2>/dev/null || true
    done
    unmount_under "$DOCKERD_DIR"
    local d
    for d in /sys/fs/cgroup/*/"$DOCKER_CG" /sys/fs/cgroup/"$DOCKER_CG"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    rm -f "$DOCKER_SOCK"
    unset DOCKER_HOST
    DOCKERD_PID=
}

# podman_prefix WORK — podman with its storage under WORK, as root on this
# hybrid-cgroup (v1) host.
podman_prefix() {
    local work=$1
    mkdir -p "$work/podman/tmp"
    echo "podman --root $work/podman/root --runroot $work/podman/runroot --tmpdir $work/podman/tmp --storage-driver overlay --cgroup-manager cgroupfs --events-backend file --runtime runc"
}

cleanup_podman() {
    [ -n "${PODMAN:-}" ] || return 0
    $PODMAN rm -af >/dev/null 2>&1 || true
    $PODMAN rmi -af >/dev/null 2>&1 || true
    $PODMAN system prune -af >/dev/null 2>&1 || true
}

# Lazily unmounts everything at or below $1, deepest first.
unmount_under() {
    local dir=$1 m
    for m in $(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done
}

# podman/skopeo's blob-info cache and podman's /run/containers are host-global;
# remove them if the bench created them.
snapshot_podman_cache() {
    PODMAN_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb
    PODMAN_CACHE_EXISTED=0
    [ -e "$PODMAN_CACHE" ] && PODMAN_CACHE_EXISTED=1
    RUN_CONTAINERS_EXISTED=0
    [ -e /run/containers ] && RUN_CONTAINERS_EXISTED=1
    return 0
}

remove_podman_cache() {
    if [ "${PODMAN_CACHE_EXISTED:-1}" = 0 ]; then
        rm -f "$PODMAN_CACHE"
    fi
    if [ "${RUN_CONTAINERS_EXISTED:-1}" = 0 ]; then
        rmdir /run/containers/networks /run/containers 2>/dev/null || true
    fi
}
