// antares-fs: mounts the union of an upper directory, an optional CL layer and
// the Mega-backed lower layer, serves it with libfuse's multi-threaded
// low-level loop, and exposes the control endpoint antares-ctl talks to.
#include <getopt.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "common/duration.h"
#include "common/log.h"
#include "fs/control/control_server.h"
#include "fs/control/endpoint.h"
#include "fs/fuse/fuse_adapter.h"
#include "fs/fuse/upper_watcher.h"
#include "fs/lower/cl_builder.h"
#include "fs/lower/lower_store.h"
#include "fs/remote/mega_client.h"

namespace antares::fs {
namespace {

enum Exit { kOk = 0, kFailure = 1, kUsage = 2, kMountpoint = 3, kUnreachable = 4, kLayerDir = 5 };

constexpr const char* kUsageText = R"(usage: antares-fs --mega URL --mountpoint DIR --upper DIR --cache DIR [options]

Mounts the union of DIR (upper, read-write), an optional changelist layer and
the Mega monorepo at URL (lower, fetched lazily and refreshed after --ttl).

  --mega URL            Mega server base URL, e.g. http://127.0.0.1:8000
  --mountpoint DIR      an existing, empty directory that is not a mount point
  --upper DIR           the writable upper layer
  --cache DIR           where fetched files are mirrored (DIR/lower is owned by antares-fs)
  --cl ID --cl-dir DIR  also mount changelist ID, built into DIR (wiped)
  --ttl D               directory listing TTL (default 5s; accepts 300ms)
  --strategy S          stale-handle strategy: none, A, B, C, auto (default auto)
  --entry-timeout S     kernel entry cache timeout in seconds (default 1)
  --attr-timeout S      kernel attribute cache timeout in seconds (default 1)
  --long-timeout S      attribute timeout under B and auto, which invalidate (default 60);
                        their entry timeout is the TTL
  --threads N           FUSE worker threads (default 16)
  --run-dir DIR         control endpoint directory (default $ANTARES_RUN_DIR or /run/antares)
  --log-level L         debug, info, warn, error (default info)
  --foreground          stay in the foreground
  --help                this text

Exit codes: 0 unmounted cleanly; 1 runtime failure; 2 bad usage;
3 mountpoint unusable (missing, busy, not empty, or left over from a crashed
daemon); 4 Mega server unreachable at start; 5 a layer directory is unusable.
)";

struct Options {
  std::string mega, mountpoint, upper, cache, cl, cl_dir, run_dir;
  std::chrono::milliseconds ttl{5000};
  std::string strategy{kDefaultStrategy};
  double entry_timeout = 1.0, attr_timeout = 1.0, long_timeout = 60.0;
  int threads = 16;
  bool foreground = false;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "antares-fs: %s\nTry 'antares-fs --help'.\n", msg.c_str());
  std::exit(kUsage);
}

bool parse_seconds(const char* s, double* out) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s, &end);
  if (errno || end == s || *end || !std::isfinite(v) || v < 0 || v > 86400 * 365) return false;
  *out = v;
  return true;
}

