#!/usr/bin/env bash
# The main job: installs dependencies, builds, starts mock-mega on a private
# port with a seeded repository, applies mutations through the admin API and
# prints what changed. (The filesystem and the ESTALE reproduction join this
# job as they land; see README.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
bash ci/build.sh
BIN=${BUILD_DIR:-build}/bin
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM

"$BIN/mock-mega" --seed "${SEED:-42}" --files "${FILES:-20000}" --port 0 --port-file "$work/port" \
  --log-level warn &
pid=$!
for _ in $(seq 300); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { echo "mock-mega did not start" >&2; exit 1; }
url="http://127.0.0.1:$(cat "$work/port")"
split() { sed -e 's/^[^[]*\[//' -e 's/\]}*$//' -e 's/},{/}\n{/g'; }

echo "== mock-mega at $url"
echo "-- state: $(curl -sf "$url/admin/state")"
echo "-- root listing (GET /api/v1/tree/content-hash?path=/):"
curl -sf "$url/api/v1/tree/content-hash?path=/" | split | sed 's/^/   /'
buck=$(curl -sf "$url/admin/paths?class=buck" | sed -e 's/.*"paths":\["\([^"]*\)".*/\1/')
echo "-- modify $buck and apply 8 seeded random mutations:"
curl -sf -X POST "$url/admin/mutate" -d "{\"mutations\":[{\"kind\":\"modify\",\"path\":\"$buck\"}]}" | split | sed 's/^/   /'
curl -sf -X POST "$url/admin/mutate" -d '{"count":8}' | split | sed 's/^/   /'
echo "-- state: $(curl -sf "$url/admin/state")"
echo "-- metrics:"
curl -sf "$url/metrics" | grep -v '^#' | grep -v ' 0$' | sed 's/^/   /'
