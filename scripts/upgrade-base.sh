#!/usr/bin/env bash
# Builds a released Berth's binaries (berthd, berth-monitor, berth-dns,
# berthctl) from its commit, for the upgrade tests (tests/upgrade.rs), and
# prints the directory holding them as the last line of stdout.
#
#   bash scripts/upgrade-base.sh [VERSION]      # default: the newest release
#
# VERSION's commit comes from tests/fixtures/upgrade/releases. Its tree is
# taken with `git archive` (no checkout is touched) into
# $BERTH_UPGRADE_CACHE (default ~/.cache/berth/upgrade)/src/VERSION-COMMIT
# and built with CARGO_TARGET_DIR=$BERTH_UPGRADE_TARGET_DIR (default
# $BERTH_UPGRADE_CACHE/target), outside the checkout, so a later run (or
# another clone) reuses the compiled dependencies and only Berth's crates
# build; the binaries are copied to $BERTH_UPGRADE_CACHE/bin/VERSION-COMMIT,
# and a finished copy is used as is. Fails, saying how to fetch it, when the
# commit is not in this clone (a shallow clone).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
releases="$root/tests/fixtures/upgrade/releases"
version=${1:-$(awk '!/^#/ && NF { v = $1 } END { print v }' "$releases")}
commit=$(awk -v v="$version" '$1 == v { print $2 }' "$releases")
if [ -z "$commit" ]; then
    echo "upgrade-base.sh: $version is not listed in $releases" >&2
    exit 2
fi
cache=${BERTH_UPGRADE_CACHE:-$HOME/.cache/berth/upgrade}
target=${BERTH_UPGRADE_TARGET_DIR:-$cache/target}
name="$version-$commit"
src="$cache/src/$name"
bin="$cache/bin/$name"
bins=(berthd berth-monitor berth-dns berthctl)

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9

if [ -f "$bin/.complete" ]; then
    echo "upgrade-base: $version ($commit) already built in $bin" >&2
    echo "$bin"
    exit 0
fi

if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
    shallow=$(git -C "$root" rev-parse --is-shallow-repository 2>/dev/null || echo "not a git clone")
    {
        echo "upgrade-base.sh: commit $commit (Berth $version) is not in this clone (shallow: $shallow)."
        echo "The upgrade tests build $version's binaries from it. Fetch it with"
        echo "    git fetch --unshallow        # a shallow clone (CI: fetch-depth: 0)"
        echo "    git fetch origin $commit     # or only that commit"
        echo "or point BERTH_PREV_BIN_DIR at a directory holding $version's ${bins[*]}."
    } >&2
    exit 3
fi

start=$(date +%s)
if [ ! -f "$src/Cargo.toml" ]; then
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    git -C "$root" archive --format=tar "$commit" | tar -x -C "$src.tmp"
    rm -rf "$src"
    mv "$src.tmp" "$src"
fi
# A first build starts from this checkout's compiled dependencies
# (hard links of target/debug's deps, build scripts and fingerprints; the
# same Cargo.lock versions are reused, Berth's crates get other hashes from
# their other path), so only Berth's crates compile: minutes, not ten.
seed=${BERTH_UPGRADE_SEED:-${CARGO_TARGET_DIR:-$root/target}/debug}
if [ ! -d "$target/debug/deps" ] && [ -d "$seed/deps" ]; then
    mkdir -p "$target/debug"
    for d in build deps .fingerprint; do
        [ -d "$seed/$d" ] || continue
        cp -al "$seed/$d" "$target/debug/" 2>/dev/null || cp -a "$seed/$d" "$target/debug/"
    done
    echo "upgrade-base: seeded $target/debug from $seed" >&2
fi
echo "upgrade-base: building $version ($commit) in $target" >&2
CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$target" \
    cargo build --locked --manifest-path "$src/Cargo.toml" \
    -p berth-agent -p berth-ctl --bins >&2
rm -rf "$bin.tmp"
mkdir -p "$bin.tmp"
for b in "${bins[@]}"; do
    cp "$target/debug/$b" "$bin.tmp/$b"
done
touch "$bin.tmp/.complete"
rm -rf "$bin"
mv "$bin.tmp" "$bin"
echo "upgrade-base: built $version ($commit) in $(( $(date +%s) - start )) s -> $bin" >&2
echo "$bin"