Options parse(int argc, char** argv) {
  Options o;
  o.run_dir = control::default_run_dir();
  enum { kMega = 256, kMount, kUpper, kCache, kCl, kClDir, kTtl, kStrategy, kEntry, kAttr, kLong, kThreads, kRun,
         kLog, kFg, kHelp };
  static const option longopts[] = {
      {"mega", required_argument, nullptr, kMega},          {"mountpoint", required_argument, nullptr, kMount},
      {"upper", required_argument, nullptr, kUpper},        {"cache", required_argument, nullptr, kCache},
      {"cl", required_argument, nullptr, kCl},              {"cl-dir", required_argument, nullptr, kClDir},
      {"ttl", required_argument, nullptr, kTtl},            {"strategy", required_argument, nullptr, kStrategy},
      {"entry-timeout", required_argument, nullptr, kEntry}, {"attr-timeout", required_argument, nullptr, kAttr},
      {"long-timeout", required_argument, nullptr, kLong},  {"threads", required_argument, nullptr, kThreads},
      {"run-dir", required_argument, nullptr, kRun},        {"log-level", required_argument, nullptr, kLog},
      {"foreground", no_argument, nullptr, kFg},            {"help", no_argument, nullptr, kHelp},
      {nullptr, 0, nullptr, 0}};
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "", longopts, nullptr)) != -1) {
    switch (c) {
      case kMega: o.mega = optarg; break;
      case kMount: o.mountpoint = optarg; break;
      case kUpper: o.upper = optarg; break;
      case kCache: o.cache = optarg; break;
      case kCl: o.cl = optarg; break;
      case kClDir: o.cl_dir = optarg; break;
      case kTtl: {
        auto d = parse_duration(optarg);
        if (!d || d->count() <= 0) usage_error(std::string("--ttl: not a duration: '") + optarg + "' (try 5s or 300ms)");
        o.ttl = *d;
        break;
      }
      case kStrategy: o.strategy = optarg; break;
      case kEntry:
        if (!parse_seconds(optarg, &o.entry_timeout)) usage_error(std::string("--entry-timeout: bad seconds '") + optarg + "'");
        break;
      case kAttr:
        if (!parse_seconds(optarg, &o.attr_timeout)) usage_error(std::string("--attr-timeout: bad seconds '") + optarg + "'");
        break;
      case kLong:
        if (!parse_seconds(optarg, &o.long_timeout)) usage_error(std::string("--long-timeout: bad seconds '") + optarg + "'");
        break;
      case kThreads: {
        char* end = nullptr;
        long v = std::strtol(optarg, &end, 10);
        if (*end || v < 1 || v > 256) usage_error(std::string("--threads: expected 1..256, got '") + optarg + "'");
        o.threads = int(v);
        break;
      }
      case kRun: o.run_dir = optarg; break;
      case kLog: {
        log::Level l;
        if (!log::parse_level(optarg, &l)) usage_error(std::string("--log-level: unknown level '") + optarg + "'");
        log::set_level(l);
        break;
      }
      case kFg: o.foreground = true; break;
      case kHelp: std::fputs(kUsageText, stdout); std::exit(kOk);
      case ':': usage_error(std::string("option ") + argv[optind - 1] + " needs a value");
      default: usage_error(std::string("unknown option ") + argv[optind - 1]);
    }
  }
  if (optind < argc) usage_error(std::string("unexpected argument '") + argv[optind] + "'");
  if (o.mega.empty()) usage_error("--mega URL is required");
  if (o.mountpoint.empty()) usage_error("--mountpoint DIR is required");
  if (o.upper.empty()) usage_error("--upper DIR is required");
  if (o.cache.empty()) usage_error("--cache DIR is required");
  if (o.cl.empty() != o.cl_dir.empty()) usage_error("--cl and --cl-dir go together");
  return o;
}

[[noreturn]] void fail(int code, const std::string& msg) {
  std::fprintf(stderr, "antares-fs: %s\n", msg.c_str());
  log::error("startup_failed", {{"error", msg}, {"exit", std::to_string(code)}});
  std::exit(code);
}

// The fstype of the mount at `path`, if it is a mount point.
std::optional<std::string> mount_fstype(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, dev, root, point, rest;
    ls >> id >> parent >> dev >> root >> point;
    if (point != path) continue;
    auto dash = line.find(" - ");
    if (dash == std::string::npos) return std::string("?");
    std::istringstream tail(line.substr(dash + 3));
    std::string fstype;
    tail >> fstype;
    return fstype;
  }
  return std::nullopt;
}

