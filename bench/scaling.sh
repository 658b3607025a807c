#!/usr/bin/env bash
# Scaling curves (root): how each cost grows with the work, so a path that
# grows faster than linear is caught the day it appears. For each curve it
# prints the points and the growth exponent k of y ∝ x^k (least-squares slope
# of log y against log x); k > 1.15 is flagged SUPERLINEAR. Appends the
# tables to bench/RESULTS.md.
#
#   bash bench/scaling.sh     [SERVICES="10 100 1000" REPLICAS="1 10 100" CONCURRENCY="1,4,16"
#                              LAYERS="1 8 64" PULL_MIB=64 RUNS=3 IDLE=10 STARTS=64 CURVES="1 2 3 4" OUT=file]
#
# 1. no-op reconcile pass vs services (a manifest holds at most 1000): one berthd, SERVICES services × 1
#    replica (busybox sleep, SIGKILL stop) applied in turn (each apply adds
#    services), all ready, 3 s settle, then the mean pass (Δsum/Δcount of
#    berth_reconcile_duration_seconds) over IDLE s.
# 2. apply → all ready vs replicas: one service with R replicas on a fresh
#    manifest (the previous one pruned first), `berthctl apply` → GET
#    /v1/status shows R ready (polled every 0.1 s); median of RUNS.
# 3. start throughput vs concurrent starts: `bench-scale starts` —
#    Runtime::create_and_start of STARTS `sleep` containers by N threads
#    (the runtime library berthd uses; no network), starts/s and the p50 of
#    one start; the exponent is that of the p50 latency.
# 4. pull time vs layer count at the same total size: images of PULL_MIB MiB
#    of random (incompressible) bytes split into 1 / 8 / 64 layers, pushed to
#    a registry on 127.0.0.1; `berthctl pull` against a fresh berthd each run;
#    median of RUNS, interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scaling.sh: run as root" >&2; exit 1; }
SERVICES=${SERVICES:-"10 100 1000"}
REPLICAS=${REPLICAS:-"1 10 100"}
CONCURRENCY=${CONCURRENCY:-"1,4,16"}
LAYERS=${LAYERS:-"1 8 64"}
PULL_MIB=${PULL_MIB:-64}
RUNS=${RUNS:-3}
IDLE=${IDLE:-10}
STARTS=${STARTS:-64}
CURVES=${CURVES:-"1 2 3 4"}   # which of the four curves to measure
want() { [[ " $CURVES " == *" $1 "* ]]; }
OUT=${OUT:-bench/RESULTS.md}
TAG=sc
SUBNET_PREFIX=20
source bench/lib.sh
source bench/rollout-lib.sh
ensure_pkgs docker-registry:docker-registry umoci:umoci skopeo:skopeo jq:jq
[ "${BUILD:-1}" = 1 ] && build
WORK=$(mktemp -d /tmp/berth-bench-scaling.XXXXXX)
snapshot_cgroups
PID_MAX0=$(cat /proc/sys/kernel/pid_max)
[ "$PID_MAX0" -ge 65536 ] || echo 65536 > /proc/sys/kernel/pid_max
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cleanup() {
  set +e
  stop_berthd 180
  stop_registry
  unmount_under "$WORK"
  remove_new_cgroups
  echo "$PID_MAX0" > /proc/sys/kernel/pid_max
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
ready_sum() { curl -fsS --unix-socket "$SOCK" http://berth/v1/status | jq '[.services[].replicas_ready] | add // 0'; }
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
wait_ready() { # N timeout_s
  local deadline=$(( $(date +%s) + $2 )) r=0
  while :; do
    r=$(ready_sum 2>/dev/null || echo 0)
    [ "$r" -ge "$1" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || { echo "only $r of $1 ready after $2 s" >&2; tail -5 "$WORK/berthd.log" >&2; return 1; }
    sleep 0.1
  done
}
wait_empty() { # timeout_s
  local deadline=$(( $(date +%s) + $1 ))
  while [ -n "$(ls -A "$WORK/state/containers" 2>/dev/null)" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "containers left after $1 s" >&2; return 1; }
    sleep 0.1
  done
}
service_toml() { # name replicas
  printf '[service.%s]\nimage = "%s"\nreplicas = %d\ncommand = ["/bin/busybox", "sleep", "36000"]\nstop_signal = "SIGKILL"\n\n' "$1" "$IMG" "$2"
}
# curve TITLE XLABEL YLABEL "x y" lines on stdin → markdown table + exponent line
# (the program is an argument: stdin carries the points)
CURVE_PY=$(cat <<'PY'
import sys, math
title, xl, yl = sys.argv[1:4]
pts = [tuple(map(float, l.split()[:2])) for l in sys.stdin if l.strip()]
n = len(pts)
lx = [math.log(x) for x, _ in pts]; ly = [math.log(max(y, 1e-9)) for _, y in pts]
mx, my = sum(lx) / n, sum(ly) / n
den = sum((a - mx) ** 2 for a in lx)
k = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")
print("| %s | %s |" % (xl, yl))
print("|---:|---:|")
for x, y in pts:
    print("| %g | %.2f |" % (x, y))
flag = "**SUPERLINEAR**" if k > 1.15 else "linear or better"
print()
print("%s: growth exponent k = %.2f (%s)" % (title, k, flag))
PY
)
curve() { python3 -c "$CURVE_PY" "$@"; }
RAW=$WORK/raw; mkdir -p "$RAW"
printf '# nothing\n' > "$WORK/empty.toml"

echo "== registry, image"
start_registry
D1=$(build_image bench/sleep:1 "scaling")
IMG="$REG/bench/sleep@$D1"

# ---- 1. no-op pass vs services ---------------------------------------------
if want 1; then
echo "== 1. no-op reconcile pass vs services ($SERVICES)"
start_berthd
"$BIN/berthctl" pull "$IMG" >/dev/null
: > "$RAW/pass"
for n in $SERVICES; do
  : > "$WORK/s.toml"
  for i in $(seq -w 0 $((n - 1))); do service_toml "s$i" 1 >> "$WORK/s.toml"; done
  # names from seq -w change width with n; prune what the previous step named.
  "$BIN/berthctl" apply --prune -f "$WORK/s.toml" >/dev/null
  wait_ready "$n" 900
  sleep 3
  m0=$(curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep '^berth_reconcile_duration_seconds_\(sum\|count\)' | awk '{print $2}' | tr '\n' ' ')
  sleep "$IDLE"
  m1=$(curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep '^berth_reconcile_duration_seconds_\(sum\|count\)' | awk '{print $2}' | tr '\n' ' ')
  read -r s0 c0 <<<"$m0"; read -r s1 c1 <<<"$m1"
  pass=$(python3 -c "print('%.3f' % (($s1 - $s0) * 1000 / max(1, $c1 - $c0)))")
  echo "  $n services: mean no-op pass $pass ms over $(python3 -c "print(int($c1 - $c0))") passes"
  echo "$n $pass" >> "$RAW/pass"
done
"$BIN/berthctl" apply --prune -f "$WORK/empty.toml" >/dev/null
wait_empty 300
stop_berthd 60
rm -rf "$WORK/state" "$WORK/run"
fi

# ---- 2. apply → all ready vs replicas ----------------------------------------
if want 2; then
start_berthd
"$BIN/berthctl" pull "$IMG" >/dev/null
echo "== 2. apply → all ready vs replicas ($REPLICAS), $RUNS runs each"
: > "$RAW/ready"
for r in $REPLICAS; do
  : > "$RAW/ready-$r"
  for run in $(seq "$RUNS"); do
    service_toml "r${r}x$run" "$r" > "$WORK/r.toml"
    t0=$(now_ns)
    "$BIN/berthctl" apply -f "$WORK/r.toml" >/dev/null
    wait_ready "$r" 600
    ms=$(ms_since "$t0")
    echo "  $r replicas, run $run: ${ms} ms"
    echo "$ms" >> "$RAW/ready-$r"
    "$BIN/berthctl" apply --prune -f "$WORK/empty.toml" >/dev/null
    wait_empty 300
  done
  echo "$r $(median < "$RAW/ready-$r")" >> "$RAW/ready"
done
stop_berthd 60
rm -rf "$WORK/state" "$WORK/run"
fi

# ---- 3. start throughput vs concurrency --------------------------------------
if want 3; then
echo "== 3. start throughput vs concurrent starts ($CONCURRENCY), $STARTS containers each"
"$BIN/bench-start" rootfs --dir "$WORK/rootfs"
"$BIN/bench-scale" starts --rootfs "$WORK/rootfs" --monitor "$BIN/berth-monitor" \
  --state "$WORK/rt" --count "$STARTS" --concurrency "$CONCURRENCY" | tee "$RAW/starts"
rm -rf "$WORK/rt"
fi

# ---- 4. pull time vs layer count ---------------------------------------------
if want 4; then
echo "== 4. pull vs layer count ($LAYERS) at $PULL_MIB MiB, $RUNS runs each"
layered_image() { # layers → pushes bench/l$layers:1, prints digest
  local k=$1 d="$WORK/img-l$1" i per
  per=$(( PULL_MIB * 1024 / k ))   # KiB per layer
  umoci init --layout "$d/oci" >/dev/null
  umoci new --image "$d/oci:img" >/dev/null
  umoci unpack --image "$d/oci:img" "$d/bundle" >/dev/null
  for i in $(seq "$k"); do
    head -c "$((per * 1024))" /dev/urandom > "$d/bundle/rootfs/blob$i"
    umoci repack --image "$d/oci:img" "$d/bundle" >/dev/null
  done
  skopeo copy -q --dest-tls-verify=false "oci:$d/oci:img" "docker://$REG/bench/l$k:1" >/dev/null
  skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$REG/bench/l$k:1"
  rm -rf "$d"
}
declare -A LIMG
for k in $LAYERS; do
  LIMG[$k]="$REG/bench/l$k@$(layered_image "$k")"
  echo "  built ${LIMG[$k]} ($k layers)"
done
for run in $(seq "$RUNS"); do
  for k in $LAYERS; do
    start_berthd
    sync
    t0=$(now_ns)
    "$BIN/berthctl" pull "${LIMG[$k]}" >/dev/null
    ms=$(ms_since "$t0")
    echo "  $k layers, run $run: ${ms} ms"
    echo "$ms" >> "$RAW/pull-$k"
    stop_berthd 30
    rm -rf "$WORK/state" "$WORK/run"
  done
done
: > "$RAW/pull"
for k in $LAYERS; do echo "$k $(median < "$RAW/pull-$k")" >> "$RAW/pull"; done
fi

# ---- report ------------------------------------------------------------------
NOT_RUN="not measured (CURVES=\"$CURVES\")"
C1=$NOT_RUN C2=$NOT_RUN C3=$NOT_RUN C3T="" C4=$NOT_RUN
want 1 && C1=$(curve "no-op pass vs services" "services (1 replica each)" "mean no-op pass, ms" < "$RAW/pass")
want 2 && C2=$(curve "apply → ready vs replicas" "replicas of one service" "apply → all ready, ms (median of $RUNS)" < "$RAW/ready")
want 3 && C3=$(awk '{print $1, $3}' "$RAW/starts" | curve "one start's latency vs concurrent starts" "concurrent starts" "p50 of one start, ms")
want 3 && C3T=$(awk '{print $1, $2}' "$RAW/starts" | curve "start throughput vs concurrent starts" "concurrent starts" "starts/s")
want 4 && C4=$(curve "pull vs layer count" "layers (same $PULL_MIB MiB total)" "berthctl pull, ms (median of $RUNS)" < "$RAW/pull")

SECTION="## Scaling curves

\`bash bench/scaling.sh\` (CURVES=\"$CURVES\" SERVICES=\"$SERVICES\" REPLICAS=\"$REPLICAS\" CONCURRENCY=$CONCURRENCY LAYERS=\"$LAYERS\" PULL_MIB=$PULL_MIB RUNS=$RUNS IDLE=$IDLE STARTS=$STARTS)
on $(date -u '+%Y-%m-%d %H:%M') UTC — $(nproc) cores, $(uname -r), release build $(git rev-parse --short HEAD).
Exponent k: least-squares slope of log y on log x (y ∝ x^k); k > 1.15 is flagged superlinear.

### No-op reconcile pass vs services

$C1

### apply → all ready vs replicas

$C2

### Start vs concurrent starts (runtime library, $STARTS \`sleep\` containers per point)

$C3

$C3T

### Pull vs layer count (same total size, random bytes)

$C4
"
echo
echo "$SECTION"
if [ -n "$OUT" ]; then
  printf '\n%s\n' "$SECTION" >> "$OUT"
  echo "appended to $OUT"
fi
