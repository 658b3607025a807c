#!/usr/bin/env bash
# A real stack under Berth, from Debian packages, run as a Compose user writes
# it (manifests/real-stack.toml): nginx -> app (python3) -> postgres 15 + redis.
#
# 1. debootstrap a minimal bookworm base (cached), install each image's
#    packages into a copy of it with chroot + apt (cached per package list);
# 2. turn each root filesystem into an OCI image with umoci (a shared base
#    layer plus one layer per image; Entrypoint/Cmd/User/Env/ExposedPorts/
#    Volumes/StopSignal/WorkingDir via `umoci config`, postgres's HEALTHCHECK
#    written into the config JSON) and push it with skopeo to a local
#    docker-registry on 127.0.0.1:5055 - no container engine involved;
# 3. start berthd on private dirs, `berthctl apply --wait` the manifest, and
#    check end to end: nginx -> app -> postgres + redis answers on
#    127.0.0.1:18081; write rows; change one env var of postgres and apply
#    again (a replacement); every acknowledged row must still be there.
#
# Steps run as far as they can; a summary says what passed and what failed.
# Not part of CI (needs the Debian mirror; a first run takes several minutes).
# Everything except the cache is removed on exit.
#   BERTH_REAL_STACK_CACHE  package cache (default /var/cache/berth-real-stack)
#   BERTH_DEBIAN_MIRROR     default http://deb.debian.org/debian
#   BERTH_PROFILE           debug (default) or release build of berth
#   BERTH_BIN_DIR           use the berthd/berthctl there instead of building
#   BERTH_REAL_STACK_ROWS   rows written before the update (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "real-stack.sh: run as root (debootstrap, chroot, containers)" >&2; exit 1; }

