#!/usr/bin/env bash
# No-op reconcile benchmark (root): 200 services running (1 replica each,
# busybox sleep, no health check, no port), nothing new. Reads
# berth_reconcile_duration_seconds_{sum,count,bucket} from /metrics, waits
# IDLE seconds (the loop runs every 500 ms), reads again: mean pass =
# Δsum/Δcount, and the histogram bucket holding the median pass of that
# window. Goal: under 20 ms. Writes bench/RESULTS-rollout.md (reconcile section).
#
#   CARGO_TARGET_DIR=/work/target-rollout bash bench/reconcile.sh   [SERVICES=200 IDLE=10]
#
# Peer (COMPOSE=1, the default when dockerd and docker-compose run here): the
# same 200 services under docker-compose v1 on a private dockerd, timed
# `docker-compose up -d` with nothing changed (compose's no-op "reconcile").
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "reconcile.sh: run as root" >&2; exit 1; }
SERVICES=${SERVICES:-200}
IDLE=${IDLE:-10}
COMPOSE=${COMPOSE:-1}
GOAL_MS=20
TAG=rc
source bench/rollout-lib.sh
install_peer_and_build
WORK=$(mktemp -d /tmp/berth-reconcile.XXXXXX)
DOCKER_SOCK=/run/berth-reconcile-docker.sock
DOCKER_CG="berth-reconcile-docker-$$"