void check_mountpoint(const std::string& mp) {
  struct stat st;
  if (::stat(mp.c_str(), &st) != 0) {
    if (errno == ENOTCONN || errno == ECONNABORTED)
      fail(kMountpoint, "mountpoint " + mp + " is a dead FUSE mount left over from a crashed daemon; "
                        "clear it with: fusermount3 -u " + mp);
    fail(kMountpoint, "mountpoint " + mp + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) fail(kMountpoint, "mountpoint " + mp + " is not a directory");
  char real[PATH_MAX];
  if (!::realpath(mp.c_str(), real)) fail(kMountpoint, "mountpoint " + mp + ": " + std::strerror(errno));
  if (auto fstype = mount_fstype(real))
    fail(kMountpoint, "mountpoint " + mp + " is busy: something (" + *fstype + ") is already mounted there");
  std::error_code ec;
  if (!std::filesystem::is_empty(real, ec) || ec)
    fail(kMountpoint, "mountpoint " + mp + " is not empty" + (ec ? ": " + ec.message() : ""));
}

void check_dir(const std::string& what, const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) fail(kLayerDir, what + " " + dir + ": " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) fail(kLayerDir, what + " " + dir + " is not a directory");
}

class LowerHooks final : public LayerHooks {
 public:
  explicit LowerHooks(LowerStore& s) : s_(s) {}
  Status before_dir(const std::string& rel) override { return s_.ensure_dir(rel); }
  Status before_open(const std::string& rel) override { return s_.ensure_file(rel); }
  bool content_ready(uint64_t ino) override { return s_.content_ready(ino); }
  bool hidden(std::string_view name) const override { return LowerStore::is_internal_name(name); }

 private:
  LowerStore& s_;
};

class ClHooks final : public LayerHooks {
 public:
  bool hidden(std::string_view name) const override { return LowerStore::is_internal_name(name); }
};

// Everything one mount owns, in construction order.
class Daemon {
 public:
  explicit Daemon(Options o) : opts_(std::move(o)) {}
  int run();

 private:
  void apply_strategy(const HandleStrategy* s);
  void on_change(size_t layer, const std::vector<LayerChange>& changes);
  void cl_poll_loop();
  nlohmann::json status_json();
  std::string metrics_text();
  Status refresh(const std::string& path);

  Options opts_;
  std::unique_ptr<remote::MegaClient> mega_;
  std::unique_ptr<LowerStore> lower_;
  std::unique_ptr<ClBuilder> cl_;
  std::unique_ptr<LowerHooks> lower_hooks_owned_;
  ClHooks cl_hooks_;
  StrategySet strategies_;
  std::unique_ptr<StrategySlot> slot_;
  std::unique_ptr<UnionFs> fs_;
  KernelTimeouts timeouts_;
  std::unique_ptr<FuseAdapter> adapter_;
  Invalidator invalidator_;
  UpperWatcher watcher_;
  size_t cl_layer_ = 0, lower_layer_ = 0;
  std::atomic<uint64_t> layer_changes_{0}, cl_resyncs_{0}, cl_errors_{0};
  std::mutex poll_mu_;
  std::condition_variable poll_cv_;
  bool stopping_ = false;  // guarded by poll_mu_
};

void Daemon::apply_strategy(const HandleStrategy* s) {
  slot_->set(s);
  if (s->invalidates()) {
    // Names are trusted as long as the listing that produced them is fresh, so
    // the kernel's lookups still drive the lower layer's TTL refresh; what the
    // refresh changes is invalidated, so attributes and pages can live long.
    timeouts_.entry = std::max(opts_.entry_timeout, std::chrono::duration<double>(opts_.ttl).count());
    timeouts_.attr = std::max(opts_.attr_timeout, opts_.long_timeout);
    timeouts_.keep_cache = true;
  } else {
    timeouts_.entry = opts_.entry_timeout;
    timeouts_.attr = opts_.attr_timeout;
    timeouts_.keep_cache = false;
  }
  if (fs_) fs_->drop_caches();
  log::info("strategy", {{"name", std::string(s->name())},
                         {"entry_timeout", std::to_string(timeouts_.entry.load())},
                         {"attr_timeout", std::to_string(timeouts_.attr.load())}});
}

