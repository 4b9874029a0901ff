#!/usr/bin/env bash
# POSIX conformance of antares-fs with the suites filesystem engineers trust:
# pjdfstest (POSIX syscall semantics, ~8,800 checks) and fsx from xfstests
# (random read/write/mmap/truncate/fallocate against an in-memory oracle).
# Neither suite is part of the repository: build them by hand outside it
# (docs/conformance.md) and pass their paths. Not run by CI by default.
#
# For each strategy this starts one mock-mega (127.0.0.1, free port) and a
# FRESH antares-fs mount in a private temp dir, runs fsx on a new upper file
# and on an existing lower file (copied up by fsx's first write), then
# pjdfstest in a fresh subdirectory of the mount; pjdfstest also runs on a
# plain directory of the machine (ext4 or tmpfs) as the reference. It prints
# the failing pjdfstest checks per test file and a summary table, keeps the
# logs, always unmounts and stops what it started, and exits non-zero if any
# check fails.
#
#   PJDFSTEST=$HOME/src/pjdfstest FSX=$HOME/src/xfstests/ltp/fsx bash ci/conformance.sh
#
# Exit status: 0 all checks passed, 1 a check failed, 2 usage or setup error,
# 128+N when stopped by signal N (after unmounting).
#
# Environment:
#   PJDFSTEST     directory holding the built `pjdfstest` binary and `tests/` (required)
#   FSX           the fsx binary (required)
#   STRATEGIES    strategies to mount, default "auto A B C" ("" = reference only)
#   FS_ARGS       extra antares-fs arguments for every mount, e.g.
#                 "--dir-open kernel --file-open kernel", default none
#   SUITES        default "pjdfstest fsx"; "fsx" alone for long fsx runs
#   FSX_OPS       fsx operations per file, default 100000 (the bar is 1000000)
#   FSX_SEED      fsx seed, default 1
#   FSX_ARGS      extra fsx arguments (e.g. -A for AIO), default none
#   FSX_TIMEOUT   seconds per fsx run before it counts as hung, default 7200
#   PJD_TESTS     pjdfstest subset, relative to tests/ (e.g. "chmod open/02.t"), default all
#   PJD_TIMEOUT   seconds per pjdfstest file before it counts as hung, default 900
#   REFERENCE     1 (default) runs pjdfstest on a plain directory too; 0 skips it
#   REFERENCE_DIR parent of the reference directory, default the temp dir (choose /dev/shm for tmpfs)
#   MEGA_SEED, MEGA_FILES  mock-mega repository, default 1 and 2000 files
#   OUT_DIR       where logs go, default a new /tmp/antares-conformance.XXXXXX/logs (kept)
#   BUILD_DIR     default build; SKIP_BUILD=1 uses it as it is
#   READY_TIMEOUT seconds to wait for mock-mega and each mount, default 60
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

STRATEGIES=${STRATEGIES-auto A B C}
SUITES=${SUITES:-pjdfstest fsx}
FSX_OPS=${FSX_OPS:-100000}
FSX_SEED=${FSX_SEED:-1}
FSX_ARGS=${FSX_ARGS:-}
FS_ARGS=${FS_ARGS:-}
FSX_TIMEOUT=${FSX_TIMEOUT:-7200}
PJD_TESTS=${PJD_TESTS:-}
PJD_TIMEOUT=${PJD_TIMEOUT:-900}
REFERENCE=${REFERENCE:-1}
MEGA_SEED=${MEGA_SEED:-1}
MEGA_FILES=${MEGA_FILES:-2000}
BUILD_DIR=${BUILD_DIR:-build}
READY_TIMEOUT=${READY_TIMEOUT:-60}

die() { echo "conformance: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (pjdfstest changes owners and modes)"
has_suite() { [[ " $SUITES " == *" $1 "* ]]; }
for t in $SUITES; do
  case "$t" in pjdfstest | fsx) ;; *) die "SUITES: unknown suite '$t' (pjdfstest, fsx)" ;; esac
done
if has_suite pjdfstest; then
  [ -n "${PJDFSTEST:-}" ] || die "set PJDFSTEST to the pjdfstest directory (docs/conformance.md)"
  PJDFSTEST=$(cd "$PJDFSTEST" 2>/dev/null && pwd) || die "PJDFSTEST: no such directory"
  { [ -x "$PJDFSTEST/pjdfstest" ] && [ -d "$PJDFSTEST/tests" ]; } || die "$PJDFSTEST has no built pjdfstest and tests/"
  command -v prove >/dev/null || die "prove (perl) not found: apt-get install perl"
  for t in $PJD_TESTS; do
    [ -e "$PJDFSTEST/tests/$t" ] || die "PJD_TESTS: no $PJDFSTEST/tests/$t"
  done
