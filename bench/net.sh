#!/usr/bin/env bash
# Networking benchmark (root): wrk against a busybox httpd container straight
# to its IP vs through the published-port proxy, and container start p50 with
# vs without networking. Bounded: two 5 s wrk runs (+1 s warm-up), 2x30 starts.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "net.sh: run as root" >&2; exit 1; fi
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p berth-agent --bins --example net_bench
target="${CARGO_TARGET_DIR:-target}"
BERTH_MONITOR="$target/release/berthd" exec "$target/release/examples/net_bench"
