#!/usr/bin/env bash
# Apply → serving benchmark (root): time from deploying a service whose image
# is already pulled to the first HTTP 200 on its published host port — Berth
# (`berthctl apply`) beside `docker-compose up -d` (Compose v1, apt
# `docker-compose`) on a private dockerd, same busybox httpd image from the
# same registry. Medians of RUNS deploys each, interleaved (Berth, compose,
# Berth, …); between runs the service is taken down and its port is free.
#
#   bash bench/serve.sh            [RUNS=10, OUT=file.md to append the table]
#
# Berth: 1 replica, bridge networking, `ports = [{ container = 8080, host = P }]`,
# an http health check every 100ms (a replica takes connections once Ready).
# Compose: the same command and port mapping on a private dockerd with its own
# bridge (userland docker-proxy on the host port, `--iptables=false`), a docker
# healthcheck every 100ms (compose does not wait for it: the port is live at once).
# Timed: the deploy command is started → `curl http://127.0.0.1:P/` (every
# 10 ms, 1 s timeout) first answers 200. Goal: Berth ≤ 0.3× compose.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "serve.sh: run as root" >&2; exit 1; }
RUNS=${RUNS:-10}
OUT=${OUT:-}
TAG=sv
source bench/rollout-lib.sh
install_peer_and_build
WORK=$(mktemp -d /tmp/berth-serve.XXXXXX)
DOCKER_SOCK=/run/berth-serve-docker.sock
DOCKER_CG="berth-serve-docker-$$"
DOCKER_BRIDGE="bsvd$$"; DOCKER_BRIDGE=${DOCKER_BRIDGE:0:15}
DOCKERD_PID=

cleanup() {
  set +e
  stop_berthd 60
  stop_compose_dockerd berthserve 1
  ip link del "$DOCKER_BRIDGE" 2>/dev/null
  stop_registry
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "== registry, image"
start_registry
D=$(build_image bench/web:v1 "serving")
IMG="$REG/bench/web@$D"
echo "image $IMG"

# busybox httpd as a child of a shell that exits on SIGTERM.
CMD_TOML='["/bin/busybox", "sh", "-c", "trap \"exit 0\" TERM; /bin/busybox httpd -f -p 8080 -h /www & wait"]'

# first_200 PORT T0_NS → ms from T0 to the first 200 (every 10 ms, up to 60 s)
first_200() {
  local deadline=$(( $(date +%s) + 60 ))
  until curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "no 200 on port $1 in 60 s" >&2; return 1; }
    sleep 0.01
  done
  echo $(( ($(now_ns) - $2) / 1000000 ))
}

# port_free PORT: waits until nothing answers on it (up to 30 s).
port_free() {
  for _ in $(seq 300); do
    curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "port $1 still answers after 30 s" >&2; return 1
}

echo "== berthd (release $BIN/berthd)"
start_berthd
"$BIN/berthctl" pull "$IMG" >/dev/null
B_PORT=$(free_port)
cat > "$WORK/web.toml" <<TOML
[service.web]
image    = "$IMG"
replicas = 1
command  = $CMD_TOML
ports    = [{ container = 8080, host = $B_PORT }]

[service.web.health]
http = { port = 8080, path = "/" }
interval = "100ms"
timeout = "500ms"
retries = 3
TOML
printf '# nothing\n' > "$WORK/empty.toml"

echo "== private dockerd (own bridge $DOCKER_BRIDGE, docker-proxy) + docker-compose"
COMPOSE_NOTE=""
SUB=$(free_subnet)
ip link add "$DOCKER_BRIDGE" type bridge
ip addr add "${SUB%.0/24}.1/24" dev "$DOCKER_BRIDGE"
ip link set "$DOCKER_BRIDGE" up
# lib.sh's private dockerd (the one harness); the later --bridge replaces its
# default --bridge=none, so docker-proxy publishes the port on our bridge.
start_compose_dockerd --bridge "$DOCKER_BRIDGE" --insecure-registry "$REG"
C_PORT=$(free_port)
cat > "$WORK/compose.yml" <<YML
version: "2.4"
services:
  web:
    image: $IMG
    command: ["/bin/busybox", "sh", "-c", "trap \"exit 0\" TERM; /bin/busybox httpd -f -p 8080 -h /www & wait"]
    ports: ["$C_PORT:8080"]
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 100ms
      timeout: 500ms
      retries: 3
YML
DC=(docker-compose -p berthserve -f "$WORK/compose.yml")
[ -n "$COMPOSE_NOTE" ] || docker pull -q "$IMG" >/dev/null || COMPOSE_NOTE="docker pull failed"

: > "$WORK/berth.ms"; : > "$WORK/compose.ms"
for i in $(seq "$RUNS"); do
  t0=$(now_ns)
  "$BIN/berthctl" apply -f "$WORK/web.toml" >/dev/null
  ms=$(first_200 "$B_PORT" "$t0")
  echo "$ms" >> "$WORK/berth.ms"
  "$BIN/berthctl" apply --prune -f "$WORK/empty.toml" >/dev/null
  port_free "$B_PORT"
  for _ in $(seq 300); do [ -z "$(ls -A "$WORK/state/containers" 2>/dev/null)" ] && break; sleep 0.1; done
  line="  run $i: berth $ms ms"
  if [ -z "$COMPOSE_NOTE" ]; then
    t0=$(now_ns)
    "${DC[@]}" up -d >/dev/null 2>>"$WORK/compose.err" || { COMPOSE_NOTE="docker-compose up failed: $(tail -3 "$WORK/compose.err")"; }
    if [ -z "$COMPOSE_NOTE" ]; then
      ms=$(first_200 "$C_PORT" "$t0")
      echo "$ms" >> "$WORK/compose.ms"
      line="$line, compose $ms ms"
      "${DC[@]}" down -t 1 >/dev/null 2>>"$WORK/compose.err"
      port_free "$C_PORT"
    fi
  fi
  echo "$line" >&2
done

read -r B_MED B_MIN B_P90 B_MAX < <(stats < "$WORK/berth.ms")
TABLE="### Apply → first HTTP 200 on the published port, image already pulled ($RUNS runs each, interleaved)

| case | median ms | min | p90 | max |
|---|---:|---:|---:|---:|
| Berth: \`berthctl apply\` → 200 (health check every 100ms gates Ready) | $B_MED | $B_MIN | $B_P90 | $B_MAX |"
if [ -z "$COMPOSE_NOTE" ]; then
  read -r C_MED C_MIN C_P90 C_MAX < <(stats < "$WORK/compose.ms")
  R=$(python3 -c "print('%.2f' % ($B_MED / $C_MED))")
  V=$(python3 -c "print('MET' if $B_MED <= 0.3 * $C_MED else 'NOT MET')")
  TABLE="$TABLE
| compose v1 \`up -d\` → 200 (docker-proxy, private dockerd) | $C_MED | $C_MIN | $C_P90 | $C_MAX |
| **ratio Berth / compose (median)** | **${R}×** | | | |

- Goal Berth ≤ 0.3× compose (median): ${R}× — **$V**"
else
  TABLE="$TABLE

Compose peer not measured: $COMPOSE_NOTE"
fi
echo
echo "$TABLE"
[ -z "$OUT" ] || printf '\n%s\n' "$TABLE" >> "$OUT"
