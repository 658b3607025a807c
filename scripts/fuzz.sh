#!/usr/bin/env bash
# Runs each fuzz target (fuzz/, afl.rs + AFL++) for a bounded time from its
# checked-in seed corpus, and fails when any target found a crash or a hang.
#   FUZZ_SECONDS   seconds per target (default 25)
#   FUZZ_TARGETS   targets to run (default: all four)
#   FUZZ_OUT       where AFL++ writes its queues and findings (default target/fuzz)
#   FUZZ_SEEDS     dir with a seed dir per target (default fuzz/corpus; e.g. an
#                  earlier run's queues to go on from, see docs/testing.md)
# A crash is kept under $FUZZ_OUT/TARGET/default/crashes/: copy it into
# fuzz/regressions/TARGET/ (replayed by `cargo test -p berth-fuzz`) with the
# fix. Needs cargo-afl (scripts/deps.sh installs it) and runs as root so the
# layer target can make devices and set owners, as berthd does.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-25}
read -r -a targets <<<"${FUZZ_TARGETS:-manifest layer registry image_ref}"
out=${FUZZ_OUT:-target/fuzz}
if ! command -v cargo-afl >/dev/null; then
  echo "fuzz.sh: cargo-afl is missing (bash scripts/deps.sh installs it)" >&2
  exit 1
fi
# Instrumented builds use other compiler flags, so they get their own target
# dir; it lives in the machine's cache (not the checkout), so a fresh clone on
# the same machine (CI) rebuilds only Berth's crates, not every dependency.
export CARGO_TARGET_DIR=${BERTH_AFL_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth/afl-target}
export CARGO_INCREMENTAL=0
bins=()
for t in "${targets[@]}"; do bins+=(--bin "fuzz_$t"); done
cargo afl build --locked -p berth-fuzz --features afl "${bins[@]}"

# Unattended runs: no UI, no core-pattern or CPU-governor checks, no pinning
# to a core other processes share, stop at the time budget.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 AFL_QUIET=1
# The layer target unpacks (chrooted, see fuzz/src/lib.rs) below a scratch
# dir on tmpfs of its own, removed at the end.
scratch=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/berth-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export BERTH_FUZZ_SCRATCH=$scratch
failed=0
passed=0
for t in "${targets[@]}"; do
  rm -rf "${out:?}/$t"
  mkdir -p "$out/$t"
  echo "fuzz: $t for ${secs}s"
  # -t: a single input over 5 s is a hang; -V: stop after the budget.
  seeds=${FUZZ_SEEDS:-fuzz/corpus}/$t
  if ! cargo afl fuzz -i "$seeds" -o "$out/$t" -t 5000 -V "$secs" \
      "$CARGO_TARGET_DIR/debug/fuzz_$t" >"$out/$t.log" 2>&1; then
    echo "fuzz: afl-fuzz failed on $t:" >&2
    tail -n 30 "$out/$t.log" >&2
    failed=$((failed + 1))
    continue
  fi
  stats="$out/$t/default/fuzzer_stats"
  field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  crashes=$(field saved_crashes)
  hangs=$(field saved_hangs)
  echo "fuzz: $t: $(field execs_done) execs in $(field run_time)s, $(field corpus_count) paths, edges $(field edges_found), crashes ${crashes}, hangs ${hangs}"
  if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
    echo "fuzz: $t found crashes or hangs: see $out/$t/default/{crashes,hangs}/" >&2
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
