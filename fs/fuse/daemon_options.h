// The antares-fs command line, in both spellings an operator meets: GNU long
// options (`antares-fs --mega URL --mountpoint M --upper DIR ...`) and the
// libfuse/mount(8) form (`antares-fs URL M -o upper=DIR,cache=DIR,ttl=5s,...`)
// that `mount -t fuse.antares-fs`, mount.fuse3 and fstab produce. -o lists mix
// antares options, options mount(8) keeps for itself (ignored here), and
// FUSE/kernel mount options, which are passed to libfuse. Parsing and
// validation are pure functions of their input and the filesystem, so the
// whole policy is unit-tested; nothing here exits the process.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/result.h"

namespace antares::fs {

// The exit codes of antares-fs (also in its --help and man page).
enum DaemonExit {
  kExitOk = 0,           // unmounted cleanly
  kExitFailure = 1,      // runtime failure (or the daemon died during startup)
  kExitUsage = 2,        // bad command line, overlapping directories
  kExitMountpoint = 3,   // mountpoint missing, busy, not empty, or a dead mount
  kExitUnreachable = 4,  // Mega did not answer within --startup-timeout
  kExitLayerDir = 5,     // a layer directory is unusable or not ours to wipe
};

struct DaemonOptions {
  std::string mega, mountpoint, upper, cache, cl, cl_dir, run_dir;
  std::chrono::milliseconds ttl{5000};
  std::string strategy = "auto";
  double entry_timeout = 1.0, attr_timeout = 1.0, long_timeout = 60.0;
  int threads = 16;
  bool foreground = false;
  std::string log_file;                  // "" = stderr in the foreground, syslog when daemonized
  std::optional<log::Level> log_level;   // unset = info
  std::chrono::milliseconds startup_timeout{10000};
  std::string refresh = "merkle";     // lower refresh: merkle or per-dir
  uint64_t cache_size = 10ull << 30;  // bound of the blob cache under --cache; 0 = none
  int prefetch = 8;                   // prefetch threads of the lower store; 0 = off
  // "daemon": every directory open is an OPENDIR request. "kernel": the
  // first is answered ENOSYS, after which the kernel opens directories by
  // itself and caches every listing (B and auto only, merkle refresh).
  std::string dir_open = "daemon";
  std::string file_open = "daemon";
  // Mount options for libfuse and the kernel, defaults applied: "allow_other",
  // "fsname=URL", ... (see fuse_mount_options()).
  std::vector<std::string> fuse_options;
};

struct ParsedArgs {
  enum class Kind { run, help, version, error } kind = Kind::run;
  DaemonOptions options;
  std::string error;  // Kind::error: what was wrong, for "antares-fs: <error>"
};

// Parses argv[1..] (without the program name). `as_root` selects the
// defaults that depend on who mounts: allow_other is on by default only for
// root (a build farm's users read a root-owned mount; a user's own mount needs
// user_allow_other in /etc/fuse.conf for it). run_dir defaults to
// control::default_run_dir() when `default_run_dir` is given.
ParsedArgs parse_daemon_args(const std::vector<std::string>& args, bool as_root,
                             const std::string& default_run_dir);

// The help text (also the man page, via help2man).
const char* daemon_usage();

// What validate_paths() found wrong: the exit code and the message.
struct StartupError {
  int code = kExitFailure;
  std::string message;
};

// Checks the directories against each other and the filesystem and makes
// every path absolute: the mountpoint (exists, a directory, not mounted on,
// empty), --upper/--cache/--cl-dir (existing directories), and that no two of
// mountpoint, --upper, --cache, --cl-dir, --run-dir are the same directory or
// nested in one another (kExitUsage): the daemon wipes --cache/lower and
// --cl-dir, so an overlap would destroy the user's data.
std::optional<StartupError> validate_paths(DaemonOptions& o);

// "a" and "b" (absolute, normalized) are the same directory or one is inside
// the other.
bool paths_overlap(const std::string& a, const std::string& b);

}  // namespace antares::fs
