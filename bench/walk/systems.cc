#include "bench/walk/systems.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench/walk/prom.h"
#include "common/unique_fd.h"

namespace antares::bench {
namespace {

const std::vector<std::string> kMegaEndpoints = {"content-hash", "dir-hash", "blob", "files-list"};

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Status make_dir(const std::string& p) {
  if (::mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) return Error::from_errno(errno, "mkdir " + p);
  return {};
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : p;
}

std::string tail(const std::string& path, size_t n = 1200) {
  std::string s = read_text(path);
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

}  // namespace

std::string find_program(const std::string& name) {
  for (const char* d : {"/usr/bin/", "/bin/", "/usr/local/bin/", "/usr/sbin/", "/sbin/"}) {
    std::string p = d + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

std::vector<std::string> mounts_under(const std::string& dir) {
  std::string base = real_path(dir);
  std::istringstream in(read_text("/proc/self/mountinfo"));
  std::string line;
  std::vector<std::string> out;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, dev, root, point;
    ls >> id >> parent >> dev >> root >> point;  // our paths have no characters mountinfo escapes
    if (point == base || point.rfind(base + "/", 0) == 0) out.push_back(point);
  }
  return out;
}

Counters operator-(const Counters& a, const Counters& b) {
  auto diff = [](const std::optional<double>& x, const std::optional<double>& y) -> std::optional<double> {
    if (!x || !y) return std::nullopt;
    return *x - *y;
  };
  auto diff_map = [](const std::map<std::string, double>& x, const std::map<std::string, double>& y) {
    std::map<std::string, double> out;
    for (const auto& [k, v] : x) {
      auto it = y.find(k);
      double d = v - (it == y.end() ? 0 : it->second);
      if (d != 0) out[k] = d;
    }
    return out;
  };
  Counters d;
  d.fuse = diff(a.fuse, b.fuse);
  d.fuse_by_op = diff_map(a.fuse_by_op, b.fuse_by_op);
  d.fs_http = diff(a.fs_http, b.fs_http);
  d.invalidations = diff(a.invalidations, b.invalidations);
  d.http = diff(a.http, b.http);
  d.http_by_endpoint = diff_map(a.http_by_endpoint, b.http_by_endpoint);
  return d;
}

Result<Counters> scrape_mega(mock::AdminClient& admin) {
  auto text = admin.metrics();
  if (!text) return text.error();
  auto s = parse_prometheus(*text);
  Counters c;
  c.http = prom_sum(s, "mock_mega_requests_total", "endpoint", kMegaEndpoints);
  for (const auto& [ep, v] : prom_by_label(s, "mock_mega_requests_total", "endpoint"))
    if (std::find(kMegaEndpoints.begin(), kMegaEndpoints.end(), ep) != kMegaEndpoints.end()) c.http_by_endpoint[ep] = v;
  return c;
}

Result<std::unique_ptr<ScratchExt4>> ScratchExt4::make(const std::string& dir, uint64_t size_bytes) {
  std::string base = real_path(dir);
  std::unique_ptr<ScratchExt4> s(new ScratchExt4());
  std::string image = base + "/scratch.img", mnt = base + "/fs";
  if (auto st = make_dir(mnt); !st.ok()) return st.error();
  {
    UniqueFd fd(::open(image.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid()) return Error::from_errno(errno, "create " + image);
    s->image_ = image;  // from here on the destructor removes it
    if (::ftruncate(fd.get(), off_t(size_bytes)) != 0) return Error::from_errno(errno, "truncate " + image);
  }
  auto run = [](std::vector<std::string> argv) -> Status {
    if (std::string p = find_program(argv[0]); !p.empty()) argv[0] = p;
    auto r = run_command(argv, std::chrono::minutes(2));
    if (!r) return r.error();
    if (r->code != 0)
      return Error::from_errno(EIO, argv[0] + " exited with " + std::to_string(r->code) + ": " + r->err + r->out);
    return {};
  };
  // No discard: the image is sparse and fresh; discarding 64 GiB takes time for nothing.
  if (auto st = run({"mkfs.ext4", "-q", "-F", "-E", "nodiscard", image}); !st.ok()) return st.error();
  if (auto st = run({"mount", "-o", "loop", image, mnt}); !st.ok()) return st.error();
  s->mnt_ = mnt;
  return s;
}

ScratchExt4::~ScratchExt4() {
  if (!mnt_.empty() && ::umount2(mnt_.c_str(), 0) != 0) ::umount2(mnt_.c_str(), MNT_DETACH);
  if (!image_.empty() && !keep_) ::unlink(image_.c_str());
}

Result<std::unique_ptr<KernelOverlay>> KernelOverlay::mount(const std::string& lower, const std::string& dir) {
  for (const char* d : {"", "/upper", "/work", "/mnt"})
    if (auto st = make_dir(dir + d); !st.ok()) return st.error();
  std::unique_ptr<KernelOverlay> o(new KernelOverlay());
  std::string base = real_path(dir);
  std::string opts = "lowerdir=" + real_path(lower) + ",upperdir=" + base + "/upper,workdir=" + base + "/work";
  if (opts.find_first_of(" \\") != std::string::npos) return Error::from_errno(EINVAL, "overlay paths with spaces");
  if (::mount("overlay", (base + "/mnt").c_str(), "overlay", 0, opts.c_str()) != 0)
    return Error::from_errno(errno, "mount -t overlay (" + opts + ")");
  o->mnt_ = base + "/mnt";
  return o;
}

KernelOverlay::~KernelOverlay() {
  if (mnt_.empty()) return;
  if (::umount2(mnt_.c_str(), 0) != 0 || !mounts_under(mnt_).empty()) ::umount2(mnt_.c_str(), MNT_DETACH);
}

Result<std::unique_ptr<FuseDaemon>> FuseDaemon::start(std::vector<std::string> argv, const std::string& dir) {
  for (const char* d : {"", "/mnt"})
    if (auto st = make_dir(dir + d); !st.ok()) return st.error();
  std::unique_ptr<FuseDaemon> f(new FuseDaemon());
  std::string base = real_path(dir);
  f->mnt_ = base + "/mnt";
  f->log_ = base + "/daemon.log";
  for (auto& a : argv) {
    for (auto [key, val] : {std::pair<std::string, std::string>{"{mnt}", f->mnt_}, {"{dir}", base}})
      for (size_t p; (p = a.find(key)) != std::string::npos;) a.replace(p, key.size(), val);
  }
  auto child = repro::Child::spawn(argv, f->log_, f->log_);
  if (!child) return child.error();
  f->child_ = std::move(*child);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!repro::is_fuse_mounted(f->mnt_)) {
    if (!f->child_->running())
      return Error::from_errno(EIO, argv[0] + " exited with " + std::to_string(f->child_->exit_code()) + ": " +
                                        tail(f->log_));
    if (repro::stop_requested().load()) return Error::from_errno(EINTR, "interrupted");
    if (std::chrono::steady_clock::now() > deadline)
      return Error::from_errno(ETIMEDOUT, argv[0] + " did not mount within 20 s: " + tail(f->log_));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return f;
}

bool FuseDaemon::alive() { return child_ && child_->running() && repro::is_fuse_mounted(mnt_); }

FuseDaemon::~FuseDaemon() {
  if (child_) child_->terminate(std::chrono::seconds(10));  // libfuse daemons unmount on SIGTERM
  if (!mnt_.empty()) repro::force_unmount(mnt_);
}

Result<std::unique_ptr<Antares>> Antares::start(const repro::FsOptions& o, const std::string& mega_url,
                                                const std::string& dir) {
  if (auto st = make_dir(dir); !st.ok()) return st.error();
  std::unique_ptr<Antares> a(new Antares());
  a->opts_ = o;
  a->url_ = mega_url;
  a->dir_ = dir;
  if (auto st = a->launch(); !st.ok()) return st.error();
  return a;
}

Status Antares::launch() {
  auto fs = repro::MountedFs::start(opts_, url_, dir_);
  if (!fs) return fs.error();
  fs_ = std::move(*fs);
  // The daemon's pid, from its control endpoint file (the only file in run/).
  std::string run = real_path(dir_) + "/run";
  DIR* d = ::opendir(run.c_str());
  if (!d) return Error::from_errno(errno, "opendir " + run);
  pid_ = -1;
  while (struct dirent* de = ::readdir(d)) {
    std::string n = de->d_name;
    if (n.size() < 5 || n.compare(n.size() - 5, 5, ".json") != 0) continue;
    auto j = nlohmann::json::parse(read_text(run + "/" + n), nullptr, false);
    if (j.is_object() && j.contains("pid") && j["pid"].is_number_integer()) pid_ = j["pid"].get<pid_t>();
  }
  ::closedir(d);
  if (pid_ <= 0) return Error::from_errno(ENOENT, "no daemon pid in " + run);
  return {};
}

Status Antares::restart() {
  fs_.reset();  // SIGTERM, wait, force-unmount if needed
  return launch();
}

Result<Counters> Antares::scrape() {
  if (!fs_) return Error::from_errno(ENOTCONN, "antares-fs is not mounted");
  auto text = fs_->ctl({"metrics"});
  if (!text) return text.error();
  auto s = parse_prometheus(*text);
  Counters c;
  c.fuse = prom_sum(s, "antares_requests_total");
  c.fuse_by_op = prom_by_label(s, "antares_requests_total", "op");
  c.fs_http = prom_sum(s, "antares_http_requests_total");
  c.invalidations = prom_sum(s, "antares_invalidations_total", "result", {"sent"});
  return c;
}

std::optional<double> cpu_seconds(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::string st = read_text("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = st.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream in(st.substr(paren + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  // Fields 3.. after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime.
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  if (!in) return std::nullopt;
  return double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
}

pid_t find_process(const std::string& needle) {
  DIR* d = ::opendir("/proc");
  if (!d) return -1;
  pid_t found = -1;
  while (struct dirent* de = ::readdir(d)) {
    if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
    std::string cmd = read_text(std::string("/proc/") + de->d_name + "/cmdline");
    for (auto& c : cmd)
      if (c == '\0') c = ' ';
    if (cmd.find(needle) != std::string::npos && std::atoi(de->d_name) != ::getpid()) {
      found = std::atoi(de->d_name);
      break;
    }
  }
  ::closedir(d);
  return found;
}

std::optional<uint64_t> rss_bytes(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::istringstream in(read_text("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  return std::nullopt;
}

}  // namespace antares::bench
