// LowerStore: lazy listing, refresh (per-dir or Merkle), persistence, blob
// cache and prefetch of the lower layer's mirror (see the design note in
// lower_store.h).
#include "fs/lower/lower_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "common/log.h"
#include "common/unique_fd.h"
#include "fs/lower/blob_cache.h"
#include "fs/lower/mirror_fs.h"

namespace antares::fs {

namespace {

constexpr char kXattrMirror[] = "user.antares.mirror";  // on the root: format and clean/dirty
constexpr char kXattrTree[] = "user.antares.tree";      // on a listed dir: the oid its listing was fetched for
constexpr char kXattrOid[] = "user.antares.oid";        // on a dir: its entry oid; a file: oid + state
constexpr std::string_view kFormat = "antares-mirror/1";
constexpr char kStatePending = 'p', kStateFilled = 'm';

// A remote failure as the caller sees it: timeouts and "no such path" keep
// their errno (the filesystem reports them as such), anything else is EIO.
Error remote_error(const Error& e, const std::string& what, bool keep_enoent) {
  int code = e.err == ETIMEDOUT || (keep_enoent && e.err == ENOENT) ? e.err : EIO;
  return Error{code, e.http_status, what + ": " + e.describe()};
}

Error local_error(const Error& e, const std::string& what) { return Error{e.err, 0, what + ": " + e.message}; }

std::string repo_path(const std::string& rel) { return "/" + rel; }

std::string oid_bytes(const Oid& oid) { return std::string(reinterpret_cast<const char*>(oid.bytes.data()), 20); }

Oid oid_from(std::string_view b) {
  Oid o;
  std::memcpy(o.bytes.data(), b.data(), 20);
  return o;
}

std::string file_state_value(const Oid& oid, bool materialized) {
  return oid_bytes(oid) + (materialized ? kStateFilled : kStatePending);
}

bool is_build_file(std::string_view n) { return n == "BUCK" || n == "BUCK.v2" || n == "PACKAGE"; }

void split_parent(const std::string& rel, std::string* parent, std::string* name) {
  const auto slash = rel.rfind('/');
  *parent = slash == std::string::npos ? "" : rel.substr(0, slash);
  *name = slash == std::string::npos ? rel : rel.substr(slash + 1);
}

}  // namespace

const char* refresh_mode_name(RefreshMode m) { return m == RefreshMode::merkle ? "merkle" : "per-dir"; }

std::optional<RefreshMode> parse_refresh_mode(std::string_view s) {
  if (s == "merkle") return RefreshMode::merkle;
  if (s == "per-dir" || s == "per_dir") return RefreshMode::per_dir;
  return std::nullopt;
}

// ------------------------------------------------------------------ InoSet

size_t LowerStore::InoSet::home(uint64_t k) const {
  const int bits = std::countr_zero(slots_.size());
  return size_t((k * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

bool LowerStore::InoSet::contains(uint64_t k) const {
  if (k == 0) return zero_;
  if (slots_.empty()) return false;
  const size_t mask = slots_.size() - 1;
  for (size_t i = home(k);; i = (i + 1) & mask) {
    if (slots_[i] == k) return true;
    if (slots_[i] == 0) return false;
  }
}

void LowerStore::InoSet::insert(uint64_t k) {
  if (k == 0) {
    zero_ = true;
    return;
  }
  if ((n_ + 1) * 10 > slots_.size() * 7) {  // load <= 0.7
    std::vector<uint64_t> old = std::move(slots_);
    slots_.assign(std::max<size_t>(16, old.size() * 2), 0);
    n_ = 0;
    for (uint64_t v : old)
      if (v) insert(v);
  }
  const size_t mask = slots_.size() - 1;
  for (size_t i = home(k);; i = (i + 1) & mask) {
    if (slots_[i] == k) return;
    if (slots_[i] == 0) {
      slots_[i] = k;
      ++n_;
      return;
    }
  }
}

void LowerStore::InoSet::erase(uint64_t k) {
  if (k == 0) {
    zero_ = false;
    return;
  }
  if (slots_.empty()) return;
  const size_t mask = slots_.size() - 1;
  size_t i = home(k);
  while (slots_[i] != k) {
    if (slots_[i] == 0) return;
    i = (i + 1) & mask;
  }
  // Backward-shift deletion: no tombstones, probes stay short.
  slots_[i] = 0;
  --n_;
  for (size_t j = (i + 1) & mask; slots_[j] != 0; j = (j + 1) & mask) {
    const size_t h = home(slots_[j]);
    const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
    if (stays) continue;
    slots_[i] = slots_[j];
    slots_[j] = 0;
    i = j;
  }
}

// ------------------------------------------------------------ construction

LowerStore::LowerStore(remote::MegaClient& mega, std::string mirror_root, LowerStoreOptions opts, Clock& clock)
    : mega_(mega), mirror_root_(std::move(mirror_root)), opts_(opts), clock_(clock) {
  root_fd_ = ::open(mirror_root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) root_error_ = mirror::errno_error("open mirror root", mirror_root_);
  auto root = std::make_unique<DirState>();
  root->id = next_id_++;
  dirs_.push_back(std::move(root));
  if (root_fd_ >= 0 && opts_.persist) open_persisted();
  if (!opts_.attic.empty()) {
    attic_fd_ = ::open(opts_.attic.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    Status s = attic_fd_ >= 0 ? mirror::clear_owned_dir(attic_fd_) : Status(mirror::errno_error("open", opts_.attic));
    if (!s) {
      log::warn("lower_attic_unusable", {{"attic", opts_.attic}, {"error", s.error().describe()}});
      if (attic_fd_ >= 0) ::close(attic_fd_);
      attic_fd_ = -1;
    }
  }
}

void LowerStore::start_prefetch() {
  std::lock_guard l(pf_mu_);
  if (root_fd_ < 0 || pf_stop_ || !pf_threads_.empty()) return;
  for (unsigned i = 0; i < opts_.prefetch_threads; ++i) pf_threads_.emplace_back([this] { prefetch_worker(); });
}

LowerStore::LowerStore(remote::MegaClient& mega, std::string mirror_root, Clock::Duration ttl, Clock& clock)
    : LowerStore(mega, std::move(mirror_root),
                 [&] {
                   LowerStoreOptions o;
                   o.ttl = ttl;
                   return o;
                 }(),
                 clock) {}

void LowerStore::stop_prefetch() {
  {
    std::lock_guard l(pf_mu_);
    pf_stop_ = true;
    pf_queue_.clear();
    pf_queued_.clear();
  }
  pf_cv_.notify_all();
  for (auto& t : pf_threads_) t.join();
  pf_threads_.clear();
}

LowerStore::~LowerStore() {
  stop_prefetch();
  if (persist_) {
    // Clean only once every byte the xattrs vouch for is on disk.
    UniqueFd d(::openat(root_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    Status s = d.valid() && ::syncfs(d.get()) == 0 ? Status() : Status(mirror::errno_error("syncfs", mirror_root_));
    if (s) s = mirror::set_xattr(root_fd_, "", kXattrMirror, std::string(kFormat) + " clean");
    if (s && ::fsync(d.get()) != 0) s = mirror::errno_error("fsync", mirror_root_);
    if (!s) log::warn("lower_mirror_not_kept", {{"mirror", mirror_root_}, {"error", s.error().describe()}});
  }
  if (root_fd_ >= 0) ::close(root_fd_);
  if (attic_fd_ >= 0) {
    std::lock_guard l(mu_);
    sweep_kept(/*all=*/true);
    ::close(attic_fd_);
  }
}

void LowerStore::open_persisted() {
  auto marker = mirror::get_xattr(root_fd_, "", kXattrMirror);
  const bool trusted = marker && *marker == std::string(kFormat) + " clean";
  if (!trusted) {
    // No state, a crash (dirty), another format: ours to wipe and rebuild.
    auto names = mirror::list_dir(root_fd_);
    const bool had = names && std::any_of(names->begin(), names->end(),
                                          [](const std::string& n) { return n != mirror::kOwnerMarker; });
    if (auto s = mirror::clear_owned_dir(root_fd_); !s) {
      log::error("lower_mirror_wipe_failed", {{"mirror", mirror_root_}, {"error", s.error().describe()}});
      return;  // not persisted; names left over are replaced as listings meet them
    }
    (void)mirror::remove_xattr(root_fd_, "", kXattrTree);  // cleared below if it stays
    if (had) {
      stats_.mirror_wiped = 1;
      std::string why = !marker ? (marker.err() == ENODATA ? "no state" : marker.error().describe())
                                : mirror::escape(*marker);
      log::warn("lower_mirror_wiped", {{"mirror", mirror_root_}, {"reason", why}});
    }
  }
  // Dirty until a clean shutdown: a crash from here on is never trusted.
  Status s = mirror::set_xattr(root_fd_, "", kXattrMirror, std::string(kFormat) + " dirty");
  UniqueFd d(::openat(root_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (s && (!d.valid() || ::fsync(d.get()) != 0)) s = mirror::errno_error("fsync", mirror_root_);
  if (!s) {
    log::warn("lower_persistence_unavailable", {{"mirror", mirror_root_}, {"error", s.error().describe()}});
    if (trusted) {
      if (auto c = mirror::clear_owned_dir(root_fd_); !c)
        log::error("lower_mirror_wipe_failed", {{"mirror", mirror_root_}, {"error", c.error().describe()}});
    }
    return;
  }
  persist_ = true;
  if (trusted) {
    dirs_[0]->kind = DirKind::on_disk;
    stats_.mirror_restored = 1;
    log::info("lower_mirror_restored", {{"mirror", mirror_root_}});
  }
}

Status LowerStore::status() const {
  if (root_fd_ < 0) return root_error_;
  return {};
}

bool LowerStore::is_internal_name(std::string_view name) { return mirror::is_temp_name(name); }

void LowerStore::set_listener(LayerChangeListener listener) {
  std::lock_guard l(mu_);
  listener_ = std::move(listener);
}

void LowerStore::set_root_oid(const Oid& oid) {
  std::lock_guard l(mu_);
  root_oid_ = oid;
  if (opts_.refresh == RefreshMode::merkle && !check_flight_) fresh_until_ = clock_.now() + opts_.ttl;
}

bool LowerStore::content_ready(uint64_t ino) const {
  std::lock_guard l(mu_);
  return !pending_inos_.contains(ino);
}

Status LowerStore::wait(std::unique_lock<std::mutex>& l, std::shared_ptr<Flight> f) {
  f->cv.wait(l, [&] { return f->done; });
  return f->result;
}

void LowerStore::mark_stale(DirState& d) {
  ++d.expire_epoch;  // a fetch in progress must not mark the listing fresh
  d.fresh_until = Clock::TimePoint::min();
}

void LowerStore::finish(const std::shared_ptr<Flight>& f, Status result) {
  f->done = true;
  f->result = std::move(result);
  f->cv.notify_all();
}

void LowerStore::count_listing(Reason why) {
  ++stats_.listings_fetched;
  switch (why) {
    case Reason::first: ++stats_.listings_first; break;
    case Reason::ttl: ++stats_.listings_ttl; break;
    case Reason::changed: ++stats_.listings_changed; break;
    case Reason::prefetch: ++stats_.listings_prefetch; break;
  }
}

void LowerStore::expire(const std::string& rel_prefix) {
  std::lock_guard l(mu_);
  if (opts_.refresh == RefreshMode::merkle) {
    fresh_until_ = Clock::TimePoint::min();
    ++check_epoch_;  // a check in progress must not mark the mirror fresh
    return;
  }
  const uint32_t top = find_dir(rel_prefix);
  if (top == kNoDir) return;
  std::vector<uint32_t> todo{top};
  while (!todo.empty()) {
    DirState& d = *dirs_[todo.back()];
    todo.pop_back();
    mark_stale(d);
    for (const Entry& e : d.entries)
      if (e.kind == kDir && e.v != kNoDir) todo.push_back(uint32_t(e.v));
  }
}

// ------------------------------------------------------------- the tree

LowerStore::Entry* LowerStore::find_entry(DirState& d, std::string_view name) {
  auto it = std::lower_bound(d.entries.begin(), d.entries.end(), name,
                             [](const Entry& e, std::string_view n) { return e.name < n; });
  return it != d.entries.end() && it->name == name ? &*it : nullptr;
}

const LowerStore::Entry* LowerStore::find_entry(const DirState& d, std::string_view name) const {
  return const_cast<LowerStore*>(this)->find_entry(const_cast<DirState&>(d), name);
}

LowerStore::DirState* LowerStore::slot(uint32_t idx, uint64_t id) {
  return idx < dirs_.size() && dirs_[idx] && dirs_[idx]->id == id ? dirs_[idx].get() : nullptr;
}

uint32_t LowerStore::new_dir(uint32_t parent, std::string name, DirKind kind) {
  auto d = std::make_unique<DirState>();
  d->id = next_id_++;
  d->parent = parent;
  d->name = std::move(name);
  d->kind = kind;
  if (!free_dirs_.empty()) {
    const uint32_t idx = free_dirs_.back();
    free_dirs_.pop_back();
    dirs_[idx] = std::move(d);
    return idx;
  }
  dirs_.push_back(std::move(d));
  return uint32_t(dirs_.size() - 1);
}

void LowerStore::free_dir(uint32_t idx) {
  std::vector<uint32_t> todo{idx};
  while (!todo.empty()) {
    const uint32_t i = todo.back();
    todo.pop_back();
    for (const Entry& e : dirs_[i]->entries)
      if (e.kind == kDir && e.v != kNoDir) todo.push_back(uint32_t(e.v));
    stale_dirs_.erase(i);
    dirs_[i].reset();
    free_dirs_.push_back(i);
  }
}

std::string LowerStore::path_of(uint32_t idx) const {
  std::vector<const std::string*> parts;
  for (uint32_t i = idx; i != 0; i = dirs_[i]->parent) parts.push_back(&dirs_[i]->name);
  std::string p;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) p = mirror::join_rel(p, **it);
  return p;
}

std::optional<Oid> LowerStore::expected_oid(uint32_t idx) const {
  if (idx == 0) return root_oid_;
  const DirState& d = *dirs_[idx];
  const Entry* e = find_entry(*dirs_[d.parent], d.name);
  if (!e) return std::nullopt;
  return e->oid;
}

bool LowerStore::stale(uint32_t idx) const {
  const DirState& d = *dirs_[idx];
  if (d.kind != DirKind::listed) return false;
  auto want = expected_oid(idx);
  return want && *want != d.listed_oid;
}

Result<uint32_t> LowerStore::resolve(std::unique_lock<std::mutex>& l, const std::string& rel) {
  auto parts = mirror::split_rel(rel);
  if (!parts) return Error::from_errno(ENOENT, "lower: not a mirrored directory: " + mirror::escape(rel));
  for (int round = 0; round < 8; ++round) {
    uint32_t idx = 0;
    bool again = false;
    for (const auto& p : *parts) {
      DirState* d = dirs_[idx].get();
      if (d->kind == DirKind::on_disk) {
        if (auto s = load_dir(l, idx); !s) return s.error();
        again = true;  // the lock was dropped: walk again
        break;
      }
      Entry* e = d->kind == DirKind::listed ? find_entry(*d, p) : nullptr;
      if (!e || e->kind != kDir)
        return Error::from_errno(ENOENT, "lower: not a mirrored directory: " + mirror::escape(rel));
      if (e->v == kNoDir) e->v = new_dir(idx, p, (e->flags & kFromDisk) ? DirKind::on_disk : DirKind::unlisted);
      idx = uint32_t(e->v);
    }
    if (!again) return idx;
  }
  return Error::from_errno(EIO, "lower: " + mirror::escape(rel) + " kept changing while being resolved");
}

uint32_t LowerStore::find_dir(const std::string& rel) const {
  auto parts = mirror::split_rel(rel);
  if (!parts) return kNoDir;
  uint32_t idx = 0;
  for (const auto& p : *parts) {
    const DirState& d = *dirs_[idx];
    if (d.kind != DirKind::listed) return kNoDir;
    const Entry* e = find_entry(d, p);
    if (!e || e->kind != kDir || e->v == kNoDir) return kNoDir;
    idx = uint32_t(e->v);
  }
  return idx;
}

LowerStore::FileState LowerStore::file_state(const std::string& rel) const {
  std::string parent, name;
  split_parent(rel, &parent, &name);
  std::lock_guard l(mu_);
  const uint32_t idx = find_dir(parent);
  if (idx == kNoDir || dirs_[idx]->kind != DirKind::listed) return FileState::untracked;
  const Entry* e = find_entry(*dirs_[idx], name);
  if (!e || e->kind != kFile) return FileState::untracked;
  return (e->flags & kMaterialized) ? FileState::materialized : FileState::pending;
}

// ----------------------------------------------------------------- listing

Status LowerStore::ensure_dir(const std::string& rel) { return ensure_dir_impl(rel, Caller::foreground); }

Status LowerStore::ensure_dir_impl(const std::string& rel, Caller who) {
  if (root_fd_ < 0) return root_error_;
  std::vector<Task> tasks;
  Status result;
  {
    std::unique_lock l(mu_);
    const Clock::TimePoint start = clock_.now();
    if (opts_.refresh == RefreshMode::merkle && start >= fresh_until_) check(l, start);
    bool listed_now = false;
    result = [&]() -> Status {
      for (int round = 0; round < 8; ++round) {
        auto r = resolve(l, rel);
        if (!r) return r.error();
        const uint32_t idx = *r;
        DirState* d = dirs_[idx].get();
        if (d->flight) {
          if (auto s = wait(l, d->flight); !s) return s;
          continue;
        }
        if (d->kind == DirKind::on_disk) {
          if (auto s = load_dir(l, idx); !s) return s;
          continue;
        }
        if (d->kind == DirKind::unlisted) {
          auto s = list_one(l, idx, who == Caller::prefetch ? Reason::prefetch : Reason::first, start, nullptr);
          if (!s) return s;
          listed_now = true;
          continue;
        }
        if (opts_.refresh == RefreshMode::per_dir) {
          if (start >= d->fresh_until) {
            (void)list_one(l, idx, Reason::ttl, start, nullptr);  // a failed refresh serves the old mirror
            continue;
          }
        } else if (stale(idx) && start >= d->fresh_until) {
          refresh_waves(l, {idx}, start);
          continue;
        }
        if (who == Caller::foreground && !d->seen) {
          d->seen = true;
          if (opts_.prefetch_threads) prefetch_for(*d, rel, /*subdirs=*/true, &tasks);
        } else if (who == Caller::prefetch && listed_now && opts_.prefetch_threads) {
          prefetch_for(*d, rel, /*subdirs=*/false, &tasks);
        }
        return {};
      }
      return {};  // changed under us round after round: serve what is there
    }();
  }
  if (!tasks.empty()) queue_prefetch(std::move(tasks));
  return result;
}

bool LowerStore::check_due() {
  if (root_fd_ < 0 || opts_.refresh != RefreshMode::merkle) return false;
  std::unique_lock l(mu_);
  const Clock::TimePoint start = clock_.now();
  if (start < fresh_until_ && !check_flight_) return false;
  check(l, start);
  return true;
}

void LowerStore::check(std::unique_lock<std::mutex>& l, Clock::TimePoint start) {
  if (check_flight_) {
    (void)wait(l, check_flight_);  // a check never fails its waiters
    return;
  }
  auto flight = std::make_shared<Flight>();
  check_flight_ = flight;
  const uint64_t epoch = check_epoch_;
  l.unlock();
  ++stats_.dir_hash_checks;
  auto r = mega_.dir_hash("/");
  l.lock();
  if (!r || !*r || (*r)->type != remote::ItemType::directory) {
    ++stats_.fetch_errors;
    // Serve the mirror as it is; retrying on every call would turn one outage into a storm.
    log::warn("lower_check_failed", {{"error", !r ? r.error().describe() : "dir-hash / gave no directory"}});
  } else {
    root_oid_ = (*r)->oid;
    std::vector<uint32_t> wave;
    if (stale(0)) wave.push_back(0);
    for (uint32_t s : stale_dirs_)
      if (s != 0 && dirs_[s] && stale(s)) wave.push_back(s);
    if (wave.empty()) {
      ++stats_.dir_hash_unchanged;
    } else {
      refresh_waves(l, std::move(wave), start);
    }
  }
  fresh_until_ = check_epoch_ == epoch ? start + opts_.ttl : Clock::TimePoint::min();
  check_flight_.reset();
  finish(flight, {});
}

void LowerStore::refresh_waves(std::unique_lock<std::mutex>& l, std::vector<uint32_t> wave, Clock::TimePoint start) {
  while (!wave.empty()) {
    std::sort(wave.begin(), wave.end());
    wave.erase(std::unique(wave.begin(), wave.end()), wave.end());
    std::vector<std::pair<uint32_t, uint64_t>> todo;
    for (uint32_t i : wave)
      if (i < dirs_.size() && dirs_[i]) todo.emplace_back(i, dirs_[i]->id);
    std::vector<uint32_t> next;  // guarded by mu_
    std::atomic<size_t> at{0};
    auto work = [&] {
      std::unique_lock l2(mu_);
      for (size_t k; (k = at++) < todo.size();) {
        const auto [idx, id] = todo[k];
        for (int round = 0; round < 3; ++round) {
          DirState* d = slot(idx, id);
          if (!d || !stale(idx)) break;
          if (d->flight) {
            (void)wait(l2, d->flight);  // whatever it did, look again
            continue;
          }
          std::vector<uint32_t> kids;
          (void)list_one(l2, idx, Reason::changed, start, &kids);  // a failure is retried by the next check
          next.insert(next.end(), kids.begin(), kids.end());
          break;
        }
      }
    };
    l.unlock();
    const size_t n = std::min<size_t>(std::max(1u, opts_.refresh_parallelism), todo.size());
    std::vector<std::thread> threads;
    for (size_t t = 1; t < n; ++t) threads.emplace_back(work);
    work();
    for (auto& t : threads) t.join();
    l.lock();
    wave = std::move(next);
  }
}

Status LowerStore::list_one(std::unique_lock<std::mutex>& l, uint32_t idx, Reason why, Clock::TimePoint start,
                            std::vector<uint32_t>* changed) {
  DirState* d = dirs_[idx].get();
  auto flight = std::make_shared<Flight>();
  d->flight = flight;
  const uint64_t id = d->id, epoch = d->expire_epoch;
  const bool was_listed = d->kind == DirKind::listed;
  const std::string rel = path_of(idx);
  // Read before the listing: a listing may be newer than its oid, never older.
  const std::optional<Oid> target = expected_oid(idx);
  std::vector<OldItem> old;  // only this flight changes the entries
  old.reserve(d->entries.size());
  for (const Entry& e : d->entries) old.push_back({e.name, e.kind == kDir, e.oid});
  l.unlock();

  auto items = fetch_listing(rel, old);
  old = {};

  std::vector<LayerChange> events;
  Status result;
  bool changing = false;
  l.lock();
  DirState* cur = slot(idx, id);
  if (!cur) {
    result = Error::from_errno(ENOENT, "lower: " + mirror::escape(rel) + " was removed while being listed");
  } else if (!items) {
    ++stats_.fetch_errors;
    if (was_listed) {
      // Serve the old mirror; retrying on every call would turn one outage into a storm.
      log::warn("lower_refresh_failed", {{"dir", repo_path(rel)}, {"error", items.error().describe()}});
      cur->fresh_until = start + opts_.ttl;
      if (opts_.refresh == RefreshMode::merkle) {
        stale_dirs_.insert(idx);
      } else if (items.err() == ENOENT && idx != 0) {
        mark_stale(*dirs_[cur->parent]);  // gone upstream: the parent's next listing removes it
      }
    } else {
      result = remote_error(items.error(), "list " + repo_path(rel), /*keep_enoent=*/true);
    }
  } else if (auto dirfd = mirror::open_dir(root_fd_, rel); !dirfd) {
    result = local_error(dirfd.error(), "lower: open mirror dir");
  } else {
    // Tell the filesystem before the first rename: a request that meets a
    // stale handle from here on waits for this batch's invalidations.
    changing = listener_ && listing_differs(cur->entries, *items);
    if (changing && listener_.begin) listener_.begin();
    const bool complete = apply_listing(dirfd->get(), rel, *cur, *items, events, changed);
    count_listing(why);
    if (was_listed && !events.empty()) ++stats_.refreshes;
    cur->kind = DirKind::listed;
    // Recorded only if every entry is on disk: otherwise it stays stale and is tried again.
    cur->listed_oid = complete && target ? *target : Oid{};
    persist_listed(dirfd->get(), cur->listed_oid);
    if (opts_.refresh == RefreshMode::per_dir) {
      cur->fresh_until = cur->expire_epoch == epoch ? start + opts_.ttl : Clock::TimePoint::min();
    } else if (complete) {
      cur->fresh_until = Clock::TimePoint::min();
      stale_dirs_.erase(idx);
    } else {
      cur->fresh_until = start + opts_.ttl;
      stale_dirs_.insert(idx);
    }
  }
  if (cur && cur->flight == flight) cur->flight.reset();
  finish(flight, result);
  if (changing) {
    LayerChangeListener listener = listener_;
    l.unlock();
    listener.end(events);
    l.lock();
  }
  return result;
}

// Whether applying `items` changes anything on disk in this directory: a
// subdirectory's new tree oid alone does not (its own listing does).
bool LowerStore::listing_differs(const std::vector<Entry>& old, const std::vector<Item>& items) {
  if (old.size() != items.size()) return true;
  for (size_t i = 0; i < old.size(); ++i) {
    const bool dir = old[i].kind == kDir;
    if (old[i].name != items[i].name || dir != items[i].is_dir || (!dir && old[i].oid != items[i].oid)) return true;
  }
  return false;
}

Result<std::vector<LowerStore::Item>> LowerStore::fetch_listing(const std::string& rel,
                                                                const std::vector<OldItem>& old) {
  std::vector<remote::DroppedItem> dropped;
  auto listing = mega_.content_hash(repo_path(rel), &dropped);
  if (!listing) return listing.error();
  std::vector<Item> items;
  std::vector<std::optional<uint64_t>> sizes;
  items.reserve(listing->size());
  for (auto& t : *listing) {
    if (const char* why = mirror::bad_name_reason(t.name)) {
      dropped.push_back({t.name, why});
      continue;
    }
    items.push_back({std::move(t.name), t.type == remote::ItemType::directory, t.oid, t.size.value_or(0)});
    sizes.push_back(t.size);
  }
  // Sorted by name as the state is; of duplicates the first one is served.
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return items[a].name < items[b].name; });
  std::vector<Item> sorted;
  sorted.reserve(items.size());
  for (size_t k = 0; k < order.size(); ++k) {
    Item& item = items[order[k]];
    if (!sorted.empty() && sorted.back().name == item.name) {
      dropped.push_back({item.name, "duplicate"});
      continue;
    }
    if (!item.is_dir) {
      auto o = std::lower_bound(old.begin(), old.end(), item.name,
                                [](const OldItem& e, const std::string& n) { return e.name < n; });
      bool unchanged = o != old.end() && o->name == item.name && !o->is_dir && o->oid == item.oid;
      if (!unchanged && !sizes[order[k]]) {
        // The real Mega sends no size; a placeholder must have the true one
        // or the kernel would cache a wrong st_size.
        auto size = mega_.blob_size(item.oid);
        if (!size) return size.error();
        item.size = *size;
      }
    }
    sorted.push_back(std::move(item));
  }
  if (!dropped.empty()) note_dropped(rel, dropped);
  return sorted;
}

void LowerStore::note_dropped(const std::string& rel, const std::vector<remote::DroppedItem>& dropped) {
  stats_.dropped_names += dropped.size();
  {
    // Once per directory: a bad entry comes back with every refresh.
    std::lock_guard l(mu_);
    if (!warned_dirs_.insert(rel).second) return;
  }
  std::string names;
  for (size_t i = 0; i < dropped.size() && i < 10; ++i)
    names += (i ? "," : "") + mirror::escape(dropped[i].name) + " (" + dropped[i].reason + ")";
  log::warn("lower_dropped_entries",
            {{"dir", repo_path(rel)}, {"count", std::to_string(dropped.size())}, {"entries", names}});
}

Status LowerStore::create_entry(int dirfd, const std::string& path, const Item& item, bool replace, uint64_t* ino) {
  const std::string& name = item.name;
  auto note_ino = [&](int fd) {
    struct stat st;
    if (::fstat(fd, &st) != 0) return false;
    *ino = st.st_ino;
    return true;
  };
  auto mark = [&](int fd) {
    return !persist_ ||
           ::fsetxattr(fd, kXattrOid, file_state_value(item.oid, false).data(), 21, 0) == 0;
  };
  if (item.is_dir) {
    if (::mkdirat(dirfd, name.c_str(), 0755) != 0) {
      if (errno != EEXIST) return mirror::errno_error("mkdir", path);
      // Leftover from before this store: start from an empty directory.
      if (auto s = mirror::remove_tree(dirfd, name); !s) return s;
      if (::mkdirat(dirfd, name.c_str(), 0755) != 0) return mirror::errno_error("mkdir", path);
    }
    if (persist_)
      if (auto s = mirror::set_xattr(dirfd, name, kXattrOid, oid_bytes(item.oid)); !s) return s;
    return {};
  }
  if (!replace) {
    mirror::Fd fd(::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (fd.valid()) {
      if (::fchmod(fd.get(), 0644) != 0 || ::ftruncate(fd.get(), static_cast<off_t>(item.size)) != 0 ||
          !note_ino(fd.get()) || !mark(fd.get()))
        return mirror::errno_error("create placeholder", path);
      return {};
    }
    if (errno != EEXIST) return mirror::errno_error("create placeholder", path);
  }
  // Replace atomically: the old inode is gone the moment the new one appears.
  mirror::KeepDirMtime same_names(dirfd, &kept_mtimes_);  // a new version of a file, not a new name
  auto tmp = mirror::create_temp_file(dirfd, 0644);
  if (!tmp) return tmp.error();
  if (::ftruncate(tmp->first.get(), static_cast<off_t>(item.size)) != 0 || !note_ino(tmp->first.get()) ||
      !mark(tmp->first.get())) {
    Error e = mirror::errno_error("create placeholder", path);
    ::unlinkat(dirfd, tmp->second.c_str(), 0);
    return e;
  }
  tmp->first.reset();
  if (::renameat(dirfd, tmp->second.c_str(), dirfd, name.c_str()) == 0) return {};
  if (errno == EISDIR || errno == ENOTEMPTY || errno == EEXIST) {  // a leftover directory
    if (auto s = mirror::remove_tree(dirfd, name); s)
      return mirror::rename_into_place(dirfd, tmp->second, name, path);
  }
  Error e = mirror::errno_error("rename placeholder", path);
  ::unlinkat(dirfd, tmp->second.c_str(), 0);
  return e;
}

void LowerStore::supersede(const std::string& path, bool subtree) {
  if (file_flights_.empty()) return;
  if (!subtree) {
    if (auto it = file_flights_.find(path); it != file_flights_.end()) ++it->second->superseded;
    return;
  }
  const std::string p = path + "/";
  for (auto& [k, f] : file_flights_)
    if (k.compare(0, p.size(), p) == 0) ++f->superseded;
}

void LowerStore::drop_entry(const std::string& path, const Entry& e) {
  if (e.kind == kDir) {
    if (e.v != kNoDir) free_dir(uint32_t(e.v));
    supersede(path, /*subtree=*/true);
  } else {
    // A pending inode stays in pending_inos_: an fd or handle that still
    // reaches it must never be served its zeros.
    supersede(path, /*subtree=*/false);
  }
}

void LowerStore::persist_dir_oid(int dirfd, const std::string& name, const Oid& oid) {
  if (!persist_) return;
  if (auto s = mirror::set_xattr(dirfd, name, kXattrOid, oid_bytes(oid)); !s)
    log::warn("lower_persist_failed", {{"path", name}, {"error", s.error().describe()}});
}

void LowerStore::persist_listed(int dirfd, const Oid& oid) {
  if (!persist_) return;
  if (auto s = mirror::set_xattr(dirfd, "", kXattrTree, oid_bytes(oid)); !s)
    log::warn("lower_persist_failed", {{"path", "."}, {"error", s.error().describe()}});
}

bool LowerStore::apply_listing(int fd, const std::string& rel, DirState& dir, const std::vector<Item>& items,
                               std::vector<LayerChange>& events, std::vector<uint32_t>* changed) {
  using Kind = LayerChange::Kind;
  // Writing out a directory's first listing is not a change of the
  // directory: its mtime stays the one it got when it appeared.
  std::optional<mirror::KeepDirMtime> first_listing;
  if (dir.kind != DirKind::listed) first_listing.emplace(fd, &kept_mtimes_);
  bool complete = true;
  std::vector<Entry>& old = dir.entries;
  std::vector<Entry> next;
  next.reserve(items.size());

  auto remove = [&](Entry& e, const std::string& path) {
    keep(fd, e);
    if (auto s = mirror::remove_tree(fd, e.name); !s) {
      log::error("lower_remove_failed", {{"path", path}, {"error", s.error().describe()}});
      complete = false;
      return false;
    }
    drop_entry(path, e);
    events.push_back({Kind::removed, path});
    return true;
  };
  auto create = [&](const Item& item, const std::string& path) {
    uint64_t ino = 0;
    if (auto s = create_entry(fd, path, item, /*replace=*/false, &ino); !s) {
      log::error("lower_create_failed", {{"path", path}, {"error", s.error().describe()}});
      complete = false;
      return;
    }
    if (!item.is_dir) pending_inos_.insert(ino);
    next.push_back(Entry{item.name, item.oid, item.is_dir ? kDir : kFile, 0, item.is_dir ? kNoDir : item.size});
    events.push_back({Kind::added, path});
  };

  size_t i = 0, j = 0;
  while (i < old.size() || j < items.size()) {
    const int c = i == old.size() ? 1 : j == items.size() ? -1 : old[i].name.compare(items[j].name);
    if (c < 0) {  // vanished
      Entry& e = old[i++];
      if (!remove(e, mirror::join_rel(rel, e.name))) next.push_back(std::move(e));
      continue;
    }
    if (c > 0) {  // new
      const Item& item = items[j++];
      create(item, mirror::join_rel(rel, item.name));
      continue;
    }
    Entry& e = old[i++];
    const Item& item = items[j++];
    const std::string path = mirror::join_rel(rel, item.name);
    if ((e.kind == kDir) != item.is_dir) {  // type changed: the old object and everything beneath it go
      if (!remove(e, path)) {
        next.push_back(std::move(e));
        continue;
      }
      create(item, path);
      continue;
    }
    if (e.oid != item.oid) {
      if (e.kind == kDir) {
        // Same inode, new content: only its listing is out of date.
        e.oid = item.oid;
        persist_dir_oid(fd, e.name, item.oid);
        if (e.v != kNoDir) {
          DirState& child = *dirs_[e.v];
          if (opts_.refresh == RefreshMode::per_dir) mark_stale(child);
          else if (child.kind == DirKind::listed && changed) changed->push_back(uint32_t(e.v));
        }
      } else {
        uint64_t ino = 0;
        keep(fd, e);
        if (auto st = create_entry(fd, path, item, /*replace=*/true, &ino); !st) {
          log::error("lower_replace_failed", {{"path", path}, {"error", st.error().describe()}});
          complete = false;  // the old version stays tracked; the next listing tries again
        } else {
          supersede(path, /*subtree=*/false);  // its fetch's owner sees this and fetches the new oid
          pending_inos_.insert(ino);
          e.oid = item.oid;
          e.v = item.size;
          e.flags = 0;
          events.push_back({Kind::replaced, path});
        }
      }
    }
    next.push_back(std::move(e));
  }
  dir.entries = std::move(next);
  stats_.entries_changed += events.size();
  return complete;
}

// ------------------------------------------------------------- kept objects

void LowerStore::set_keep_replaced(bool on) {
  std::lock_guard l(mu_);
  keep_replaced_ = on;
  if (!on) sweep_kept(/*all=*/true);
}

void LowerStore::keep(int dirfd, const Entry& e) {
  if (!keep_replaced_ || attic_fd_ < 0 || e.kind != kFile) return;
  sweep_kept(/*all=*/false);
  struct stat st;
  if (::fstatat(dirfd, e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) return;
  const std::string name = std::to_string(st.st_ino);
  int rc = ::linkat(dirfd, e.name.c_str(), attic_fd_, name.c_str(), 0);
  if (rc != 0 && errno == EEXIST) {  // a leftover of an inode number since reused
    ::unlinkat(attic_fd_, name.c_str(), 0);
    rc = ::linkat(dirfd, e.name.c_str(), attic_fd_, name.c_str(), 0);
  }
  if (rc != 0) {
    ++stats_.keep_failures;
    return;
  }
  if (kept_.size() >= opts_.keep_max) {
    ::unlinkat(attic_fd_, std::to_string(kept_.front().ino).c_str(), 0);
    kept_inos_.erase(kept_.front().ino);
    kept_.pop_front();
  }
  kept_.push_back({uint64_t(st.st_ino), e.oid, e.v, clock_.now() + opts_.keep_for});
  kept_inos_.insert(uint64_t(st.st_ino));
  kept_count_ = kept_.size();
  ++stats_.kept;
}

void LowerStore::sweep_kept(bool all) {
  const auto now = clock_.now();
  while (!kept_.empty() && (all || kept_.front().until <= now)) {
    ::unlinkat(attic_fd_, std::to_string(kept_.front().ino).c_str(), 0);
    kept_inos_.erase(kept_.front().ino);
    kept_.pop_front();
  }
  kept_count_ = kept_.size();
}

bool LowerStore::is_kept(uint64_t ino) {
  if (kept_count_.load() == 0) return false;
  std::lock_guard l(mu_);
  sweep_kept(/*all=*/false);
  return kept_inos_.contains(ino);
}

Result<UniqueFd> LowerStore::open_kept(uint64_t ino, int flags) {
  std::lock_guard l(mu_);
  if (attic_fd_ < 0) return Error::from_errno(ENOENT, "lower: no attic");
  sweep_kept(/*all=*/false);
  if (!kept_inos_.contains(ino))
    return Error::from_errno(ENOENT, "lower: inode " + std::to_string(ino) + " is not kept");
  // Under mu_: a sweep cannot take the name away between the check and the open.
  UniqueFd fd(::openat(attic_fd_, std::to_string(ino).c_str(), (flags & ~O_CREAT) | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return mirror::errno_error("open kept", std::to_string(ino));
  return fd;
}

Status LowerStore::fill_kept(uint64_t ino) {
  std::unique_lock l(mu_);
  auto it = std::find_if(kept_.begin(), kept_.end(), [&](const Kept& k) { return k.ino == ino; });
  if (it == kept_.end() || attic_fd_ < 0) return Error::from_errno(ENOENT, "lower: inode " + std::to_string(ino) + " is not kept");
  if (!pending_inos_.contains(ino)) return {};
  const Oid oid = it->oid;
  const uint64_t size = it->size;
  const std::string what = "kept inode " + std::to_string(ino);
  UniqueFd fd(::openat(attic_fd_, std::to_string(ino).c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Error{EIO, 0, "lower: " + mirror::errno_error("open", what).message};
  l.unlock();
  // In place, as ensure_file does: the object keeps its inode and its mtime.
  mirror::KeptMtimes::Scope quiet(kept_mtimes_, fd.get());
  struct stat before {};
  Status w;
  if (::fstat(fd.get(), &before) != 0 || uint64_t(before.st_ino) != ino) w = mirror::errno_error("stat", what);
  bool done = false;
  if (w && opts_.blob_cache) {
    auto hit = opts_.blob_cache->copy_to(oid, size, fd.get());
    if (!hit) w = hit.error();
    else if (*hit) {
      done = true;
      ++stats_.blobs_from_cache;
    }
  }
  if (w && !done) {
    auto blob = mega_.blob(oid);
    if (!blob) {
      ++stats_.fetch_errors;
      return remote_error(blob.error(), "fetch " + what, /*keep_enoent=*/false);
    }
    ++stats_.blobs_fetched;
    stats_.blob_bytes += blob->size();
    w = mirror::write_whole(fd.get(), *blob, what);
  }
  if (w) {
    const struct timespec ts[2] = {{0, UTIME_OMIT}, before.st_mtim};
    if (::futimens(fd.get(), ts) != 0) w = mirror::errno_error("restore mtime", what);
  }
  if (!w) return Error{EIO, 0, "lower: " + w.error().message};
  l.lock();
  pending_inos_.erase(ino);
  return {};
}

// ----------------------------------------------------------- persisted state

Status LowerStore::load_dir(std::unique_lock<std::mutex>& l, uint32_t idx) {
  DirState* d = dirs_[idx].get();
  if (d->flight) return wait(l, d->flight);
  auto flight = std::make_shared<Flight>();
  d->flight = flight;
  const uint64_t id = d->id;
  const std::string rel = path_of(idx);
  l.unlock();

  // Nobody reaches this directory's children before it is loaded, so it is
  // read without the lock.
  std::string damage;
  bool listed = false;
  Oid listed_oid;
  std::vector<Entry> entries;
  std::vector<std::pair<uint64_t, bool>> inos;  // (inode, pending)
  std::vector<std::string> temps;
  auto dirfd = mirror::open_dir(root_fd_, rel);
  if (!dirfd) {
    damage = dirfd.error().describe();
  } else {
    const int fd = dirfd->get();
    if (auto t = mirror::get_xattr(fd, "", kXattrTree); t && t->size() == 20) {
      listed = true;
      listed_oid = oid_from(*t);
    } else if (t || t.err() != ENODATA) {
      damage = "bad listing state";
    }
    auto names = mirror::list_dir(fd);
    if (!names) damage = names.error().describe();
    for (size_t k = 0; damage.empty() && names && k < names->size(); ++k) {
      const std::string& n = (*names)[k];
      if (n == mirror::kOwnerMarker) continue;
      if (mirror::is_temp_name(n)) {  // a replacement cut short
        temps.push_back(n);
        continue;
      }
      if (!listed) {
        damage = "entries in a directory never listed";
        break;
      }
      struct stat st;
      auto v = mirror::get_xattr(fd, n, kXattrOid);
      if (mirror::bad_name_reason(n) || ::fstatat(fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !v) {
        damage = "no state for " + mirror::escape(n);
      } else if (S_ISDIR(st.st_mode) && v->size() == 20) {
        entries.push_back(Entry{n, oid_from(*v), kDir, kFromDisk, kNoDir});
      } else if (S_ISREG(st.st_mode) && v->size() == 21 && ((*v)[20] == kStatePending || (*v)[20] == kStateFilled)) {
        const bool filled = (*v)[20] == kStateFilled;
        entries.push_back(Entry{n, oid_from(*v), kFile, uint8_t(filled ? kMaterialized : 0), uint64_t(st.st_size)});
        inos.emplace_back(st.st_ino, !filled);
      } else {
        damage = "bad state for " + mirror::escape(n);
      }
    }
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
    entries.shrink_to_fit();
  }

  l.lock();
  Status result;
  DirState* cur = slot(idx, id);
  if (!cur) {
    result = Error::from_errno(ENOENT, "lower: " + mirror::escape(rel) + " was removed while being loaded");
  } else if (!damage.empty()) {
    // Never trusted: cleared and listed afresh.
    ++stats_.dirs_damaged;
    log::warn("lower_dir_damaged", {{"dir", repo_path(rel)}, {"reason", damage}});
    if (dirfd) {
      if (auto s = idx == 0 ? mirror::clear_owned_dir(dirfd->get()) : mirror::clear_dir(dirfd->get()); !s)
        log::error("lower_remove_failed", {{"path", repo_path(rel)}, {"error", s.error().describe()}});
      if (auto s = mirror::remove_xattr(dirfd->get(), "", kXattrTree); !s)
        log::error("lower_persist_failed", {{"path", repo_path(rel)}, {"error", s.error().describe()}});
    }
    cur->kind = DirKind::unlisted;
    cur->entries.clear();
  } else {
    for (const auto& t : temps)
      if (auto s = mirror::remove_tree(dirfd->get(), t); !s)
        log::warn("lower_remove_failed", {{"path", mirror::join_rel(rel, t)}, {"error", s.error().describe()}});
    cur->entries = std::move(entries);
    cur->kind = listed ? DirKind::listed : DirKind::unlisted;
    cur->listed_oid = listed_oid;
    cur->fresh_until = Clock::TimePoint::min();  // per-dir: listed again at first use
    for (auto [ino, pending] : inos) {
      if (pending) pending_inos_.insert(ino);
      else pending_inos_.erase(ino);
    }
    ++stats_.dirs_loaded;
  }
  if (cur && cur->flight == flight) cur->flight.reset();
  finish(flight, result);
  return result;
}

// ------------------------------------------------------------- materialize

Status LowerStore::ensure_file(const std::string& rel) { return ensure_file_impl(rel); }

Status LowerStore::ensure_file_impl(const std::string& rel) {
  if (root_fd_ < 0) return root_error_;
  std::string parent, name;
  split_parent(rel, &parent, &name);
  std::unique_lock l(mu_);
  // The file's entry, valid until the lock is dropped; nullptr if untracked.
  auto find_file = [&](bool load) -> Entry* {
    for (int round = 0; round < 4; ++round) {
      auto r = resolve(l, parent);
      if (!r) return nullptr;
      DirState* d = dirs_[*r].get();
      if (d->kind == DirKind::on_disk) {
        if (!load || !load_dir(l, *r)) return nullptr;
        continue;
      }
      if (d->kind != DirKind::listed) return nullptr;
      Entry* e = find_entry(*d, name);
      return e && e->kind == kFile ? e : nullptr;
    }
    return nullptr;
  };
  Entry* e = find_file(true);
  if (!e || (e->flags & kMaterialized)) return {};
  if (auto it = file_flights_.find(rel); it != file_flights_.end()) return wait(l, it->second);
  auto flight = std::make_shared<Flight>();
  file_flights_[rel] = flight;
  BlobCache* const cache = opts_.blob_cache;

  // A refresh may replace the placeholder while we fetch; then we fetch the
  // new oid. Three rounds bound the work if the file keeps changing.
  Status result = Error::from_errno(EIO, "lower: " + mirror::escape(rel) + " kept changing while being fetched");
  std::optional<std::string> to_cache;  // downloaded bytes, kept in the cache once the flight is done
  Oid to_cache_oid;
  for (int round = 0; round < 3; ++round) {
    Entry* f = find_file(false);
    if (!f) {
      result = Error::from_errno(ENOENT, "lower: " + mirror::escape(rel) + " vanished while being fetched");
      break;
    }
    if (f->flags & kMaterialized) {
      result = {};
      break;
    }
    const Oid oid = f->oid;
    const uint64_t size = f->v;
    const uint64_t seen = flight->superseded;
    l.unlock();
    const bool try_cache = cache && cache->contains(oid);
    std::optional<Result<std::string>> blob;
    auto download = [&] {
      blob = mega_.blob(oid);  // checked against the oid by the client
      if (*blob) {
        ++stats_.blobs_fetched;
        stats_.blob_bytes += (*blob)->size();
      } else {
        ++stats_.fetch_errors;
      }
    };
    if (!try_cache) download();
    l.lock();
    if (blob && !*blob) {
      result = remote_error(blob->error(), "fetch " + repo_path(rel), /*keep_enoent=*/false);
      break;
    }
    if (flight->superseded != seen) continue;  // replaced meanwhile: fetch the new oid
    // Open under mu_ while not superseded: the fd is this placeholder's inode.
    auto dirfd = mirror::open_dir(root_fd_, parent);
    mirror::Fd fd;
    if (dirfd) fd = mirror::Fd(::openat(dirfd->get(), name.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) {  // the mirror was changed behind our back
      Error err = dirfd ? mirror::errno_error("open placeholder", rel) : dirfd.error();
      result = Error{EIO, 0, "lower: " + err.message};
      break;
    }
    l.unlock();
    // In place (no O_TRUNC, no rename): handles to the placeholder stay valid.
    // Its mtime stays the version's: filling in bytes is not a change.
    mirror::KeptMtimes::Scope quiet(kept_mtimes_, fd.get());
    Status w;
    bool from_cache = false;
    struct stat before {};
    if (::fstat(fd.get(), &before) != 0) w = mirror::errno_error("stat placeholder", rel);
    if (w && try_cache) {
      auto hit = cache->copy_to(oid, size, fd.get());
      if (!hit) w = hit.error();
      else if (*hit) from_cache = true;
      else download();  // evicted or damaged since: download after all
    }
    bool remote_failed = false;
    if (w && !from_cache) {
      if (!*blob) {
        remote_failed = true;
        w = blob->error();
      } else {
        w = mirror::write_whole(fd.get(), **blob, rel);
      }
    }
    if (w) {
      const struct timespec ts[2] = {{0, UTIME_OMIT}, before.st_mtim};
      if (::futimens(fd.get(), ts) != 0) w = mirror::errno_error("restore mtime", rel);
    }
    if (w && persist_)  // best effort: without it a restart fetches the file again
      ::fsetxattr(fd.get(), kXattrOid, file_state_value(oid, true).data(), 21, 0);
    fd.reset();
    l.lock();
    if (!w) {
      result = remote_failed ? remote_error(w.error(), "fetch " + repo_path(rel), false)
                             : Error{EIO, 0, "lower: " + w.error().message};
      break;
    }
    if (flight->superseded != seen) {  // our bytes went to the replaced inode: this oid's, so a kept one is whole
      if (kept_inos_.contains(uint64_t(before.st_ino))) pending_inos_.erase(before.st_ino);
      continue;
    }
    f = find_file(false);
    if (!f) {
      result = Error::from_errno(ENOENT, "lower: " + mirror::escape(rel) + " vanished while being written");
      break;
    }
    f->flags |= kMaterialized;
    pending_inos_.erase(before.st_ino);
    if (from_cache) ++stats_.blobs_from_cache;
    else if (cache) {
      to_cache = std::move(**blob);
      to_cache_oid = oid;
    }
    result = {};
    break;
  }
  if (auto it = file_flights_.find(rel); it != file_flights_.end() && it->second == flight) file_flights_.erase(it);
  finish(flight, result);
  l.unlock();
  if (to_cache) cache->put(to_cache_oid, *to_cache);
  return result;
}

// ----------------------------------------------------------------- prefetch

void LowerStore::prefetch_for(const DirState& d, const std::string& rel, bool subdirs, std::vector<Task>* out) const {
  for (const Entry& e : d.entries) {
    if (e.kind == kDir) {
      if (subdirs && (e.v == kNoDir || dirs_[e.v]->kind != DirKind::listed))
        out->push_back({true, mirror::join_rel(rel, e.name)});
    } else if (!(e.flags & kMaterialized) && is_build_file(e.name)) {
      out->push_back({false, mirror::join_rel(rel, e.name)});
    }
  }
}

void LowerStore::queue_prefetch(std::vector<Task> tasks) {
  {
    std::lock_guard l(pf_mu_);
    if (pf_stop_) return;
    for (auto& t : tasks) {
      if (pf_queued_.count(t.path)) continue;
      if (pf_queue_.size() >= opts_.prefetch_queue) {
        ++stats_.prefetch_dropped;
        continue;
      }
      pf_queued_.insert(t.path);
      pf_queue_.push_back(std::move(t));
      ++stats_.prefetch_queued;
    }
  }
  pf_cv_.notify_all();
}

void LowerStore::prefetch_worker() {
  for (;;) {
    Task t;
    {
      std::unique_lock l(pf_mu_);
      pf_cv_.wait(l, [&] { return pf_stop_ || !pf_queue_.empty(); });
      if (pf_stop_) return;
      t = std::move(pf_queue_.front());
      pf_queue_.pop_front();
      pf_queued_.erase(t.path);
    }
    Status s = t.dir ? ensure_dir_impl(t.path, Caller::prefetch) : ensure_file_impl(t.path);
    ++stats_.prefetch_done;
    if (!s) {
      // Not fatal: whoever needs it meets the error (or not) itself.
      if (++stats_.prefetch_errors <= 10)
        log::warn("lower_prefetch_failed", {{"path", repo_path(t.path)}, {"error", s.error().describe()}});
      else
        log::debug("lower_prefetch_failed", {{"path", repo_path(t.path)}, {"error", s.error().describe()}});
    }
  }
}

}  // namespace antares::fs