void Daemon::on_change(size_t layer, const std::vector<LayerChange>& changes) {
  layer_changes_ += changes.size();
  if (!fs_ || !slot_->get().invalidates()) return;
  invalidator_.push(fs_->on_layer_change(layer, changes));
}

Status Daemon::refresh(const std::string& path) {
  std::string rel = path;
  while (!rel.empty() && rel.front() == '/') rel.erase(0, 1);
  while (!rel.empty() && rel.back() == '/') rel.pop_back();
  lower_->expire(rel);
  if (cl_) {
    auto r = cl_->resync();
    if (!r.ok()) return r.error();
    if (*r) cl_resyncs_++;
  }
  return {};
}

void Daemon::cl_poll_loop() {
  std::unique_lock lk(poll_mu_);
  while (!poll_cv_.wait_for(lk, opts_.ttl, [&] { return stopping_; })) {
    lk.unlock();
    Result<bool> r = cl_->resync();
    if (!r.ok()) {
      cl_errors_++;
      log::warn("cl_resync_failed", {{"cl", opts_.cl}, {"error", r.error().describe()}});
    } else if (*r) {
      cl_resyncs_++;
      log::info("cl_resynced", {{"cl", opts_.cl}});
    }
    lk.lock();
  }
}

nlohmann::json Daemon::status_json() {
  const auto& us = fs_->stats();
  uint64_t estale = 0;
  for (auto& per_layer : us.estale)
    for (auto& v : per_layer) estale += v.load();
  const auto& ls = lower_->stats();
  const auto& ms = mega_->stats();
  auto& ss = strategies_.stats();
  return {{"strategy", std::string(slot_->get().name())},
          {"ttl_ms", opts_.ttl.count()},
          {"mountpoint", opts_.mountpoint},
          {"entry_timeout", timeouts_.entry.load()},
          {"attr_timeout", timeouts_.attr.load()},
          {"counters",
           {{"estale_returned", estale},
            {"estale_recovered", ss.recovered.load()},
            {"estale_recovered_gone", ss.recovered_gone.load()},
            {"identity_changes", ss.identity_changes.load()},
            {"invalidations_sent", invalidator_.sent()},
            {"invalidations_failed", invalidator_.failed()},
            {"layer_changes", layer_changes_.load()},
            {"upper_events", watcher_.events()},
            {"listings_fetched", ls.listings_fetched.load()},
            {"refreshes", ls.refreshes.load()},
            {"entries_changed", ls.entries_changed.load()},
            {"blobs_fetched", ls.blobs_fetched.load()},
            {"cl_resyncs", cl_resyncs_.load()},
            {"http_requests", ms.requests.load()},
            {"http_errors", ms.errors.load()},
            {"nodes", us.nodes.load()},
            {"dir_loads", us.dir_loads.load()},
            {"dir_reloads", us.dir_reloads.load()},
            {"change_races", us.change_races.load()},
            {"renewed_nodes", us.renewed_nodes.load()},
            {"retired_nodes", us.retired_nodes.load()},
            {"copy_ups", us.copy_ups.load()}}}};
}

