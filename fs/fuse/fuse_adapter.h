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
  // The zero-message opens (FUSE_CAP_NO_OPENDIR_SUPPORT, FUSE_CAP_NO_OPEN_SUPPORT):
  // --dir-open kernel answers OPENDIR with ENOSYS, after which the kernel
  // opens directories without asking and caches every listing; --file-open
  // kernel does the same for OPEN, after which READ, WRITE, fstat and fsync
  // come without a handle (UnionFs::open_unopened) and O_TRUNC arrives as a
  // SETATTR (no atomic O_TRUNC). Only for strategies that invalidate. Asked
  // for before the session starts; granted at INIT if the kernel offers it.
  struct KernelOpen {
    bool wanted = false;
    std::atomic<bool> granted{false}, declined{false};
    // The kernel opens (or may yet open, before INIT) by itself.
    bool may() const { return wanted && !declined.load(std::memory_order_relaxed); }
    bool on() const { return granted.load(std::memory_order_relaxed); }
  };
  KernelOpen& kernel_dirs() { return kernel_dirs_; }
  KernelOpen& kernel_files() { return kernel_files_; }
  DirSnapshots& dir_snapshots() { return dir_snapshots_; }
  void init(fuse_conn_info* conn);

 private:
  UnionFs& fs_;
  KernelTimeouts& timeouts_;
  ReplyStats stats_;
  std::function<void()> before_request_;
  KernelOpen kernel_dirs_, kernel_files_;
  DirSnapshots dir_snapshots_;  // READDIR without a handle
};

}  // namespace antares::fs
