#!/usr/bin/env bash
# Regenerates tests/fixtures/upgrade/VERSION/ (default: the newest release in
# tests/fixtures/upgrade/releases): builds that release's binaries from its
# commit (scripts/upgrade-base.sh, cached), runs its berthd on temp dirs with
# the upgrade manifest of tests/upgrade.rs against a loopback test registry,
# and copies what it wrote — manifest.toml, revisions/N.rev, each container's
# config.json and state.json plus its berth.spec label as berth.spec.json,
# volumes/*/meta.json — then removes the containers. Needs root.
#
#   sudo bash scripts/upgrade-fixture.sh [VERSION]
#
# A fixture is written once per release and then only read: regenerate it
# only when the release list changes, never to make a failing test pass.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "upgrade-fixture.sh: run as root (containers)" >&2; exit 1; fi
version=${1:-$(awk '!/^#/ && NF { v = $1 } END { print v }' tests/fixtures/upgrade/releases)}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
bins=$(bash scripts/upgrade-base.sh "$version" | tail -n 1)
# This build's binaries: the harness cleans up with this build's runtime.
cargo build --workspace --bins
BERTH_PREV_BIN_DIR="$bins" BERTH_UPGRADE_VERSION="$version" \
    cargo test -p berth-e2e --test upgrade -- --ignored --exact write_fixture --nocapture
git status --short "tests/fixtures/upgrade/$version"
