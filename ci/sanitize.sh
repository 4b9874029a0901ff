#!/usr/bin/env bash
# Sanitizer job: builds with ASan+UBSan or TSan and runs the tests.
#   ci/sanitize.sh address | thread
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-address}
bash ci/deps.sh
BUILD_DIR="build-$kind" bash ci/build.sh -DANTARES_SANITIZE="$kind" -DANTARES_BUILD_BENCHMARKS=OFF
cd "build-$kind"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
export ASAN_OPTIONS="detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1"
ctest --output-on-failure -j "$(nproc)" --timeout 900