REPO=$PWD
CACHE=${BERTH_REAL_STACK_CACHE:-/var/cache/berth-real-stack}
MIRROR=${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROFILE=${BERTH_PROFILE:-debug}
ROWS=${BERTH_REAL_STACK_ROWS:-50}
SUITE=bookworm
MANIFEST=$REPO/manifests/real-stack.toml
SRC=$REPO/examples/real-stack
REG_PORT=5055          # manifests/real-stack.toml names this registry
STACK_PORT=18081       # ... and publishes nginx here
HTTP_PORT=19481
BRIDGE=berthstack0
SUBNET=10.231.77.0/24
CGROUP=berth-real-stack
# Bump when the package recipes below change, to rebuild cached root filesystems.
RECIPE=2

log() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
die() { echo "real-stack.sh: $*" >&2; exit 1; }

# ---- results --------------------------------------------------------------

RESULTS=()
FAILED=0
record() { # STATUS STEP [DETAIL]
  RESULTS+=("$(printf '%-5s %-34s %s' "$1" "$2" "${3:-}")")
  [ "$1" = FAIL ] && FAILED=1
  return 0
}
summary() {
  printf '\n== summary\n'
  local r
  for r in "${RESULTS[@]}"; do printf '  %s\n' "$r"; done
}

# ---- cleanup (also on failure and ^C) -------------------------------------

WORK=""
CHROOT_MOUNTS=()
umount_under() { # unmount everything at or below $1, deepest first
  local m
  findmnt -rn -o TARGET | awk -v p="$1" 'index($0, p) == 1' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}
cleanup() {
  set +e
  local m
  for m in "${CHROOT_MOUNTS[@]}"; do umount -l "$m" 2>/dev/null; done
  [ -n "${CATCHER_PID:-}" ] && kill "$CATCHER_PID" 2>/dev/null
  [ -n "${WRITER_PID:-}" ] && kill "$WRITER_PID" 2>/dev/null
  if [ -n "${AGENT_PID:-}" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    # An empty manifest retires every container before the agent stops.
    printf '# nothing\n' > "$WORK/empty.toml"
    "$BIN/berthctl" apply -f "$WORK/empty.toml" $PRUNE >/dev/null 2>&1
    for _ in $(seq 300); do
      [ -z "$(ls -A "$WORK/state/containers" 2>/dev/null)" ] && break; sleep 0.1
    done
    kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null
  fi
  # Anything of ours still running (the agent failed to retire it): kill the
  # whole cgroup subtree (v2), then remove the cgroups.
  if [ -e "/sys/fs/cgroup/$CGROUP/cgroup.kill" ]; then
    echo 1 > "/sys/fs/cgroup/$CGROUP/cgroup.kill"; sleep 0.5
    find "/sys/fs/cgroup/$CGROUP" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
  fi
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
  if [ -n "$WORK" ]; then
    # berth-dns outlives berthd by design: stop it by its pid file.
    dns_pid=$(grep -o '"pid":[0-9]*' "$WORK/run/dns/berth-dns.pid" 2>/dev/null | cut -d: -f2)
    [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null
    umount_under "$WORK"
    ip link del "$BRIDGE" 2>/dev/null
    nft delete table ip "berth_$BRIDGE" 2>/dev/null
    rmdir /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP" 2>/dev/null
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- prerequisites ----------------------------------------------------------

bash scripts/deps.sh
need=()
for p in debootstrap jq; do command -v "$p" >/dev/null || need+=("$p"); done
if ((${#need[@]})); then
  echo "real-stack: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || die "python3 is needed (editing the postgres image config)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -n 9 || die "another real-stack.sh run holds $CACHE/.lock"
for port in $REG_PORT $STACK_PORT $HTTP_PORT; do
  ! ss -ltn | grep -q ":$port " || die "port $port is in use (the manifest and this script use it)"
done
! ip link show "$BRIDGE" >/dev/null 2>&1 || die "bridge $BRIDGE exists (a previous run still going?)"

if [ -n "${BERTH_BIN_DIR:-}" ]; then
  BIN=$BERTH_BIN_DIR
elif [ "$PROFILE" = release ]; then
  cargo build --release --workspace --bins --locked
  BIN=$REPO/target/release
else
  cargo build --workspace --bins --locked
  BIN=$REPO/target/debug
fi
WORK=$(mktemp -d /tmp/berth-real-stack.XXXXXX)
export BERTH_AGENT="unix:$WORK/run/berth.sock"
PRUNE=""
"$BIN/berthctl" apply --help | grep -q -- '--prune' && PRUNE=--prune

# ---- 1. root filesystems from Debian packages -------------------------------

BASE=$CACHE/$SUITE-minbase
if [ ! -x "$BASE/usr/bin/apt-get" ]; then
  log "debootstrap --variant=minbase $SUITE (cached in $BASE)"
  umount_under "$CACHE/tmp-base"
  rm -rf --one-file-system "$CACHE/tmp-base"
  debootstrap --variant=minbase "$SUITE" "$CACHE/tmp-base" "$MIRROR"
  umount_under "$CACHE/tmp-base"
  mv "$CACHE/tmp-base" "$BASE"
else
  log "base: $BASE (cached)"
fi
if [ ! -e "$BASE/etc/dpkg/dpkg.cfg.d/berth-slim" ]; then
  # As debian:bookworm-slim: no docs, man pages or translations (now and in
  # every later install), no apt caches in the layer.
  cat > "$BASE/etc/dpkg/dpkg.cfg.d/berth-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CFG
  find "$BASE/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$BASE"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
  rm -rf "$BASE"/var/cache/apt/*.bin "$BASE"/var/cache/apt/archives/*.deb "$BASE"/var/lib/apt/lists/*
  : > "$BASE/etc/resolv.conf"
fi

in_chroot() { # DIR CMD... with a clean environment
  local dir=$1; shift
  chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"
}

# rootfs NAME PACKAGES... sets ROOTFS to the cached root filesystem with the
# packages installed (built from the base on first use; not in a subshell, so
# the exit trap knows its mounts). Hooks: prepare_NAME DIR runs before apt,
# finish_NAME DIR after it.
rootfs() {
  local name=$1; shift
  local key dir tmp
  key=$(printf '%s\n' "$SUITE" "$RECIPE" "$name" "$@" | sha256sum | cut -c1-12)
  dir=$CACHE/rootfs-$name-$key
  ROOTFS=$dir
  if [ -x "$dir/usr/bin/apt-get" ]; then echo "$name: $dir (cached)"; return; fi
  echo "$name: apt-get install $* (into $dir)"
  tmp=$CACHE/tmp-$name
  umount_under "$tmp"
  rm -rf --one-file-system "$tmp"
  cp -a "$BASE" "$tmp"
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"   # no services started
  chmod +x "$tmp/usr/sbin/policy-rc.d"
  mount -t proc proc "$tmp/proc"
  CHROOT_MOUNTS+=("$tmp/proc")
  mkdir -p "$tmp/dev/pts"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$tmp/dev/pts"
  CHROOT_MOUNTS+=("$tmp/dev/pts")
  if declare -f "prepare_$name" >/dev/null; then "prepare_$name" "$tmp"; fi
  in_chroot "$tmp" apt-get update -qq
  in_chroot "$tmp" apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >/dev/null
  if declare -f "finish_$name" >/dev/null; then "finish_$name" "$tmp"; fi
  in_chroot "$tmp" apt-get clean
  umount -l "$tmp/dev/pts"
  umount -l "$tmp/proc"
  rm -rf "$tmp/var/lib/apt/lists/"* "$tmp/usr/sbin/policy-rc.d"
  : > "$tmp/etc/resolv.conf"
  mv "$tmp" "$dir"
  local old
  for old in "$CACHE/rootfs-$name"-*; do   # older recipes of this image
    [ "$old" = "$dir" ] || rm -rf --one-file-system "$old"
  done
}

prepare_postgres() { # no default cluster: the entrypoint initdbs $PGDATA
  mkdir -p "$1/etc/postgresql-common/createcluster.d"
  echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/berth.conf"
}
finish_postgres() {
  in_chroot "$1" sh -c 'pg_lsclusters -h 2>/dev/null | grep -q . && pg_dropcluster 15 main || true'
}
finish_app() {
  in_chroot "$1" useradd --system --uid 999 --user-group --home-dir /app --no-create-home \
    --shell /usr/sbin/nologin app
}

log "image root filesystems (apt in chroot; cached under $CACHE)"
rootfs nginx nginx;                                   ROOT_NGINX=$ROOTFS
rootfs redis redis-server;                            ROOT_REDIS=$ROOTFS
rootfs postgres postgresql-15;                        ROOT_PG=$ROOTFS
rootfs app python3 python3-psycopg2 python3-redis;    ROOT_APP=$ROOTFS
record PASS "root filesystems from Debian" "$SUITE minbase + nginx, redis-server, postgresql-15, python3"

# ---- 2. OCI images with umoci, pushed with skopeo ----------------------------

log "registry on 127.0.0.1:$REG_PORT"
mkdir -p "$WORK/registry"
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $WORK/registry } }
http: { addr: 127.0.0.1:$REG_PORT }
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 9>&- &
REG_PID=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null || die "registry did not start: $(cat "$WORK/registry.log")"

# sync_rootfs SRC BUNDLE: the bundle's rootfs becomes exactly SRC.
sync_rootfs() {
  rm -rf --one-file-system "$2/rootfs"
  cp -a "$1" "$2/rootfs"
}

# image NAME ROOTFS -> bundle at $WORK/bundle-NAME with ROOTFS in place; the
# caller adds files, then `pack NAME CONFIG-ARGS...`.
image() {
  umoci unpack --image "$OCI:base" "$WORK/bundle-$1" >/dev/null
  sync_rootfs "$2" "$WORK/bundle-$1"
}
pack() {
  local name=$1; shift
  umoci repack --image "$OCI:$name" "$WORK/bundle-$name"
  rm -rf --one-file-system "$WORK/bundle-$name"
  umoci config --image "$OCI:$name" --author "berth real-stack.sh" "$@"
}
# healthcheck NAME JSON: Docker's config.Healthcheck (umoci config cannot set
# it): rewrite the config blob, then the manifest, then index.json.
healthcheck() {
  python3 - "$OCI" "$1" "$2" <<'PY'
import hashlib, json, os, sys
layout, tag, check = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def path(digest):
    algo, hexd = digest.split(":")
    return os.path.join(layout, "blobs", algo, hexd)
def put(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(path(digest), "wb") as f:
        f.write(data)
    return digest, len(data)
with open(os.path.join(layout, "index.json")) as f:
    index = json.load(f)
desc = next(d for d in index["manifests"]
            if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
with open(path(desc["digest"])) as f:
    manifest = json.load(f)
with open(path(manifest["config"]["digest"])) as f:
    config = json.load(f)
config.setdefault("config", {})["Healthcheck"] = check
manifest["config"]["digest"], manifest["config"]["size"] = put(config)
desc["digest"], desc["size"] = put(manifest)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
PY
}

# build_images: every image into the OCI layout $OCI (a shared base layer,
# then one layer per image).
build_images() {
  log "base layer (umoci)"
  umoci init --layout "$OCI"
  umoci new --image "$OCI:base"
  umoci unpack --image "$OCI:base" "$WORK/bundle-base" >/dev/null
  sync_rootfs "$BASE" "$WORK/bundle-base"
  umoci repack --image "$OCI:base" "$WORK/bundle-base"
  rm -rf --one-file-system "$WORK/bundle-base"

  PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

  log "image nginx (reverse proxy to app:8000)"
  image nginx "$ROOT_NGINX"
  R=$WORK/bundle-nginx/rootfs
  rm -f "$R/etc/nginx/sites-enabled/default"
  cp "$SRC/nginx.conf" "$R/etc/nginx/conf.d/app.conf"
  ln -sf /dev/stdout "$R/var/log/nginx/access.log"   # as the official image
  ln -sf /dev/stderr "$R/var/log/nginx/error.log"
  pack nginx --config.env "$PATH_ENV" --config.cmd nginx --config.cmd -g --config.cmd "daemon off;" \
    --config.exposedports 80/tcp --config.stopsignal SIGQUIT

  log "image redis (USER redis, VOLUME /data)"
  image redis "$ROOT_REDIS"
  R=$WORK/bundle-redis/rootfs
  mkdir -p "$R/data"
  chroot "$R" chown redis:redis /data
  pack redis --config.env "$PATH_ENV" --config.user redis --config.workingdir /data \
    --config.volume /data --config.exposedports 6379/tcp \
    --config.cmd redis-server --config.cmd --protected-mode --config.cmd no \
    --config.cmd --appendonly --config.cmd yes --config.cmd --dir --config.cmd /data

  log "image postgres (USER postgres, initdb on first start, VOLUME, SIGINT, HEALTHCHECK pg_isready)"
  image postgres "$ROOT_PG"
  R=$WORK/bundle-postgres/rootfs
  install -D -m 0755 "$SRC/postgres-entrypoint.sh" "$R/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$R/var/lib/postgresql/data" "$R/run/postgresql"
  chroot "$R" chown postgres:postgres /var/lib/postgresql/data /run/postgresql
  chmod 0700 "$R/var/lib/postgresql/data"
  chmod 2777 "$R/run/postgresql"
  pack postgres --config.user postgres \
    --config.env PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env PGDATA=/var/lib/postgresql/data --config.env LANG=C.UTF-8 \
    --config.entrypoint docker-entrypoint.sh --config.cmd postgres \
    --config.volume /var/lib/postgresql/data --config.exposedports 5432/tcp \
    --config.stopsignal SIGINT
  healthcheck postgres '{"Test":["CMD","pg_isready","-h","127.0.0.1","-U","postgres"],"Interval":2000000000,"Timeout":3000000000,"StartPeriod":60000000000,"Retries":5}'

  log "image app (python3 http.server, psycopg2, redis)"
  image app "$ROOT_APP"
  R=$WORK/bundle-app/rootfs
  install -D -m 0755 "$SRC/app.py" "$R/app/app.py"
  pack app --config.env "$PATH_ENV" --config.env PYTHONUNBUFFERED=1 --config.user app \
    --config.workingdir /app --config.cmd python3 --config.cmd /app/app.py \
    --config.exposedports 8000/tcp
}

push() { # NAME REPO:TAG [skopeo flags...]
  local name=$1 ref=$2; shift 2
  skopeo copy -q --insecure-policy --dest-tls-verify=false "$@" "oci:$OCI:$name" \
    "docker://127.0.0.1:$REG_PORT/real-stack/$ref"
  echo "pushed 127.0.0.1:$REG_PORT/real-stack/$ref $*"
}

# Built images are cached too, keyed by the root filesystems, the image
# sources and this script: a second run only pushes them.
IMG_KEY=$(cat "$REPO/scripts/real-stack.sh" "$SRC"/* | sha256sum | cut -c1-6)
IMG_KEY=$IMG_KEY-$(printf '%s\n' "$BASE" "$ROOT_NGINX" "$ROOT_REDIS" "$ROOT_PG" "$ROOT_APP" | sha256sum | cut -c1-6)
OCI=$CACHE/oci-$IMG_KEY
if [ -f "$OCI/index.json" ]; then
  log "images: $OCI (cached)"
else
  OCI=$WORK/oci
  build_images
  for old in "$CACHE"/oci-*; do rm -rf --one-file-system "$old"; done
  mv "$WORK/oci" "$CACHE/oci-$IMG_KEY"
  OCI=$CACHE/oci-$IMG_KEY
fi
log "push to 127.0.0.1:$REG_PORT (skopeo)"
push nginx nginx:1
push redis redis:7
# As `docker push` would: Docker schema 2, whose config every tool reads the
# HEALTHCHECK from (podman ignores it in OCI-typed images).
push postgres postgres:15 --format v2s2
push app app:1
record PASS "images built and pushed" "umoci + skopeo, no container engine"

# ---- 3. berthd and the stack --------------------------------------------------

log "berthd on private dirs (bridge $BRIDGE, subnet $SUBNET, read-only HTTP on 127.0.0.1:$HTTP_PORT)"
"$BIN/berthd" --state-dir "$WORK/state" --run-dir "$WORK/run" --http "127.0.0.1:$HTTP_PORT" \
  --bridge "$BRIDGE" --subnet "$SUBNET" --cgroup-parent "$CGROUP" 2>"$WORK/berthd.log" 9>&- &
AGENT_PID=$!
for _ in $(seq 100); do curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { cat "$WORK/berthd.log" >&2; die "berthd did not become ready"; }

SERVICES="postgres redis app nginx"
# Berth removes a crashed replica, and its logs with it, before one can look;
# keep a copy of every container's logs while the stack runs.
# Hard links, made once per container, keep growing with the log and outlive
# the container's removal (up to the log's first rotation).
catch_logs() {
  local d id f
  while sleep 0.1; do
    for d in "$WORK"/state/containers/*/logs; do
      id=$(basename "$(dirname "$d")")
      [ -n "$(ls -A "$d" 2>/dev/null)" ] && [ ! -d "$WORK/caught/$id" ] || continue
      mkdir -p "$WORK/caught/$id"
      for f in "$d"/*; do ln "$f" "$WORK/caught/$id/" 2>/dev/null; done
    done
  done
}
# log_text DIR: a caught container's output, without the CRI record prefix
# (`<time> <stream> <P|F> `) of logs/container.log.
log_text() {
  cat "$1"/*.log 2>/dev/null | sed -E 's/^[0-9][0-9T:.+-]*Z? (stdout|stderr) [PF] //'
}
# last_logs SERVICE N: the last N log lines of the service's newest container.
last_logs() {
  local newest
  newest=$(ls -td "$WORK/caught/$1"-* 2>/dev/null | head -1)
  [ -n "$newest" ] || { echo "(no container was ever created)"; return 0; }
  echo "($(basename "$newest"))"
  log_text "$newest" | tail -n "$2"
}
diagnose() {
  echo "---- berthctl status"
  "$BIN/berthctl" status 2>&1 | sed 's/^/  /' || true
  local s
  for s in $SERVICES; do
    echo "---- logs of $s"
    last_logs "$s" 15 | sed 's/^/  /' || true
  done
  echo "---- berthd log (last 15 lines)"
  tail -n 15 "$WORK/berthd.log" | sed 's/^/  /' || true
}
# service_report: per service, ready/desired, the agent's last error and the
# last line its newest container printed (for the summary).
service_report() {
  local s st line
  for s in $SERVICES; do
    st=$("$BIN/berthctl" -o json status 2>/dev/null | jq -r --arg s "$s" \
      '.services[] | select(.name == $s) | "\(.replicas_ready)/\(.replicas_desired) ready, restarts \(.restarts // 0); \(.last_error // "no error")"' || echo "?")
    line=$(last_logs "$s" 1 | tail -n 1 | cut -c1-160)
    record INFO "$s" "$st | last log: $line"
  done
  # Replicas that are gone (crashed or replaced): how many, and what the
  # newest of them said last.
  local d id gone newest
  for s in $SERVICES; do
    gone=0 newest=""
    for d in $(ls -td "$WORK/caught/$s"-* 2>/dev/null); do
      id=$(basename "$d")
      [ -d "$WORK/state/containers/$id" ] && continue
      gone=$((gone + 1))
      [ -n "$newest" ] || newest=$d
    done
    ((gone)) || continue
    line=$(log_text "$newest" | tail -n 1 | cut -c1-150)
    record INFO "$s: $gone gone" "newest $(basename "$newest"): ${line:-(no output)}"
  done
}

# containers_of SERVICE -> its container ids as a JSON list (from the API).
containers_of() {
  curl -fsS --unix-socket "$WORK/run/berth.sock" http://berth/v1/containers \
    | jq -c --arg s "$1" '[.[] | select(.service == $s) | .id]' || echo '"?"'
}
# get PATH -> body of http://127.0.0.1:STACK_PORT/PATH (through nginx), or fails.
get() { curl -fsS --max-time 10 "http://127.0.0.1:$STACK_PORT$1"; }
# wait_stack SECONDS: until a visit through nginx is answered.
wait_stack() {
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    get /hits >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

log "berthctl validate / diff / apply --wait -f manifests/real-stack.toml"
"$BIN/berthctl" validate -f "$MANIFEST"
"$BIN/berthctl" diff -f "$MANIFEST" || true
catch_logs &
CATCHER_PID=$!
if "$BIN/berthctl" apply --wait --timeout 5m -f "$MANIFEST"; then
  record PASS "apply --wait (first revision)"
  APPLIED=1
else
  record FAIL "apply --wait (first revision)" "see diagnostics above the summary"
  diagnose
  APPLIED=0
fi

STACK_UP=0
body=""
if ((APPLIED)) && wait_stack 60 && body=$(get /) && jq -e '.visit' <<<"$body" >/dev/null; then
  echo "curl 127.0.0.1:$STACK_PORT/ -> $body"
  record PASS "nginx -> app -> postgres + redis" "$body"
  STACK_UP=1
else
  body=$(curl -sS --max-time 5 "http://127.0.0.1:$STACK_PORT/" 2>&1 || true)
  record FAIL "nginx -> app -> postgres + redis" "127.0.0.1:$STACK_PORT/ -> ${body:-no answer}"
  if ((APPLIED)); then diagnose; fi
fi

ACKED=$WORK/acked
: > "$ACKED"
: > "$WORK/write-errors"
# writer: one visit every 0.2s until $WORK/stop-writer exists (at most 1500),
# recording acknowledged ids and refused requests.
writer() {
  local id
  for _ in $(seq 1500); do
    [ -e "$WORK/stop-writer" ] && break
    if id=$(get / 2>/dev/null | jq -er '.visit' 2>/dev/null); then
      echo "$id" >> "$ACKED"
    else
      echo refused >> "$WORK/write-errors"
    fi
    sleep 0.2
  done
}
if ((STACK_UP)); then
  log "writing $ROWS rows (each acknowledged id recorded)"
  errors=0
  for _ in $(seq "$ROWS"); do
    if id=$(get / | jq -er '.visit'); then echo "$id" >> "$ACKED"; else errors=$((errors + 1)); fi
  done
  n=$(wc -l < "$ACKED")
  hits=$(get /hits | jq -r '.hits' || echo "?")
  echo "acknowledged $n of $ROWS visits; redis counter $hits"
  if ((n == ROWS)); then
    record PASS "writes acknowledged" "$n rows; redis hits $hits"
  else
    record FAIL "writes acknowledged" "$n of $ROWS ($errors errors)"
  fi

  log "update: one env var of postgres changes (TZ), apply --wait replaces it; a writer keeps visiting"
  writer &
  WRITER_PID=$!
  before=$(containers_of postgres)
  sed 's/TZ = "UTC"/TZ = "Etc\/UTC"/' "$MANIFEST" > "$WORK/real-stack.toml"
  grep -q 'TZ = "Etc/UTC"' "$WORK/real-stack.toml" || die "could not edit the manifest copy"
  "$BIN/berthctl" diff -f "$WORK/real-stack.toml" || true
  if "$BIN/berthctl" apply --wait --timeout 5m -f "$WORK/real-stack.toml"; then
    after=$(containers_of postgres)
    echo "postgres containers: before $before, after $after"
    if [ "$before" != "$after" ]; then
      record PASS "update applied (postgres replaced)" "$before -> $after"
    else
      record FAIL "update applied (postgres replaced)" "same containers: $after"
    fi
  else
    record FAIL "update applied (postgres replaced)" "apply --wait failed"
    diagnose
  fi

  stack_back=0
  wait_stack 120 && stack_back=1
  touch "$WORK/stop-writer"
  wait "$WRITER_PID" || true
  during=$(($(wc -l < "$ACKED") - n))
  refused=$(wc -l < "$WORK/write-errors")
  record INFO "writes during the update" "$during acknowledged, $refused refused (postgres is down while replaced stop-first)"
  if ((stack_back)) && ids=$(get /ids | jq -r '.ids[]'); then
    missing=$(comm -23 <(sort -u "$ACKED") <(printf '%s\n' "$ids" | sort -u) | wc -l)
    total=$(printf '%s\n' "$ids" | grep -c .)
    if ((missing == 0)) && [ -s "$ACKED" ]; then
      record PASS "no acknowledged write lost" "$(wc -l < "$ACKED") acknowledged, $total stored after the update"
    else
      record FAIL "no acknowledged write lost" "$missing of $(wc -l < "$ACKED") acknowledged ids missing ($total stored)"
    fi
    body=$(get / || true)
    echo "after the update: curl 127.0.0.1:$STACK_PORT/ -> $body"
    if jq -e '.visit' <<<"$body" >/dev/null 2>&1; then
      record PASS "stack answers after the update" "$body"
    else
      record FAIL "stack answers after the update" "${body:-no answer}"
    fi
  else
    record FAIL "stack answers after the update" "no answer within 120s"
    diagnose
  fi
else
  record SKIP "writes, update, no write lost" "the stack never answered"
fi

log "berthctl status"
"$BIN/berthctl" status || true
"$BIN/berthctl" volumes 2>/dev/null || true
service_report
summary
if ((FAILED)); then echo "real-stack: FAILED (see above)"; exit 1; fi
echo "real-stack: ok"
