#include "fs/fuse/daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/log.h"
#include "common/unique_fd.h"
#include "common/version.h"
#include "fs/control/control_server.h"
#include "fs/control/endpoint.h"
#include "fs/lower/blob_cache.h"
#include "fs/lower/cl_builder.h"
#include "fs/lower/lower_store.h"
#include "fs/lower/mirror_fs.h"
#include "fs/remote/mega_client.h"

namespace antares::fs {

class LowerHooks final : public LayerHooks {
 public:
  explicit LowerHooks(LowerStore& s) : s_(s) {}
  Status before_dir(const std::string& rel) override { return s_.ensure_dir(rel); }
  Status before_open(const std::string& rel) override { return s_.ensure_file(rel); }
  bool content_ready(uint64_t ino) override { return s_.content_ready(ino); }
  Result<UniqueFd> open_kept(uint64_t ino, int flags) override { return s_.open_kept(ino, flags); }
  Status fill_kept(uint64_t ino) override { return s_.fill_kept(ino); }
  bool is_kept(uint64_t ino) override { return s_.is_kept(ino); }
  Result<struct statx> stat(int fd) override { return s_.stat(fd); }
  bool hidden(std::string_view name) const override { return LowerStore::is_internal_name(name); }

 private:
  LowerStore& s_;
};

class ClHooks final : public LayerHooks {
 public:
  explicit ClHooks(ClBuilder& b) : b_(b) {}
  Result<struct statx> stat(int fd) override { return b_.stat(fd); }
  bool hidden(std::string_view name) const override { return LowerStore::is_internal_name(name); }

 private:
  ClBuilder& b_;
};

namespace {

// How long the mount may take to answer its first stat once mounted.
constexpr auto kReadyTimeout = std::chrono::seconds(30);

StartupError startup_error(int code, std::string msg) { return StartupError{code, std::move(msg)}; }

// Creates --cache/NAME if needed and claims it. What is in it is then the
// owner's to keep or wipe: the lower store keeps a mirror it can trust (and
// wipes any other), the blob cache keeps every intact blob.
std::optional<StartupError> take_cache_dir(const std::string& dir, const char* what) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return startup_error(kExitLayerDir, dir + ": " + std::strerror(errno));
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
      return startup_error(kExitLayerDir, "--cache: cannot create " + dir + ": " + std::strerror(errno));
  } else if (!S_ISDIR(st.st_mode)) {
    return startup_error(kExitLayerDir,
                         "--cache: " + dir + " exists and is not a directory (antares-fs owns DIR/lower, DIR/attic and DIR/blobs)");
  }
  if (auto s = mirror::claim_dir(dir, std::string("--cache: ") + what); !s)
    return startup_error(kExitLayerDir, s.error().message);
  return std::nullopt;
}

}  // namespace

Daemon::Daemon(DaemonOptions o) : opts_(std::move(o)) {}

Daemon::~Daemon() {
  {
    std::lock_guard lk(poll_mu_);
    stopping_ = true;
  }
  poll_cv_.notify_all();
  // The store's checks and prefetch workers call the listener, which reaches
  // fs_ and the invalidator: they stop before any member dies.
  stop_lower_checks();
  if (lower_) lower_->stop_prefetch();
}

bool Daemon::start_lower_checks() {
  if (!lower_ || lower_->options().refresh != RefreshMode::merkle || lower_checks_.joinable()) return false;
  {
    std::lock_guard lk(poll_mu_);
    checks_stop_ = false;
  }
  // A quarter of the TTL: a check is due at most that long before it runs,
  // and a wake-up that finds it not due costs one lock.
  const auto period = std::max<std::chrono::milliseconds>(opts_.ttl / 4, std::chrono::milliseconds(10));
  lower_checks_ = std::thread([this, period] {
    std::unique_lock lk(poll_mu_);
    while (!poll_cv_.wait_for(lk, period, [&] { return checks_stop_; })) {
      lk.unlock();
      // Only the strategies that tell the kernel what changed (B, auto) keep
      // long kernel caches that need changes found unasked; under none, A and
      // C a lookup runs the due check, as upstream's refresh does, and the
      // mirror never changes behind a kernel that was not told.
      if (slot_->get().invalidates() && lower_->check_due()) lower_checks_run_++;
      lk.lock();
    }
  });
  return true;
}

