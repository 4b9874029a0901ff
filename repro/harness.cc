#include "repro/harness.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace antares::repro {
namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int) { g_stop.store(true); }

std::string read_small(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string tail(const std::string& path, size_t n = 1500) {
  std::string s = read_small(path);
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

bool has_json_file(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return false;
  bool found = false;
  while (struct dirent* de = readdir(d)) {
    std::string n = de->d_name;
    if (n.size() > 5 && n.compare(n.size() - 5, 5, ".json") == 0) found = true;
  }
  closedir(d);
  return found;
}

Status make_dir(const std::string& p, mode_t mode = 0755) {
  if (mkdir(p.c_str(), mode) != 0 && errno != EEXIST) return Error::from_errno(errno, "mkdir " + p);
  return {};
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// Sleeps in small steps so a Ctrl-C is noticed.
void nap(std::chrono::milliseconds d) {
  auto end = std::chrono::steady_clock::now() + d;
  while (!g_stop.load() && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::min(d, std::chrono::milliseconds(10)));
}

}  // namespace

std::atomic<bool>& stop_requested() { return g_stop; }

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // A closed terminal stops the run the same way, so an attached mount's
  // strategy is still switched back.
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

Result<std::unique_ptr<MegaServer>> MegaServer::start(const MegaOptions& opts, const std::string& work_dir) {
  std::unique_ptr<MegaServer> s(new MegaServer());
  if (!opts.attach_url.empty()) {
    s->url_ = opts.attach_url;
    while (!s->url_.empty() && s->url_.back() == '/') s->url_.pop_back();
  } else {
    std::string port_file = work_dir + "/mock-mega.port";
    std::vector<std::string> argv{opts.bin_dir + "/mock-mega", "--seed", std::to_string(opts.seed),
                                  "--files", std::to_string(opts.files), "--cls", std::to_string(opts.cls),
                                  "--port", "0", "--port-file", port_file, "--paused", "--log-level", "warn"};
    if (!opts.admin_token.empty()) argv.insert(argv.end(), {"--admin-token", opts.admin_token});
    auto child = Child::spawn(argv, work_dir + "/mock-mega.log", work_dir + "/mock-mega.log");
    if (!child) return child.error();
    s->child_ = std::move(*child);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::string port;
    while (true) {
      port = read_small(port_file);
      while (!port.empty() && (port.back() == '\n' || port.back() == ' ')) port.pop_back();
      if (!port.empty()) break;
      if (!s->child_->running())
        return Error::from_errno(EIO, "mock-mega exited with " + std::to_string(s->child_->exit_code()) + ": " +
                                          tail(work_dir + "/mock-mega.log"));
      if (g_stop.load()) return Error::from_errno(EINTR, "interrupted");
      if (std::chrono::steady_clock::now() > deadline) return Error::from_errno(ETIMEDOUT, "mock-mega did not start");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    s->url_ = "http://127.0.0.1:" + port;
  }
  s->admin_ = std::make_unique<mock::AdminClient>(s->url_, opts.admin_token);
  auto st = s->admin_->state();
  if (!st) return Error{st.error().err, st.error().http_status, "mock-mega at " + s->url_ + ": " + st.error().message};
  return s;
}

void MegaServer::stop() {
  if (child_) {
    // Close our keep-alive connections first: the server waits for open ones on shutdown.
    admin_.reset();
    child_->terminate(std::chrono::seconds(10));
    child_.reset();
  }
}

Result<std::unique_ptr<MountedFs>> MountedFs::start(const FsOptions& o, const std::string& mega_url,
                                                    const std::string& work_dir) {
  std::unique_ptr<MountedFs> fs(new MountedFs());
  fs->bin_dir_ = o.bin_dir;
  if (!o.attach_mountpoint.empty()) {
    fs->mountpoint_ = real_path(o.attach_mountpoint);
    fs->upper_ = o.attach_upper;
    fs->run_dir_ = o.run_dir;
    auto st = fs->status();
    if (!st) return Error{st.error().err, 0, "antares-ctl status on " + fs->mountpoint_ + ": " + st.error().message};
    return fs;
  }
  std::string base = real_path(work_dir);
  fs->mountpoint_ = base + "/mnt";
  fs->upper_ = base + "/upper";
  fs->run_dir_ = base + "/run";
  fs->stderr_path_ = base + "/antares-fs.log";
  for (const auto& d : {fs->mountpoint_, fs->upper_, base + "/cache", base + "/cl"})
    if (auto s = make_dir(d); !s.ok()) return s.error();
  if (auto s = make_dir(fs->run_dir_, 0700); !s.ok()) return s.error();
  std::vector<std::string> argv{o.bin_dir + "/antares-fs", "--mega", mega_url, "--mountpoint", fs->mountpoint_,
                                "--upper", fs->upper_, "--cache", base + "/cache"};
  if (o.cl) argv.insert(argv.end(), {"--cl", std::to_string(*o.cl), "--cl-dir", base + "/cl"});
  char buf[32];
  snprintf(buf, sizeof buf, "%g", o.entry_timeout);
  std::string entry = buf;
  snprintf(buf, sizeof buf, "%g", o.attr_timeout);
  std::string attr = buf;
  argv.insert(argv.end(), {"--ttl", o.ttl, "--strategy", o.strategy, "--foreground", "--entry-timeout", entry,
                           "--attr-timeout", attr, "--log-level", o.log_level, "--run-dir", fs->run_dir_});
  if (o.threads) argv.insert(argv.end(), {"--threads", std::to_string(o.threads)});
  argv.insert(argv.end(), o.extra_args.begin(), o.extra_args.end());
  auto child = Child::spawn(argv, base + "/antares-fs.stdout", fs->stderr_path_);
  if (!child) return child.error();
  fs->child_ = std::move(*child);
  auto deadline = std::chrono::steady_clock::now() + o.ready_timeout;
  while (true) {
    if (is_fuse_mounted(fs->mountpoint_) && has_json_file(fs->run_dir_)) {
      auto st = fs->status();
      if (st) break;
    }
    if (!fs->child_->running()) {
      int code = fs->child_->exit_code();
      fs->stop();
      return Error::from_errno(EIO, "antares-fs exited with " + std::to_string(code) + " before it was ready: " +
                                        tail(fs->stderr_path_));
    }
    if (g_stop.load()) {
      fs->stop();
      return Error::from_errno(EINTR, "interrupted");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fs->stop();
      return Error::from_errno(ETIMEDOUT, "antares-fs not ready (mounted and status answering) within " +
                                              std::to_string(o.ready_timeout.count()) + " ms: " + tail(fs->stderr_path_));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return fs;
}

bool MountedFs::alive() {
  if (child_ && !child_->running()) return false;
  return is_fuse_mounted(mountpoint_);
}

Result<std::string> MountedFs::ctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{bin_dir_ + "/antares-ctl"};
  if (!run_dir_.empty()) argv.insert(argv.end(), {"--run-dir", run_dir_});
  argv.insert(argv.end(), {"--mountpoint", mountpoint_});
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_command(argv, std::chrono::seconds(20));
  if (!r) return r.error();
  if (r->code != 0) {
    std::string cmd;
    for (const auto& a : args) cmd += (cmd.empty() ? "" : " ") + a;
    return Error::from_errno(EIO, "antares-ctl " + cmd + " exited " + std::to_string(r->code) + ": " + r->err);
  }
  return r->out;
}

Result<nlohmann::json> MountedFs::status() {
  auto out = ctl({"status"});
  if (!out) return out.error();
  auto j = nlohmann::json::parse(*out, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error::from_errno(EPROTO, "antares-ctl status: not a JSON object");
  return j;
}

Status MountedFs::refresh(const std::string& path) {
  std::vector<std::string> args{"refresh"};
  if (!path.empty()) args.push_back(path);
  auto r = ctl(args);
  if (!r) return r.error();
  return {};
}

Status MountedFs::set_strategy(const std::string& name) {
  auto r = ctl({"strategy", name});
  if (!r) return r.error();
  return {};
}

void MountedFs::stop() {
  if (!child_) return;
  exit_code_ = child_->terminate(std::chrono::seconds(10));
  child_.reset();
  if (!force_unmount(mountpoint_)) nap(std::chrono::milliseconds(100)), force_unmount(mountpoint_);
}

}  // namespace antares::repro
