#!/usr/bin/env bash
# Fuzz smoke test: builds every fuzz target in fuzz/ with libFuzzer's coverage
# instrumentation and runs each one briefly, starting from its seed corpus
# (which includes the inputs of past crashes). Catches a target that no longer
# builds and a regression on a known input; the long runs are manual (see
# fuzz/README.md and docs/fuzzing.md).
#
# Plain cargo on the stable toolchain, without cargo-fuzz (nothing to install;
# the registry is needed only if fuzz/Cargo.lock is stale, see below): the
# flags below are the ones `cargo fuzz build -s none` passes. `--target` keeps
# them away from build scripts and proc macros.
#
# Budget: with a warm build cache (CARGO_TARGET_DIR survives between CI runs
# on a machine) this takes about 4 minutes: a no-op build plus
# FUZZ_SMOKE_SECONDS per target. A cold instrumented build of wasmtime, kube
# and axum needs about 18 CPU-minutes (32 minutes of wall time on a busy
# 2-core machine), so it gets at most FUZZ_SMOKE_BUILD_TIMEOUT seconds; past
# that the smoke test is skipped, and what was built stays cached for the
# next run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

SECONDS_PER_TARGET="${FUZZ_SMOKE_SECONDS:-20}"
BUILD_TIMEOUT="${FUZZ_SMOKE_BUILD_TIMEOUT:-900}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/fuzz/target}/fuzz}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions \
-Ccodegen-units=16"
unset CARGO_BUILD_TARGET

# fuzz/ has its own Cargo.lock; a dependency added to runtime/ or webhook/
# makes it stale. Say so, and resolve the new crates rather than fail.
locked=--locked
if ! (cd fuzz && cargo metadata --locked --format-version 1 >/dev/null 2>&1); then
  echo "fuzz-smoke: warning: fuzz/Cargo.lock is out of date; run 'cargo update -w' in fuzz/ and commit it"
  locked=
fi

echo "building fuzz targets (target dir $TARGET_DIR, build budget ${BUILD_TIMEOUT}s)"
start=$(date +%s)
set +e
(cd fuzz && timeout "$BUILD_TIMEOUT" cargo build --release $locked \
  --config 'profile.release.debug="line-tables-only"' \
  --target "$TRIPLE" --target-dir "$TARGET_DIR" --bins)
rc=$?
set -e
if [ "$rc" -eq 124 ]; then
  echo "fuzz-smoke: SKIPPED: the cold instrumented build did not finish in ${BUILD_TIMEOUT}s;"
  echo "fuzz-smoke: what was built stays cached in $TARGET_DIR and the next run continues it"
  exit 0
fi
[ "$rc" -eq 0 ] || { echo "fuzz-smoke: building the fuzz targets failed" >&2; exit "$rc"; }
echo "built in $(( $(date +%s) - start ))s"

BIN="$TARGET_DIR/$TRIPLE/release"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^dorado-fuzz$')
failed=()
ran=0
for t in $targets; do
  mkdir -p "$WORK/corpus/$t" "$WORK/artifacts/$t"
  log="$WORK/$t.log"
  if "$BIN/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$WORK/artifacts/$t/" \
      "$WORK/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz-smoke: $t ok ($execs executions, $cov)"
  else
    echo "fuzz-smoke: $t FAILED; its log:" >&2
    tail -60 "$log" >&2
    for a in "$WORK/artifacts/$t"/*; do
      [ -e "$a" ] || continue
      echo "crash input (base64) $(basename "$a"): $(base64 -w0 "$a")" >&2
    done
    failed+=("$t")
  fi
  ran=$((ran + 1))
done

echo "fuzz-smoke: $((ran - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "reproduce: decode the input above into a file, then run $BIN/<target> <file>" >&2
  exit 1
fi