void Daemon::stop_lower_checks() {
  if (!lower_checks_.joinable()) return;
  {
    std::lock_guard lk(poll_mu_);
    checks_stop_ = true;
  }
  poll_cv_.notify_all();
  lower_checks_.join();
}

std::optional<StartupError> Daemon::prepare() {
  const HandleStrategy* initial = strategies_.find(opts_.strategy);
  if (!initial) return startup_error(kExitUsage, "--strategy: unknown strategy '" + opts_.strategy + "' (none, A, B, C, auto)");
  const auto refresh = parse_refresh_mode(opts_.refresh);
  if (!refresh) return startup_error(kExitUsage, "--refresh: unknown mode '" + opts_.refresh + "' (merkle, per-dir)");
  const std::string mirror = opts_.cache + "/lower";
  if (auto e = take_cache_dir(mirror, "the lower mirror")) return e;
  const std::string attic = opts_.cache + "/attic";
  if (auto e = take_cache_dir(attic, "replaced files kept for a few seconds")) return e;
  if (opts_.cache_size > 0) {
    const std::string blobs = opts_.cache + "/blobs";
    if (auto e = take_cache_dir(blobs, "the blob cache")) return e;
    auto c = BlobCache::open(blobs, opts_.cache_size);
    if (!c) return startup_error(kExitLayerDir, "--cache: blob cache: " + c.error().describe());
    blobs_ = std::move(*c);
  }
  if (!opts_.cl_dir.empty())
    if (auto s = mirror::claim_dir(opts_.cl_dir, "--cl-dir"); !s) return startup_error(kExitLayerDir, s.error().message);

  remote::MegaClientOptions mo;
  mo.base_url = opts_.mega;
  mega_ = std::make_unique<remote::MegaClient>(mo);
  // dir-hash of /: whether Mega answers, and (merkle) whether a kept mirror is current.
  auto root_oid = mega_->probe_root(opts_.startup_timeout);
  if (!root_oid)
    return startup_error(kExitUnreachable, "Mega at " + opts_.mega + " did not answer: " + root_oid.error().describe() +
                                               " (--startup-timeout " + std::to_string(opts_.startup_timeout.count()) +
                                               "ms)");
  LowerStoreOptions lo;
  lo.ttl = std::chrono::duration_cast<Clock::Duration>(opts_.ttl);
  lo.refresh = *refresh;
  lo.persist = true;  // claimed above: ours to keep or wipe
  lo.blob_cache = blobs_.get();
  lo.attic = attic;
  lo.prefetch_threads = unsigned(opts_.prefetch);
  // A file the kernel opened itself has no fd of ours to keep a replaced
  // version alive: kept until keep_max newer replacements push it out.
  if (opts_.file_open == "kernel") lo.keep_for = std::chrono::hours(24 * 365);
  lower_ = std::make_unique<LowerStore>(*mega_, mirror, lo);
  if (auto st = lower_->status(); !st.ok()) return startup_error(kExitLayerDir, "lower mirror: " + st.error().describe());
  lower_->set_root_oid(*root_oid);
  if (auto st = lower_->ensure_dir(""); !st.ok())
    return startup_error(kExitUnreachable, "cannot list / from Mega at " + opts_.mega + ": " + st.error().describe());
  if (!opts_.cl.empty()) {
    // As for the lower store: replaced CL files stay reachable by handle.
    cl_ = std::make_unique<ClBuilder>(*mega_, opts_.cl, opts_.cl_dir, opts_.file_open == "kernel" ? lo.keep_max : 0);
    if (auto st = cl_->build(); !st.ok())
      return startup_error(st.err() == ENOENT ? kExitFailure : kExitUnreachable,
                           "cannot build CL " + opts_.cl + ": " + st.error().describe());
  }

  lower_hooks_ = std::make_unique<LowerHooks>(*lower_);
  if (cl_) cl_hooks_ = std::make_unique<ClHooks>(*cl_);
  std::vector<std::unique_ptr<Layer>> layers;
  std::optional<StartupError> err;
  auto add_layer = [&](const char* name, const std::string& dir, bool writable, LayerHooks* hooks) -> size_t {
    auto l = Layer::open(name, dir, writable, hooks);
    if (!l.ok()) {
      err = startup_error(kExitLayerDir, l.error().describe());
      return 0;
    }
    layers.push_back(std::move(*l));
    return layers.size() - 1;
  };
  add_layer("upper", opts_.upper, true, nullptr);
  if (cl_) cl_layer_ = add_layer("cl", opts_.cl_dir, false, cl_hooks_.get());
  lower_layer_ = add_layer("lower", mirror, false, lower_hooks_.get());
  if (err) return err;

  slot_ = std::make_unique<StrategySlot>(initial);
  apply_strategy(initial);
  fs_ = std::make_unique<UnionFs>(std::move(layers), *slot_);
  if (auto st = fs_->init(); !st.ok()) return startup_error(kExitLayerDir, st.error().describe());
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
  adapter_->kernel_dirs().wanted = opts_.dir_open == "kernel";
  adapter_->kernel_files().wanted = opts_.file_open == "kernel";
  register_metrics();
  return std::nullopt;
}

