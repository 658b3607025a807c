#!/usr/bin/env bash
# Fleet benchmark: SIZES simulated agents (default 100, 300, 1000) — each
# running berthd's fleet code (berth_agent::fleet: gate, slot queue, groups +
# bake, probation/release, halt, auto_revert, record, watch) over a fake
# runtime whose rollout takes T — against a real etcd on 127.0.0.1, a fresh
# one (temp data dir) per size. max_parallel = K, one canary group of
# CANARY hosts, then `default`. Prints (and appends to OUT) a markdown table:
# the time to roll the whole fleet beside the ideal (canary T + bake +
# ⌈(N-canary)/K⌉·T), etcd requests and bytes per host, etcd CPU and RSS, the
# time for a canary's failure to reach every host as a halt; the growth
# exponent per metric; MET / NOT MET per goal (≤ 1.2× the ideal, halt ≤ 2 s).
#
#   bash bench/fleet.sh                          # ≈4 min
#   SIZES="100 300" T_MS=1000 BAKE_MS=2000 OUT=/tmp/f.md bash bench/fleet.sh
#
# Needs /usr/bin/etcd (Debian `etcd-server`; installed if missing). Builds
# target/release/bench-fleet (CARGO_TARGET_DIR honoured). Removes its etcd
# and temp dir on exit (also on error or Ctrl-C). Traffic only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"100 300 1000"}
T_MS=${T_MS:-1000}
BAKE_MS=${BAKE_MS:-2000}
K=${K:-50}
CANARY=${CANARY:-10}
INTERVAL_MS=${INTERVAL_MS:-2000}
OUT=${OUT:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$CARGO_TARGET_DIR/release/bench-fleet

log() { echo "[fleet] $*" >&2; }

if [ ! -x /usr/bin/etcd ]; then
  log "apt-get install etcd-server"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
log "cargo build --release -p berth-bench --bin bench-fleet"
cargo build --release -q -p berth-bench --bin bench-fleet

# One client connection per simulated host, in this process and in etcd.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/berth-bench-fleet.XXXXXX)
ETCD_PID=
stop_etcd() {
  if [ -n "$ETCD_PID" ] && kill -0 "$ETCD_PID" 2>/dev/null; then
    kill "$ETCD_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$ETCD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
  fi
  ETCD_PID=
}
cleanup() {
  set +e
  stop_etcd
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_etcd() { # name
  local client peer
  client=$(free_port); peer=$(free_port)
  ETCD_URL=http://127.0.0.1:$client
  rm -rf "$WORK/etcd"
  /usr/bin/etcd --name "$1" --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$1=http://127.0.0.1:$peer" \
    >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 100); do
    if curl -fsS "$ETCD_URL/health" 2>/dev/null | grep -q true; then return 0; fi
    kill -0 "$ETCD_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$WORK/etcd.log" >&2
  echo "etcd did not start" >&2
  return 1
}

JSON=$WORK/runs.jsonl
for n in $SIZES; do
  log "== $n hosts"
  start_etcd "bench$n"
  "$BIN" run --etcd "$ETCD_URL" --etcd-pid "$ETCD_PID" --hosts "$n" \
    --canary "$CANARY" --max-parallel "$K" --rollout-ms "$T_MS" --bake-ms "$BAKE_MS" \
    --interval-ms "$INTERVAL_MS" --json "$JSON" >/dev/null
  stop_etcd
done
if [ -n "$OUT" ]; then
  "$BIN" report --json "$JSON" --out "$OUT"
else
  "$BIN" report --json "$JSON"
fi