fi
if has_suite fsx; then
  [ -n "${FSX:-}" ] || die "set FSX to the fsx binary (docs/conformance.md)"
  [ -x "$FSX" ] || die "FSX=$FSX is not an executable"
  FSX=$(cd "$(dirname "$FSX")" && pwd)/$(basename "$FSX")
fi
command -v fusermount3 >/dev/null || die "fusermount3 not found: apt-get install fuse3"
for v in FSX_OPS FSX_SEED FSX_TIMEOUT PJD_TIMEOUT MEGA_SEED MEGA_FILES READY_TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, not '${!v}'"
done
case "$REFERENCE" in 0 | 1) ;; *) die "REFERENCE must be 0 or 1" ;; esac
for s in $STRATEGIES; do
  case "$s" in none | A | B | C | auto) ;; *) die "unknown strategy '$s' (none, A, B, C, auto)" ;; esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/antares-conformance.XXXXXX") || die "mktemp failed"
OUT_DIR=${OUT_DIR:-$WORK/logs}
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# What this run started, for the trap: daemon pids, mountpoints, scratch dirs.
MEGA_PID=
CHILD_PID=
FS_PID=
FS_MNT=
SCRATCH=()

is_mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; }

# Waits up to $2 seconds for pid $1 to exit; 0 if it did.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.1
  done
  return 0
}

# SIGTERM makes antares-fs leave its loop and unmount; a lazy unmount and
# SIGKILL are the fallbacks so nothing is left behind. Returns the exit code.
stop_fs() {
  local code=0
  if [ -n "$FS_PID" ]; then
    kill -TERM "$FS_PID" 2>/dev/null
    if ! wait_exit "$FS_PID" 30; then
      echo "conformance: antares-fs $FS_PID ignored SIGTERM for 30 s; killing it" >&2
      kill -KILL "$FS_PID" 2>/dev/null
    fi
    wait "$FS_PID" 2>/dev/null
    code=$?
    FS_PID=
  fi
  if [ -n "$FS_MNT" ]; then
    if is_mounted "$FS_MNT"; then
      echo "conformance: $FS_MNT still mounted after the daemon exited; unmounting" >&2
      fusermount3 -u "$FS_MNT" 2>/dev/null || fusermount3 -uz "$FS_MNT" 2>/dev/null || umount -l "$FS_MNT"
    fi
    FS_MNT=
  fi
  return $code
}

# shellcheck disable=SC2317  # reached through the trap
stop_mega() {
  if [ -n "$MEGA_PID" ]; then
    kill -TERM "$MEGA_PID" 2>/dev/null
    wait_exit "$MEGA_PID" 15 || kill -KILL "$MEGA_PID" 2>/dev/null
    wait "$MEGA_PID" 2>/dev/null
    MEGA_PID=
  fi
}

# shellcheck disable=SC2317  # reached through the trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  cd /
  # A suite still running (interrupted run): its whole process group, so
  # nothing keeps the mount busy.
  if [ -n "$CHILD_PID" ]; then
    kill -TERM -- "-$CHILD_PID" 2>/dev/null
    wait_exit "$CHILD_PID" 10 || kill -KILL -- "-$CHILD_PID" 2>/dev/null
    wait "$CHILD_PID" 2>/dev/null
  fi
  stop_fs
  stop_mega
  local d
  for d in "${SCRATCH[@]}"; do
    # Never recurse into a directory that still holds a mount.
    if awk -v d="$d/" 'index($2 "/", d) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
      echo "conformance: $d still holds a mount; left in place" >&2
    else
      rm -rf "$d"
    fi
  done
  rm -f "$WORK/mock-mega.port"
  rmdir "$WORK" 2>/dev/null  # kept when it holds the logs
  echo "logs: $OUT_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# bounded SECONDS DIR LOG CMD...: runs CMD in DIR with output to LOG, killed
# (with its children: timeout makes its own process group) after SECONDS.
# In the background and waited for, so Ctrl-C interrupts the wait at once and
# the trap stops the group. Returns CMD's exit code, 124/137 on timeout.
bounded() {
  local secs=$1 dir=$2 log=$3
  shift 3
  (cd "$dir" && exec timeout -k 10 "$secs" "$@") >"$log" 2>&1 </dev/null &
  CHILD_PID=$!
  wait "$CHILD_PID"
  local rc=$?
  CHILD_PID=
  return $rc
}

