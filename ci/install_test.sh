#!/usr/bin/env bash
# The operator's path, end to end, on installed binaries (a ctest case, also
# runnable by hand: bash ci/install_test.sh BUILD_DIR): `cmake --install` into
# a temp prefix; every tool answers --version and SUBCOMMAND --help; `man`
# finds the pages; `mount -t fuse.antares-fs URL MNT -o ...` mounts through
# mount(8) -> the installed mount.fuse.antares-fs -> mount.fuse3 -> the
# installed antares-fs, and `antares-ctl status` answers right after mount
# returns, ANTARES_READY_TRIES times (default 100); an fstab line with _netdev
# and x-systemd.* mounts with `mount -T FILE -a`; `umount` unmounts; the log
# file has the daemon's lines. mount(8) looks for helpers in /sbin only, so the
# mounts run in a private mount namespace whose /usr/sbin (= /sbin) also holds
# a link to the installed helper: the machine's /sbin is not touched. Root.
set -euo pipefail
BUILD=$(cd "${1:?usage: install_test.sh BUILD_DIR}" && pwd)
TRIES=${ANTARES_READY_TRIES:-100}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/antares-install-XXXXXX")
mega_pid=""
cleanup() {
  for m in "$tmp/mnt" "$tmp/mnt2"; do
    if grep -qs " $m " /proc/self/mountinfo; then umount "$m" 2>/dev/null || fusermount3 -u -z "$m" || true; fi
  done
  if [ -n "$mega_pid" ]; then kill "$mega_pid" 2>/dev/null || true; wait "$mega_pid" 2>/dev/null || true; fi
  grep -qs " $tmp/" /proc/self/mountinfo || rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "install_test: $*" >&2; [ -f "$tmp/fs.log" ] && tail -20 "$tmp/fs.log" >&2; exit 1; }

P="$tmp/prefix"
cmake --install "$BUILD" --prefix "$P" >/dev/null
for t in antares-fs antares-ctl mock-mega estale-repro; do
  [ -x "$BUILD/bin/$t" ] || continue  # estale-repro is optional (ANTARES_BUILD_REPRO)
  [ -x "$P/bin/$t" ] || fail "$t not installed"
  "$P/bin/$t" --version | grep -q "^$t [0-9].* (git " || fail "$t --version"
  [ -s "$P/share/man/man1/$t.1" ] || fail "no man page for $t"
done
man -M "$P/share/man" -P cat antares-fs 2>/dev/null | grep -q "startup-timeout" || fail "man antares-fs"
"$P/bin/antares-ctl" strategy --help | grep -q "strategy NAME" || fail "antares-ctl strategy --help"
"$P/bin/antares-ctl" help refresh | grep -q "refresh \[PATH\]" || fail "antares-ctl help refresh"
if [ -x "$P/bin/estale-repro" ]; then
  "$P/bin/estale-repro" matrix --help | grep -q "every scenario" || fail "estale-repro matrix --help"
  "$P/bin/estale-repro" help scenario | grep -q "lower-refresh" || fail "estale-repro help scenario"
fi
[ -s "$P/share/doc/antares/examples/mnt-mega.mount" ] || fail "no example mount unit"
[ -x "$P/sbin/mount.fuse.antares-fs" ] || fail "no mount helper"

mkdir -p "$tmp"/{mnt,mnt2,upper,upper2,cache,cache2,sbin,realsbin}
"$P/bin/mock-mega" --seed 3 --files 200 --port 0 --port-file "$tmp/port" --log-level warn &
mega_pid=$!
for _ in $(seq 600); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || fail "mock-mega did not start"
export url="http://127.0.0.1:$(cat "$tmp/port")" tmp P TRIES
for f in /usr/sbin/*; do ln -s "$tmp/realsbin/${f##*/}" "$tmp/sbin/"; done
ln -sf "$P/sbin/mount.fuse.antares-fs" "$tmp/sbin/mount.fuse.antares-fs"

inner() {
  set -euo pipefail
  fail() { echo "install_test: $*" >&2; [ -f "$tmp/fs.log" ] && tail -20 "$tmp/fs.log" >&2; exit 1; }
  cleanup_inner() {
    for m in "$tmp/mnt" "$tmp/mnt2"; do
      if grep -qs " $m " /proc/self/mountinfo; then umount "$m" 2>/dev/null || fusermount3 -u -z "$m" || true; fi
    done
  }
  trap cleanup_inner EXIT
  endpoint_gone() {  # the previous daemon finished its teardown
    for _ in $(seq 400); do [ -z "$(ls -A "$tmp/run" 2>/dev/null)" ] && return 0; sleep 0.05; done
    return 1
  }
  mount --bind /usr/sbin "$tmp/realsbin"  # what the links in $tmp/sbin point to
  mount --bind "$tmp/sbin" /usr/sbin
  ctl() { "$P/bin/antares-ctl" --run-dir "$tmp/run" "$@"; }
  for i in $(seq "$TRIES"); do
    mount -t fuse.antares-fs "$url" "$tmp/mnt" \
      -o "upper=$tmp/upper,cache=$tmp/cache,run_dir=$tmp/run,log_file=$tmp/fs.log,ttl=300ms,nosuid" ||
      fail "mount -t fuse.antares-fs failed (try $i)"
    ctl --mountpoint "$tmp/mnt" status >/dev/null ||
      fail "antares-ctl status failed right after mount returned (try $i of $TRIES)"
    if [ "$i" -eq 1 ]; then ls "$tmp/mnt" | grep -q . || fail "empty mount"; fi
    umount "$tmp/mnt" || fail "umount failed (try $i)"
    endpoint_gone || fail "daemon did not exit after umount (try $i)"
  done
  grep -q "event=mounted" "$tmp/fs.log" || fail "no event=mounted in the log file"
  grep -q "event=unmounted" "$tmp/fs.log" || fail "no event=unmounted in the log file"
  echo "install_test: $TRIES of $TRIES mounts answered antares-ctl status right away"

  cat > "$tmp/fstab" <<FSTAB
# a temp fstab: mount -T reads it instead of /etc/fstab
$url  $tmp/mnt2  fuse.antares-fs  upper=$tmp/upper2,cache=$tmp/cache2,run_dir=$tmp/run,strategy=auto,_netdev,x-systemd.requires=network-online.target  0  0
FSTAB
  mount -T "$tmp/fstab" -a || fail "mount -T FSTAB -a failed"
  grep -q " $tmp/mnt2 .* - fuse.antares-fs $url " /proc/self/mountinfo || fail "fstab entry not mounted as fuse.antares-fs"
  ctl --mountpoint "$tmp/mnt2" status | grep -q '"strategy": "auto"' || fail "status of the fstab mount"
  mount -T "$tmp/fstab" -a || fail "mount -a again should see the entry as mounted"
  umount "$tmp/mnt2" || fail "umount of the fstab mount"
  endpoint_gone || fail "fstab daemon did not exit after umount"
}
export -f inner
unshare --mount --propagation private bash -c inner || fail "mount tests failed (see above)"
echo "install_test: ok"