cleanup() {
  set +e
  stop_berthd 120
  stop_compose_dockerd berthreconcile 0
  stop_registry
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== registry, image"
start_registry
D1=$(build_image bench/sleep:1 "reconcile")
IMG="$REG/bench/sleep@$D1"

echo "== berthd (release $BIN/berthd), $SERVICES services"
start_berthd
"$BIN/berthctl" pull "$IMG" >/dev/null
: > "$WORK/many.toml"
for i in $(seq -w 0 $((SERVICES - 1))); do
  cat >> "$WORK/many.toml" <<TOML
[service.s$i]
image    = "$IMG"
replicas = 1
command  = ["/bin/busybox", "sleep", "3600"]
stop_signal = "SIGKILL"

TOML
done
t0=$(now_ns)
"$BIN/berthctl" apply -f "$WORK/many.toml" >/dev/null
deadline=$(( $(date +%s) + 300 ))
while :; do
  running=$(containers_json | { grep -o '"state":"running"' || true; } | wc -l)
  [ "$running" -ge "$SERVICES" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "only $running of $SERVICES running after 300 s" >&2; exit 1; }
  sleep 1
done
START_S=$(python3 -c "print('%.1f' % (($(now_ns) - $t0) / 1e9))")
echo "all $SERVICES running after ${START_S}s; settling 3 s"
sleep 3   # replicas without a health check are ready after 1 s; revision completes

metrics() { curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep '^berth_reconcile_duration_seconds'; }
metrics > "$WORK/m0"
list0=$(now_ns); containers_json >/dev/null; list1=$(now_ns)
sleep "$IDLE"
metrics > "$WORK/m1"
LIST_MS=$(( (list1 - list0) / 1000000 ))

read -r MEAN_MS PASSES MEDIAN_BUCKET < <(python3 - "$WORK/m0" "$WORK/m1" <<'PY'
import sys, re
def load(p):
    d = {}
    for line in open(p):
        name, val = line.rsplit(" ", 1)
        d[name] = float(val)
    return d
a, b = load(sys.argv[1]), load(sys.argv[2])
ds = b["berth_reconcile_duration_seconds_sum"] - a["berth_reconcile_duration_seconds_sum"]
dc = b["berth_reconcile_duration_seconds_count"] - a["berth_reconcile_duration_seconds_count"]
buckets = []
for k, v in b.items():
    m = re.match(r'berth_reconcile_duration_seconds_bucket\{le="([^"]+)"\}', k)
    if m:
        buckets.append((float(m.group(1)), v - a.get(k, 0)))
buckets.sort()
prev, label = 0.0, "?"
for le, cum in buckets:
    if cum >= dc / 2:
        label = "(%g, %g] s" % (prev, le) if le != float("inf") else "> %g s" % prev
        break
    prev = le
print("%.2f %d %s" % (ds / dc * 1000 if dc else float("nan"), dc, label.replace(" ", "_")))
PY
)
MEDIAN_BUCKET=${MEDIAN_BUCKET//_/ }
MET=$(python3 -c "print('MET' if $MEAN_MS < $GOAL_MS else 'NOT MET')")
echo "no-op pass with $SERVICES services: mean ${MEAN_MS} ms over $PASSES passes, median in $MEDIAN_BUCKET — goal < ${GOAL_MS} ms: $MET"
ps -o rss=,time= -p "$AGENT_PID" | awk '{print "berthd RSS " $1 " KiB, CPU time " $2}' | tee "$WORK/rss"
BERTHD_CPU=$(cat "$WORK/rss")

# Retire the 200 before the peer runs, so the two do not share the CPU.
echo "== retiring $SERVICES containers"
t0=$(now_ns); stop_berthd 120; t1=$(now_ns)
RETIRE_S=$(python3 -c "print('%.1f' % (($t1 - $t0) / 1e9))")

COMPOSE_NOTE="" C_MED=""
if [ "$COMPOSE" = 1 ]; then
  echo "== dockerd + docker-compose, $SERVICES services"
  start_compose_dockerd
  if [ -z "$COMPOSE_NOTE" ]; then
    docker pull -q "$IMG" >/dev/null
    { echo 'version: "2.4"'; echo 'services:'
      for i in $(seq -w 0 $((SERVICES - 1))); do
        printf '  s%s:\n    image: %s\n    command: ["/bin/busybox", "sleep", "3600"]\n    network_mode: none\n    stop_signal: SIGKILL\n' "$i" "$IMG"
      done; } > "$WORK/compose.yml"
    DC=(docker-compose -p berthreconcile -f "$WORK/compose.yml")
    t0=$(now_ns)
    # Bounded: on this machine compose 1.29 (Debian, python 3.11) hung after
    # creating 3 of 200 containers with dockerd idle and answering.
    timeout 240 env COMPOSE_PARALLEL_LIMIT=8 "${DC[@]}" up -d >/dev/null 2>"$WORK/compose.err" ||
      COMPOSE_NOTE="docker-compose up -d of $SERVICES services did not finish in 240 s ($(docker ps -q | wc -l) containers running; dockerd answering): $(grep -c 'done' "$WORK/compose.err") created. Last lines: $(tail -2 "$WORK/compose.err" | tr '\n' ' ')"
    echo "compose started $SERVICES in $(( ($(now_ns) - t0) / 1000000 )) ms"
  fi
  if [ -z "$COMPOSE_NOTE" ]; then
    : > "$WORK/compose-noop.ms"
    for i in 1 2 3; do
      t0=$(now_ns); "${DC[@]}" up -d >/dev/null 2>>"$WORK/compose.err"; t1=$(now_ns)
      echo $(( (t1 - t0) / 1000000 )) | tee -a "$WORK/compose-noop.ms" | sed "s/^/  compose no-op up -d run $i: /; s/$/ ms/"
    done
    read -r C_MED _ < <(stats < "$WORK/compose-noop.ms")
    "${DC[@]}" down -t 0 >/dev/null 2>&1
  fi
else
  COMPOSE_NOTE="not run (COMPOSE=0)"
fi

TABLE="| no-op reconcile, $SERVICES services running, nothing new | ms | goal | |
|---|---:|---:|---|
| Berth: mean reconcile pass (Δsum/Δcount over ${IDLE} s idle, $PASSES passes) | $MEAN_MS | < $GOAL_MS | **$MET** |
| Berth: histogram bucket holding the median pass | $MEDIAN_BUCKET | | |"
if [ -n "$C_MED" ]; then
  TABLE="$TABLE
| compose v1: \`docker-compose up -d\` with nothing changed (median of 3) | $C_MED | | |
| ratio Berth pass / compose no-op | $(python3 -c "print('%.4f' % ($MEAN_MS / $C_MED))") | | |"
else
  TABLE="$TABLE

Compose peer: $COMPOSE_NOTE"
fi
echo
echo "$TABLE"

SECTION="## No-op reconcile pass with $SERVICES services

\`bash bench/reconcile.sh\` (SERVICES=$SERVICES IDLE=$IDLE) on $(date -u +%Y-%m-%d) — $(nproc) cores, $(uname -r),
berthd release build $(git rev-parse --short HEAD), same run for Berth and the peer.

$TABLE

Starting the $SERVICES replicas took ${START_S} s; retiring them (empty manifest, SIGKILL) ${RETIRE_S} s.
One \`GET /v1/containers\` (the same runtime list a pass does, + JSON) took ${LIST_MS} ms. $BERTHD_CPU (whole run).
The peer is not the same operation (compose has no loop): it is what compose
does to find out that nothing changed.
"
python3 - "$SECTION" <<'PY'
import sys, re, os
path = "bench/RESULTS-rollout.md"
sec = sys.argv[1]
text = open(path).read() if os.path.exists(path) else "# Rollout and reconcile benchmarks\n\n"
m = re.search(r"^## No-op reconcile.*?(?=^## |\Z)", text, flags=re.S | re.M)
text = text[:m.start()] + sec + "\n" + text[m.end():] if m else text.rstrip("\n") + "\n\n" + sec
open(path, "w").write(text)
PY
echo "wrote bench/RESULTS-rollout.md"
