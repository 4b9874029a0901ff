// The system under test, started by the reproduction or attached to:
// MegaServer (a mock-mega child on a free port, or a given URL) and
// MountedFs (an antares-fs child mounted on a private mountpoint, or a given
// mountpoint), plus the antares-ctl client. Whatever was started is stopped and
// unmounted by stop() and by the destructor, on every exit path.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "mock-mega/admin_client.h"
#include "repro/process.h"

namespace antares::repro {

// Set by the SIGINT/SIGTERM/SIGHUP handler; every wait loop checks it.
std::atomic<bool>& stop_requested();
void install_stop_handlers();

struct MegaOptions {
  std::string bin_dir;
  std::string attach_url;  // non-empty: use this server, start nothing
  uint64_t seed = 42;
  uint64_t files = 400;
  uint32_t cls = 3;
  std::string admin_token;
};

class MegaServer {
 public:
  // Starts (or attaches to) the server, waits until it answers /admin/state.
  static Result<std::unique_ptr<MegaServer>> start(const MegaOptions& opts, const std::string& work_dir);
  ~MegaServer() { stop(); }
  MegaServer(const MegaServer&) = delete;
  MegaServer& operator=(const MegaServer&) = delete;

  const std::string& url() const { return url_; }
  mock::AdminClient& admin() { return *admin_; }
  bool started() const { return child_ != nullptr; }
  void stop();

 private:
  MegaServer() = default;
  std::string url_;
  std::unique_ptr<mock::AdminClient> admin_;
  std::unique_ptr<Child> child_;
};

struct FsOptions {
  std::string bin_dir;
  std::string attach_mountpoint;  // non-empty: use this mount, start nothing
  std::string attach_upper;       // with attach: its --upper directory (upper-layer scenarios need it)
  std::string run_dir;            // with attach: its --run-dir ("" = antares-ctl's default)
  std::string strategy = "none";
  std::string ttl = "300ms";
  std::optional<uint32_t> cl;  // --cl ID
  double entry_timeout = 1.0, attr_timeout = 1.0;
  unsigned threads = 0;  // 0: antares-fs's default
  std::string log_level = "info";
  std::vector<std::string> extra_args;
  std::chrono::milliseconds ready_timeout{20000};
};

class MountedFs {
 public:
  // Starts antares-fs with --foreground in private directories under work_dir
  // and waits until the mount is in /proc/self/mountinfo and antares-ctl
  // status answers; or attaches to a mounted one.
  static Result<std::unique_ptr<MountedFs>> start(const FsOptions& opts, const std::string& mega_url,
                                                  const std::string& work_dir);
  ~MountedFs() { stop(); }
  MountedFs(const MountedFs&) = delete;
  MountedFs& operator=(const MountedFs&) = delete;

  const std::string& mountpoint() const { return mountpoint_; }
  const std::string& upper() const { return upper_; }  // "" if unknown (attached without --upper)
  const std::string& stderr_path() const { return stderr_path_; }
  bool started() const { return child_ != nullptr; }
  bool alive();  // the daemon runs and the mount is there
  // The daemon's exit code once stop() ran (-1 if it was not ours or not stopped).
  int exit_code() const { return exit_code_; }

  // antares-ctl [--run-dir D] --mountpoint M ARGS...; stdout on success.
  Result<std::string> ctl(const std::vector<std::string>& args);
  Result<nlohmann::json> status();
  Status refresh(const std::string& path = "");
  Status set_strategy(const std::string& name);

  // SIGTERM, wait, then force-unmount if the mount is still there. Idempotent.
  void stop();

 private:
  MountedFs() = default;
  std::string bin_dir_, mountpoint_, upper_, run_dir_, stderr_path_;
  std::unique_ptr<Child> child_;
  int exit_code_ = -1;
};

}  // namespace antares::repro