std::string Daemon::metrics_text() {
  std::ostringstream o;
  auto family = [&](const char* name, const char* type, const char* help) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  };
  family("antares_requests_total", "counter", "FUSE requests by operation and result");
  auto& rs = adapter_->stats();
  for (int op = 0; op < int(FuseOp::kCount); ++op)
    for (int e = 0; e < ReplyStats::kMaxErrno; ++e)
      if (uint64_t v = rs.replies[op][e].load())
        o << "antares_requests_total{op=\"" << fuse_op_name(FuseOp(op)) << "\",result=\""
          << (e == 0 ? "ok" : strerrorname_np(e) ? strerrorname_np(e) : std::to_string(e).c_str()) << "\"} " << v
          << '\n';
  family("antares_estale_returned_total", "counter", "ESTALE returned to the kernel by layer and operation");
  const auto& us = fs_->stats();
  for (size_t l = 0; l < fs_->layer_count() && l < size_t(UnionStats::kMaxLayers); ++l)
    for (int op = 0; op < int(Op::kCount); ++op)
      if (uint64_t v = us.estale[l][op].load())
        o << "antares_estale_returned_total{layer=\"" << fs_->layer(l).name() << "\",op=\"" << op_name(Op(op))
          << "\"} " << v << '\n';
  auto& ss = strategies_.stats();
  auto scalar = [&](const char* name, const char* type, const char* help, double v) {
    family(name, type, help);
    o << name << ' ' << v << '\n';
  };
  scalar("antares_estale_recovered_total", "counter", "ESTALE recovered by re-resolving the path", double(ss.recovered.load()));
  scalar("antares_estale_recovered_gone_total", "counter", "ESTALE whose path was gone (ENOENT)", double(ss.recovered_gone.load()));
  family("antares_invalidations_total", "counter", "kernel invalidations by outcome");
  o << "antares_invalidations_total{result=\"sent\"} " << invalidator_.sent() << '\n';
  o << "antares_invalidations_total{result=\"failed\"} " << invalidator_.failed() << '\n';
  const auto& ls = lower_->stats();
  scalar("antares_lower_listings_total", "counter", "lower listings fetched", double(ls.listings_fetched.load()));
  scalar("antares_lower_refreshes_total", "counter", "lower refreshes that found a change", double(ls.refreshes.load()));
  scalar("antares_lower_entries_changed_total", "counter", "lower entries added, replaced or removed", double(ls.entries_changed.load()));
  scalar("antares_lower_blobs_total", "counter", "blobs fetched", double(ls.blobs_fetched.load()));
  scalar("antares_cl_resyncs_total", "counter", "CL re-syncs that changed the CL layer", double(cl_resyncs_.load()));
  const auto& ms = mega_->stats();
  scalar("antares_http_requests_total", "counter", "HTTP requests to Mega (retries included)", double(ms.requests.load()));
  scalar("antares_http_errors_total", "counter", "failed HTTP requests to Mega", double(ms.errors.load()));
  scalar("antares_http_latency_seconds_total", "counter", "summed HTTP latency", double(ms.latency_us_total.load()) / 1e6);
  family("antares_handle_cache_entries", "gauge", "file handles cached per layer");
  for (size_t l = 0; l < fs_->layer_count(); ++l)
    o << "antares_handle_cache_entries{layer=\"" << fs_->layer(l).name() << "\"} " << fs_->layer(l).cache().size() << '\n';
  family("antares_handle_cache_lookups_total", "counter", "handle cache lookups by layer and result");
  for (size_t l = 0; l < fs_->layer_count(); ++l) {
    const auto& hs = fs_->layer(l).cache().stats();
    o << "antares_handle_cache_lookups_total{layer=\"" << fs_->layer(l).name() << "\",result=\"hit\"} " << hs.hits.load() << '\n';
    o << "antares_handle_cache_lookups_total{layer=\"" << fs_->layer(l).name() << "\",result=\"miss\"} " << hs.misses.load() << '\n';
  }
  scalar("antares_nodes", "gauge", "nodes the kernel holds", double(us.nodes.load()));
  family("antares_strategy", "gauge", "the current stale-handle strategy (1 = current)");
  for (const char* n : {"none", "A", "B", "C", "auto"})
    o << "antares_strategy{name=\"" << n << "\"} " << (slot_->get().name() == n ? 1 : 0) << '\n';
  return o.str();
}