# --- pjdfstest ---------------------------------------------------------------

pjd_files() {
  local t
  if [ -z "$PJD_TESTS" ]; then
    (cd "$PJDFSTEST/tests" && find . -name '*.t' | sed 's|^\./||' | sort -V)
  else
    for t in $PJD_TESTS; do
      if [ -d "$PJDFSTEST/tests/$t" ]; then
        (cd "$PJDFSTEST/tests" && find "$t" -name '*.t' | sort -V)
      else
        echo "$t"
      fi
    done
  fi
}

# Reads one file's `prove -v` output: prints "planned failed f1 f2 ...", where
# a failure is a "not ok" (TODO excluded) or a planned test that never ran.
pjd_parse() {
  awk '
    /^1\.\.[0-9]+/ && !plan { split($0, p, /\.\./); plan = p[2] + 0; next }
    /^not ok [0-9]+/ { if ($0 !~ /# *TODO/) bad[$3 + 0] = 1; seen[$3 + 0] = 1; next }
    /^ok [0-9]+/ { seen[$2 + 0] = 1; next }
    END {
      out = ""; n = 0
      for (i = 1; i <= plan; i++) if (bad[i] || !seen[i]) { out = out " " i; n++ }
      print plan + 0, n out
    }' "$1"
}

# Runs every selected pjdfstest file in $1 (a fresh directory) with prove;
# logs under $2. Writes $2/pjdfstest-failures.txt ("file: numbers") and
# $2/pjdfstest-notok.txt, and sets PJD_CHECKS, PJD_FAILED, PJD_FILES_FAILED, PJD_SECONDS.
run_pjdfstest() {
  local dir=$1 logs=$2 t log planned failed nums rc start
  mkdir -p "$logs/pjdfstest"
  : >"$logs/pjdfstest-failures.txt"
  : >"$logs/pjdfstest-notok.txt"
  PJD_CHECKS=0 PJD_FAILED=0 PJD_FILES_FAILED=0
  start=$SECONDS
  while read -r t; do
    log="$logs/pjdfstest/${t//\//_}.log"
    bounded "$PJD_TIMEOUT" "$dir" "$log" prove -v "$PJDFSTEST/tests/$t"
    rc=$?
    read -r planned failed nums < <(pjd_parse "$log")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      nums="${nums:+$nums }(hung: killed after ${PJD_TIMEOUT}s)"
      [ "$failed" = 0 ] && failed=1
    elif [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
      nums="(prove exit $rc: $(grep -m1 -E 'Bad plan|Dubious|Parse errors' "$log"))"
      failed=1
    fi
    if [ "$planned" = 0 ] && [ "$failed" = 0 ]; then
      nums="(no plan: the file did not run)"
      failed=1
    fi
    PJD_CHECKS=$((PJD_CHECKS + planned))
    if [ "$failed" != 0 ]; then
      PJD_FAILED=$((PJD_FAILED + failed))
      PJD_FILES_FAILED=$((PJD_FILES_FAILED + 1))
      echo "$t: $nums ($failed/$planned)" | tee -a "$logs/pjdfstest-failures.txt"
      grep -E '^not ok' "$log" | grep -v '# *TODO' | sed "s|^|$t: |" >>"$logs/pjdfstest-notok.txt"
    fi
  done < <(pjd_files)
  PJD_SECONDS=$((SECONDS - start))
}

# --- fsx -------------------------------------------------------------------

# run_fsx LABEL FILE LOGDIR [fsx args]: sets FSX_RESULT ("ok" or the failure).
run_fsx() {
  local label=$1 file=$2 logs=$3 rc start
  shift 3
  mkdir -p "$logs/fsx-$label"
  start=$SECONDS
  # -q: no per-operation chatter; mmap reads and writes stay on (no -R/-W).
  # shellcheck disable=SC2086
  bounded "$FSX_TIMEOUT" / "$logs/fsx-$label.log" \
    "$FSX" -q -N "$FSX_OPS" -S "$FSX_SEED" -P "$logs/fsx-$label" $FSX_ARGS "$@" "$file"
  rc=$?
  if [ $rc = 0 ]; then
    FSX_RESULT="ok ($FSX_OPS ops, $((SECONDS - start)) s)"
  else
    local why op
    why=$(grep -m1 -vE '^(Seed set to|mapped writes DISABLED|main: filesystem does not support|skipping|All |$)' \
      "$logs/fsx-$label.log" | cut -c1-100)
    if [ $rc = 124 ] || [ $rc = 137 ]; then why="hung: killed after ${FSX_TIMEOUT}s"; fi
    op=$(grep -m1 -oE 'LOG DUMP \([0-9]+ total operations\)' "$logs/fsx-$label.log" | grep -oE '[0-9]+')
    FSX_RESULT="FAIL${op:+ at op $op} (exit $rc): $why"
    echo "fsx $label failed; last lines of $logs/fsx-$label.log:"
    tail -n 25 "$logs/fsx-$label.log" | sed 's/^/    /'
  fi
  echo "fsx $label: $FSX_RESULT"
}

# --- the project -----------------------------------------------------------

BIN="$ROOT/$BUILD_DIR/bin"
if [ -n "$STRATEGIES" ]; then
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    BUILD_DIR=$BUILD_DIR bash ci/build.sh || die "build failed"
  fi
  for b in mock-mega antares-fs antares-ctl; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: build first (bash ci/build.sh)"
  done

  port_file="$WORK/mock-mega.port"
  "$BIN/mock-mega" --seed "$MEGA_SEED" --files "$MEGA_FILES" --port 0 --port-file "$port_file" \
    --paused --log-level warn >"$OUT_DIR/mock-mega.log" 2>&1 </dev/null &
  MEGA_PID=$!
  deadline=$((SECONDS + READY_TIMEOUT))
  until [ -s "$port_file" ]; do
    kill -0 "$MEGA_PID" 2>/dev/null || die "mock-mega exited: $(tail -n 5 "$OUT_DIR/mock-mega.log")"
    [ $SECONDS -ge $deadline ] && die "mock-mega wrote no port within ${READY_TIMEOUT}s"
    sleep 0.1
  done
  MEGA_URL="http://127.0.0.1:$(tr -d ' \n' <"$port_file")"
  echo "mock-mega: $MEGA_URL (seed $MEGA_SEED, $MEGA_FILES files)"
fi

# start_fs STRATEGY BASE: mounts a fresh antares-fs under BASE/mnt.
start_fs() {
  local s=$1 base=$2 log=$3
  { mkdir -p "$base"/{mnt,upper,cache} && mkdir -m 0700 "$base/run"; } || die "cannot create $base"
  "$BIN/antares-fs" --mega "$MEGA_URL" --mountpoint "$base/mnt" --upper "$base/upper" --cache "$base/cache" \
    --run-dir "$base/run" --strategy "$s" --foreground $FS_ARGS >"$log" 2>&1 </dev/null &
  FS_PID=$!
  FS_MNT=$base/mnt
  local deadline=$((SECONDS + READY_TIMEOUT))
  # Ready = mounted and the control endpoint answers (the loop is serving).
  until is_mounted "$base/mnt" &&
    "$BIN/antares-ctl" --run-dir "$base/run" --mountpoint "$base/mnt" status >/dev/null 2>&1; do
    if ! kill -0 "$FS_PID" 2>/dev/null; then
      wait "$FS_PID"
      local code=$?
      FS_PID=
      die "antares-fs ($s) exited $code before it was ready: $(tail -n 5 "$log")"
    fi
    [ $SECONDS -ge $deadline ] && die "antares-fs ($s) not ready within ${READY_TIMEOUT}s: $(tail -n 5 "$log")"
    sleep 0.1
  done
}

declare -A ROW
overall=0

for s in $STRATEGIES; do
  echo
  echo "=== strategy $s ==="
  base="$WORK/$s"
  logs="$OUT_DIR/$s"
  mkdir -p "$logs"
  SCRATCH+=("$base")
  start_fs "$s" "$base" "$logs/antares-fs.log"
  mnt="$base/mnt"

  # A lower file that nothing has opened yet; -k keeps its bytes as fsx's
  # starting state, so the copy-up's data is checked too.
  fsx_new="-" fsx_lower="-"
  if has_suite fsx; then
    lower=$(find "$mnt" -xdev -type f -size +64k -print -quit 2>/dev/null)
    [ -n "$lower" ] || lower=$(find "$mnt" -xdev -type f -size +8k -print -quit 2>/dev/null)
    run_fsx new "$mnt/fsx-new-file" "$logs"
    fsx_new=$FSX_RESULT
    if [ -n "$lower" ]; then
      rel=${lower#"$mnt"/}
      [ -e "$base/upper/$rel" ] && echo "conformance: $rel already in upper before fsx" >&2
      echo "fsx lower file: /$rel ($(stat -c %s "$lower") bytes)"
      run_fsx lower "$lower" "$logs" -k
      fsx_lower=$FSX_RESULT
      [ -e "$base/upper/$rel" ] || echo "conformance: /$rel was not copied up" >&2
    else
      fsx_lower="FAIL: no lower file found"
    fi
  fi

  PJD_FAILED=- PJD_CHECKS=- PJD_FILES_FAILED=- PJD_SECONDS=-
  if has_suite pjdfstest; then
    pjd_dir="$mnt/pjdfstest.$$"
    mkdir "$pjd_dir" || die "cannot create $pjd_dir"
    run_pjdfstest "$pjd_dir" "$logs"
  fi

  alive=yes
  kill -0 "$FS_PID" 2>/dev/null && is_mounted "$mnt" || alive=no
  stop_fs
  code=$?
  ROW[$s]="$PJD_FAILED $PJD_CHECKS $PJD_FILES_FAILED $PJD_SECONDS"
  printf '%s\t%s\t%s\t%s\n' "$fsx_new" "$fsx_lower" "$alive" "$code" >"$logs/fsx-daemon.tsv"
  if [ "$PJD_FAILED" != 0 ] && [ "$PJD_FAILED" != - ]; then overall=1; fi
  if [ "${fsx_new:0:4}" = FAIL ] || [ "${fsx_lower:0:4}" = FAIL ] || [ "$alive" != yes ] || [ "$code" != 0 ]; then
    overall=1
  fi
  echo "strategy $s: pjdfstest $PJD_FAILED failed of $PJD_CHECKS checks in $PJD_FILES_FAILED files" \
    "(${PJD_SECONDS}s); fsx new: $fsx_new; fsx lower: $fsx_lower; daemon alive at end: $alive, exit $code"
done

if [ "$REFERENCE" = 1 ]; then
  echo
  ref_parent=${REFERENCE_DIR:-$WORK}
  ref=$(mktemp -d "$ref_parent/antares-conformance-ref.XXXXXX") || die "cannot create a directory in $ref_parent"
  SCRATCH+=("$ref")
  ref_fs=$(df -PT "$ref" | awk 'NR == 2 { print $2 }')
  echo "=== reference: $ref ($ref_fs) ==="
  logs="$OUT_DIR/reference"
  mkdir -p "$logs"
  FSX_RESULT=-
  if has_suite fsx; then
    run_fsx new "$ref/fsx-new-file" "$logs"
    [ "${FSX_RESULT:0:4}" = FAIL ] && overall=1
  fi
  printf '%s\t%s\t%s\t%s\n' "$FSX_RESULT" "-" "-" "-" >"$logs/fsx-daemon.tsv"
  PJD_FAILED=- PJD_CHECKS=- PJD_FILES_FAILED=- PJD_SECONDS=-
  if has_suite pjdfstest; then
    mkdir "$ref/pjdfstest" && run_pjdfstest "$ref/pjdfstest" "$logs"
    [ "$PJD_FAILED" = 0 ] || overall=1
  fi
  ROW[reference]="$PJD_FAILED $PJD_CHECKS $PJD_FILES_FAILED $PJD_SECONDS"
  echo "reference ($ref_fs): pjdfstest $PJD_FAILED failed of $PJD_CHECKS checks in $PJD_FILES_FAILED files (${PJD_SECONDS}s)"
fi

echo
echo "=== summary ($(date -u +%Y-%m-%dT%H:%MZ), fsx $FSX_OPS ops, seed $FSX_SEED) ==="
printf '%-10s | %-28s | %-8s | %-40s | %-40s | %s\n' run "pjdfstest failed/checks (files)" time "fsx new upper file" "fsx lower file" "daemon"
names=$STRATEGIES
[ "$REFERENCE" = 1 ] && names="$names reference"
for n in $names; do
  read -r f c ff secs <<<"${ROW[$n]:-0 0 0 0}"
  IFS=$'\t' read -r fn fl alive code <"$OUT_DIR/$n/fsx-daemon.tsv"
  daemon="-"
  [ "$n" != reference ] && daemon="alive=$alive exit=$code"
  printf '%-10s | %-28s | %-8s | %-40s | %-40s | %s\n' "$n" "$f/$c ($ff)" "${secs}s" "${fn:0:40}" "${fl:0:40}" "$daemon"
done
if [ "$REFERENCE" = 1 ] && [ -n "$STRATEGIES" ] && has_suite pjdfstest; then
  echo
  echo "pjdfstest failures that the reference does not have:"
  for s in $STRATEGIES; do
    extra=$(grep -cvxFf "$OUT_DIR/reference/pjdfstest-failures.txt" "$OUT_DIR/$s/pjdfstest-failures.txt")
    echo "  $s: $extra files"
  done
fi
[ $overall = 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL"
exit $overall
