#include "testing/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "common/process.h"

namespace antares::testing {

std::string bin_dir() {
  const char* d = getenv("ANTARES_BIN_DIR");
  return d ? d : "bin";
}

TempDir::TempDir() {
  auto d = antares::TempDir::create("antares-test");
  if (!d) throw std::runtime_error(d.error().describe());
  dir_ = std::move(*d);
}

TempDir::~TempDir() = default;

const std::string& TempDir::path() const { return dir_->path(); }

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Subprocess::Subprocess(std::vector<std::string> argv, const std::string& output_prefix, std::vector<std::string> env)
    : out_(output_prefix + ".stdout"), err_(output_prefix + ".stderr") {
  for (const auto* f : {&out_, &err_}) {  // fresh files: Child appends
    int fd = ::open(f->c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) ::close(fd);
  }
  auto c = Child::spawn(argv, out_, err_, env);
  if (!c) throw std::runtime_error("cannot start " + argv[0] + ": " + c.error().describe());
  child_ = std::move(*c);
}

Subprocess::~Subprocess() = default;  // Child's destructor: SIGTERM, 10 s, SIGKILL

pid_t Subprocess::pid() const { return child_->pid(); }

bool Subprocess::running() { return child_->running(); }

int Subprocess::wait(std::chrono::milliseconds timeout) { return child_->wait(timeout); }

int Subprocess::terminate(std::chrono::milliseconds timeout) {
  child_->signal(SIGTERM);
  return child_->wait(timeout);
}

std::string Subprocess::stdout_text() const { return read_file(out_); }
std::string Subprocess::stderr_text() const { return read_file(err_); }

int run(std::vector<std::string> argv, std::string* out, std::string* err, std::chrono::milliseconds timeout) {
  auto r = run_command(argv, timeout);
  if (!r) {
    if (err) *err = r.error().describe();
    if (out) out->clear();
    return 127;
  }
  if (out) *out = r->out;
  if (err) *err = r->err;
  return r->code;
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