void Daemon::apply_strategy(const HandleStrategy* s) {
  slot_->set(s);
  // The fixes keep a replaced file openable for the kernel's retry; none
  // must meet the stale handles upstream does.
  if (lower_) lower_->set_keep_replaced(s->name() != "none");
  if (s->invalidates()) {
    // What a refresh changes is invalidated, so attributes and pages can live
    // long. Names: under merkle the background check (start_lower_checks)
    // finds every change in every listed directory whether or not the kernel
    // asks, so they live long too; under per-dir the kernel's lookups drive
    // the refresh, so a name is trusted as long as its listing is fresh.
    const bool merkle = opts_.refresh == "merkle";
    timeouts_.entry = std::max(opts_.entry_timeout,
                               merkle ? opts_.long_timeout : std::chrono::duration<double>(opts_.ttl).count());
    timeouts_.attr = std::max(opts_.attr_timeout, opts_.long_timeout);
    timeouts_.keep_cache = true;
  } else {
    timeouts_.entry = opts_.entry_timeout;
    timeouts_.attr = opts_.attr_timeout;
    timeouts_.keep_cache = false;
  }
  // What the kernel kept under an invalidating strategy (listings, pages)
  // is only safe while invalidations come: a switch drops it all.
  if (fs_) invalidator_.push(fs_->drop_caches());
  log::info("strategy", {{"name", std::string(s->name())},
                         {"entry_timeout", std::to_string(timeouts_.entry.load())},
                         {"attr_timeout", std::to_string(timeouts_.attr.load())}});
}

Result<std::string> Daemon::set_strategy(const std::string& name) {
  const HandleStrategy* s = strategies_.find(name);
  if (!s) return Error::from_errno(EINVAL, "unknown strategy '" + name + "' (none, A, B, C, auto)");
  if (adapter_ && (adapter_->kernel_dirs().may() || adapter_->kernel_files().may()) && !s->invalidates())
    return Error::from_errno(EINVAL, std::string("this mount runs with ") +
                                         (adapter_->kernel_dirs().may() ? "--dir-open" : "--file-open") +
                                         " kernel: the kernel keeps what only invalidations refresh, so only B and "
                                         "auto (remount for " + std::string(s->name()) + ")");
  apply_strategy(s);
  return std::string(s->name());
}

void Daemon::on_change(size_t layer, const std::vector<LayerChange>& changes) {
  layer_changes_ += changes.size();
  if (!fs_ || !slot_->get().invalidates()) return;
  invalidator_.push(fs_->on_layer_change(layer, changes));
}

