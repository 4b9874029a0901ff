#include "testing/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace antares::testing {

std::string bin_dir() {
  const char* d = getenv("ANTARES_BIN_DIR");
  return d ? d : "bin";
}

TempDir::TempDir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/antares-test-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Subprocess::Subprocess(std::vector<std::string> argv, const std::string& output_prefix)
    : out_(output_prefix + ".stdout"), err_(output_prefix + ".stderr") {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int rc = posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + " failed: " + std::to_string(rc));
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && status_ < 0 && terminate() < 0) {
    kill(pid_, SIGKILL);
    wait(std::chrono::seconds(10));
  }
}

bool Subprocess::running() {
  if (status_ >= 0) return false;
  int st;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

int Subprocess::wait(std::chrono::milliseconds timeout) {
  wait_until([&] { return !running(); }, timeout);
  return status_;
}

int Subprocess::terminate(std::chrono::milliseconds timeout) {
  if (running()) kill(pid_, SIGTERM);
  return wait(timeout);
}

std::string Subprocess::stdout_text() const { return read_file(out_); }
std::string Subprocess::stderr_text() const { return read_file(err_); }

int run(std::vector<std::string> argv, std::string* out, std::string* err, std::chrono::milliseconds timeout) {
  TempDir dir;
  int code;
  {
    Subprocess p(std::move(argv), dir / "run");
    code = p.wait(timeout);
    if (code < 0) {
      kill(p.pid(), SIGKILL);
      p.wait(std::chrono::seconds(10));
    }
    if (out) *out = p.stdout_text();
    if (err) *err = p.stderr_text();
  }
  return code;
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace antares::testing
