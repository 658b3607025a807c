#!/usr/bin/env bash
# The main job end to end on temp dirs: build, start berthd, apply
# manifests/hello.toml and show the plan, status and history. Cleans up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --workspace --bins --locked
BIN=target/release
WORK=$(mktemp -d /tmp/berth-demo.XXXXXX)
HTTP_PORT=${BERTH_DEMO_HTTP_PORT:-19480}
cleanup() {
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN/berthd" --state-dir "$WORK/state" --run-dir "$WORK/run" \
  --http "127.0.0.1:$HTTP_PORT" 2>"$WORK/berthd.log" &
AGENT_PID=$!
export BERTH_AGENT="unix:$WORK/run/berth.sock"
for _ in $(seq 100); do curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { echo "demo: berthd did not become ready:" >&2; cat "$WORK/berthd.log" >&2; exit 1; }
echo "== berthctl validate -f manifests/hello.toml"; "$BIN/berthctl" validate -f manifests/hello.toml
echo "== berthctl diff -f manifests/hello.toml";     "$BIN/berthctl" diff -f manifests/hello.toml
echo "== berthctl apply -f manifests/hello.toml";    "$BIN/berthctl" apply -f manifests/hello.toml
echo "== berthctl status";                           "$BIN/berthctl" status
echo "== berthctl history";                          "$BIN/berthctl" history
echo "== curl /metrics (berth_*)";                   curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep -E '^berth_(build_info|current_revision|revisions_applied_total)'
echo "demo: ok"
