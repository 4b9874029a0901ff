// Watches the upper layer's directories with inotify so strategy B sees what
// other processes do behind the mount (a file replaced by write+rename, a
// directory swapped), which no refresh of ours reports. Directories are added
// as the union reads them; a failed watch (inotify limits) is logged once and
// that directory is left to the recovery backstop (auto) or to C.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "fs/layers/layer_change.h"

namespace antares::fs {

class UpperWatcher {
 public:
  UpperWatcher() = default;
  ~UpperWatcher() { stop(); }
  UpperWatcher(const UpperWatcher&) = delete;
  UpperWatcher& operator=(const UpperWatcher&) = delete;

  Status start(std::string upper_root, LayerChangeListener listener);
  void stop();
  // Watches upper directory `rel` (idempotent, cheap when already watched).
  void watch(const std::string& rel);
  // Dispatches every event already queued by the kernel, now. Called before
  // requests under B: a change that completed before the request started is
  // then always seen by it (inotify queues events inside the syscall).
  void drain();
  uint64_t events() const { return events_.load(); }
  size_t watches() const;

 private:
  void run();
  std::string root_;
  LayerChangeListener listener_;
  UniqueFd inotify_, wake_;
  std::mutex drain_mu_;    // before mu_ and the listener's locks
  mutable std::mutex mu_;  // leaf
  std::unordered_map<int, std::string> by_wd_;      // guarded by mu_
  std::unordered_map<std::string, int> by_path_;    // guarded by mu_
  bool warned_ = false;                             // guarded by mu_
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> events_{0};
};

}  // namespace antares::fs
