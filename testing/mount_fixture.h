// End-to-end test support: a real mock-mega on 127.0.0.1 port 0 and a real
// antares-fs mount, each in a private temp dir. The destructor always stops
// the daemon and unmounts (lazily if it must), even when the test failed.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "testing/subprocess.h"

namespace antares::mock {
class AdminClient;
}

namespace antares::testing {

struct MegaOptions {
  uint64_t seed = 7;
  uint64_t files = 300;
  int cls = 2;
  std::vector<std::string> extra;  // more mock-mega flags
};

// A mock-mega child process on a kernel-chosen port.
class MegaProcess {
 public:
  explicit MegaProcess(const TempDir& dir, MegaOptions o = {});
  const std::string& url() const { return url_; }
  Subprocess& process() { return *proc_; }
  // One request to the server (admin API or Mega API) through mock-mega's
  // AdminClient; the body as received ("" if the request failed).
  std::string admin(const std::string& method, const std::string& path, const std::string& body = "");
  ~MegaProcess();

 private:
  std::unique_ptr<Subprocess> proc_;
  std::unique_ptr<mock::AdminClient> admin_;
  std::string url_;
};

struct MountOptions {
  std::string strategy = "none";
  std::string ttl = "300ms";
  std::string cl;  // "" = no CL layer
  std::vector<std::string> extra;  // more antares-fs flags
};

class Mount {
 public:
  // Mounts at dir/mnt with dir/upper, dir/cache, dir/cl, dir/run.
  Mount(const TempDir& dir, const std::string& mega_url, MountOptions o = {});
  ~Mount();
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  bool ok() const { return mounted_; }
  const std::string& mnt() const { return mnt_; }
  std::string path(const std::string& rel) const { return mnt_ + "/" + rel; }
  const std::string& upper() const { return upper_; }
  const std::string& cl_dir() const { return cl_; }
  const std::string& run_dir() const { return run_; }
  std::string log() const { return proc_ ? proc_->stderr_text() : ""; }
  pid_t pid() const { return proc_ ? proc_->pid() : -1; }
  // antares-ctl with this mount's run dir; returns exit code, fills out.
  int ctl(const std::vector<std::string>& args, std::string* out = nullptr, std::string* err = nullptr);
  // Stops the daemon (SIGTERM) and waits for the unmount; returns its exit code.
  int unmount();

 private:
  std::string mnt_, upper_, cache_, cl_, run_;
  std::unique_ptr<Subprocess> proc_;
  bool mounted_ = false;
};

// Whether `path` is a mount point (per /proc/self/mountinfo) and its fstype.
std::optional<std::string> mounted_fstype(const std::string& path);
// fusermount3 -u -z, falling back to umount -l.
void force_unmount(const std::string& path);

// errno of stat(2) on path (0 on success).
int stat_errno(const std::string& path);
// The whole file, or nullopt with *err set to errno.
std::optional<std::string> read_whole(const std::string& path, int* err = nullptr);

}  // namespace antares::testing
