// LowerStore: lazy listing and materialization of the lower layer's mirror
// (see the design note in lower_store.h).
#include "fs/lower/lower_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <set>

#include "common/log.h"
#include "fs/lower/mirror_fs.h"

namespace antares::fs {

namespace {

// A remote failure as the caller sees it: timeouts and "no such path" keep
// their errno (the filesystem reports them as such), anything else is EIO.
Error remote_error(const Error& e, const std::string& what, bool keep_enoent) {
  int code = e.err == ETIMEDOUT || (keep_enoent && e.err == ENOENT) ? e.err : EIO;
  return Error{code, e.http_status, what + ": " + e.describe()};
}

Error local_error(const Error& e, const std::string& what) {
  return Error{e.err, 0, what + ": " + e.message};
}

std::string repo_path(const std::string& rel) { return "/" + rel; }

std::string parent_of(const std::string& rel) {
  auto slash = rel.rfind('/');
  return slash == std::string::npos ? "" : rel.substr(0, slash);
}

bool under(const std::string& key, const std::string& prefix_slash) {
  return key.compare(0, prefix_slash.size(), prefix_slash) == 0;
}

}  // namespace

LowerStore::LowerStore(remote::MegaClient& mega, std::string mirror_root, Clock::Duration ttl, Clock& clock)
    : mega_(mega), mirror_root_(std::move(mirror_root)), ttl_(ttl), clock_(clock) {
  root_fd_ = ::open(mirror_root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) root_error_ = mirror::errno_error("open mirror root", mirror_root_);
  dirs_[""].id = next_id_++;
}

LowerStore::~LowerStore() {
  if (root_fd_ >= 0) ::close(root_fd_);
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

LowerStore::FileState LowerStore::file_state(const std::string& rel) const {
  std::lock_guard l(mu_);
  auto it = files_.find(rel);
  if (it == files_.end()) return FileState::untracked;
  return it->second.materialized ? FileState::materialized : FileState::pending;
}

Status LowerStore::wait(std::unique_lock<std::mutex>& l, std::shared_ptr<Flight> f) {
  f->cv.wait(l, [&] { return f->done; });
  return f->result;
}

void LowerStore::mark_stale(Dir& d) {
  ++d.expire_epoch;  // a fetch in progress must not mark the listing fresh
  d.fresh_until = Clock::TimePoint::min();
}

void LowerStore::finish(const std::shared_ptr<Flight>& f, Status result) {
  f->done = true;
  f->result = std::move(result);
  f->cv.notify_all();
}

void LowerStore::expire(const std::string& rel_prefix) {
  std::lock_guard l(mu_);
  if (rel_prefix.empty()) {
    for (auto& [_, d] : dirs_) mark_stale(d);
    return;
  }
  if (auto it = dirs_.find(rel_prefix); it != dirs_.end()) mark_stale(it->second);
  const std::string p = rel_prefix + "/";
  for (auto it = dirs_.lower_bound(p); it != dirs_.end() && under(it->first, p); ++it) mark_stale(it->second);
}

// ----------------------------------------------------------------- listing

Status LowerStore::ensure_dir(const std::string& rel) {
  if (root_fd_ < 0) return root_error_;
  std::unique_lock l(mu_);
  auto it = dirs_.find(rel);
  if (it == dirs_.end()) return Error::from_errno(ENOENT, "lower: not a mirrored directory: " + mirror::escape(rel));
  Dir& d = it->second;
  if (d.flight) return wait(l, d.flight);
  const Clock::TimePoint start = clock_.now();
  if (d.listed && start < d.fresh_until) return {};

  auto flight = std::make_shared<Flight>();
  d.flight = flight;
  const uint64_t id = d.id, epoch = d.expire_epoch;
  const bool was_listed = d.listed;
  const std::map<std::string, Child> old = d.children;  // only this flight changes it
  l.unlock();

  auto items = fetch_listing(rel, old);

  std::vector<LayerChange> events;
  Status result;
  bool changing = false;
  l.lock();
  auto cur_it = dirs_.find(rel);
  Dir* cur = cur_it != dirs_.end() && cur_it->second.id == id ? &cur_it->second : nullptr;
  if (!cur) {
    result = Error::from_errno(ENOENT, "lower: " + mirror::escape(rel) + " was removed while being listed");
  } else if (!items) {
    ++stats_.fetch_errors;
    if (was_listed) {
      // Serve the old mirror; retrying on every call would turn one outage into a storm.
      log::warn("lower_refresh_failed", {{"dir", repo_path(rel)}, {"error", items.error().describe()}});
      cur->fresh_until = start + ttl_;
      // Gone upstream: the parent's next listing will notice and remove it.
      if (items.err() == ENOENT && !rel.empty())
        if (auto p = dirs_.find(parent_of(rel)); p != dirs_.end()) mark_stale(p->second);
    } else {
      result = remote_error(items.error(), "list " + repo_path(rel), /*keep_enoent=*/true);
    }
  } else {
    // Tell the filesystem before the first rename: a request that meets a
    // stale handle from here on waits for this batch's invalidations.
    changing = listener_ && listing_differs(cur->children, *items);
    if (changing && listener_.begin) listener_.begin();
    result = apply_listing(rel, *cur, *items, events);
    if (result) {
      ++stats_.listings_fetched;
      if (was_listed && !events.empty()) ++stats_.refreshes;
      cur->listed = true;
      cur->fresh_until = cur->expire_epoch == epoch ? start + ttl_ : Clock::TimePoint::min();
    }
  }
  if (cur && cur->flight == flight) cur->flight.reset();
  finish(flight, result);
  LayerChangeListener listener = changing ? listener_ : LayerChangeListener{};
  l.unlock();
  if (listener) listener.end(events);
  return result;
}

bool LowerStore::listing_differs(const std::map<std::string, Child>& old, const std::vector<Item>& items) {
  if (old.size() != items.size()) return true;
  for (const auto& item : items) {
    auto o = old.find(item.name);
    if (o == old.end() || o->second.is_dir != item.is_dir || o->second.oid != item.oid) return true;
  }
  return false;
}

Result<std::vector<LowerStore::Item>> LowerStore::fetch_listing(const std::string& rel,
                                                                const std::map<std::string, Child>& old) {
  std::vector<remote::DroppedItem> dropped;
  auto listing = mega_.content_hash(repo_path(rel), &dropped);
  if (!listing) return listing.error();
  std::vector<Item> items;
  items.reserve(listing->size());
  std::set<std::string_view> seen;
  for (const auto& t : *listing) {
    const char* why = mirror::bad_name_reason(t.name);
    if (!why && !seen.insert(t.name).second) why = "duplicate";  // the first one is served
    if (why) {
      dropped.push_back({t.name, why});
      continue;
    }
    Item item{t.name, t.type == remote::ItemType::directory, t.oid, 0};
    if (!item.is_dir) {
      auto o = old.find(t.name);
      bool unchanged = o != old.end() && !o->second.is_dir && o->second.oid == t.oid;
      if (!unchanged) {
        if (t.size) {
          item.size = *t.size;
        } else {
          // The real Mega sends no size; a placeholder must have the true one
          // or the kernel would cache a wrong st_size.
          auto size = mega_.blob_size(t.oid);
          if (!size) return size.error();
          item.size = *size;
        }
      }
    }
    items.push_back(std::move(item));
  }
  if (!dropped.empty()) note_dropped(rel, dropped);
  return items;
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
  const std::string name = item.name;
  auto note_ino = [&](int fd) {
    struct stat st;
    if (::fstat(fd, &st) != 0) return false;
    *ino = st.st_ino;
    return true;
  };
  if (item.is_dir) {
    if (::mkdirat(dirfd, name.c_str(), 0755) == 0) return {};
    if (errno != EEXIST) return mirror::errno_error("mkdir", path);
    // Leftover from before this store: start from an empty directory.
    if (auto s = mirror::remove_tree(dirfd, name); !s) return s;
    if (::mkdirat(dirfd, name.c_str(), 0755) != 0) return mirror::errno_error("mkdir", path);
    return {};
  }
  if (!replace) {
    mirror::Fd fd(::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (fd.valid()) {
      if (::fchmod(fd.get(), 0644) != 0 || ::ftruncate(fd.get(), static_cast<off_t>(item.size)) != 0 ||
          !note_ino(fd.get()))
        return mirror::errno_error("create placeholder", path);
      return {};
    }
    if (errno != EEXIST) return mirror::errno_error("create placeholder", path);
  }
  // Replace atomically: the old inode is gone the moment the new one appears.
  mirror::KeepDirMtime same_names(dirfd);  // a new version of a file, not a new name
  auto tmp = mirror::create_temp_file(dirfd, 0644);
  if (!tmp) return tmp.error();
  if (::ftruncate(tmp->first.get(), static_cast<off_t>(item.size)) != 0 || !note_ino(tmp->first.get())) {
    Error e = mirror::errno_error("truncate placeholder", path);
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

void LowerStore::track_pending(const std::string& path, const Item& item, uint64_t ino) {
  File& f = files_[path];
  f.oid = item.oid;
  f.size = item.size;
  f.gen = next_id_++;
  f.ino = ino;
  f.materialized = false;
  // A replaced placeholder that was never filled stays pending for good: an
  // fd or handle that still reaches it must never be served its zeros.
  pending_inos_.insert(ino);
}

bool LowerStore::content_ready(uint64_t ino) const {
  std::lock_guard l(mu_);
  return !pending_inos_.count(ino);
}

void LowerStore::drop_state(const std::string& path) {
  files_.erase(path);
  dirs_.erase(path);
  const std::string p = path + "/";
  dirs_.erase(dirs_.lower_bound(p), std::find_if(dirs_.lower_bound(p), dirs_.end(),
                                                  [&](const auto& kv) { return !under(kv.first, p); }));
  files_.erase(files_.lower_bound(p), std::find_if(files_.lower_bound(p), files_.end(),
                                                    [&](const auto& kv) { return !under(kv.first, p); }));
}

Status LowerStore::apply_listing(const std::string& rel, Dir& dir, const std::vector<Item>& items,
                                 std::vector<LayerChange>& events) {
  auto dirfd = mirror::open_dir(root_fd_, rel);
  if (!dirfd) return local_error(dirfd.error(), "lower: open mirror dir");
  const int fd = dirfd->get();
  using Kind = LayerChange::Kind;
  // Writing out a directory's first listing is not a change of the
  // directory: its mtime stays the one it got when it appeared.
  std::optional<mirror::KeepDirMtime> first_listing;
  if (!dir.listed) first_listing.emplace(fd);

  std::map<std::string, Child> next;
  std::set<std::string_view> listed;
  for (const auto& item : items) listed.insert(item.name);

  // Vanished names first, so a name re-created with another type is free.
  for (const auto& [name, child] : dir.children) {
    if (listed.count(name)) continue;
    const std::string path = mirror::join_rel(rel, name);
    if (auto s = mirror::remove_tree(fd, name); !s)
      log::error("lower_remove_failed", {{"path", path}, {"error", s.error().describe()}});
    drop_state(path);
    events.push_back({Kind::removed, path});
  }

  for (const auto& item : items) {
    const std::string path = mirror::join_rel(rel, item.name);
    auto old = dir.children.find(item.name);
    bool existed = old != dir.children.end();
    if (existed && old->second.is_dir == item.is_dir) {
      if (old->second.oid != item.oid) {
        if (item.is_dir) {
          // Same inode, new content: only its listing is out of date.
          if (auto d = dirs_.find(path); d != dirs_.end()) mark_stale(d->second);
        } else {
          uint64_t ino = 0;
          if (auto st = create_entry(fd, path, item, /*replace=*/true, &ino); !st) {
            log::error("lower_replace_failed", {{"path", path}, {"error", st.error().describe()}});
            continue;  // left out of `next`, so the next listing tries again
          }
          track_pending(path, item, ino);  // keeps the flight: its owner sees the new gen and retries
          events.push_back({Kind::replaced, path});
        }
      }
      next[item.name] = Child{item.is_dir, item.oid};
      continue;
    }
    if (existed) {  // type changed: the old object and everything beneath it go
      if (auto s = mirror::remove_tree(fd, item.name); !s) {
        log::error("lower_remove_failed", {{"path", path}, {"error", s.error().describe()}});
        continue;
      }
      drop_state(path);
      events.push_back({Kind::removed, path});
    }
    uint64_t ino = 0;
    if (auto s = create_entry(fd, path, item, /*replace=*/false, &ino); !s) {
      log::error("lower_create_failed", {{"path", path}, {"error", s.error().describe()}});
      continue;
    }
    if (item.is_dir) {
      dirs_[path].id = next_id_++;
    } else {
      track_pending(path, item, ino);
    }
    events.push_back({Kind::added, path});
    next[item.name] = Child{item.is_dir, item.oid};
  }
  dir.children = std::move(next);
  stats_.entries_changed += events.size();
  return {};
}

// ------------------------------------------------------------- materialize

Status LowerStore::ensure_file(const std::string& rel) {
  if (root_fd_ < 0) return root_error_;
  std::unique_lock l(mu_);
  auto it = files_.find(rel);
  if (it == files_.end() || it->second.materialized) return {};
  if (it->second.flight) return wait(l, it->second.flight);
  auto flight = std::make_shared<Flight>();
  it->second.flight = flight;

  // A refresh may replace the placeholder while we fetch; then we fetch the
  // new oid. Three rounds bound the work if the file keeps changing.
  Status result = Error::from_errno(EIO, "lower: " + mirror::escape(rel) + " kept changing while being fetched");
  File* f = &it->second;
  for (int round = 0; round < 3; ++round) {
    if (f->materialized) {
      result = {};
      break;
    }
    const Oid oid = f->oid;
    const uint64_t gen = f->gen;
    l.unlock();
    auto blob = mega_.blob(oid);  // checked against the oid by the client
    l.lock();
    if (!blob) {
      ++stats_.fetch_errors;
      result = remote_error(blob.error(), "fetch " + repo_path(rel), /*keep_enoent=*/false);
      break;
    }
    ++stats_.blobs_fetched;
    stats_.blob_bytes += blob->size();
    auto cur = files_.find(rel);
    if (cur == files_.end()) {
      result = Error::from_errno(ENOENT, "lower: " + mirror::escape(rel) + " vanished while being fetched");
      break;
    }
    f = &cur->second;
    if (f->gen != gen) continue;  // replaced meanwhile: fetch the new oid
    // Open under mu_ with the generation unchanged: the fd is this placeholder's inode.
    auto dirfd = mirror::open_dir(root_fd_, parent_of(rel));
    mirror::Fd fd;
    if (dirfd) {
      const auto slash = rel.rfind('/');
      const std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
      fd = mirror::Fd(::openat(dirfd->get(), name.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC));
    }
    if (!fd.valid()) {  // the mirror was changed behind our back
      Error e = dirfd ? mirror::errno_error("open placeholder", rel) : dirfd.error();
      result = Error{EIO, 0, "lower: " + e.message};
      break;
    }
    l.unlock();
    // In place (no O_TRUNC, no rename): handles to the placeholder stay valid.
    // Its mtime stays the version's: filling in bytes is not a change.
    struct stat before {};
    Status w = ::fstat(fd.get(), &before) == 0 ? mirror::write_whole(fd.get(), *blob, rel)
                                               : Status(mirror::errno_error("stat placeholder", rel));
    if (w) {
      const struct timespec ts[2] = {{0, UTIME_OMIT}, before.st_mtim};
      if (::futimens(fd.get(), ts) != 0) w = mirror::errno_error("restore mtime", rel);
    }
    fd.reset();
    l.lock();
    if (!w) {
      result = Error{EIO, 0, "lower: " + w.error().message};
      break;
    }
    cur = files_.find(rel);
    if (cur == files_.end()) {
      result = Error::from_errno(ENOENT, "lower: " + mirror::escape(rel) + " vanished while being written");
      break;
    }
    f = &cur->second;
    if (f->gen != gen) continue;  // our bytes went to the replaced (unlinked) inode
    f->materialized = true;
    pending_inos_.erase(f->ino);
    result = {};
    break;
  }
  if (auto cur = files_.find(rel); cur != files_.end() && cur->second.flight == flight) cur->second.flight.reset();
  finish(flight, result);
  return result;
}

}  // namespace antares::fs
