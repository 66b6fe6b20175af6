#!/usr/bin/env bash
# Bounded fuzzing, as CI runs it (.ci/run, phase "fuzz (bounded)"):
#  1. installs cargo-fuzz into a cache if it is missing (reused afterwards),
#  2. builds every target (stable toolchain, RUSTC_BOOTSTRAP=1 for cargo-fuzz's
#     nightly flags) into a cached target directory,
#  3. replays every kept crashing input (regressions/<target>/*): each must pass,
#  4. runs every target for a bounded time from its committed seeds
#     (corpus/<target>) plus a corpus cached across runs, a few targets at a time.
# Any crash, failed assertion, leak, timeout or out-of-memory fails the run; the
# reproducing input's path and the command that replays it are printed.
#
# Environment (all optional):
#   CONDUIT_FUZZ_SECS        seconds per target                (default 60)
#   CONDUIT_FUZZ_JOBS        targets fuzzed at once            (default: cores, at most 2)
#   CONDUIT_FUZZ_TARGETS     space-separated subset            (default: all)
#   CONDUIT_FUZZ_TOOLS       cargo-fuzz install root           (default ~/.cache/conduit/cargo-fuzz)
#   CONDUIT_FUZZ_TARGET_DIR  build directory                   (default ~/.cache/conduit/fuzz-target)
#   CONDUIT_FUZZ_CORPUS      corpus grown across runs          (default ~/.cache/conduit/fuzz-corpus)
#   CONDUIT_FUZZ_SEED        a fixed libFuzzer seed: start from the committed corpus
#                            only (new inputs go to a scratch dir) and stop after
#                            CONDUIT_FUZZ_RUNS inputs (default 20000) or the time
#                            bound (what CI uses). The mutations follow the seed,
#                            but which inputs are kept follows coverage, which
#                            thread timing can change, so two runs of one tree can
#                            still explore differently: a failure is a real bug
#                            (keep its input in regressions/), never noise.
# Exit status: 0 if every target ran clean, 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
FUZZ_DIR="$PWD"

SECS="${CONDUIT_FUZZ_SECS:-60}"
CORES="$(nproc 2>/dev/null || echo 1)"
JOBS="${CONDUIT_FUZZ_JOBS:-$(( CORES < 2 ? CORES : 2 ))}"
CACHE="$HOME/.cache/conduit"
TOOLS="${CONDUIT_FUZZ_TOOLS:-$CACHE/cargo-fuzz}"
TARGET_DIR="${CONDUIT_FUZZ_TARGET_DIR:-$CACHE/fuzz-target}"
CORPUS_CACHE="${CONDUIT_FUZZ_CORPUS:-$CACHE/fuzz-corpus}"
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/conduit-fuzz-logs.XXXXXX")"

ts() { date -u +%H:%M:%S; }
say() { echo "[fuzz $(ts)] $*"; }

export PATH="$TOOLS/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz into $TOOLS (once; ~2-4 min)"
  if ! cargo install cargo-fuzz --locked --root "$TOOLS"; then
    # The only case in which this phase does not fuzz: say so loudly.
    say "SKIPPED: cargo-fuzz is not installed and could not be installed (no crates.io?); nothing was fuzzed"
    exit 0
  fi
fi
# cargo-fuzz passes -Z flags (sanitizer, coverage); stable rustc accepts them with this.
export RUSTC_BOOTSTRAP=1

# The fuzz package has its own lockfile (it is not in the workspace). Left stale,
# each machine would resolve the missing entries to whatever is newest that day
# and fuzz different code: refuse that, and say how to refresh it.
if ! cargo tree --locked --prefix none >/dev/null 2>"$LOGS/lockfile.log"; then
  say "FAILED: fuzz/Cargo.lock is out of date with what the fuzz package builds (a dependency of conduit-core changed?)"
  grep -m3 "error" "$LOGS/lockfile.log" >&2 || tail -n 5 "$LOGS/lockfile.log" >&2
  say "refresh it from the workspace's versions and commit it: cp Cargo.lock fuzz/Cargo.lock && (cd fuzz && cargo tree >/dev/null)"
  exit 1
fi

targets="${CONDUIT_FUZZ_TARGETS:-$(cargo fuzz list)}"
t0="$(date +%s)"
say "building: $(echo "$targets" | tr '\n' ' ')(target dir $TARGET_DIR)"
for t in $targets; do
  cargo fuzz build --target-dir "$TARGET_DIR" "$t"
done
say "built in $(( $(date +%s) - t0 ))s"

failed=0
report() {  # target, what, log
  failed=1
  echo "[fuzz $(ts)] FAILED: $1 ($2); the failure and the last lines of its log ($3):" >&2
  grep -m1 -A4 "panicked at\|ERROR: libFuzzer" "$3" >&2 || true
  tail -n 20 "$3" >&2
}

# Kept crashing inputs: each replays clean now (libFuzzer runs the files given).
for t in $targets; do
  [ -d "regressions/$t" ] || continue
  inputs=(regressions/"$t"/*)
  [ -e "${inputs[0]}" ] || continue
  if cargo fuzz run --target-dir "$TARGET_DIR" "$t" "${inputs[@]}" >"$LOGS/$t.regressions.log" 2>&1; then
    say "$t: ${#inputs[@]} regression input(s) pass"
  else
    report "$t" "a kept regression input fails again: replay with RUSTC_BOOTSTRAP=1 cargo fuzz run $t <file> (in fuzz/)" "$LOGS/$t.regressions.log"
  fi
done

# Bounded runs. New inputs go to the cached corpus (the first directory); the
# committed seeds are read only.
run_one() {
  local t="$1" grown="$CORPUS_CACHE/$t"
  local -a fixed=()
  if [ -n "${CONDUIT_FUZZ_SEED:-}" ]; then
    grown="$LOGS/$t.corpus"
    fixed=(-seed="$CONDUIT_FUZZ_SEED" -runs="${CONDUIT_FUZZ_RUNS:-20000}")
  fi
  mkdir -p "$grown" "artifacts/$t"
  cargo fuzz run --target-dir "$TARGET_DIR" "$t" "$grown" "corpus/$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${fixed[@]}" -artifact_prefix="$FUZZ_DIR/artifacts/$t/" >"$LOGS/$t.log" 2>&1
}
declare -A pid_of=()
t1="$(date +%s)"
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  say "$t: fuzzing for ${SECS}s"
  run_one "$t" &
  pid_of[$t]=$!
done
for t in $targets; do
  if wait "${pid_of[$t]}"; then
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOGS/$t.log" | tail -n1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$LOGS/$t.log" | tail -n1)"
    cov="$(grep -o 'cov: [0-9]*' "$LOGS/$t.log" | tail -n1 || true)"
    say "$t: clean, ${execs:-?} executions, ${rate:-?} exec/s, ${cov:-cov: ?}"
  else
    artifact="$(grep -o "Test unit written to [^ ]*" "$LOGS/$t.log" | tail -n1 | sed 's/Test unit written to //')"
    report "$t" "reproducing input: ${artifact:-see log}; replay: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t ${artifact:-<input>})" "$LOGS/$t.log"
  fi
done
say "fuzzed in $(( $(date +%s) - t1 ))s; logs in $LOGS"
exit "$failed"
