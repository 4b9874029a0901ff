// What the reproduction observes: one OpEvent per filesystem operation the
// walker or a scenario performs through the mount (time, op, path, errno,
// bytes, latency, and for reads the git blob oid of the bytes), and the
// Recorder that collects them from many threads. Times are wall-clock
// microseconds since the Unix epoch, so they compare directly with mock-mega's
// mutation log (time_ms) and antares-fs's log lines (ts=).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/oid.h"

namespace antares::repro {

enum class Op : uint8_t { readdir, read, open, lstat, stat, write, rename, mkdir, unlink };
inline constexpr int kOpCount = 9;
const char* op_name(Op op);
bool parse_op(std::string_view s, Op* out);

struct OpEvent {
  int64_t t_us = 0;        // start, wall-clock us
  int64_t end_us = 0;      // end, wall-clock us
  Op op = Op::read;
  int err = 0;             // 0 on success, else the positive errno
  uint64_t bytes = 0;      // bytes read or written; entries for readdir
  std::string path;        // relative to the walk root, no leading '/'
  std::optional<Oid> oid;  // reads that succeeded: git blob oid of the bytes
  std::string head;        // reads whose bytes the recorder could not keep: the first kHeadBytes
  uint32_t latency_us() const { return end_us > t_us ? static_cast<uint32_t>(end_us - t_us) : 0; }
};

// Wall-clock microseconds since the epoch.
inline int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline constexpr size_t kHeadBytes = 64;

// Thread-safe sink of OpEvents with live counters for the progress line. It
// also keeps the bytes of every distinct version read (by oid, up to
// kMaxContentBytes in all), so a wrong or stale read can be shown as it was.
class Recorder {
 public:
  static constexpr size_t kMaxContentBytes = 256u << 20;

  void add(OpEvent e);
  // Moves out everything recorded so far.
  std::vector<OpEvent> take();
  // Keeps `bytes` as the content of `oid` unless already kept; false if the
  // budget is spent (then the caller keeps a head in its event).
  bool keep_content(const Oid& oid, const std::string& bytes);
  // Runs f on the kept contents, under the lock (no writer runs meanwhile).
  template <class F>
  void with_contents(F&& f) {
    std::lock_guard lock(mu_);
    f(contents_);
  }
  uint64_t ops() const { return ops_.load(std::memory_order_relaxed); }
  uint64_t errors() const { return errors_.load(std::memory_order_relaxed); }
  uint64_t estale() const { return estale_.load(std::memory_order_relaxed); }

 private:
  std::mutex mu_;
  std::vector<OpEvent> events_;  // guarded by mu_
  std::map<Oid, std::string> contents_;  // guarded by mu_
  size_t content_bytes_ = 0;             // guarded by mu_
  std::atomic<uint64_t> ops_{0}, errors_{0}, estale_{0};
};

}  // namespace antares::repro
