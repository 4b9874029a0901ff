// The one subprocess and temp-dir helper of the repository (estale-repro and
// the tests both use it): children run in their own process groups (a Ctrl-C
// reaches only the parent, which then stops them in order), die with their
// parent (PR_SET_PDEATHSIG), and are always reaped. Mount helpers read
// /proc/self/mountinfo (common/mountinfo.h) and detach a FUSE mount even when
// its daemon is gone. No exceptions: spawn failures are Errors.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace antares {

class Child {
 public:
  // Starts argv[0] (a path) with stdin from /dev/null and stdout/stderr
  // appended to the given files ("" = /dev/null); `env` entries
  // ("NAME=value") are added to this process's environment.
  static Result<std::unique_ptr<Child>> spawn(const std::vector<std::string>& argv, const std::string& stdout_path,
                                              const std::string& stderr_path,
                                              const std::vector<std::string>& env = {});
  ~Child();  // terminate(): never leaks the process
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Exit code once !running(): the status, or 128+signal.
  int exit_code() const { return code_; }
  // Waits up to timeout; returns the exit code, or -1 if still running.
  int wait(std::chrono::milliseconds timeout);
  // SIGTERM, wait up to timeout, then SIGKILL and wait. Returns the exit code.
  int terminate(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void signal(int sig);

 private:
  Child() = default;
  pid_t pid_ = -1;
  int code_ = -1;
};

struct CommandResult {
  int code = -1;  // exit code, 128+signal, or -1 on timeout (the child was killed)
  std::string out, err;
};
// Runs argv to completion, capturing stdout and stderr.
// `env` entries ("NAME=value") are added to this process's environment.
Result<CommandResult> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30),
                                  const std::vector<std::string>& env = {});

// Whether a FUSE filesystem is mounted at `dir` (an absolute path).
bool is_fuse_mounted(const std::string& dir);
// Detaches whatever FUSE mount is at dir: `fusermount3 -u -z`, then umount2(MNT_DETACH).
// Returns true if nothing is mounted there afterwards.
bool force_unmount(const std::string& dir);

// mkdtemp under $TMPDIR (or /tmp); removed recursively by the destructor
// unless keep() was called. Refuses to remove anything while a FUSE mount
// remains beneath it.
class TempDir {
 public:
  static Result<std::unique_ptr<TempDir>> create(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  void keep() { keep_ = true; }

 private:
  TempDir() = default;
  std::string path_;
  bool keep_ = false;
};

// Directory of the running executable (where the sibling binaries live).
std::string self_dir();

}  // namespace antares
