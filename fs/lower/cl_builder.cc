// ClBuilder: writes the CL layer from a changelist's file list (see cl_builder.h).
#include "fs/lower/cl_builder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <set>

#include "common/log.h"
#include "fs/lower/mirror_fs.h"

namespace antares::fs {

namespace {

Error remote_error(const Error& e, const std::string& what) {
  int code = e.err == ETIMEDOUT || e.err == ENOENT ? e.err : EIO;
  return Error{code, e.http_status, what + ": " + e.describe()};
}

// "/a/b" -> "a/b", or the reason it is unusable.
const char* rel_of(const std::string& path, std::string* rel) {
  if (path.size() < 2 || path[0] != '/') return "not absolute";
  *rel = path.substr(1);
  if (!mirror::split_rel(*rel)) return "bad component";
  return nullptr;
}

std::pair<std::string, std::string> split_parent(const std::string& rel) {
  auto slash = rel.rfind('/');
  if (slash == std::string::npos) return {"", rel};
  return {rel.substr(0, slash), rel.substr(slash + 1)};
}

}  // namespace

ClBuilder::ClBuilder(remote::MegaClient& mega, std::string cl_id, std::string cl_dir, size_t keep_max)
    : mega_(mega), cl_id_(std::move(cl_id)), cl_dir_(std::move(cl_dir)), keep_max_(keep_max) {}

namespace {
// The attic of replaced and removed files: a temp name, so the layer hides it
// and build() wipes it with the rest.
const std::string kAttic = std::string(mirror::kTempPrefix) + "attic";
}  // namespace

void ClBuilder::keep(int root_fd, int dirfd, const std::string& name) {
  if (keep_max_ == 0) return;
  struct stat st;
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) return;
  if (::faccessat(root_fd, kAttic.c_str(), F_OK, AT_SYMLINK_NOFOLLOW) != 0) {
    mirror::KeepDirMtime same_names(root_fd, &kept_mtimes_);  // a hidden name is no change of the root's names
    if (::mkdirat(root_fd, kAttic.c_str(), 0700) != 0 && errno != EEXIST) return;
  }
  mirror::Fd attic(::openat(root_fd, kAttic.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!attic.valid()) return;
  const std::string as = std::to_string(st.st_ino);
  ::unlinkat(attic.get(), as.c_str(), 0);  // an older object with this inode number is gone already
  if (::linkat(dirfd, name.c_str(), attic.get(), as.c_str(), 0) != 0) {
    log::warn("cl_keep_failed", {{"cl", cl_id_}, {"name", mirror::escape(name)}, {"error", std::to_string(errno)}});
    return;
  }
  std::erase(kept_, uint64_t(st.st_ino));
  kept_.push_back(uint64_t(st.st_ino));
  while (kept_.size() > keep_max_) {
    ::unlinkat(attic.get(), std::to_string(kept_.front()).c_str(), 0);
    kept_.pop_front();
  }
  stats_.kept = kept_.size();
}

void ClBuilder::set_listener(LayerChangeListener listener) {
  std::lock_guard l(listener_mu_);
  listener_ = std::move(listener);
}

LayerChangeListener ClBuilder::listener() {
  std::lock_guard l(listener_mu_);
  return listener_;
}

void ClBuilder::begin_change(LayerChangeListener& l, bool& begun) {
  if (begun) return;
  l = listener();
  begun = true;
  if (l.begin) l.begin();
}

void ClBuilder::end_change(LayerChangeListener& l, bool begun, const std::vector<LayerChange>& events) {
  if (begun && l) l.end(events);
}

Result<ClBuilder::List> ClBuilder::fetch_list() {
  auto files = mega_.cl_files(cl_id_);
  if (!files) return remote_error(files.error(), "cl " + cl_id_ + " files-list");
  List list;
  for (const auto& f : *files) {
    std::string rel;
    const char* why = rel_of(f.path, &rel);
    if (!why && list.count(rel)) why = "duplicate";  // the first one is served
    if (why) {
      ++stats_.dropped_paths;
      log::warn("cl_dropped_path", {{"cl", cl_id_}, {"path", mirror::escape(f.path)}, {"reason", why}});
      continue;
    }
    list[rel] = Want{f.action, f.action == remote::ClAction::deleted ? std::nullopt : f.sha};
  }
  return list;
}

Result<std::map<Oid, std::string>> ClBuilder::fetch_blobs(const List& list, const List* old) {
  std::map<Oid, std::string> blobs;
  for (const auto& [path, want] : list) {
    if (want.whiteout() || !want.sha || blobs.count(*want.sha)) continue;
    if (old) {
      auto o = old->find(path);
      if (o != old->end() && o->second.same_on_disk(want)) continue;
    }
    auto b = mega_.blob(*want.sha);
    if (!b) return remote_error(b.error(), "cl " + cl_id_ + " blob for /" + path);  // oid checked by the client
    blobs.emplace(*want.sha, std::move(*b));
  }
  return blobs;
}

Status ClBuilder::write_entry(int root_fd, const std::string& path, const Want& want,
                              const std::map<Oid, std::string>& blobs, bool replace, std::string* created_dir) {
  auto [parent, name] = split_parent(path);
  auto dir = mirror::open_dir(root_fd, parent, /*create=*/true, created_dir);
  if (!dir) return dir.error();
  const int dfd = dir->get();
  // A new version of a listed file is not a change of its directory's names.
  std::optional<mirror::KeepDirMtime> same_names;
  if (replace && ::faccessat(dfd, name.c_str(), F_OK, AT_SYMLINK_NOFOLLOW) == 0) same_names.emplace(dfd, &kept_mtimes_);
  std::string tmp;
  if (want.whiteout()) {
    if (!replace) {
      if (::mknodat(dfd, name.c_str(), S_IFCHR | 0000, makedev(0, 0)) != 0)
        return mirror::errno_error("mknod whiteout", path);
      ++stats_.files_written;
      return {};
    }
    auto t = mirror::create_temp_whiteout(dfd);
    if (!t) return t.error();
    tmp = std::move(*t);
  } else {
    auto it = blobs.find(*want.sha);
    if (it == blobs.end()) return Error::from_errno(EIO, "no blob fetched for " + path);
    if (!replace) {
      mirror::Fd fd(::openat(dfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
      if (!fd.valid()) return mirror::errno_error("create", path);
      if (::fchmod(fd.get(), 0644) != 0) return mirror::errno_error("chmod", path);
      if (auto s = mirror::write_whole(fd.get(), it->second, path); !s) return s;
      ++stats_.files_written;
      return {};
    }
    auto t = mirror::create_temp_file(dfd, 0644);
    if (!t) return t.error();
    if (auto s = mirror::write_whole(t->first.get(), it->second, path); !s) {
      ::unlinkat(dfd, t->second.c_str(), 0);
      return s;
    }
    tmp = std::move(t->second);
  }
  keep(root_fd, dfd, name);
  if (auto s = mirror::rename_into_place(dfd, tmp, name, path); !s) return s;
  ++stats_.files_written;
  return {};
}

Status ClBuilder::build() {
  std::vector<LayerChange> events;
  LayerChangeListener listener;
  bool begun = false;
  Status s;
  {
    std::lock_guard l(mu_);
    s = build_locked(events, listener, begun);
  }
  end_change(listener, begun, events);
  return s;
}

Status ClBuilder::build_locked(std::vector<LayerChange>& events, LayerChangeListener& listener, bool& begun) {
  // Everything remote first: a failure must leave the directory untouched.
  auto list = fetch_list();
  if (!list) return list.error();
  auto blobs = fetch_blobs(*list, nullptr);
  if (!blobs) return blobs.error();

  begin_change(listener, begun);
  mirror::Fd root(::open(cl_dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) return mirror::errno_error("open cl dir", cl_dir_);
  if (last_) {
    // Everything that was there is gone (new inodes even for the same bytes).
    auto names = mirror::list_dir(root.get());
    if (names)
      for (const auto& n : *names)
        if (!mirror::is_temp_name(n)) events.push_back({LayerChange::Kind::removed, n});
  }
  if (auto s = mirror::clear_owned_dir(root.get()); !s) return s;  // the owner marker stays
  kept_.clear();  // the attic went with the rest
  stats_.kept = 0;

  List written;
  std::set<std::string> top;
  for (const auto& [path, want] : *list) {
    std::string created;
    if (auto s = write_entry(root.get(), path, want, *blobs, /*replace=*/false, &created); !s) {
      log::warn("cl_write_failed", {{"cl", cl_id_}, {"path", path}, {"error", s.error().describe()}});
      continue;
    }
    written.emplace(path, want);
    top.insert(path.substr(0, path.find('/')));
  }
  if (last_)
    for (const auto& t : top) events.push_back({LayerChange::Kind::added, t});
  last_ = std::move(written);
  ++stats_.builds;
  return {};
}

Result<bool> ClBuilder::resync() {
  std::vector<LayerChange> events;
  LayerChangeListener listener;
  bool begun = false;
  Result<bool> result = false;
  {
    std::lock_guard l(mu_);
    if (!last_) {
      Status s = build_locked(events, listener, begun);
      result = s ? Result<bool>(true) : Result<bool>(s.error());
    } else {
      result = [&]() -> Result<bool> {
        auto list = fetch_list();
        if (!list) return list.error();
        bool same = list->size() == last_->size();
        for (auto a = list->begin(), b = last_->begin(); same && a != list->end(); ++a, ++b)
          same = a->first == b->first && a->second.same_list_entry(b->second);
        if (same) return false;
        auto blobs = fetch_blobs(*list, &*last_);
        if (!blobs) return blobs.error();

        begin_change(listener, begun);
        mirror::Fd root(::open(cl_dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (!root.valid()) return mirror::errno_error("open cl dir", cl_dir_);
        List now;
        for (const auto& [path, want] : *list) {
          auto old = last_->find(path);
          const bool existed = old != last_->end();
          if (existed && old->second.same_on_disk(want)) {
            now.emplace(path, want);
            continue;
          }
          std::string created;
          if (auto s = write_entry(root.get(), path, want, *blobs, /*replace=*/true, &created); !s) {
            log::warn("cl_write_failed", {{"cl", cl_id_}, {"path", path}, {"error", s.error().describe()}});
            if (existed) now.emplace(path, old->second);  // unknown state: retried next resync
            continue;
          }
          if (!created.empty()) events.push_back({LayerChange::Kind::added, created});
          events.push_back({existed ? LayerChange::Kind::replaced : LayerChange::Kind::added, path});
          now.emplace(path, want);
        }
        for (const auto& [path, want] : *last_) {
          if (list->count(path)) continue;
          auto [parent, name] = split_parent(path);
          auto dir = mirror::open_dir(root.get(), parent);
          if (dir) keep(root.get(), dir->get(), name);
          if (dir && ::unlinkat(dir->get(), name.c_str(), 0) != 0 && errno != ENOENT)
            log::warn("cl_remove_failed", {{"cl", cl_id_}, {"path", path}, {"error", std::to_string(errno)}});
          events.push_back({LayerChange::Kind::removed, path});
        }
        last_ = std::move(now);
        ++stats_.resyncs;
        return true;
      }();
    }
  }
  end_change(listener, begun, events);
  return result;
}

}  // namespace antares::fs
