#include "repro/walker.h"

#include <dirent.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/rng.h"
#include "repro/buck_parse.h"
#include "repro/path_ops.h"

namespace antares::repro {
namespace {

bool is_bzl(const std::string& n) { return n.size() > 4 && n.compare(n.size() - 4, 4, ".bzl") == 0; }
std::string join(const std::string& dir, const std::string& name) { return dir.empty() ? name : dir + "/" + name; }
std::string parent_of(const std::string& p) {
  size_t s = p.rfind('/');
  return s == std::string::npos ? std::string() : p.substr(0, s);
}

// A fixed pool running tasks that may submit more tasks; wait() returns when
// the queue is empty and no task runs.
class TaskPool {
 public:
  explicit TaskPool(unsigned n) {
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~TaskPool() {
    {
      std::lock_guard l(mu_);
      shutdown_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void submit(std::function<void()> f) {
    {
      std::lock_guard l(mu_);
      ++pending_;
      q_.push_back(std::move(f));
    }
    cv_.notify_one();
  }
  void wait() {
    std::unique_lock l(mu_);
    idle_.wait(l, [&] { return pending_ == 0; });
  }

 private:
  void loop() {
    while (true) {
      std::function<void()> f;
      {
        std::unique_lock l(mu_);
        cv_.wait(l, [&] { return shutdown_ || !q_.empty(); });
        if (q_.empty()) return;
        f = std::move(q_.front());
        q_.pop_front();
      }
      f();
      std::lock_guard l(mu_);
      if (--pending_ == 0) idle_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<std::function<void()>> q_;  // guarded by mu_
  size_t pending_ = 0;                   // queued + running; guarded by mu_
  bool shutdown_ = false;                // guarded by mu_
  std::vector<std::thread> threads_;
};

class Semaphore {
 public:
  explicit Semaphore(unsigned n) : n_(n) {}
  void acquire() {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return n_ > 0; });
    --n_;
  }
  void release() {
    {
      std::lock_guard l(mu_);
      ++n_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned n_;
};

class Walk {
 public:
  Walk(const WalkOptions& o, Recorder* rec)
      : o_(o), ops_(o.root, rec), dir_slots_(std::max(1u, o.dirs_in_flight)), pool_(std::max(1u, o.threads)) {}

  WalkSummary run() {
    s_.start_us = wall_us();
    if (auto text = ops_.read(".buckconfig")) cfg_ = parse_buckconfig(*text);
    else count_error();
    pool_.submit([this] { list_dir(""); });
    pool_.wait();
    s_.end_us = wall_us();
    s_.stopped = stopped();
    WalkSummary out = s_;
    out.dirs = dirs_;
    out.packages = packages_;
    out.package_files = package_files_;
    out.buildfiles = buildfiles_;
    out.bzl = bzl_;
    out.sources = sources_;
    out.writes = writes_;
    out.errors = errors_;
    return out;
  }

 private:
  struct DirInfo {
    bool has_package = false;
  };

  bool stopped() const { return o_.stop && o_.stop->load(std::memory_order_relaxed); }
  void count_error() { errors_.fetch_add(1, std::memory_order_relaxed); }

  bool ignored(const std::string& rel) const {
    return std::find(cfg_.ignore.begin(), cfg_.ignore.end(), rel) != cfg_.ignore.end();
  }

  std::string buildfile_in(const std::vector<DirEntry>& entries) const {
    for (const auto& name : cfg_.buildfile_names)
      for (const auto& e : entries)
        if (e.name == name && e.type == DT_REG) return name;
    return {};
  }

  std::optional<std::vector<DirEntry>> list_limited(const std::string& rel) {
    dir_slots_.acquire();
    auto r = ops_.list(rel);
    dir_slots_.release();
    if (!r) count_error();
    return r;
  }

  // Breadth-first step: list one directory, queue its subdirectories and its package.
  void list_dir(const std::string& rel) {
    if (stopped()) return;
    auto entries = list_limited(rel);
    if (!entries) return;
    dirs_.fetch_add(1, std::memory_order_relaxed);
    DirInfo info;
    for (const auto& e : *entries)
      if (e.name == "PACKAGE" && e.type == DT_REG) info.has_package = true;
    {
      std::lock_guard l(mu_);
      dirs_info_[rel] = info;
    }
    if (o_.lstat_entries)
      for (const auto& e : *entries)
        if (ops_.lstat(join(rel, e.name)) != 0) count_error();
    for (const auto& e : *entries) {
      if (e.type != DT_DIR) continue;
      std::string child = join(rel, e.name);
      if (ignored(child)) continue;
      pool_.submit([this, child] { list_dir(child); });
    }
    std::string buildfile = buildfile_in(*entries);
    if (!buildfile.empty()) pool_.submit([this, rel, buildfile] { package(rel, buildfile); });
  }

  // Reads a .bzl file once per walk, then whatever it loads.
  void load_bzl(const std::string& path) {
    if (stopped()) return;
    {
      std::lock_guard l(mu_);
      if (!bzl_seen_.insert(path).second) return;
    }
    auto text = ops_.read(path);
    if (!text) {
      count_error();
      return;
    }
    bzl_.fetch_add(1, std::memory_order_relaxed);
    for (const auto& label : parse_loads(*text))
      if (auto p = label_to_path(label, parent_of(path))) load_bzl(*p);
  }

  void read_package_files(const std::string& rel) {
    std::vector<std::string> chain;  // root first
    for (std::string d = rel;; d = parent_of(d)) {
      chain.push_back(d);
      if (d.empty()) break;
    }
    std::reverse(chain.begin(), chain.end());
    for (const auto& d : chain) {
      bool has;
      {
        std::unique_lock l(mu_);
        auto it = dirs_info_.find(d);
        has = it != dirs_info_.end() && it->second.has_package;
        // PACKAGE files are evaluated once per walk; a BUCK file still needs
        // them evaluated before it, so wait for another thread's evaluation.
        if (has) {
          auto [st, first] = package_done_.try_emplace(d, false);
          if (!first) {
            package_cv_.wait(l, [&] { return package_done_[d]; });
            has = false;
          }
        }
      }
      if (!has) continue;
      std::string path = join(d, "PACKAGE");
      auto text = ops_.read(path);
      if (!text) {
        count_error();
      } else {
        package_files_.fetch_add(1, std::memory_order_relaxed);
        for (const auto& label : parse_loads(*text))
          if (auto p = label_to_path(label, d)) load_bzl(*p);
      }
      {
        std::lock_guard l(mu_);
        package_done_[d] = true;
      }
      package_cv_.notify_all();
    }
  }

  void package(const std::string& rel, const std::string& buildfile) {
    if (stopped()) return;
    packages_.fetch_add(1, std::memory_order_relaxed);
    read_package_files(rel);
    auto text = ops_.read(join(rel, buildfile));
    if (!text) {
      count_error();
      return;
    }
    buildfiles_.fetch_add(1, std::memory_order_relaxed);
    for (const auto& label : parse_loads(*text))
      if (auto p = label_to_path(label, rel)) load_bzl(*p);

    // The package's subtree down to sub-packages: what its glob()s see.
    std::vector<std::string> sources;
    std::vector<std::string> stack;
    if (o_.list_package_globs) stack.push_back(rel);
    while (!stack.empty() && !stopped()) {
      std::string d = stack.back();
      stack.pop_back();
      auto entries = list_limited(d);
      if (!entries) continue;
      if (d != rel && !buildfile_in(*entries).empty()) continue;  // a sub-package owns its files
      for (const auto& e : *entries) {
        std::string p = join(d, e.name);
        if (e.type == DT_DIR) {
          if (!ignored(p)) stack.push_back(p);
        } else if (e.type == DT_REG && e.name != "PACKAGE" && !is_bzl(e.name) &&
                   std::find(cfg_.buildfile_names.begin(), cfg_.buildfile_names.end(), e.name) ==
                       cfg_.buildfile_names.end()) {
          sources.push_back(p);
        }
      }
    }
    std::sort(sources.begin(), sources.end());
    std::string digest = "package //" + rel + "\n";
    for (const auto& src : sources) {
      if (stopped()) return;
      if (!source_selected(src, o_.seed, o_.iteration, o_.source_share)) continue;
      // lstat every component, then read the whole file for its digest.
      bool ok = true;
      for (size_t pos = src.find('/'); ok; pos = src.find('/', pos + 1)) {
        std::string prefix = pos == std::string::npos ? src : src.substr(0, pos);
        if (ops_.lstat(prefix) != 0) {
          count_error();
          ok = false;
        }
        if (pos == std::string::npos) break;
      }
      if (!ok) continue;
      auto bytes = ops_.read(src);
      if (!bytes) {
        count_error();
        continue;
      }
      sources_.fetch_add(1, std::memory_order_relaxed);
      digest += git_blob_oid(*bytes).hex() + " " + src + "\n";
    }
    if (o_.write_buck_out) write_outputs(rel, digest);
  }

  // buck2 writes its outputs and state under buck-out/ meanwhile: a temp file
  // renamed into place, in the upper layer of the mount.
  void write_outputs(const std::string& rel, const std::string& digest) {
    std::string dir = o_.buck_out + "/" + (rel.empty() ? std::string("__root__") : rel);
    if (ops_.mkdirs(dir) != 0) {
      count_error();
      return;
    }
    std::string tmp = dir + "/.targets.tmp";
    if (ops_.write(tmp, digest) != 0 || ops_.rename(tmp, dir + "/targets.out") != 0) {
      count_error();
      return;
    }
    writes_.fetch_add(1, std::memory_order_relaxed);
  }

  const WalkOptions& o_;
  PathOps ops_;
  BuckConfig cfg_;  // written before the first task is submitted, then read-only
  std::mutex mu_;
  std::map<std::string, DirInfo> dirs_info_;  // guarded by mu_
  std::set<std::string> bzl_seen_;            // guarded by mu_
  std::map<std::string, bool> package_done_;  // guarded by mu_: PACKAGE dir -> evaluated
  std::condition_variable package_cv_;        // with mu_: a PACKAGE evaluation finished
  std::atomic<uint64_t> dirs_{0}, packages_{0}, package_files_{0}, buildfiles_{0}, bzl_{0}, sources_{0}, writes_{0},
      errors_{0};
  WalkSummary s_;
  Semaphore dir_slots_;
  TaskPool pool_;  // last: its threads stop before the state they use is destroyed
};

}  // namespace

bool source_selected(const std::string& path, uint64_t seed, uint64_t iteration, double share) {
  if (share <= 0) return false;
  if (share >= 1) return true;
  uint64_t h = hash_str(path, mix64(seed ^ mix64(iteration + 1)));
  return static_cast<double>(h >> 11) * 0x1.0p-53 < share;
}

WalkSummary walk(const WalkOptions& opts, Recorder* rec) {
  Walk w(opts, rec);
  return w.run();
}

}  // namespace antares::repro
