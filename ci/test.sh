#!/usr/bin/env bash
# The test command: installs dependencies, builds warning-free, runs every
# test (unit and end-to-end) with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
bash ci/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" --timeout 600
