#!/usr/bin/env bash
# Density benchmark (root): 1000 running containers with bridge networking on
# one host, in two shapes — 10 services × 100 replicas and 1000 services × 1
# replica (a manifest holds at most 1000 services; the recorded run used
# 500 × 2, the limit then) (busybox `sleep`, SIGKILL stop, no health check, from a registry on
# 127.0.0.1) — beside a private dockerd running 100 and 300 containers
# (`docker run -d` on a user-defined bridge network, 8 at a time) in the same
# run. Prints one markdown table with the peer and the ratios, and one
# MET / NOT MET line per goal; appends it to bench/RESULTS.md.
#
#   bash bench/density.sh        [COUNT=1000 SHAPES="10x100 1000x1" PEERS="100 300" IDLE=30 OUT=file]
#   BUILD=0 BIN=/some/release bash bench/density.sh     # binaries built elsewhere
#
# Per shape, on a fresh berthd (empty temp dirs, its own bridge on a /20, its
# own cgroup parent):
#   start     `berthctl apply` → every replica ready (GET /v1/status polled
#             every 0.5 s, summing replicas_ready)
#   idle      after 5 s settling, IDLE s: berthd CPU (utime+stime from
#             /proc/PID/stat) as % of one core, VmRSS at the end, and the
#             no-op pass from berth_reconcile_duration_seconds (Δsum/Δcount)
#   monitor   PSS (smaps_rollup) of every container's berth-monitor, per container
#   kernel    /proc/meminfo Slab + KernelStack + PageTables + Percpu, after − before,
#             ÷ containers (host-wide: other processes move it too)
#   status    `berthctl status` wall time (median of 5) and GET /v1/status size
#   metrics   GET /metrics wall time (median of 5) and size
#   remove    `berthctl apply --prune` of an empty manifest → no container dir left
# Docker: the same image pulled from the same registry, the same figures
# (dockerd + containerd for berthd, containerd-shim-runc-v2 for the monitor,
# `docker ps` for status, `docker rm -f` of all for remove).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "density.sh: run as root" >&2; exit 1; }
COUNT=${COUNT:-1000}
SHAPES=${SHAPES:-"10x100 1000x1"}
PEERS=${PEERS:-"100 300"}
IDLE=${IDLE:-30}
OUT=${OUT:-bench/RESULTS.md}
DOCKER_PARALLEL=8
TAG=dn
SUBNET_PREFIX=20   # 1000 addresses do not fit a /24
source bench/lib.sh
source bench/rollout-lib.sh
ensure_pkgs dockerd:docker.io docker-registry:docker-registry umoci:umoci skopeo:skopeo jq:jq
if [ "${BUILD:-1}" = 1 ]; then
  log "cargo build --release (berthd, berth-monitor, berthctl)"
  cargo build --release -q -p berth-agent --bins -p berth-ctl
fi
WORK=$(mktemp -d /tmp/berth-bench-density.XXXXXX)
snapshot_cgroups

