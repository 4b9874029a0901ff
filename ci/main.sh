#!/usr/bin/env bash
# The main job: installs dependencies, builds, then runs the ESTALE matrix:
# estale-repro starts mock-mega (seeded, port 0) and antares-fs (a private
# mount) per run, reproduces every trigger under strategy `none`, checks that
# A, B, C and auto remove it without serving stale data, prints the table and
# writes the JSON and the self-contained HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
bash ci/build.sh
BUILD=${BUILD_DIR:-build}
out="$PWD/$BUILD/report"
mkdir -p "$out"
status=0
"$BUILD/bin/estale-repro" matrix --ttl "${TTL:-300ms}" --soak "${SOAK:-15s}" --repeat "${REPEAT:-3}" \
  --json "$out/matrix.json" --html "$out/matrix.html" || status=$?
echo
echo "report: $out/matrix.html (JSON: $out/matrix.json)"
exit "$status"
