#!/usr/bin/env bash
# Configures and builds the project warning-free (-Werror) into $BUILD_DIR
# (default build/). Extra CMake arguments pass through, e.g.
#   BUILD_DIR=build-tsan ci/build.sh -DANTARES_SANITIZE=thread
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DANTARES_WERROR=ON "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
