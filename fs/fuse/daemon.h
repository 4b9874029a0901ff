// Daemon: everything one antares-fs mount owns and the policy that ties it
// together: which directories it may wipe, how a strategy maps to kernel cache
// timeouts, where layer changes go, what the control endpoint answers (status,
// metrics through the control::Metrics registry, strategy, refresh). prepare()
// needs no FUSE, so the policy is unit-tested on a real lower store; serve()
// mounts and runs the session loop. daemon_main() is the whole antares-fs
// program (options, logging, detaching with a readiness handshake).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "fs/control/metrics.h"
#include "fs/fuse/daemon_options.h"
#include "fs/fuse/fuse_adapter.h"
#include "fs/fuse/upper_watcher.h"
#include "fs/layers/strategy.h"

namespace antares::remote {
class MegaClient;
}

namespace antares::fs {

class LowerStore;
class BlobCache;
class ClBuilder;
class LowerHooks;
class ClHooks;

class Daemon {
 public:
  // `o` has been through validate_paths() (absolute, disjoint directories).
  explicit Daemon(DaemonOptions o);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Takes ownership of --cache/lower, --cache/blobs and --cl-dir (refusing
  // directories with data antares-fs did not create: kExitLayerDir), checks
  // that Mega answers within --startup-timeout (kExitUnreachable), lists "/"
  // (or revalidates the kept mirror by the root's oid), builds the CL layer
  // and the union. Starts the lower store's prefetch and the blob cache's
  // scanner, nothing else.
  std::optional<StartupError> prepare();

  // Called once from serve(): nullopt when the mount answers and the control
  // endpoint file is in place, else why not (serve() then returns its code).
  using ReadyFn = std::function<void(const std::optional<StartupError>&)>;
  // Mounts, serves until unmounted or SIGINT/SIGTERM/SIGHUP, unmounts.
  // Returns the exit code.
  int serve(const ReadyFn& ready);

  // The policy; thread-safe once prepare() succeeded.
  // Switches the strategy ("a" -> "A"); EINVAL for an unknown name.
  Result<std::string> set_strategy(const std::string& name);
  // Expires `path` (see control::normalize_refresh_path; EINVAL for "..")
  // in the lower store and re-syncs the CL layer.
  Status refresh(const std::string& path);
  nlohmann::json status_json();
  std::string metrics_text();
  const KernelTimeouts& timeouts() const { return timeouts_; }

  // Merkle refresh: a thread that runs the lower store's check once per TTL
  // (LowerStore::check_due), so every change upstream is found and
  // invalidated even if no request reaches the directory: the kernel's
  // entries and attributes may then live long under an invalidating
  // strategy. serve() starts it once the invalidator runs and stops it
  // before the invalidator; the destructor stops it too. per-dir: no thread
  // (requests drive the refresh, so entries live a TTL). True if it started
  // the thread (false under per-dir or if it runs already).
  bool start_lower_checks();
  void stop_lower_checks();
  const DaemonOptions& options() const { return opts_; }

 private:
  void apply_strategy(const HandleStrategy* s);
  void on_change(size_t layer, const std::vector<LayerChange>& changes);
  void cl_poll_loop();
  void register_metrics();
  void register_reply_series();

  DaemonOptions opts_;
  std::unique_ptr<remote::MegaClient> mega_;
  std::unique_ptr<BlobCache> blobs_;  // before lower_: outlives it
  std::unique_ptr<LowerStore> lower_;
  std::unique_ptr<ClBuilder> cl_;
  std::unique_ptr<LowerHooks> lower_hooks_;
  std::unique_ptr<ClHooks> cl_hooks_;
  StrategySet strategies_;
  std::unique_ptr<StrategySlot> slot_;
  std::unique_ptr<UnionFs> fs_;
  KernelTimeouts timeouts_;
  std::unique_ptr<FuseAdapter> adapter_;
  Invalidator invalidator_;
  UpperWatcher watcher_;
  control::Metrics metrics_;
  std::mutex metrics_mu_;  // guards the registered-series bookkeeping below
  std::vector<bool> reply_series_, estale_series_;
  size_t cl_layer_ = 0, lower_layer_ = 0;
  std::atomic<uint64_t> layer_changes_{0}, cl_resyncs_{0}, cl_errors_{0};
  std::mutex poll_mu_;
  std::condition_variable poll_cv_;
  bool stopping_ = false;  // guarded by poll_mu_
  bool checks_stop_ = false;  // guarded by poll_mu_
  std::thread lower_checks_;
  std::atomic<uint64_t> lower_checks_run_{0};
};

// The antares-fs program: parses argv, sets up logging, validates, prepares,
// then serves in the foreground or detaches. When detaching, the parent exits
// 0 only after the child reported the mount answering and the control
// endpoint file in place; otherwise with the child's exit code (its reason is
// on stderr). Returns the exit code.
int daemon_main(int argc, char** argv);

}  // namespace antares::fs
