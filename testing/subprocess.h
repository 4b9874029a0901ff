// Test support: child processes (a daemon under test, a CLI) that are always
// reaped, and private temporary directories that are always removed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace antares::testing {

// Where the project's binaries are (ANTARES_BIN_DIR, set by ctest).
std::string bin_dir();

// A private directory under $TMPDIR, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A child process; stdout and stderr go to files. The destructor sends SIGTERM,
// waits up to 10 s, then SIGKILLs: a failing test never leaks a process.
class Subprocess {
 public:
  Subprocess(std::vector<std::string> argv, const std::string& output_prefix);
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Waits for exit; returns the exit code (128+signal if killed), -1 on timeout.
  int wait(std::chrono::milliseconds timeout);
  // SIGTERM, then wait; returns the exit code.
  int terminate(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  std::string stdout_text() const;
  std::string stderr_text() const;

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::string out_, err_;
};

// Runs a command to completion; returns exit code and fills out/err.
int run(std::vector<std::string> argv, std::string* out = nullptr, std::string* err = nullptr,
        std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Polls pred every 10 ms until it holds or the deadline passes.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

std::string read_file(const std::string& path);

}  // namespace antares::testing