int Daemon::run() {
  const HandleStrategy* initial = strategies_.find(opts_.strategy);
  if (!initial) usage_error("--strategy: unknown strategy '" + opts_.strategy + "' (none, A, B, C, auto)");
  check_mountpoint(opts_.mountpoint);
  check_dir("--upper", opts_.upper);
  check_dir("--cache", opts_.cache);
  if (!opts_.cl_dir.empty()) check_dir("--cl-dir", opts_.cl_dir);
  // Absolute paths from here on: the daemon changes directory to /.
  for (std::string* p : {&opts_.mountpoint, &opts_.upper, &opts_.cache, &opts_.cl_dir}) {
    if (p->empty()) continue;
    char real[PATH_MAX];
    if (!::realpath(p->c_str(), real)) fail(kLayerDir, *p + ": " + std::strerror(errno));
    *p = real;
  }
  if (!opts_.run_dir.empty() && opts_.run_dir[0] != '/')
    opts_.run_dir = std::filesystem::absolute(opts_.run_dir).lexically_normal().string();

  // The mirror is ours: start it empty so nothing from an earlier mount is served.
  std::string mirror = opts_.cache + "/lower";
  std::error_code ec;
  std::filesystem::remove_all(mirror, ec);
  if (!std::filesystem::create_directories(mirror, ec) && ec)
    fail(kLayerDir, "--cache: cannot create " + mirror + ": " + ec.message());

  remote::MegaClientOptions mo;
  mo.base_url = opts_.mega;
  mega_ = std::make_unique<remote::MegaClient>(mo);
  lower_ = std::make_unique<LowerStore>(*mega_, mirror, std::chrono::duration_cast<Clock::Duration>(opts_.ttl));
  if (auto st = lower_->status(); !st.ok()) fail(kLayerDir, "lower mirror: " + st.error().describe());
  if (auto st = lower_->ensure_dir(""); !st.ok())
    fail(kUnreachable, "cannot list / from Mega at " + opts_.mega + ": " + st.error().describe());
  if (!opts_.cl.empty()) {
    cl_ = std::make_unique<ClBuilder>(*mega_, opts_.cl, opts_.cl_dir);
    if (auto st = cl_->build(); !st.ok())
      fail(st.err() == ENOENT ? kFailure : kUnreachable, "cannot build CL " + opts_.cl + ": " + st.error().describe());
  }

  lower_hooks_owned_ = std::make_unique<LowerHooks>(*lower_);
  std::vector<std::unique_ptr<Layer>> layers;
  auto add_layer = [&](const char* name, const std::string& dir, bool writable, LayerHooks* hooks) {
    auto l = Layer::open(name, dir, writable, hooks);
    if (!l.ok()) fail(kLayerDir, l.error().describe());
    layers.push_back(std::move(*l));
    return layers.size() - 1;
  };
  add_layer("upper", opts_.upper, true, nullptr);
  if (cl_) cl_layer_ = add_layer("cl", opts_.cl_dir, false, &cl_hooks_);
  lower_layer_ = add_layer("lower", mirror, false, lower_hooks_owned_.get());

  slot_ = std::make_unique<StrategySlot>(initial);
  apply_strategy(initial);
  fs_ = std::make_unique<UnionFs>(std::move(layers), *slot_);
  if (auto st = fs_->init(); !st.ok()) fail(kLayerDir, st.error().describe());
  fs_->set_identity_observer([this](NodeId n) {
    if (slot_->get().invalidates()) invalidator_.push({{KernelInvalidation::Kind::inode, n, {}}});
  });
  // Each owner brackets its real changes, so B waits only for those.
  auto listener_for = [this](size_t layer) {
    return LayerChangeListener{[this, layer] { fs_->layer(layer).begin_change(); },
                               [this, layer](const std::vector<LayerChange>& c) {
                                 on_change(layer, c);
                                 fs_->layer(layer).end_change();
                               }};
  };
  lower_->set_listener(listener_for(lower_layer_));
  if (cl_) cl_->set_listener(listener_for(cl_layer_));
  adapter_ = std::make_unique<FuseAdapter>(*fs_, timeouts_);

  std::vector<std::string> argv_s = {"antares-fs", "-o",
                                     "default_permissions,allow_other,fsname=antares,subtype=antares"};
  if (log::enabled(log::Level::debug) && std::getenv("ANTARES_FUSE_DEBUG")) argv_s.push_back("-d");
  std::vector<char*> argv_c;
  for (auto& s : argv_s) argv_c.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(int(argv_c.size()), argv_c.data());
  fuse_session* se = fuse_session_new(&args, &FuseAdapter::ops(), sizeof(fuse_lowlevel_ops), adapter_.get());
  if (!se) fail(kFailure, "fuse_session_new failed");
  if (fuse_set_signal_handlers(se) != 0) fail(kFailure, "cannot install signal handlers");
  if (fuse_session_mount(se, opts_.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    fail(kMountpoint, "cannot mount at " + opts_.mountpoint + " (see the message above)");
  }
  // Threads start after daemonizing: fork keeps only the calling thread.
  fuse_daemonize(opts_.foreground ? 1 : 0);
  invalidator_.start(se);
  if (auto st = watcher_.start(opts_.upper, {nullptr, [this](const std::vector<LayerChange>& c) { on_change(0, c); }}); !st.ok())
    log::warn("upper_watch_unavailable", {{"error", st.error().describe()}});
  else {
    fs_->set_upper_dir_observer([this](const std::string& rel) { watcher_.watch(rel); });
    adapter_->set_before_request([this] {
      if (slot_->get().invalidates()) watcher_.drain();
    });
  }
  std::thread poller;
  if (cl_) poller = std::thread([this] { cl_poll_loop(); });

  control::ControlHandlers h;
  h.status = [this] { return status_json(); };
  h.metrics = [this] { return metrics_text(); };
  h.refresh = [this](const std::string& p) { return refresh(p); };
  h.set_strategy = [this](const std::string& name) -> Status {
    const HandleStrategy* s = strategies_.find(name);
    if (!s) return Error::from_errno(EINVAL, "unknown strategy '" + name + "' (none, A, B, C, auto)");
    apply_strategy(s);
    return {};
  };
  auto control = control::ControlServer::start(opts_.mountpoint, opts_.run_dir, std::move(h));
  int code = kOk;
  if (!control.ok()) {
    log::error("control_failed", {{"error", control.error().describe()}});
    code = kFailure;
  } else {
    log::info("mounted", {{"mountpoint", opts_.mountpoint},
                          {"strategy", std::string(slot_->get().name())},
                          {"ttl_ms", std::to_string(opts_.ttl.count())},
                          {"control", (*control)->endpoint_file()},
                          {"pid", std::to_string(::getpid())}});
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, unsigned(opts_.threads));
    fuse_loop_cfg_set_idle_threads(cfg, unsigned(std::max(1, opts_.threads / 2)));
    // The loop returns the signal number when SIGINT/SIGTERM/SIGHUP ended it.
    int r = fuse_session_loop_mt(se, cfg);
    if (r < 0) {
      log::error("fuse_loop_failed", {{"error", std::strerror(-r)}});
      code = kFailure;
    }
    fuse_loop_cfg_destroy(cfg);
  }
  {
    std::lock_guard lk(poll_mu_);
    stopping_ = true;
  }
  poll_cv_.notify_all();
  if (poller.joinable()) poller.join();
  if (control.ok()) control->reset();
  watcher_.stop();
  invalidator_.stop();
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  log::info("unmounted", {{"mountpoint", opts_.mountpoint}});
  return code;
}

}  // namespace
}  // namespace antares::fs

int main(int argc, char** argv) {
  antares::fs::Options o = antares::fs::parse(argc, argv);
  antares::fs::Daemon d(std::move(o));
  return d.run();
}
