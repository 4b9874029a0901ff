#include "testing/mount_fixture.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/mountinfo.h"
#include "common/process.h"
#include "mock-mega/admin_client.h"

namespace antares::testing {

std::optional<std::string> mounted_fstype(const std::string& path) {
  char real[PATH_MAX];
  std::string p = ::realpath(path.c_str(), real) ? real : path;
  auto m = mount_at(p);
  if (!m) return std::nullopt;
  return m->fstype;
}

void force_unmount(const std::string& path) {
  char real[PATH_MAX];
  antares::force_unmount(::realpath(path.c_str(), real) ? real : path);
}

int stat_errno(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? 0 : errno;
}

std::optional<std::string> read_whole(const std::string& path, int* err) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (err) *err = errno;
    return std::nullopt;
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (err) *err = errno;
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  if (err) *err = 0;
  return out;
}

MegaProcess::MegaProcess(const TempDir& dir, MegaOptions o) {
  std::string pf = dir / "mega.port";
  std::vector<std::string> argv = {bin_dir() + "/mock-mega", "--seed", std::to_string(o.seed), "--files",
                                   std::to_string(o.files), "--cls", std::to_string(o.cls), "--port", "0",
                                   "--port-file", pf, "--log-level", "warn"};
  argv.insert(argv.end(), o.extra.begin(), o.extra.end());
  proc_ = std::make_unique<Subprocess>(argv, dir / "mega");
  if (!wait_until([&] { return !read_file(pf).empty() || !proc_->running(); }, std::chrono::seconds(60)) ||
      read_file(pf).empty())
    throw std::runtime_error("mock-mega did not start: " + proc_->stderr_text());
  url_ = "http://127.0.0.1:" + read_file(pf);
  while (!url_.empty() && (url_.back() == '\n' || url_.back() == ' ')) url_.pop_back();
}

MegaProcess::~MegaProcess() {
  admin_.reset();  // close keep-alive connections before the server stops
  proc_.reset();
}

std::string MegaProcess::admin(const std::string& method, const std::string& path, const std::string& body) {
  if (!admin_) admin_ = std::make_unique<mock::AdminClient>(url_);
  auto r = admin_->raw(method, path, body);
  return r ? r->body : std::string();
}

Mount::Mount(const TempDir& dir, const std::string& mega_url, MountOptions o)
    : mnt_(dir / "mnt"), upper_(dir / "upper"), cache_(dir / "cache"), cl_(dir / "cl"), run_(dir / "run") {
  for (auto* d : {&mnt_, &upper_, &cache_, &cl_}) ::mkdir(d->c_str(), 0755);
  std::vector<std::string> argv = {bin_dir() + "/antares-fs", "--mega", mega_url, "--mountpoint", mnt_, "--upper",
                                   upper_, "--cache", cache_, "--ttl", o.ttl, "--strategy", o.strategy,
                                   "--run-dir", run_, "--foreground"};
  if (!o.cl.empty()) {
    argv.insert(argv.end(), {"--cl", o.cl, "--cl-dir", cl_});
  }
  argv.insert(argv.end(), o.extra.begin(), o.extra.end());
  proc_ = std::make_unique<Subprocess>(argv, dir / "fs");
  mounted_ = wait_until(
      [&] { return !proc_->running() || (mounted_fstype(mnt_) && log().find("event=mounted") != std::string::npos); },
      std::chrono::seconds(60)) &&
             proc_->running();
}

Mount::~Mount() { unmount(); }

int Mount::unmount() {
  int code = -1;
  if (proc_) {
    code = proc_->terminate(std::chrono::seconds(20));
    if (code < 0) code = proc_->wait(std::chrono::seconds(5));
  }
  force_unmount(mnt_);
  mounted_ = false;
  return code;
}

int Mount::ctl(const std::vector<std::string>& args, std::string* out, std::string* err) {
  std::vector<std::string> argv = {bin_dir() + "/antares-ctl", "--run-dir", run_, "--mountpoint", mnt_};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, out, err);
}

}  // namespace antares::testing
