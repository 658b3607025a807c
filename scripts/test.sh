#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, formatting, lints, then
# each fuzz target for a short budget (FUZZ_SECONDS, default 20 s), then
# every unit and end-to-end test (real registry, real kernel; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "test.sh: run as root (containers, cgroups, mounts)" >&2; exit 1; fi
bash scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
# The previous release's binaries for tests/upgrade.rs, built from its commit
# (cached under ~/.cache/berth/upgrade; fails if a shallow clone lacks it).
upgrade_start=$(date +%s)
BERTH_PREV_BIN_DIR=$(bash scripts/upgrade-base.sh | tail -n 1)
export BERTH_PREV_BIN_DIR
echo "test.sh: previous release's binaries ready in $(( $(date +%s) - upgrade_start )) s: $BERTH_PREV_BIN_DIR"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz.sh
# Root-only tests fail rather than skip if this ever runs as someone else.
BERTH_REQUIRE_ROOT=1 cargo test --workspace --locked -- --test-threads="${BERTH_TEST_THREADS:-2}"
# Pure cgroup v2 in a VM (Debian's cloud kernel under qemu TCG; about 2-3 minutes).
BERTH_VM_NO_BUILD=1 bash scripts/vm-test.sh
