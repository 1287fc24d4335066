#!/usr/bin/env bash
# cargo fuzz: every target of tests/fuzz for FUZZ_SECONDS each (default 20),
# from the checked-in corpus of real-shaped cases, with AddressSanitizer
# (and its LeakSanitizer). A panic, a failed assertion or a leak fails it;
# the input that did it is kept and its path printed.
#
#   tests/fuzz/run.sh                 run by tests/run
#   FUZZ_SECONDS=300 tests/fuzz/run.sh    a longer session by hand
#
# New inputs the fuzzer finds go to a temporary directory, not the corpus,
# so a run leaves the tree as it was.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
CARGO_FUZZ_VERSION=0.13.2
TOOLS=$ROOT/target/tools

if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into ${TOOLS#"$ROOT"/}" >&2
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
fi
export PATH=$TOOLS/bin:$PATH
# The sanitizers take -Z flags, which a stable rustc accepts only with
# RUSTC_BOOTSTRAP; its sanitizer runtimes ship with the stable toolchain.
# The machine has one toolchain, so no nightly is fetched.
export RUSTC_BOOTSTRAP=1
# --dev: an unoptimised build with debug assertions. A release build forces
# one codegen unit per crate and took 13 min on this 2-core machine; the
# fuzzing itself is bounded by time, not by executions.
fuzz=(--fuzz-dir tests/fuzz --target-dir target/fuzz --dev)

cargo fuzz build "${fuzz[@]}"
work=$(mktemp -d "${TMPDIR:-/tmp}/entitlements-fuzz.XXXXXX")
failed=()
for target in $(cargo fuzz list --fuzz-dir tests/fuzz); do
    mkdir -p "$work/$target"
    echo "fuzz: $target for ${SECONDS_PER_TARGET}s" >&2
    if ! cargo fuzz run "${fuzz[@]}" "$target" "$work/$target" "tests/fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -artifact_prefix="$work/$target-" \
        -print_final_stats=1 >"$work/$target.log" 2>&1; then
        failed+=("$target")
        tail -n 40 "$work/$target.log" >&2
    fi
    grep -E "^stat::number_of_executed_units|^Done" "$work/$target.log" >&2 || true
done
if ((${#failed[@]})); then
    echo "fuzz: failed: ${failed[*]}; inputs and logs in $work" >&2
    exit 1
fi
rm -rf "$work"