Status Daemon::refresh(const std::string& path) {
  auto rel = control::normalize_refresh_path(path);
  if (!rel) return rel.error();
  lower_->expire(*rel);
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
  nlohmann::json cache = nullptr;
  if (blobs_) {
    const auto& bs = blobs_->stats();
    cache = {{"max_bytes", blobs_->max_bytes()},   {"bytes", bs.bytes.load()},
             {"hits", bs.hits.load()},             {"misses", bs.misses.load()},
             {"inserts", bs.inserts.load()},       {"evictions", bs.evictions.load()},
             {"evicted_bytes", bs.evicted_bytes.load()}, {"damaged", bs.damaged.load()},
             {"scanned", blobs_->scanned()}};
  }
  return {{"strategy", std::string(slot_->get().name())},
          {"version", std::string(project_version()) + " (git " + git_describe() + ")"},
          {"ttl_ms", opts_.ttl.count()},
          {"refresh", opts_.refresh},
          {"prefetch_threads", opts_.prefetch},
          {"blob_cache", cache},
          {"lower",
           {{"listings_first", ls.listings_first.load()},
            {"listings_ttl", ls.listings_ttl.load()},
            {"listings_changed", ls.listings_changed.load()},
            {"listings_prefetch", ls.listings_prefetch.load()},
            {"dir_hash_checks", ls.dir_hash_checks.load()},
            {"dir_hash_unchanged", ls.dir_hash_unchanged.load()},
            {"background_checks", lower_checks_run_.load()},
            {"dirs_loaded", ls.dirs_loaded.load()},
            {"dirs_damaged", ls.dirs_damaged.load()},
            {"blobs_from_cache", ls.blobs_from_cache.load()},
            {"fetch_errors", ls.fetch_errors.load()},
            {"prefetch_queued", ls.prefetch_queued.load()},
            {"prefetch_done", ls.prefetch_done.load()},
            {"prefetch_dropped", ls.prefetch_dropped.load()},
            {"prefetch_errors", ls.prefetch_errors.load()},
            {"mirror_restored", ls.mirror_restored.load()},
            {"mirror_wiped", ls.mirror_wiped.load()}}},
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

void Daemon::register_metrics() {
  auto& m = metrics_;
  auto& ss = strategies_.stats();
  m.counter_fn("antares_estale_recovered_total", "ESTALE recovered by re-resolving the path",
               [&ss] { return ss.recovered.load(); });
  m.counter_fn("antares_estale_recovered_gone_total", "ESTALE whose path was gone (ENOENT)",
               [&ss] { return ss.recovered_gone.load(); });
  m.counter_fn("antares_invalidations_total", "kernel invalidations by outcome", [this] { return invalidator_.sent(); },
               {{"result", "sent"}});
  m.counter_fn("antares_invalidations_total", "kernel invalidations by outcome",
               [this] { return invalidator_.failed(); }, {{"result", "failed"}});
  const auto& ls = lower_->stats();
  const char* listings_help = "lower listings fetched, by why: first use, own TTL (per-dir), oid changed (merkle), prefetch";
  m.counter_fn("antares_lower_listings_total", listings_help, [&ls] { return ls.listings_first.load(); },
               {{"reason", "first"}});
  m.counter_fn("antares_lower_listings_total", listings_help, [&ls] { return ls.listings_ttl.load(); },
               {{"reason", "ttl"}});
  m.counter_fn("antares_lower_listings_total", listings_help, [&ls] { return ls.listings_changed.load(); },
               {{"reason", "changed"}});
  m.counter_fn("antares_lower_listings_total", listings_help, [&ls] { return ls.listings_prefetch.load(); },
               {{"reason", "prefetch"}});
  m.counter_fn("antares_lower_refreshes_total", "lower refreshes that found a change", [&ls] { return ls.refreshes.load(); });
  m.counter_fn("antares_lower_entries_changed_total", "lower entries added, replaced or removed",
               [&ls] { return ls.entries_changed.load(); });
  m.counter_fn("antares_lower_dir_hash_checks_total", "dir-hash checks of / (merkle refresh), by outcome",
               [&ls] { return ls.dir_hash_unchanged.load(); }, {{"result", "unchanged"}});
  m.counter_fn("antares_lower_dir_hash_checks_total", "dir-hash checks of / (merkle refresh), by outcome",
               [&ls] { return ls.dir_hash_checks.load() - std::min(ls.dir_hash_checks.load(), ls.dir_hash_unchanged.load()); },
               {{"result", "changed_or_failed"}});
  m.counter_fn("antares_lower_background_checks_total",
               "Merkle checks run by the daemon's ticker (not by a request) because the TTL had passed",
               [this] { return lower_checks_run_.load(); });
  m.counter_fn("antares_lower_dirs_loaded_total", "lower directories read back from the kept mirror",
               [&ls] { return ls.dirs_loaded.load(); });
  m.counter_fn("antares_lower_dirs_damaged_total", "kept lower directories whose state was unusable (listed again)",
               [&ls] { return ls.dirs_damaged.load(); });
  m.counter_fn("antares_lower_blobs_total", "files filled in, by where the bytes came from",
               [&ls] { return ls.blobs_fetched.load(); }, {{"source", "mega"}});
  m.counter_fn("antares_lower_blobs_total", "files filled in, by where the bytes came from",
               [&ls] { return ls.blobs_from_cache.load(); }, {{"source", "cache"}});
  m.counter_fn("antares_lower_fetch_errors_total", "failed listings, dir-hashes, HEADs and blob downloads",
               [&ls] { return ls.fetch_errors.load(); });
  using Field = std::atomic<uint64_t> LowerStoreStats::*;
  for (const auto& [result, f] : {std::pair<const char*, Field>{"done", &LowerStoreStats::prefetch_done},
                                  std::pair<const char*, Field>{"dropped", &LowerStoreStats::prefetch_dropped},
                                  std::pair<const char*, Field>{"failed", &LowerStoreStats::prefetch_errors}}) {
    const Field field = f;
    m.counter_fn("antares_lower_prefetch_total", "prefetch tasks by outcome (dropped: the queue was full)",
                 [&ls, field] { return (ls.*field).load(); }, {{"result", result}});
  }
  m.gauge("antares_lower_mirror_restored", "1 if the mirror kept from the last mount was trusted",
          [&ls] { return double(ls.mirror_restored.load()); });
  if (blobs_) {
    const auto& bs = blobs_->stats();
    m.counter_fn("antares_blob_cache_lookups_total", "blob cache lookups by result", [&bs] { return bs.hits.load(); },
                 {{"result", "hit"}});
    m.counter_fn("antares_blob_cache_lookups_total", "blob cache lookups by result", [&bs] { return bs.misses.load(); },
                 {{"result", "miss"}});
    m.counter_fn("antares_blob_cache_inserts_total", "blobs added to the cache", [&bs] { return bs.inserts.load(); });
    m.counter_fn("antares_blob_cache_evictions_total", "blobs evicted by the size bound",
                 [&bs] { return bs.evictions.load(); });
    m.counter_fn("antares_blob_cache_evicted_bytes_total", "bytes evicted by the size bound",
                 [&bs] { return bs.evicted_bytes.load(); });
    m.counter_fn("antares_blob_cache_damaged_total", "cached blobs that failed their oid check (removed)",
                 [&bs] { return bs.damaged.load(); });
    m.gauge("antares_blob_cache_bytes", "bytes in the blob cache", [&bs] { return double(bs.bytes.load()); });
    m.gauge("antares_blob_cache_max_bytes", "the blob cache's bound (--cache-size)",
            [this] { return double(blobs_->max_bytes()); });
  }
  m.counter_fn("antares_cl_resyncs_total", "CL re-syncs that changed the CL layer", [this] { return cl_resyncs_.load(); });
  m.counter_fn("antares_cl_resync_errors_total", "CL re-syncs that failed", [this] { return cl_errors_.load(); });
  m.counter_fn("antares_layer_changes_total", "layer changes seen (lower refresh, CL re-sync, upper events)",
               [this] { return layer_changes_.load(); });
  const auto& ms = mega_->stats();
  m.counter_fn("antares_http_requests_total", "HTTP requests to Mega (retries included)", [&ms] { return ms.requests.load(); });
  m.counter_fn("antares_http_errors_total", "failed HTTP requests to Mega", [&ms] { return ms.errors.load(); });
  m.counter_fn("antares_http_retries_total", "HTTP retries to Mega", [&ms] { return ms.retries.load(); });
  m.gauge("antares_http_latency_seconds_total", "summed HTTP latency",
          [&ms] { return double(ms.latency_us_total.load()) / 1e6; });
  for (size_t l = 0; l < fs_->layer_count(); ++l) {
    Layer& layer = fs_->layer(l);
    std::string name(layer.name());
    m.gauge("antares_handle_cache_entries", "file handles cached per layer",
            [&layer] { return double(layer.cache().size()); }, {{"layer", name}});
    m.counter_fn("antares_handle_cache_lookups_total", "handle cache lookups by layer and result",
                 [&layer] { return layer.cache().stats().hits.load(); }, {{"layer", name}, {"result", "hit"}});
    m.counter_fn("antares_handle_cache_lookups_total", "handle cache lookups by layer and result",
                 [&layer] { return layer.cache().stats().misses.load(); }, {{"layer", name}, {"result", "miss"}});
  }
  const auto& us = fs_->stats();
  m.gauge("antares_nodes", "nodes the kernel holds", [&us] { return double(us.nodes.load()); });
  for (const char* n : {"none", "A", "B", "C", "auto"}) {
    std::string name = n;
    m.gauge("antares_strategy", "the current stale-handle strategy (1 = current)",
            [this, name] { return slot_->get().name() == name ? 1.0 : 0.0; }, {{"name", name}});
  }
  m.gauge("antares_build_info", "1, labelled with the version", [] { return 1.0; },
          {{"version", project_version()}, {"git", git_describe()}});
}

// Series that exist once they are non-zero: FUSE replies by op and errno, and
// ESTALE by layer and op. Registered on first sight so /metrics stays small.
void Daemon::register_reply_series() {
  std::lock_guard l(metrics_mu_);
  auto& rs = adapter_->stats();
  reply_series_.resize(size_t(FuseOp::kCount) * ReplyStats::kMaxErrno);
  for (int op = 0; op < int(FuseOp::kCount); ++op)
    for (int e = 0; e < ReplyStats::kMaxErrno; ++e) {
      size_t i = size_t(op) * ReplyStats::kMaxErrno + size_t(e);
      if (reply_series_[i] || rs.replies[op][e].load() == 0) continue;
      reply_series_[i] = true;
      const char* name = e == 0 ? "ok" : strerrorname_np(e);
      metrics_.counter_fn("antares_requests_total", "FUSE requests by operation and result",
                          [&rs, op, e] { return rs.replies[op][e].load(); },
                          {{"op", fuse_op_name(FuseOp(op))}, {"result", name ? name : std::to_string(e)}});
    }
  const auto& us = fs_->stats();
  size_t layers = std::min(fs_->layer_count(), size_t(UnionStats::kMaxLayers));
  estale_series_.resize(size_t(UnionStats::kMaxLayers) * size_t(Op::kCount));
  for (size_t l = 0; l < layers; ++l)
    for (int op = 0; op < int(Op::kCount); ++op) {
      size_t i = l * size_t(Op::kCount) + size_t(op);
      if (estale_series_[i] || us.estale[l][op].load() == 0) continue;
      estale_series_[i] = true;
      metrics_.counter_fn("antares_estale_returned_total", "ESTALE returned to the kernel by layer and operation",
                          [&us, l, op] { return us.estale[l][op].load(); },
                          {{"layer", std::string(fs_->layer(l).name())}, {"op", op_name(Op(op))}});
    }
}

std::string Daemon::metrics_text() {
  register_reply_series();
  return metrics_.prometheus_text();
}

int Daemon::serve(const ReadyFn& ready) {
  auto fail_early = [&](int code, const std::string& msg) {
    log::error("startup_failed", {{"error", msg}, {"exit", std::to_string(code)}});
    ready(StartupError{code, msg});
    return code;
  };
  struct stat before {};
  ::stat(opts_.mountpoint.c_str(), &before);

  std::string fuse_opts;
  for (const auto& o : opts_.fuse_options) fuse_opts += (fuse_opts.empty() ? "" : ",") + o;
  std::vector<std::string> argv_s = {"antares-fs", "-o", fuse_opts};
  if (log::enabled(log::Level::debug) && std::getenv("ANTARES_FUSE_DEBUG")) argv_s.push_back("-d");
  std::vector<char*> argv_c;
  for (auto& s : argv_s) argv_c.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(int(argv_c.size()), argv_c.data());
  fuse_session* se = fuse_session_new(&args, &FuseAdapter::ops(), sizeof(fuse_lowlevel_ops), adapter_.get());
  if (!se) return fail_early(kExitUsage, "libfuse refused the mount options " + fuse_opts + " (see the message above)");
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    return fail_early(kExitFailure, "cannot install signal handlers");
  }
  if (fuse_session_mount(se, opts_.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return fail_early(kExitMountpoint, "cannot mount at " + opts_.mountpoint + " (see the message above)");
  }
  invalidator_.start(se);
  if (lower_) lower_->start_prefetch();  // here, after a detaching fork
  start_lower_checks();
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
  h.set_strategy = [this](const std::string& name) { return set_strategy(name); };
  auto control = control::ControlServer::start(opts_.mountpoint, opts_.run_dir, std::move(h));
  int code = kExitOk;
  std::thread readiness;
  std::atomic<bool> loop_done{false};
  if (!control.ok()) {
    code = kExitFailure;
    fail_early(code, "cannot start the control endpoint: " + control.error().describe());
  } else {
    // The mount answers once the loop below serves the kernel's INIT; only
    // then (and with the endpoint file written above) is the daemon ready.
    readiness = std::thread([&, se] {
      auto deadline = std::chrono::steady_clock::now() + kReadyTimeout;
      while (!loop_done.load()) {
        struct stat st {};
        if (::stat(opts_.mountpoint.c_str(), &st) == 0 && st.st_dev != before.st_dev) {
          log::info("mounted", {{"mountpoint", opts_.mountpoint},
                                {"strategy", std::string(slot_->get().name())},
                                {"ttl_ms", std::to_string(opts_.ttl.count())},
                                {"control", (*control)->endpoint_file()},
                                {"pid", std::to_string(::getpid())},
                                {"version", std::string(project_version()) + "+" + git_describe()}});
          ready(std::nullopt);
          return;
        }
        if (std::chrono::steady_clock::now() > deadline) {
          std::string msg = "the mount at " + opts_.mountpoint + " did not answer within 30 s";
          log::error("startup_failed", {{"error", msg}, {"exit", "1"}});
          ready(StartupError{kExitFailure, msg});
          fuse_session_exit(se);
          ::kill(::getpid(), SIGTERM);  // wakes the loop
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, unsigned(opts_.threads));
    // Idle workers stay: libfuse otherwise ends a worker whenever more than
    // the idle count wait and starts one when all are busy, which under a
    // walk is a thread (and its ~1 MiB request buffer) created and destroyed
    // every few hundred requests.
    fuse_loop_cfg_set_idle_threads(cfg, unsigned(opts_.threads));
    // The loop returns the signal number when SIGINT/SIGTERM/SIGHUP ended it.
    int r = fuse_session_loop_mt(se, cfg);
    loop_done = true;
    if (r < 0) {
      log::error("fuse_loop_failed", {{"error", std::strerror(-r)}});
      code = kExitFailure;
    }
    fuse_loop_cfg_destroy(cfg);
  }
  if (readiness.joinable()) readiness.join();
  {
    std::lock_guard lk(poll_mu_);
    stopping_ = true;
  }
  poll_cv_.notify_all();
  if (poller.joinable()) poller.join();
  stop_lower_checks();
  lower_->stop_prefetch();  // no listener call after the invalidator stops
  if (control.ok()) control->reset();
  watcher_.stop();
  invalidator_.stop();
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  log::info("unmounted", {{"mountpoint", opts_.mountpoint}});
  return code;
}

}  // namespace antares::fs
