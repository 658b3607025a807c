#!/usr/bin/env bash
# The main job end to end on this machine, on temp dirs: build berth, start a
# local registry, build and push a demo image (busybox httpd, with umoci and
# skopeo), start berthd, apply manifests/hello.toml and wait for the rollout,
# then show the service answering on the host. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (containers, cgroups, mounts)" >&2; exit 1; }
bash scripts/deps.sh
cargo build --release --workspace --bins --locked
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/berth-demo.XXXXXX)
REG_PORT=5000
HTTP_PORT=${BERTH_DEMO_HTTP_PORT:-19480}
BRIDGE=berthdemo0
export BERTH_AGENT="unix:$WORK/run/berth.sock"

cleanup() {
  set +e
  if [ -n "${AGENT_PID:-}" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    # An empty manifest retires every container before the agent stops.
    printf '# nothing\n' > "$WORK/empty.toml"
    "$BIN/berthctl" apply --prune -f "$WORK/empty.toml" >/dev/null 2>&1
    for _ in $(seq 100); do
      [ -z "$(ls -A "$WORK/state/containers" 2>/dev/null)" ] && break; sleep 0.1
    done
    left=$(ls -A "$WORK/state/containers" 2>/dev/null | wc -l)
    [ "$left" = 0 ] || echo "demo: $left containers were not retired" >&2
    kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null
  fi
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
  # berth-dns outlives berthd by design: stop it by its pid file.
  dns_pid=$(grep -o '"pid":[0-9]*' "$WORK/run/dns/berth-dns.pid" 2>/dev/null | cut -d: -f2)
  [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null
  for pin in "$WORK"/run/netns/*; do [ -e "$pin" ] && umount -l "$pin"; done 2>/dev/null
  umount -l "$WORK/run/netns" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  nft delete table ip "berth_$BRIDGE" 2>/dev/null
  rmdir /sys/fs/cgroup/*/berth-demo /sys/fs/cgroup/berth-demo 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

if ss -ltn | grep -q ":$REG_PORT "; then
  echo "demo.sh: port $REG_PORT is in use; manifests/hello.toml expects the demo registry there" >&2
  exit 1
fi

echo "== registry on 127.0.0.1:$REG_PORT"
mkdir -p "$WORK/registry"
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $WORK/registry } }
http: { addr: 127.0.0.1:$REG_PORT }
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

echo "== demo image 127.0.0.1:$REG_PORT/berth/demo:1 (busybox httpd, built with umoci, pushed with skopeo)"
umoci init --layout "$WORK/oci"
umoci new --image "$WORK/oci:demo"
umoci unpack --image "$WORK/oci:demo" "$WORK/bundle" >/dev/null
mkdir -p "$WORK/bundle/rootfs/bin" "$WORK/bundle/rootfs/www"
cp /bin/busybox "$WORK/bundle/rootfs/bin/busybox"
echo "<h1>hello from berth</h1>" > "$WORK/bundle/rootfs/www/index.html"
umoci repack --image "$WORK/oci:demo" "$WORK/bundle"
skopeo copy -q --dest-tls-verify=false "oci:$WORK/oci:demo" "docker://127.0.0.1:$REG_PORT/berth/demo:1"

echo "== berthd on temp dirs (read-only HTTP on 127.0.0.1:$HTTP_PORT)"
"$BIN/berthd" --state-dir "$WORK/state" --run-dir "$WORK/run" --http "127.0.0.1:$HTTP_PORT" \
  --bridge "$BRIDGE" --subnet 10.88.0.0/24 --cgroup-parent berth-demo 2>"$WORK/berthd.log" &
AGENT_PID=$!
for _ in $(seq 100); do curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { echo "demo: berthd did not become ready:" >&2; cat "$WORK/berthd.log" >&2; exit 1; }

echo "== berthctl validate / diff / apply --wait -f manifests/hello.toml"
"$BIN/berthctl" validate -f manifests/hello.toml
"$BIN/berthctl" diff -f manifests/hello.toml
"$BIN/berthctl" apply --wait --timeout 2m -f manifests/hello.toml

echo "== the service answers on the host: curl 127.0.0.1:18080"
curl -fsS 127.0.0.1:18080/ | tee "$WORK/answer"
grep -q "hello from berth" "$WORK/answer"
echo "== readiness a load balancer checks: /v1/services/hello/ready"
curl -fsS "127.0.0.1:$HTTP_PORT/v1/services/hello/ready"; echo
echo "== berthctl status";  "$BIN/berthctl" status
echo "== berthctl history"; "$BIN/berthctl" history
echo "== metrics (a few)"
curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep -E '^berth_(services_ready_replicas|containers|rollouts_total|service_image_info)'
echo "demo: ok"
