// The systems the walk benchmark runs over, each owning what it mounted or
// started: the native tree (nothing mounted), kernel overlayfs (mount(2)),
// a FUSE daemon serving the native tree (fuse-overlayfs, passthrough_ll) and
// antares-fs (repro's MountedFs against mock-mega). Every destructor unmounts
// and stops its process, so any exit path of the driver (an error, Ctrl-C)
// leaves nothing behind; a crash of the driver itself is covered for the FUSE
// daemons by PR_SET_PDEATHSIG (they unmount on SIGTERM), not for the kernel
// overlay mount.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "repro/harness.h"
#include "repro/process.h"

namespace antares::bench {

// Counters a walk is charged with: the difference of two scrapes.
struct Counters {
  std::optional<double> fuse;                 // antares_requests_total, all ops
  std::map<std::string, double> fuse_by_op;   // antares_requests_total by op
  std::optional<double> fs_http;              // antares_http_requests_total (retries included)
  std::optional<double> invalidations;        // antares_invalidations_total{result="sent"}
  std::optional<double> http;                 // mock-mega: requests on the Mega API endpoints
  std::map<std::string, double> http_by_endpoint;
};
Counters operator-(const Counters& after, const Counters& before);

// mock-mega's counters (the Mega API endpoints only: not admin, not metrics).
Result<Counters> scrape_mega(mock::AdminClient& admin);

// A fresh ext4 filesystem (mkfs.ext4 defaults, journal included) on a sparse
// image `dir`/scratch.img, loop-mounted at `dir`/fs: every run measures on a
// filesystem with the same history. A long-lived filesystem is not neutral:
// ext4 without a journal skips inodes freed in the last seconds (minutes,
// while their inode table is dirty) when it allocates, so a walk that
// creates files right after a run deleted a tree pays a scan per create
// (several times the walk's cost). The destructor unmounts (lazily if busy)
// and removes the image.
class ScratchExt4 {
 public:
  static Result<std::unique_ptr<ScratchExt4>> make(const std::string& dir, uint64_t size_bytes);
  ~ScratchExt4();
  ScratchExt4(const ScratchExt4&) = delete;
  ScratchExt4& operator=(const ScratchExt4&) = delete;
  const std::string& root() const { return mnt_; }
  // The destructor still unmounts, but leaves the image (walk_bench --keep).
  void keep_image() { keep_ = true; }

 private:
  ScratchExt4() = default;
  std::string image_, mnt_;
  bool keep_ = false;
};

// Kernel overlayfs with `lower` as lowerdir and a fresh upper/work under `dir`.
class KernelOverlay {
 public:
  static Result<std::unique_ptr<KernelOverlay>> mount(const std::string& lower, const std::string& dir);
  ~KernelOverlay();
  KernelOverlay(const KernelOverlay&) = delete;
  KernelOverlay& operator=(const KernelOverlay&) = delete;
  const std::string& root() const { return mnt_; }

 private:
  KernelOverlay() = default;
  std::string mnt_;
};

// A FUSE daemon started in the foreground on `dir`/mnt; mounted once
// /proc/self/mountinfo shows it. {mnt} in argv is replaced by the mountpoint,
// {dir} by `dir`.
class FuseDaemon {
 public:
  static Result<std::unique_ptr<FuseDaemon>> start(std::vector<std::string> argv, const std::string& dir);
  ~FuseDaemon();
  FuseDaemon(const FuseDaemon&) = delete;
  FuseDaemon& operator=(const FuseDaemon&) = delete;
  const std::string& root() const { return mnt_; }
  pid_t pid() const { return child_ ? child_->pid() : -1; }
  bool alive();

 private:
  FuseDaemon() = default;
  std::string mnt_, log_;
  std::unique_ptr<repro::Child> child_;
};

// antares-fs under `dir` (mnt, upper, cache, run); restart() stops it and
// mounts again over the same --cache.
class Antares {
 public:
  static Result<std::unique_ptr<Antares>> start(const repro::FsOptions& o, const std::string& mega_url,
                                               const std::string& dir);
  ~Antares() = default;
  Antares(const Antares&) = delete;
  Antares& operator=(const Antares&) = delete;
  const std::string& root() const { return fs_->mountpoint(); }
  pid_t pid() const { return pid_; }
  bool alive() { return fs_ && fs_->alive(); }
  Status restart();
  void stop() { fs_.reset(); }
  // antares-ctl metrics, reduced to the counters a walk is charged with.
  Result<Counters> scrape();

 private:
  Antares() = default;
  Status launch();
  repro::FsOptions opts_;
  std::string url_, dir_;
  std::unique_ptr<repro::MountedFs> fs_;
  pid_t pid_ = -1;
};

// The absolute path of program `name` in the usual bin and sbin directories
// (run_command does not search PATH), or "" if none is executable.
std::string find_program(const std::string& name);

// Mount points at or beneath `dir`, per /proc/self/mountinfo.
std::vector<std::string> mounts_under(const std::string& dir);

// CPU time (user + system, all threads, exited ones included) a process has
// used, in seconds; nullopt if it cannot be read. Resolution: one clock tick.
std::optional<double> cpu_seconds(pid_t pid);
// The pid of the first process whose command line contains `needle`, or -1.
pid_t find_process(const std::string& needle);

// VmRSS of a process in bytes; nullopt if it cannot be read.
std::optional<uint64_t> rss_bytes(pid_t pid);

}  // namespace antares::bench
