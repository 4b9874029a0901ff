#!/usr/bin/env bash
# The main job: installs dependencies, builds, then runs the ESTALE matrix:
# estale-repro starts mock-mega (seeded, port 0) and antares-fs (a private
# mount) per run, reproduces every trigger under strategy `none`, checks that
# A, B, C and auto remove it without serving stale data, measures each
# strategy's cost (warm walks side by side), prints the table and the verdict
# (the recommended strategy, with its measured cost and correctness) and
# writes the JSON and the self-contained HTML report.
#
# Environment: TTL, SOAK, REPEAT (matrix flags); SHARD=K/N runs one shard and
# writes $BUILD_DIR/report/shard-K.json for `estale-repro merge` (the GitHub
# workflow does this); SKIP_BUILD=1 uses binaries already in $BUILD_DIR/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
[ "${SKIP_BUILD:-0}" = 1 ] || bash ci/build.sh
BUILD=${BUILD_DIR:-build}
out="$PWD/$BUILD/report"
mkdir -p "$out"
flags=(--ttl "${TTL:-300ms}" --soak "${SOAK:-15s}" --repeat "${REPEAT:-3}")
status=0
if [ -n "${SHARD:-}" ]; then
  k=${SHARD%%/*}
  "$BUILD/bin/estale-repro" matrix "${flags[@]}" --shard "$SHARD" --json "$out/shard-$k.json" || status=$?
  echo
  echo "shard $SHARD: $out/shard-$k.json (combine: estale-repro merge shard-*.json --html matrix.html)"
else
  "$BUILD/bin/estale-repro" matrix "${flags[@]}" --json "$out/matrix.json" --html "$out/matrix.html" || status=$?
  echo
  echo "report: $out/matrix.html (JSON: $out/matrix.json)"
fi
exit "$status"
