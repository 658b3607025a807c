# Shared by bench/rollout.sh and bench/reconcile.sh (sourced, not run), on
# top of bench/lib.sh (the one harness: packages, build, the private dockerd):
# a throw-away registry on 127.0.0.1, busybox images built with umoci and
# pushed with skopeo, a release berthd on temp dirs with its own bridge,
# subnet and cgroup parent, compose on lib.sh's dockerd, and a cleanup that
# leaves nothing behind. The caller sets WORK (a fresh temp dir) and TAG
# (short, unique, [a-z0-9]).

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}

now_ns() { date +%s%N; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A 10.x.y.0/24 with no route on this host yet; `free_subnet 20` (or any
# prefix < 24) gives a 10.x.0.0/PREFIX whose whole 10.x.0.0/16 has no route.
free_subnet() {
  local x y prefix=${1:-24}
  if [ "$prefix" -lt 24 ]; then
    for _ in $(seq 50); do
      x=$((200 + RANDOM % 50))
      if ! ip route | grep -q "^10\.$x\."; then echo "10.$x.0.0/$prefix"; return; fi
    done
    echo "no free 10.x.0.0/16 found" >&2; return 1
  fi
  for _ in $(seq 50); do
    x=$((200 + RANDOM % 50)); y=$((RANDOM % 250))
    if ! ip route | grep -q "^10\.$x\.$y\."; then echo "10.$x.$y.0/24"; return; fi
  done
  echo "no free 10.x.y.0/24 found" >&2; return 1
}

start_registry() {
  REG_PORT=$(free_port)
  REG="127.0.0.1:$REG_PORT"
  mkdir -p "$WORK/registry"
  cat > "$WORK/registry.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $WORK/registry } }
http: { addr: $REG }
YML
  docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "registry did not start: $(cat "$WORK/registry.log")" >&2; return 1
}

# build_image NAME:TAG TEXT → pushes $REG/NAME:TAG (busybox + /www/index.html
# containing TEXT) and prints its digest.
build_image() {
  local ref=$1 text=$2 d="$WORK/img-${1//[:\/]/-}"
  umoci init --layout "$d/oci" >/dev/null
  umoci new --image "$d/oci:img" >/dev/null
  umoci unpack --image "$d/oci:img" "$d/bundle" >/dev/null
  mkdir -p "$d/bundle/rootfs/bin" "$d/bundle/rootfs/www"
  cp /bin/busybox "$d/bundle/rootfs/bin/busybox"
  echo "$text" > "$d/bundle/rootfs/www/index.html"
  umoci repack --image "$d/oci:img" "$d/bundle" >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$d/oci:img" "docker://$REG/$ref" >/dev/null
  skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$REG/$ref"
}

start_berthd() {
  HTTP_PORT=$(free_port)
  BRIDGE="b${TAG}$$"; BRIDGE=${BRIDGE:0:15}
  SUBNET=$(free_subnet "${SUBNET_PREFIX:-24}")
  CGPARENT="berth-bench-$TAG-$$"
  export BERTH_AGENT="unix:$WORK/run/berth.sock"
  SOCK="$WORK/run/berth.sock"
  "$BIN/berthd" --state-dir "$WORK/state" --run-dir "$WORK/run" --http "127.0.0.1:$HTTP_PORT" \
    --bridge "$BRIDGE" --subnet "$SUBNET" --cgroup-parent "$CGPARENT" 2>"$WORK/berthd.log" &
  AGENT_PID=$!
  for _ in $(seq 100); do curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "berthd did not become ready: $(cat "$WORK/berthd.log")" >&2; return 1
}

containers_json() { curl -fsS --unix-socket "$SOCK" http://berth/v1/containers; }

# Retires every container (empty manifest), waits for state/containers to be
# empty (up to $1 seconds), then stops berthd and removes what it made on the host.
stop_berthd() {
  local wait_s=${1:-60}
  if [ -n "${AGENT_PID:-}" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    printf '# nothing\n' > "$WORK/empty.toml"
    "$BIN/berthctl" apply --prune -f "$WORK/empty.toml" >/dev/null 2>&1 || true
    for _ in $(seq $((wait_s * 10))); do
      [ -z "$(ls -A "$WORK/state/containers" 2>/dev/null)" ] && break; sleep 0.1
    done
    local left; left=$(ls -A "$WORK/state/containers" 2>/dev/null | wc -l || true)
    [ "$left" = 0 ] || echo "WARNING: $left containers still in $WORK/state/containers" >&2
    kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null || true
  fi
  AGENT_PID=
  # berth-dns outlives berthd by design: stop it by its pid file.
  local dns_pid
  dns_pid=$(grep -o '"pid":[0-9]*' "$WORK/run/dns/berth-dns.pid" 2>/dev/null | cut -d: -f2)
  [ -z "$dns_pid" ] || kill "$dns_pid" 2>/dev/null || true
  if [ -n "${BRIDGE:-}" ]; then
    for pin in "$WORK"/run/netns/*; do [ -e "$pin" ] && umount -l "$pin"; done 2>/dev/null || true
    umount -l "$WORK/run/netns" 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    nft delete table ip "berth_$BRIDGE" 2>/dev/null || true
    rmdir /sys/fs/cgroup/*/"$CGPARENT" /sys/fs/cgroup/"$CGPARENT" 2>/dev/null || true
  fi
}

stop_registry() {
  if [ -n "${REG_PID:-}" ]; then kill "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null || true; fi
  REG_PID=
}

# median / p90 of numbers on stdin (ms)
stats() {
  python3 -c '
import sys, statistics
v = sorted(float(x) for x in sys.stdin.read().split())
p = lambda q: v[min(len(v)-1, int(round(q*(len(v)-1))))]
print("%.0f %.0f %.0f %.0f" % (statistics.median(v), min(v), p(0.9), max(v)))'
}

# The peer (dockerd, Compose v1 from Debian) and a current release build.
install_peer_and_build() {
  ensure_pkgs dockerd:docker.io docker-compose:docker-compose
  build
}

# start_compose_dockerd [dockerd flags...] — lib.sh's private dockerd (data
# under WORK, containers under cgroup DOCKER_CG, DOCKER_HOST exported) for
# docker-compose; COMPOSE_NOTE says why the peer cannot run (empty if it can).
start_compose_dockerd() {
  COMPOSE_NOTE=""
  if ! start_dockerd "$WORK" "$@"; then
    COMPOSE_NOTE="$DOCKER_ERR"
  elif ! command -v docker-compose >/dev/null; then
    COMPOSE_NOTE="docker-compose not installed (apt-get install docker-compose)"
  fi
}

# stop_compose_dockerd PROJECT STOP_TIMEOUT — takes the compose project down,
# then lib.sh's stop_dockerd (containers, images, mounts, cgroups, socket).
stop_compose_dockerd() {
  [ -n "${DOCKERD_PID:-}" ] || return 0
  docker-compose -p "$1" -f "$WORK/compose.yml" down -t "$2" >/dev/null 2>&1
  stop_dockerd
}
