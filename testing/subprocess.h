// Test support: child processes (a daemon under test, a CLI) that are always
// reaped, and private temporary directories that are always removed. Thin,
// throwing wrappers over the repository's one implementation,
// common/process.h, for test code that wants exceptions rather than Results.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace antares {
class Child;
class TempDir;
}  // namespace antares

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
  const std::string& path() const;
  std::string operator/(const std::string& name) const { return path() + "/" + name; }

 private:
  std::unique_ptr<antares::TempDir> dir_;
};

// A child process; stdout and stderr go to files. The destructor sends SIGTERM,
// waits up to 10 s, then SIGKILLs: a failing test never leaks a process.
// `env` entries ("NAME=value") are added to the test's environment.
class Subprocess {
 public:
  Subprocess(std::vector<std::string> argv, const std::string& output_prefix, std::vector<std::string> env = {});
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const;
  bool running();
  // Waits for exit; returns the exit code (128+signal if killed), -1 on timeout.
  int wait(std::chrono::milliseconds timeout);
  // SIGTERM, then wait; returns the exit code.
  int terminate(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  std::string stdout_text() const;
  std::string stderr_text() const;

 private:
  std::unique_ptr<antares::Child> child_;
  std::string out_, err_;
};

// Runs a command to completion; returns exit code (-1 on timeout, the child
// then killed) and fills out/err.
int run(std::vector<std::string> argv, std::string* out = nullptr, std::string* err = nullptr,
        std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Polls pred every 10 ms until it holds or the deadline passes.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

std::string read_file(const std::string& path);

}  // namespace antares::testing
