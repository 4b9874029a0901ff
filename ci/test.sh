#!/usr/bin/env bash
# The test command: installs dependencies, builds warning-free, runs every
# test (unit and end-to-end) with ctest, then the regression matrix of
# estale-repro with a short TTL, a short form of the soak acceptance (3 seeds
# per fix strategy, where the full form is 20 soaks of 30 s: docs/conformance.md),
# and one scenario at the real 5 s TTL. Fails on any test failure or any
# regression (none stops reproducing, or a fix shows ESTALE, a wrong read or a
# stale read beyond the TTL window).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
bash ci/build.sh
BUILD=${BUILD_DIR:-build}
(cd "$BUILD" && ctest --output-on-failure -j "$(nproc)" --timeout 900)
"$BUILD/bin/estale-repro" matrix --ttl 300ms --soak 8s --repeat 2 --cost-rounds 3 --json "$BUILD/matrix.json"
"$BUILD/bin/estale-repro" soak --strategy A,B,C,auto --seeds 3 --seed 100 --duration 8s --ttl 300ms \
  --json "$BUILD/soak.json"
"$BUILD/bin/estale-repro" scenario lower-refresh --strategy all --ttl 5s