# Limits for 1000 containers (monitor + workload each, plus docker's shims):
# raised for this run, restored on exit.
PID_MAX0=$(cat /proc/sys/kernel/pid_max)
[ "$PID_MAX0" -ge 65536 ] || echo 65536 > /proc/sys/kernel/pid_max
INOTIFY0=$(cat /proc/sys/fs/inotify/max_user_instances)
[ "$INOTIFY0" -ge 1024 ] || echo 1024 > /proc/sys/fs/inotify/max_user_instances
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cleanup() {
  set +e
  stop_berthd 180
  if [ -n "${DOCKERD_PID:-}" ]; then
    $DOCKER network rm densnet >/dev/null 2>&1
    stop_dockerd
  fi
  ip link del "bdens$$" 2>/dev/null
  stop_registry
  unmount_under "$WORK"
  remove_new_cgroups
  echo "$PID_MAX0" > /proc/sys/kernel/pid_max
  echo "$INOTIFY0" > /proc/sys/fs/inotify/max_user_instances
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
# Kernel memory in KiB: slab, kernel stacks, page tables, per-cpu allocations.
kmem() { awk '/^(Slab|KernelStack|PageTables|Percpu):/ {s += $2} END {print s}' /proc/meminfo; }
# utime + stime of the given pids, in clock ticks.
ticks() { local p t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_kib() { local p t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
pss_kib() { local p t=0; for p in "$@"; do t=$((t + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0))); done; echo "$t"; }
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
ready_sum() { curl -fsS --unix-socket "$SOCK" http://berth/v1/status | jq '[.services[].replicas_ready] | add // 0'; }
fmt() { python3 -c "print('%.${2:-1}f' % ($1))"; }
HZ=$(getconf CLK_TCK)

echo "== registry, image"
start_registry
D1=$(build_image bench/sleep:1 "density")
IMG="$REG/bench/sleep@$D1"

declare -A R   # results: R[shape,figure]

berth_shape() { # SERVICESxREPLICAS
  local shape=$1 services=${1%x*} replicas=${1#*x} n t0 i
  n=$((services * replicas))
  echo "== Berth $shape ($n containers)"
  start_berthd
  "$BIN/berthctl" pull "$IMG" >/dev/null
  : > "$WORK/m.toml"
  for i in $(seq -w 0 $((services - 1))); do
    printf '[service.s%s]\nimage = "%s"\nreplicas = %d\ncommand = ["/bin/busybox", "sleep", "36000"]\nstop_signal = "SIGKILL"\n\n' \
      "$i" "$IMG" "$replicas" >> "$WORK/m.toml"
  done
  sleep 2
  local k0; k0=$(kmem)
  t0=$(now_ns)
  "$BIN/berthctl" apply -f "$WORK/m.toml" >/dev/null
  local deadline=$(( $(date +%s) + 900 )) ready=0
  while :; do
    ready=$(ready_sum 2>/dev/null || echo 0)
    [ "$ready" -ge "$n" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || { echo "only $ready of $n ready after 900 s" >&2; tail -5 "$WORK/berthd.log" >&2; exit 1; }
    sleep 0.5
  done
  R[$shape,up]=$(ms_since "$t0")
  echo "  all $n ready after ${R[$shape,up]} ms"
  sleep 5
  local m0 m1 c0 c1
  m0=$(curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep '^berth_reconcile_duration_seconds_\(sum\|count\)' | awk '{print $2}' | tr '\n' ' ')
  c0=$(ticks "$AGENT_PID")
  sleep "$IDLE"
  c1=$(ticks "$AGENT_PID")
  m1=$(curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep '^berth_reconcile_duration_seconds_\(sum\|count\)' | awk '{print $2}' | tr '\n' ' ')
  R[$shape,cpu]=$(fmt "($c1 - $c0) * 100.0 / $HZ / $IDLE" 2)
  R[$shape,rss]=$(fmt "$(rss_kib "$AGENT_PID") / 1024.0")
  read -r s0 n0 <<<"$m0"; read -r s1 n1 <<<"$m1"
  R[$shape,pass]=$(fmt "($s1 - $s0) * 1000 / max(1, $n1 - $n0)" 2)
  R[$shape,passes]=$(fmt "$n1 - $n0" 0)
  local mons
  mons=$(cat "$WORK"/state/containers/*/state.json | jq -r .monitor_pid)
  # shellcheck disable=SC2086
  R[$shape,mon]=$(fmt "$(pss_kib $mons) / 1024.0 / $n" 3)
  R[$shape,kmem]=$(fmt "($(kmem) - $k0) / $n" 0)
  local f
  : > "$WORK/st.ms"
  for f in 1 2 3 4 5; do t0=$(now_ns); "$BIN/berthctl" status >/dev/null; ms_since "$t0" >> "$WORK/st.ms"; done
  R[$shape,status]=$(median < "$WORK/st.ms")
  R[$shape,status_kib]=$(fmt "$(curl -fsS --unix-socket "$SOCK" http://berth/v1/status | wc -c) / 1024.0")
  : > "$WORK/me.ms"
  for f in 1 2 3 4 5; do
    curl -fsS -o "$WORK/metrics.txt" -w '%{time_total}\n' "127.0.0.1:$HTTP_PORT/metrics" | awk '{printf "%d\n", $1 * 1000}' >> "$WORK/me.ms"
  done
  R[$shape,metrics]=$(median < "$WORK/me.ms")
  R[$shape,metrics_kib]=$(fmt "$(wc -c < "$WORK/metrics.txt") / 1024.0")
  echo "  idle: CPU ${R[$shape,cpu]}% of a core, RSS ${R[$shape,rss]} MiB, no-op pass ${R[$shape,pass]} ms (${R[$shape,passes]} passes)"
  echo "  monitor PSS ${R[$shape,mon]} MiB/container, kernel ${R[$shape,kmem]} KiB/container"
  echo "  status ${R[$shape,status]} ms (${R[$shape,status_kib]} KiB), /metrics ${R[$shape,metrics]} ms (${R[$shape,metrics_kib]} KiB)"
  printf '# nothing\n' > "$WORK/empty.toml"
  t0=$(now_ns)
  "$BIN/berthctl" apply --prune -f "$WORK/empty.toml" >/dev/null
  deadline=$(( $(date +%s) + 600 ))
  while [ -n "$(ls -A "$WORK/state/containers" 2>/dev/null)" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "containers left after 600 s" >&2; exit 1; }
    sleep 0.2
  done
  R[$shape,rm]=$(ms_since "$t0")
  echo "  removed all in ${R[$shape,rm]} ms"
  stop_berthd 60
  rm -rf "$WORK/state" "$WORK/run"
}

docker_count() { # N
  local n=$1 t0 k0 c0 c1 ids shims
  echo "== docker run -d ×$n"
  k0=$(kmem)
  t0=$(now_ns)
  seq "$n" | xargs -P "$DOCKER_PARALLEL" -I{} $DOCKER run -d --network densnet --name "dn{}" \
    --stop-signal SIGKILL "$IMG" /bin/busybox sleep 36000 >/dev/null
  R[d$n,up]=$(ms_since "$t0")
  local running; running=$($DOCKER ps -q | wc -l)
  [ "$running" = "$n" ] || { echo "docker: $running of $n running" >&2; exit 1; }
  echo "  $n running after ${R[d$n,up]} ms"
  sleep 5
  local dpids; dpids="$DOCKERD_PID $(pgrep -P "$DOCKERD_PID" -x containerd || true)"
  # shellcheck disable=SC2086
  c0=$(ticks $dpids)
  sleep "$IDLE"
  # shellcheck disable=SC2086
  c1=$(ticks $dpids)
  R[d$n,cpu]=$(fmt "($c1 - $c0) * 100.0 / $HZ / $IDLE" 2)
  # shellcheck disable=SC2086
  R[d$n,rss]=$(fmt "$(rss_kib $dpids) / 1024.0")
  shims=$(pgrep -f -- "containerd-shim-runc-v2 .*$DOCKERD_DIR" || true)
  # shellcheck disable=SC2086
  R[d$n,mon]=$(fmt "$(pss_kib $shims) / 1024.0 / $n" 3)
  R[d$n,kmem]=$(fmt "($(kmem) - $k0) / $n" 0)
  : > "$WORK/st.ms"
  for f in 1 2 3 4 5; do t0=$(now_ns); $DOCKER ps >/dev/null; ms_since "$t0" >> "$WORK/st.ms"; done
  R[d$n,status]=$(median < "$WORK/st.ms")
  R[d$n,status_kib]=$(fmt "$($DOCKER ps --no-trunc | wc -c) / 1024.0")
  echo "  idle: CPU ${R[d$n,cpu]}% (dockerd + containerd), RSS ${R[d$n,rss]} MiB, shim PSS ${R[d$n,mon]} MiB/container ($(wc -w <<<"$shims") shims), kernel ${R[d$n,kmem]} KiB/container, docker ps ${R[d$n,status]} ms"
  ids=$($DOCKER ps -aq)
  t0=$(now_ns)
  # shellcheck disable=SC2086
  $DOCKER rm -f $ids >/dev/null
  R[d$n,rm]=$(ms_since "$t0")
  echo "  removed all in ${R[d$n,rm]} ms"
}

for shape in $SHAPES; do
  [ $(( ${shape%x*} * ${shape#*x} )) = "$COUNT" ] || log "shape $shape is not $COUNT containers"
  berth_shape "$shape"
done

DOCKER_NOTE=""
if start_dockerd "$WORK"; then
  # A user-defined bridge network (docker's --bridge=none leaves none): each
  # container gets a veth on it, as Berth's replicas do on theirs.
  DNET=$(free_subnet 20)
  $DOCKER network create -o "com.docker.network.bridge.name=bdens$$" --subnet "$DNET" densnet >/dev/null
  $DOCKER pull -q "$IMG" >/dev/null
  for n in $PEERS; do docker_count "$n"; done
  # `docker rm -f` returns before the endpoints are gone; bounded retry.
  for _ in $(seq 50); do $DOCKER network rm densnet >/dev/null 2>&1 && break; sleep 0.2; done
  DOCKER_VERSION=$($DOCKER version --format '{{.Server.Version}}')
  stop_dockerd
else
  DOCKER_NOTE="docker peer not run: $DOCKER_ERR"
fi

# ---- table --------------------------------------------------------------
COLS=(); for s in $SHAPES; do COLS+=("$s"); done
[ -n "$DOCKER_NOTE" ] || for n in $PEERS; do COLS+=("d$n"); done
label() { case $1 in d*) echo "docker ×${1#d}";; *) echo "Berth ${1%x*} svc × ${1#*x}";; esac; }
per() { fmt "$1 / $2" "${3:-1}"; }
count_of() { case $1 in d*) echo "${1#d}";; *) echo $(( ${1%x*} * ${1#*x} ));; esac; }
LAST_PEER=""; [ -n "$DOCKER_NOTE" ] || LAST_PEER="d${PEERS##* }"
FIRST=${SHAPES%% *}

row() { # title key [per-container] [digits]
  local line="| $1 |" c v
  for c in "${COLS[@]}"; do
    v=${R[$c,$2]:-}
    if [ -n "${3:-}" ] && [ -n "$v" ]; then v=$(per "$v" "$(count_of "$c")" "${4:-1}"); fi
    line="$line ${v:-—} |"
  done
  # Totals over different counts are not compared; their per-container rows are.
  if [ -n "$LAST_PEER" ] && [ -n "${R[$FIRST,$2]:-}" ] && [ -n "${R[$LAST_PEER,$2]:-}" ] &&
    { [ -n "${3:-}" ] || { [ "$2" != up ] && [ "$2" != rm ]; }; }; then
    local a=${R[$FIRST,$2]} b=${R[$LAST_PEER,$2]}
    if [ -n "${3:-}" ]; then a=$(per "$a" "$(count_of "$FIRST")" 4); b=$(per "$b" "$(count_of "$LAST_PEER")" 4); fi
    line="$line $(python3 -c "print('%.2f×' % ($a / $b) if $b else '—')") |"
  else
    line="$line |"
  fi
  echo "$line"
}
HEAD="| $COUNT containers, bridge networking |"; SEP="|---|"
for c in "${COLS[@]}"; do HEAD="$HEAD $(label "$c") |"; SEP="$SEP---:|"; done
HEAD="$HEAD Berth $FIRST ÷ ${LAST_PEER:+docker ×${LAST_PEER#d}} |"; SEP="$SEP---:|"
TABLE="$HEAD
$SEP
$(row "start → all ready, s (docker: all \`run -d\` returned)" up)
$(row "start, ms per container" up per 1)
$(row "agent RSS at idle, MiB (docker: dockerd + containerd)" rss)
$(row "agent CPU at idle, % of one core (${IDLE} s)" cpu)
$(row "no-op reconcile pass, ms (berth_reconcile_duration_seconds)" pass)
$(row "monitor PSS per container, MiB (docker: containerd-shim)" mon)
$(row "kernel memory per container, KiB (Slab+KernelStack+PageTables+Percpu)" kmem)
$(row "\`berthctl status\` / \`docker ps\`, ms (median of 5)" status)
$(row "status / \`docker ps --no-trunc\` size, KiB" status_kib)
$(row "GET /metrics, ms (median of 5)" metrics)
$(row "GET /metrics size, KiB" metrics_kib)
$(row "remove all, s (empty manifest --prune / \`docker rm -f\`)" rm)
$(row "remove, ms per container" rm per 1)"
# seconds for the time rows
TABLE=$(python3 - "$TABLE" <<'PY'
import sys
out = []
for line in sys.argv[1].split("\n"):
    if line.startswith("| start → all ready") or line.startswith("| remove all"):
        cells = line.split("|")
        for i in range(2, len(cells) - 2):
            c = cells[i].strip()
            try:
                cells[i] = " %.1f " % (float(c) / 1000)
            except ValueError:
                pass
        line = "|".join(cells)
    out.append(line)
print("\n".join(out))
PY
)

goal() { # text value op limit
  local v=$2 verdict
  verdict=$(python3 -c "print('MET' if $v $3 $4 else 'NOT MET')")
  echo "- Goal $1: $v — **$verdict**$(python3 -c "
v, l = $v, $4
print('' if (v $3 l) else ' (%.1f× the limit)' % (v / l))")"
}
GOALS=""
for s in $SHAPES; do
  GOALS="$GOALS
$(goal "$s: $COUNT up in < 60 s (s)" "$(fmt "${R[$s,up]} / 1000.0")" '<' 60)
$(goal "$s: idle agent CPU < 1% of a core (%)" "${R[$s,cpu]}" '<' 1)
$(goal "$s: no-op pass < 50 ms (ms)" "${R[$s,pass]}" '<' 50)
$(goal "$s: /metrics < 100 ms (ms)" "${R[$s,metrics]}" '<' 100)
$(goal "$s: berthd < 64 MiB at $COUNT (MiB RSS)" "${R[$s,rss]}" '<' 64)"
done

SECTION="## Density: $COUNT containers on one host

\`bash bench/density.sh\` (COUNT=$COUNT SHAPES=\"$SHAPES\" PEERS=\"$PEERS\" IDLE=$IDLE) on $(date -u '+%Y-%m-%d %H:%M') UTC —
$(nproc) cores, $(uname -r), berthd release build $(git rev-parse --short HEAD), docker ${DOCKER_VERSION:-not run};
Berth and docker measured in the same run. Busybox \`sleep 36000\` from a registry on
127.0.0.1, SIGKILL stop; Berth on its own bridge (/$SUBNET_PREFIX), docker on a
user-defined bridge network, \`docker run -d\` $DOCKER_PARALLEL at a time.
${DOCKER_NOTE}

$TABLE
$GOALS
"
echo
echo "$SECTION"
if [ -n "$OUT" ]; then
  printf '\n%s\n' "$SECTION" >> "$OUT"
  echo "appended to $OUT"
fi
