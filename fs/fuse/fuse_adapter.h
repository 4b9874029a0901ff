// The FUSE low-level adapter: one callback per operation that calls UnionFs
// and replies exactly once. Errors become replies here and only here; every
// reply is counted by operation and errno for /metrics. Kernel invalidations
// (strategy B) are sent by the Invalidator's own thread, never from inside a
// request handler, as fuse_lowlevel_notify_inval_entry requires.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fs/fuse/dir_snapshots.h"
#include "fs/union/union_fs.h"

namespace antares::fs {

// The FUSE operations the adapter serves, for metrics.
enum class FuseOp {
  lookup, forget, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir, symlink, rename, link, open, read,
  write, flush, release, fsync, opendir, readdir, releasedir, fsyncdir, statfs, setxattr, getxattr, listxattr,
  removexattr, access, create, readdirplus, kCount
};
const char* fuse_op_name(FuseOp op);

struct ReplyStats {
  static constexpr int kMaxErrno = 134;
  std::atomic<uint64_t> replies[int(FuseOp::kCount)][kMaxErrno]{};  // [op][errno], errno 0 = ok
};

struct KernelTimeouts {
  std::atomic<double> entry{1.0}, attr{1.0};
  std::atomic<bool> keep_cache{false};  // page cache survives open (only when invalidations are sent)
};

// Sends queued kernel invalidations from its own thread.
class Invalidator {
 public:
  Invalidator() = default;
  ~Invalidator() { stop(); }
  void start(fuse_session* se);
  void stop();
  void push(std::vector<KernelInvalidation> items);
  uint64_t sent() const { return sent_.load(); }
  uint64_t failed() const { return failed_.load(); }

 private:
  void run();
  fuse_session* se_ = nullptr;
  std::mutex mu_;  // leaf
  std::condition_variable cv_;
  std::deque<KernelInvalidation> queue_;  // guarded by mu_
  bool stopping_ = false;                 // guarded by mu_
  std::thread thread_;
  std::atomic<uint64_t> sent_{0}, failed_{0};
};

class FuseAdapter {
 public:
  FuseAdapter(UnionFs& fs, KernelTimeouts& timeouts) : fs_(fs), timeouts_(timeouts) {}
  static const fuse_lowlevel_ops& ops();
  UnionFs& fs() { return fs_; }
  KernelTimeouts& timeouts() { return timeouts_; }
  ReplyStats& stats() { return stats_; }

  // Reply helpers: the single place an Error becomes a FUSE reply.
  void reply_error(fuse_req_t req, FuseOp op, const Error& e);
  void count(FuseOp op, int err);
  void fill_entry(const Entry& e, fuse_entry_param* out) const;
  // Runs at the start of path and handle operations (strategy B drains the
  // upper watcher here). Set before the session starts.
  void set_before_request(std::function<void()> f) { before_request_ = std::move(f); }
  void before_request() const {
    if (before_request_) before_request_();
  }
  // Zero-message opendir (--dir-open kernel): OPENDIR is answered ENOSYS,
  // after which the kernel opens directories without asking and caches every
  // listing (only for strategies that invalidate). Set before the session
  // starts; takes effect if the kernel offers it (FUSE_CAP_NO_OPENDIR_SUPPORT).
  void set_kernel_opendir(bool on) { kernel_opendir_wanted_ = on; }
  bool kernel_opendir() const { return kernel_opendir_.load(std::memory_order_relaxed); }
  // Whether the kernel opens (or may yet open, before INIT) directories by
  // itself on this connection: asked for and not declined.
  bool kernel_may_open_dirs() const {
    return kernel_opendir_wanted_ && !kernel_opendir_declined_.load(std::memory_order_relaxed);
  }
  // Zero-message open of files (--file-open kernel), the same for OPEN
  // (FUSE_CAP_NO_OPEN_SUPPORT): READ, WRITE, fstat and fsync then come
  // without a handle and are served through UnionFs::open_unopened; no
  // atomic O_TRUNC (the kernel truncates with SETATTR, which reaches us).
  void set_kernel_open(bool on) { kernel_open_wanted_ = on; }
  bool kernel_open() const { return kernel_open_.load(std::memory_order_relaxed); }
  bool kernel_may_open_files() const {
    return kernel_open_wanted_ && !kernel_open_declined_.load(std::memory_order_relaxed);
  }
  DirSnapshots& dir_snapshots() { return dir_snapshots_; }
  void init(fuse_conn_info* conn);

 private:
  UnionFs& fs_;
  KernelTimeouts& timeouts_;
  ReplyStats stats_;
  std::function<void()> before_request_;
  bool kernel_opendir_wanted_ = false;
  std::atomic<bool> kernel_opendir_{false};
  std::atomic<bool> kernel_opendir_declined_{false};
  bool kernel_open_wanted_ = false;
  std::atomic<bool> kernel_open_{false};
  std::atomic<bool> kernel_open_declined_{false};
  DirSnapshots dir_snapshots_;  // READDIR without a handle
};

}  // namespace antares::fs
