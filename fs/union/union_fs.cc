// The union's rules (see union_fs.h): lookups from cached children, merged
// readdir, copy-up, whiteouts and opaque directories, each handle use through
// the current strategy.
#include "fs/union/union_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "common/log.h"

namespace antares::fs {

namespace {

constexpr const char* kOpaqueXattr = "trusted.overlay.opaque";
constexpr const char* kCopyUpPrefix = ".antares-copyup-";

Error sys_error(std::string what) {
  int e = errno ? errno : EIO;
  return Error::from_errno(e, what + ": " + std::strerror(e));
}

bool is_whiteout(const struct statx& stx) {
  return S_ISCHR(stx.stx_mode) && stx.stx_rdev_major == 0 && stx.stx_rdev_minor == 0;
}

struct stat to_stat(const struct statx& x) {
  struct stat st {};
  st.st_dev = makedev(x.stx_dev_major, x.stx_dev_minor);
  st.st_ino = x.stx_ino;
  st.st_mode = x.stx_mode;
  st.st_nlink = x.stx_nlink;
  st.st_uid = x.stx_uid;
  st.st_gid = x.stx_gid;
  st.st_rdev = makedev(x.stx_rdev_major, x.stx_rdev_minor);
  st.st_size = off_t(x.stx_size);
  st.st_blksize = blksize_t(x.stx_blksize);
  st.st_blocks = blkcnt_t(x.stx_blocks);
  st.st_atim = {x.stx_atime.tv_sec, x.stx_atime.tv_nsec};
  st.st_mtim = {x.stx_mtime.tv_sec, x.stx_mtime.tv_nsec};
  st.st_ctim = {x.stx_ctime.tv_sec, x.stx_ctime.tv_nsec};
  return st;
}

struct RawDirent {
  std::string name;
  unsigned char type;
};

// Every entry of an open directory but "." and "..".
Result<std::vector<RawDirent>> read_dir(int fd) {
  std::vector<RawDirent> out;
  alignas(8) char buf[32768];
  if (::lseek(fd, 0, SEEK_SET) < 0) return sys_error("lseek dir");
  for (;;) {
    long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (n < 0) return sys_error("getdents64");
    if (n == 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<struct dirent64*>(buf + off);
      off += d->d_reclen;
      if (std::strcmp(d->d_name, ".") == 0 || std::strcmp(d->d_name, "..") == 0) continue;
      out.push_back({d->d_name, d->d_type});
    }
  }
  return out;
}

std::string proc_fd(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

std::pair<std::string, std::string> split_parent(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return {"", path};
  return {path.substr(0, slash), path.substr(slash + 1)};
}

bool internal_name(const std::string& name) { return name.rfind(kCopyUpPrefix, 0) == 0; }

Status copy_xattrs(int src_fd, int dst_fd) {
  std::string src = proc_fd(src_fd), dst = proc_fd(dst_fd);
  ssize_t n = ::listxattr(src.c_str(), nullptr, 0);
  if (n <= 0) return {};
  std::string names(size_t(n), '\0');
  n = ::listxattr(src.c_str(), names.data(), names.size());
  if (n < 0) return {};
  for (size_t i = 0; i < size_t(n);) {
    std::string name(names.c_str() + i);
    i += name.size() + 1;
    if (name.rfind("trusted.overlay.", 0) == 0) continue;
    ssize_t len = ::getxattr(src.c_str(), name.c_str(), nullptr, 0);
    if (len < 0) continue;
    std::string value(size_t(len), '\0');
    len = ::getxattr(src.c_str(), name.c_str(), value.data(), value.size());
    if (len < 0) continue;
    if (::setxattr(dst.c_str(), name.c_str(), value.data(), size_t(len), 0) != 0 && errno != ENOTSUP)
      return sys_error("copy-up xattr " + name);
  }
  return {};
}

}  // namespace

const char* op_name(Op op) {
  static const char* names[] = {"lookup", "getattr", "setattr", "open",     "opendir",
                                "readdir", "access", "xattr",   "readlink", "modify"};
  return names[int(op)];
}

struct UnionFs::Node {
  NodeId id{0};
  uint64_t ino = 0;
  std::string path;  // "" for the root
  bool is_dir = false;
  mode_t type = 0;
  std::vector<std::optional<LayerRef>> refs;  // per layer; non-directories keep only their top one
  bool opaque = false;
  bool loaded = false;
  std::map<std::string, NodePtr> children;
  struct DirStamp {
    uint64_t ino;
    struct statx_timestamp mtime;
  };
  std::vector<std::optional<DirStamp>> stamps;  // each layer dir's inode and mtime at load
  uint64_t nlookup = 0;
  bool retired = false;              // its object was replaced or removed (fixes only)
  std::vector<std::string> aliases;  // hard links: the node's names besides path

  int top() const {
    for (size_t i = 0; i < refs.size(); ++i)
      if (refs[i]) return int(i);
    return -1;
  }
};

UnionFs::UnionFs(std::vector<std::unique_ptr<Layer>> layers, StrategySlot& strategy)
    : layers_(std::move(layers)), strategy_(strategy) {}

UnionFs::~UnionFs() = default;

Status UnionFs::init() {
  std::lock_guard lk(mu_);
  root_ = std::make_shared<Node>();
  root_->id = kRootNode;
  root_->ino = 1;
  root_->is_dir = true;
  root_->type = S_IFDIR;
  root_->refs.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto ref = layers_[i]->resolve("");
    if (!ref.ok()) return ref.error();
    root_->refs[i] = std::move(*ref);
  }
  root_->nlookup = 1;
  nodes_[1] = root_;
  path_ino_[""] = 1;
  stats_.nodes = 1;
  return {};
}

uint64_t UnionFs::changes_completed() const {
  uint64_t n = 0;
  for (auto& l : layers_) n += l->change_epoch();
  return n;
}

bool UnionFs::should_retry_after_change(int err, uint64_t changes_before) {
  if (err != ESTALE || !strategy_.get().invalidates()) return false;
  bool raced = changes_completed() != changes_before;
  for (auto& l : layers_) raced |= l->changing() > 0;
  if (!raced) return false;
  // A change was being applied while we used a handle: its invalidation is
  // on the way; wait for it (no lock held) and use the re-pointed handle.
  for (auto& l : layers_) l->wait_quiet(std::chrono::seconds(30));
  stats_.change_races++;
  return true;
}

Result<UnionFs::NodePtr> UnionFs::walk_locked(const std::string& path, bool load) {
  NodePtr dir = root_;
  for (size_t pos = 0; pos < path.size();) {
    size_t slash = path.find('/', pos);
    std::string comp = path.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    pos = slash == std::string::npos ? path.size() : slash + 1;
    if (load) {
      auto c = child_locked(dir, comp);
      if (!c.ok()) return c.error();
      dir = *c;
    } else {
      // Children created through the mount are cached even before a load.
      auto it = dir->children.find(comp);
      if (it == dir->children.end()) return Error::from_errno(ENOENT, path);
      dir = it->second;
    }
  }
  return dir;
}

Result<UniqueFd> UnionFs::open_top_locked(NodeId node, int flags, Op op, NodePtr* out) {
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  int top = n->top();
  if (top < 0) return Error::from_errno(ENOENT, n->path);
  if (out) *out = n;
  return open_ref(n, size_t(top), flags, op);
}

UnionFs::NodePtr UnionFs::find(NodeId id) const {
  auto it = nodes_.find(raw(id));
  return it == nodes_.end() ? nullptr : it->second;
}

uint64_t UnionFs::ino_for(const std::string& path) {
  auto [it, inserted] = path_ino_.try_emplace(path, next_ino_);
  if (inserted) ++next_ino_;
  return it->second;
}

UnionFs::NodePtr UnionFs::new_node(const std::string& path, bool is_dir) {
  auto n = std::make_shared<Node>();
  n->id = NodeId{next_node_++};
  n->ino = ino_for(path);
  n->path = path;
  n->is_dir = is_dir;
  n->refs.resize(layers_.size());
  return n;
}

void UnionFs::log_estale(const NodePtr& n, size_t layer, Op op, const std::string& path) {
  if (layer < size_t(UnionStats::kMaxLayers)) stats_.estale[layer][int(op)]++;
  log::warn("estale", {{"layer", layers_[layer]->name()},
                       {"op", op_name(op)},
                       {"path", path.empty() ? "/" : path},
                       {"node", std::to_string(raw(n->id))},
                       {"strategy", std::string(strategy_.get().name())}});
}

Result<UniqueFd> UnionFs::open_ref(const NodePtr& n, size_t layer, int flags, Op op) {
  if (layer >= n->refs.size() || !n->refs[layer]) return Error::from_errno(ENOENT, "no such layer object");
  const Identity before = n->refs[layer]->id;
  auto fd = strategy_.get().open(*layers_[layer], *n->refs[layer], flags);
  if (fd.err() == ESTALE) on_estale(n, layer, op);
  // Only directories are re-pointed (see the class comment).
  if (n->refs[layer] && !(n->refs[layer]->id == before) && identity_observer_) identity_observer_(n->id);
  return fd;
}

void UnionFs::on_estale(const NodePtr& n, size_t layer, Op op) {
  const HandleStrategy& s = strategy_.get();
  if (s.revalidates() || s.invalidates()) {
    retire(n);
    return;
  }
  log_estale(n, layer, op, n->path);
}

void UnionFs::retire(const NodePtr& n) {
  if (n == root_) return;
  if (!n->retired) {
    n->retired = true;
    stats_.retired_nodes++;
    log::debug("node_retired", {{"path", n->path.empty() ? "/" : n->path}, {"node", std::to_string(raw(n->id))}});
  }
  // The next lookup of each of its names loads afresh and finds the new object.
  std::vector<std::string> names = n->aliases;
  names.push_back(n->path);
  for (const auto& name : names) {
    auto [parent_path, leaf] = split_parent(name);
    auto dir = walk_locked(parent_path, false);
    if (!dir.ok()) continue;
    auto it = (*dir)->children.find(leaf);
    if (it != (*dir)->children.end() && it->second == n) (*dir)->loaded = false;
  }
}

Status UnionFs::run_dir_hooks(NodeId node) {
  std::vector<std::pair<size_t, std::string>> todo;
  {
    std::lock_guard lk(mu_);
    auto n = find(node);
    if (!n || !n->is_dir) return {};
    for (size_t i = 0; i < n->refs.size(); ++i)
      if (n->refs[i]) todo.emplace_back(i, n->refs[i]->path);
  }
  for (auto& [i, path] : todo) {
    // The owner keeps serving what it has when a refresh fails; an error here
    // means it has nothing for this directory (never fetched): the operation
    // that needed it fails with that error (EIO, ETIMEDOUT), nothing is cached.
    Status st = layers_[i]->hooks().before_dir(path);
    if (!st.ok() && st.err() != ENOENT) {
      log::warn("layer_dir_unavailable", {{"layer", layers_[i]->name()}, {"path", path}, {"error", st.error().describe()}});
      return st;
    }
  }
  return {};
}

bool UnionFs::children_stale(const NodePtr& dir) {
  for (size_t i = 0; i < dir->refs.size(); ++i) {
    if (!dir->refs[i]) continue;
    auto fd = strategy_.get().open(*layers_[i], *dir->refs[i], O_PATH | O_DIRECTORY);
    if (!fd.ok()) return true;
    auto stx = statx_at(fd->get(), "");
    if (!stx.ok()) return true;
    if (i >= dir->stamps.size() || !dir->stamps[i]) return true;
    const auto& was = *dir->stamps[i];
    if (stx->stx_mtime.tv_sec != was.mtime.tv_sec || stx->stx_mtime.tv_nsec != was.mtime.tv_nsec ||
        stx->stx_ino != was.ino)
      return true;
  }
  return false;
}

Status UnionFs::load_children(const NodePtr& dir) {
  std::map<std::string, NodePtr> old;
  old.swap(dir->children);
  const bool reload = dir->loaded;
  dir->loaded = false;
  dir->stamps.assign(layers_.size(), std::nullopt);
  // name -> (node or nullptr when whited out/shadowed, still merging lower dirs)
  std::map<std::string, std::pair<NodePtr, bool>> seen;
  bool any_layer = false;
  Error first_error = Error::from_errno(ENOENT, "directory " + dir->path + " is in no layer");
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!dir->refs[i]) continue;
    // The stat probe: ESTALE here means "not in this layer", as upstream.
    auto fd = strategy_.get().open(*layers_[i], *dir->refs[i], O_RDONLY | O_DIRECTORY);
    if (!fd.ok()) {
      if (fd.err() != ESTALE && fd.err() != ENOENT) first_error = fd.error();
      continue;
    }
    any_layer = true;
    if (auto stx = statx_at(fd->get(), ""); stx.ok()) {
      dir->stamps[i] = Node::DirStamp{stx->stx_ino, stx->stx_mtime};
    }
    bool opaque = false;
    if (layers_[i]->writable()) {
      if (upper_dir_observer_) upper_dir_observer_(dir->refs[i]->path);
      char v[4];
      ssize_t len = ::fgetxattr(fd->get(), kOpaqueXattr, v, sizeof v);
      opaque = len == 1 && v[0] == 'y';
      dir->opaque = opaque;
    }
    auto entries = read_dir(fd->get());
    if (!entries.ok()) return entries.error();
    for (auto& e : *entries) {
      if (internal_name(e.name) || layers_[i]->hooks().hidden(e.name)) continue;
      auto it = seen.find(e.name);
      if (it != seen.end() && (!it->second.first || !it->second.second)) continue;
      auto stx = statx_at(fd->get(), e.name);
      if (!stx.ok()) continue;  // raced with a removal
      if (it != seen.end()) {
        // Already seen as a directory above: merge this layer's directory, or
        // stop merging at a non-directory (a whiteout or a file).
        if (S_ISDIR(stx->stx_mode)) {
          auto ref = layers_[i]->resolve_at(fd->get(), dir->path, e.name);
          if (ref.ok() && !it->second.first->refs[i]) it->second.first->refs[i] = std::move(*ref);
        } else {
          it->second.second = false;
        }
        continue;
      }
      if (is_whiteout(*stx)) {
        seen[e.name] = {nullptr, false};
        continue;
      }
      auto ref = layers_[i]->resolve_at(fd->get(), dir->path, e.name);
      if (!ref.ok()) continue;
      const bool is_dir = S_ISDIR(stx->stx_mode);
      const std::string path = join_path(dir->path, e.name);
      NodePtr node;
      if (auto o = old.find(e.name); o != old.end()) {
        const NodePtr& prev = o->second;
        const int top = prev->top();
        // Upstream keeps the cached child whatever happened behind it; the
        // fixes give a replaced object a new node id (one node, one object).
        bool same = top == int(i) && prev->is_dir == is_dir && prev->refs[i]->id == ref->id && !prev->retired;
        const HandleStrategy& s = strategy_.get();
        if (same || !(s.revalidates() || s.invalidates())) node = prev;
      }
      // Every name of an upper hard link is the same node.
      if (!node && i == 0 && !is_dir && stx->stx_nlink > 1)
        if (auto l = upper_links_.find(ref->id); l != upper_links_.end())
          if (NodePtr linked = l->second.lock(); linked && !linked->retired) {
            node = linked;
            if (node->path != path) add_name(node, path);
          }
      if (node) {
        for (auto& r : node->refs) r.reset();  // lower layers re-join below as they are read
        ref->path = node->path;                // a hard link's path may be another name
        node->refs[i] = std::move(*ref);
      } else {
        node = new_node(path, is_dir);
        node->refs[i] = std::move(*ref);
        if (reload) stats_.renewed_nodes++;
      }
      if (i == 0 && !is_dir && stx->stx_nlink > 1) upper_links_[node->refs[0]->id] = node;
      node->type = stx->stx_mode & S_IFMT;
      node->is_dir = is_dir;
      seen[e.name] = {node, is_dir};
    }
    if (opaque) break;
  }
  if (!any_layer) return first_error;
  for (auto& [name, v] : seen)
    if (v.first) dir->children.emplace(name, v.first);
  // Merged directories may have lost a layer: drop refs of layers no longer seen.
  for (auto& [name, child] : dir->children) {
    if (!child->is_dir) continue;
    for (size_t i = 0; i < layers_.size(); ++i)
      if (child->refs[i] && !dir->refs[i]) child->refs[i].reset();
  }
  dir->loaded = true;
  (reload ? stats_.dir_reloads : stats_.dir_loads)++;
  return {};
}

Status UnionFs::ensure_children(const NodePtr& dir) {
  if (dir->loaded && !(strategy_.get().revalidates() && children_stale(dir))) return {};
  return load_children(dir);
}

Result<UnionFs::NodePtr> UnionFs::child_locked(const NodePtr& parent, const std::string& name) {
  if (!parent->is_dir) return Error::from_errno(ENOTDIR, parent->path);
  if (name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, name);
  if (auto st = ensure_children(parent); !st.ok()) return st.error();
  auto it = parent->children.find(name);
  if (it == parent->children.end()) return Error::from_errno(ENOENT, join_path(parent->path, name));
  return it->second;
}

void UnionFs::present(struct stat& st, const NodePtr& n, bool read_only_layer) const {
  st.st_ino = n->ino;
  if (read_only_layer) {
    // A read-only layer's ctime and directory size record our own bookkeeping
    // (a placeholder filled in, a listing written out), not a change of the
    // object: tools that compare them before and after reading (tar, rsync)
    // must see one version's attributes throughout.
    st.st_ctim = st.st_mtim;
    if (S_ISDIR(st.st_mode)) st.st_size = 4096;
  }
}

int UnionFs::open_fd(const NodePtr& n, bool* read_only_layer) const {
  auto it = open_files_.find(raw(n->id));
  if (it == open_files_.end() || it->second.empty()) return -1;
  *read_only_layer = it->second.front().second;
  return it->second.front().first;
}

void UnionFs::track_open(NodeId node, int fd, const OpenDetails& d) {
  std::lock_guard lk(mu_);
  open_files_[raw(node)].emplace_back(fd, d.read_only_layer);
}

void UnionFs::track_close(NodeId node, int fd) {
  std::lock_guard lk(mu_);
  auto it = open_files_.find(raw(node));
  if (it == open_files_.end()) return;
  auto& v = it->second;
  v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& f) { return f.first == fd; }), v.end());
  if (v.empty()) open_files_.erase(it);
}

Result<struct stat> UnionFs::stat_locked(const NodePtr& n, Op op) {
  int top = n->top();
  Error why = Error::from_errno(ENOENT, n->path);
  if (top >= 0 && !n->retired) {
    auto fd = open_ref(n, size_t(top), O_PATH, op);
    if (fd.ok()) {
      auto stx = statx_at(fd->get(), "");
      if (!stx.ok()) return stx.error();
      struct stat st = to_stat(*stx);
      present(st, n, !layers_[size_t(top)]->writable());
      return finish_stat(st, n);
    }
    if (fd.err() != ESTALE) return fd.error();
    why = fd.error();
  } else if (top >= 0) {
    why = Error::from_errno(ESTALE, n->path + ": replaced");
  }
  // Names gone or object replaced: an open file is what still reaches it.
  bool ro = false;
  if (int ofd = open_fd(n, &ro); ofd >= 0) {
    auto stx = statx_at(ofd, "");
    if (!stx.ok()) return stx.error();
    struct stat st = to_stat(*stx);
    present(st, n, ro);
    return st;
  }
  return why;
}

struct stat UnionFs::finish_stat(struct stat st, const NodePtr& n) {
  if (n->is_dir && n->loaded) {
    nlink_t links = 2;
    for (auto& [name, c] : n->children) links += c->is_dir;
    st.st_nlink = links;
  } else if (n->is_dir) {
    int layers = 0;
    for (auto& r : n->refs) layers += r.has_value();
    // A merged directory not read yet: reading it here would bypass the lower
    // layer's refresh. 1 means "unknown" to find(1), as on overlayfs.
    if (layers > 1) st.st_nlink = 1;
  }
  return st;
}

Result<Entry> UnionFs::entry_for(const NodePtr& n, Op op) {
  auto st = stat_locked(n, op);
  if (!st.ok()) return st.error();
  if (n->nlookup++ == 0) nodes_[raw(n->id)] = n;
  stats_.nodes = nodes_.size();
  return Entry{n->id, *st};
}

Result<Entry> UnionFs::lookup(NodeId parent, const std::string& name) {
  return retrying([&] { return lookup_once(parent, name); });
}

Result<Entry> UnionFs::lookup_once(NodeId parent, const std::string& name) {
  if (auto st = run_dir_hooks(parent); !st.ok()) return st.error();
  std::lock_guard lk(mu_);
  auto p = find(parent);
  if (!p) return Error::from_errno(ESTALE, "unknown node");
  auto c = child_locked(p, name);
  if (!c.ok()) return c.error();
  return entry_for(*c, Op::lookup);
}

void UnionFs::forget(NodeId node, uint64_t nlookup) {
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n || n == root_) return;
  n->nlookup = nlookup >= n->nlookup ? 0 : n->nlookup - nlookup;
  if (n->nlookup == 0) nodes_.erase(raw(node));
  stats_.nodes = nodes_.size();
}

Result<struct stat> UnionFs::getattr(NodeId node) {
  return retrying([&] { return getattr_once(node); });
}

Result<struct stat> UnionFs::getattr_once(NodeId node) {
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  return stat_locked(n, Op::getattr);
}

Result<struct stat> UnionFs::fgetattr(NodeId node, int fd, const OpenDetails& d) {
  auto stx = statx_at(fd, "");
  if (!stx.ok()) return stx.error();
  struct stat st = to_stat(*stx);
  std::lock_guard lk(mu_);
  if (auto n = find(node)) present(st, n, d.read_only_layer);
  return st;
}

Status UnionFs::access(NodeId node, int mask) {
  return retrying([&] { return access_once(node, mask); });
}

Status UnionFs::access_once(NodeId node, int /*mask*/) {
  if (auto st = run_dir_hooks(node); !st.ok()) return st;
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  // Permissions are checked by the kernel (default_permissions); this is the
  // existence check, and a handle use like upstream's.
  auto st = stat_locked(n, Op::access);
  if (!st.ok()) return st.error();
  return {};
}

Result<std::string> UnionFs::readlink(NodeId node) {
  return retrying([&] { return readlink_once(node); });
}

Result<std::string> UnionFs::readlink_once(NodeId node) {
  std::lock_guard lk(mu_);
  NodePtr n;
  auto fd = open_top_locked(node, O_PATH, Op::readlink, &n);
  if (!fd.ok()) return fd.error();
  char buf[PATH_MAX];
  ssize_t len = ::readlinkat(fd->get(), "", buf, sizeof buf);
  if (len < 0) return sys_error("readlink " + n->path);
  return std::string(buf, size_t(len));
}

// --- copy-up -------------------------------------------------------------

Result<UniqueFd> UnionFs::upper_dir(const NodePtr& dir) {
  if (!dir->refs[0]) {
    auto st = copy_up(dir);
    if (!st.ok()) return st.error();
  }
  if (upper_dir_observer_) upper_dir_observer_(dir->refs[0]->path);
  return open_ref(dir, 0, O_PATH | O_DIRECTORY, Op::modify);
}

Status UnionFs::prefetch_for_copy_up(const NodePtr& n) {
  std::string path;
  size_t layer = 0;
  {
    std::lock_guard lk(mu_);
    if (!n || n->is_dir || n->refs[0]) return {};
    int top = n->top();
    if (top <= 0) return {};
    layer = size_t(top);
    path = n->refs[layer]->path;
  }
  // A network round trip: no lock held.
  return layers_[layer]->hooks().before_open(path);
}

template <class F>
auto UnionFs::with_content(NodeId node, F&& op) {
  using R = decltype(op());
  NodePtr n;
  {
    std::lock_guard lk(mu_);
    n = find(node);
  }
  if (auto st = prefetch_for_copy_up(n); !st.ok()) return R(st.error());
  return op();
}

template <class F>
auto UnionFs::with_content(NodeId parent, const std::string& name, F&& op) {
  using R = decltype(op());
  NodePtr n;
  {
    std::lock_guard lk(mu_);
    if (auto p = find(parent))
      if (auto c = child_locked(p, name); c.ok()) n = *c;
  }
  if (auto st = prefetch_for_copy_up(n); !st.ok()) return R(st.error());
  return op();
}

Status UnionFs::copy_up(const NodePtr& n) {
  if (n->refs[0]) return {};
  int top = n->top();
  if (top < 0) return Error::from_errno(ENOENT, n->path);
  auto [parent_path, name] = split_parent(n->path);
  // The parent chain first: every ancestor of a cached node is reachable from the root.
  auto walked = walk_locked(parent_path, true);
  if (!walked.ok()) return walked.error();
  NodePtr parent = *walked;
  if (!parent->refs[0]) {
    auto st = copy_up(parent);
    if (!st.ok()) return st;
  }
  auto updir = open_ref(parent, 0, O_PATH | O_DIRECTORY, Op::modify);
  if (!updir.ok()) return updir.error();
  auto src = open_ref(n, size_t(top), O_PATH, Op::modify);
  if (!src.ok()) return src.error();
  auto stx = statx_at(src->get(), "");
  if (!stx.ok()) return stx.error();
  const mode_t mode = stx->stx_mode;
  const int ud = updir->get();
  if (S_ISDIR(mode)) {
    if (::mkdirat(ud, name.c_str(), mode & 07777) != 0 && errno != EEXIST) return sys_error("copy-up mkdir " + n->path);
  } else if (S_ISLNK(mode)) {
    char target[PATH_MAX];
    ssize_t len = ::readlinkat(src->get(), "", target, sizeof target - 1);
    if (len < 0) return sys_error("copy-up readlink " + n->path);
    target[len] = '\0';
    if (::symlinkat(target, ud, name.c_str()) != 0) return sys_error("copy-up symlink " + n->path);
  } else if (S_ISREG(mode)) {
    // The content was fetched before the lock was taken (with_content); an
    // object still waiting for it was superseded meanwhile.
    auto in = open_ref(n, size_t(top), O_RDONLY, Op::modify);
    if (!in.ok()) return in.error();
    if (!layers_[size_t(top)]->hooks().content_ready(n->refs[size_t(top)]->id.ino)) {
      on_estale(n, size_t(top), Op::modify);
      return Error::from_errno(ESTALE, "copy-up " + n->path + ": superseded before its content arrived");
    }
    std::string tmp = kCopyUpPrefix + std::to_string(raw(n->id));
    ::unlinkat(ud, tmp.c_str(), 0);
    int out = ::openat(ud, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (out < 0) return sys_error("copy-up create " + n->path);
    UniqueFd outfd(out);
    for (;;) {
      ssize_t c = ::copy_file_range(in->get(), nullptr, out, nullptr, 1 << 20, 0);
      if (c < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS)) {
        char buf[65536];
        c = ::read(in->get(), buf, sizeof buf);
        if (c > 0 && ::write(out, buf, size_t(c)) != c) c = -1;
      }
      if (c < 0) {
        ::unlinkat(ud, tmp.c_str(), 0);
        return sys_error("copy-up data " + n->path);
      }
      if (c == 0) break;
    }
    (void)copy_xattrs(in->get(), out);
    ::fchmod(out, mode & 07777);
    ::fchown(out, stx->stx_uid, stx->stx_gid);
    struct timespec ts[2] = {{stx->stx_atime.tv_sec, stx->stx_atime.tv_nsec},
                             {stx->stx_mtime.tv_sec, stx->stx_mtime.tv_nsec}};
    ::futimens(out, ts);
    if (::renameat(ud, tmp.c_str(), ud, name.c_str()) != 0) {
      ::unlinkat(ud, tmp.c_str(), 0);
      return sys_error("copy-up rename " + n->path);
    }
  } else {
    dev_t rdev = makedev(stx->stx_rdev_major, stx->stx_rdev_minor);
    if (::mknodat(ud, name.c_str(), mode, rdev) != 0) return sys_error("copy-up mknod " + n->path);
  }
  if (!S_ISREG(mode)) {
    ::fchownat(ud, name.c_str(), stx->stx_uid, stx->stx_gid, AT_SYMLINK_NOFOLLOW);
    if (!S_ISLNK(mode)) {
      ::fchmodat(ud, name.c_str(), mode & 07777, 0);
      struct timespec ts[2] = {{stx->stx_atime.tv_sec, stx->stx_atime.tv_nsec},
                               {stx->stx_mtime.tv_sec, stx->stx_mtime.tv_nsec}};
      ::utimensat(ud, name.c_str(), ts, AT_SYMLINK_NOFOLLOW);
    }
  }
  auto ref = layers_[0]->resolve_at(ud, parent->path, name);
  if (!ref.ok()) return ref.error();
  n->refs[0] = std::move(*ref);
  if (!n->is_dir)
    for (size_t i = 1; i < n->refs.size(); ++i) n->refs[i].reset();
  // A copied-up directory joins the merge: its children must be re-read.
  if (n->is_dir) n->loaded = false;
  stats_.copy_ups++;
  return {};
}

// --- whiteouts -----------------------------------------------------------

Result<bool> UnionFs::lower_has(const NodePtr& parent, const std::string& name) {
  if (parent->opaque) return false;
  for (size_t i = 1; i < layers_.size(); ++i) {
    if (!parent->refs[i]) continue;
    // ENOENT: that layer's directory or name is gone; any other failure is
    // an answer we do not have, and the caller must not guess "absent".
    auto fd = open_ref(parent, i, O_PATH | O_DIRECTORY, Op::modify);
    if (!fd.ok()) {
      if (fd.err() == ENOENT) continue;
      return fd.error();
    }
    auto stx = statx_at(fd->get(), name);
    if (!stx.ok()) {
      if (stx.err() == ENOENT) continue;
      return stx.error();
    }
    return !is_whiteout(*stx);  // a whiteout in a middle layer hides everything below
  }
  return false;
}

Status UnionFs::whiteout(const NodePtr& parent, const std::string& name) {
  auto ud = upper_dir(parent);
  if (!ud.ok()) return ud.error();
  if (::mknodat(ud->get(), name.c_str(), S_IFCHR | 0000, makedev(0, 0)) != 0) return sys_error("whiteout " + name);
  stats_.whiteouts++;
  return {};
}

Status UnionFs::clear_upper_name(int ud, const std::string& name, bool* was_whiteout) {
  *was_whiteout = false;
  auto stx = statx_at(ud, name);
  if (!stx.ok()) return {};
  if (!is_whiteout(*stx)) return Error::from_errno(EEXIST, name);
  if (::unlinkat(ud, name.c_str(), 0) != 0) return sys_error("remove whiteout " + name);
  *was_whiteout = true;
  return {};
}

// --- creating ------------------------------------------------------------

Status UnionFs::own_new(int ud, const std::string& name, mode_t mode, const Caller& c) {
  // The object was made by the daemon: its owner is the daemon's and its mode
  // went through the daemon's umask. Give it the caller's (or, in a set-gid
  // directory, that directory's group), then the exact mode: chown clears
  // set-id bits, so the mode comes last.
  auto dir = statx_at(ud, "");
  if (!dir.ok()) return dir.error();
  const bool sgid_dir = dir->stx_mode & S_ISGID;
  const gid_t gid = sgid_dir ? dir->stx_gid : c.gid;
  if (::fchownat(ud, name.c_str(), c.uid, gid, AT_SYMLINK_NOFOLLOW) != 0) return sys_error("chown " + name);
  if (S_ISLNK(mode)) return {};
  mode_t perm = mode & 07777;
  if (S_ISDIR(mode) && sgid_dir) perm |= S_ISGID;
  // As the kernel does for a local filesystem: a caller outside the group
  // (and without CAP_FSETID) cannot make a group-executable set-gid file.
  if (!S_ISDIR(mode) && (perm & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP) && c.uid != 0 && gid != c.gid &&
      !(c.in_group && c.in_group(gid)))
    perm &= ~mode_t(S_ISGID);
  if (::fchmodat(ud, name.c_str(), perm, 0) != 0) return sys_error("chmod " + name);
  return {};
}

Result<Entry> UnionFs::finish_create(const NodePtr& parent, const std::string& name, int ud, mode_t mode,
                                     const Caller& c, bool opaque) {
  if (auto st = own_new(ud, name, mode, c); !st.ok()) {
    ::unlinkat(ud, name.c_str(), S_ISDIR(mode) ? AT_REMOVEDIR : 0);
    return st.error();
  }
  if (opaque) {
    int dfd = ::openat(ud, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd >= 0) {
      UniqueFd guard(dfd);
      if (::fsetxattr(dfd, kOpaqueXattr, "y", 1, 0) != 0) return sys_error("set opaque " + name);
    }
  }
  auto ref = layers_[0]->resolve_at(ud, parent->path, name);
  if (!ref.ok()) return ref.error();
  const bool is_dir = S_ISDIR(ref->type);
  auto node = new_node(join_path(parent->path, name), is_dir);
  node->type = ref->type;
  node->refs[0] = std::move(*ref);
  node->opaque = opaque;
  if (is_dir && upper_dir_observer_) upper_dir_observer_(node->path);
  parent->children[name] = node;
  return entry_for(node, Op::modify);
}

#define ANTARES_CREATE_PROLOGUE                                                   \
  std::lock_guard lk(mu_);                                                        \
  auto p = find(parent);                                                          \
  if (!p) return Error::from_errno(ESTALE, "unknown node");                       \
  if (name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, name);       \
  if (auto ex = child_locked(p, name); ex.ok())                       \
    return Error::from_errno(EEXIST, name);                                       \
  else if (ex.err() != ENOENT)                                                    \
    return ex.error();                                                            \
  auto ud = upper_dir(p);                                                         \
  if (!ud.ok()) return ud.error();                                                \
  bool had_whiteout = false;                                                      \
  if (auto cl = clear_upper_name(ud->get(), name, &had_whiteout); !cl.ok()) return cl.error();

Result<Entry> UnionFs::mknod(NodeId parent, const std::string& name, mode_t mode, dev_t rdev, const Caller& c) {
  ANTARES_CREATE_PROLOGUE
  mode = (mode & S_IFMT) | (mode & 07777 & ~c.umask);
  if (::mknodat(ud->get(), name.c_str(), mode, rdev) != 0) return sys_error("mknod " + name);
  return finish_create(p, name, ud->get(), mode, c, false);
}

Result<Entry> UnionFs::mkdir(NodeId parent, const std::string& name, mode_t mode, const Caller& c) {
  ANTARES_CREATE_PROLOGUE
  mode = S_IFDIR | (mode & 07777 & ~c.umask);
  if (::mkdirat(ud->get(), name.c_str(), mode & 07777) != 0) return sys_error("mkdir " + name);
  // A directory created where a whiteout hid a lower one must not merge with it.
  return finish_create(p, name, ud->get(), mode, c, had_whiteout);
}

Result<Entry> UnionFs::symlink(NodeId parent, const std::string& name, const std::string& target, const Caller& c) {
  ANTARES_CREATE_PROLOGUE
  if (::symlinkat(target.c_str(), ud->get(), name.c_str()) != 0) return sys_error("symlink " + name);
  return finish_create(p, name, ud->get(), S_IFLNK | 0777, c, false);
}

Result<std::pair<Entry, UniqueFd>> UnionFs::create(NodeId parent, const std::string& name, mode_t mode, int flags,
                                                   const Caller& c) {
  ANTARES_CREATE_PROLOGUE
  mode = S_IFREG | (mode & 07777 & ~c.umask);
  int fd = ::openat(ud->get(), name.c_str(), (flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC) & ~O_NOCTTY,
                    mode & 07777);
  if (fd < 0) return sys_error("create " + name);
  UniqueFd file(fd);
  auto e = finish_create(p, name, ud->get(), mode, c, false);
  if (!e.ok()) return e.error();
  return std::make_pair(*e, std::move(file));
}
#undef ANTARES_CREATE_PROLOGUE

Result<Entry> UnionFs::link(NodeId node, NodeId new_parent, const std::string& new_name) {
  return with_content(node, [&] { return link_locked(node, new_parent, new_name); });
}

Result<Entry> UnionFs::link_locked(NodeId node, NodeId new_parent, const std::string& new_name) {
  std::lock_guard lk(mu_);
  auto n = find(node);
  auto p = find(new_parent);
  if (!n || !p) return Error::from_errno(ESTALE, "unknown node");
  if (n->is_dir) return Error::from_errno(EPERM, n->path);
  if (new_name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, new_name);
  if (auto ex = child_locked(p, new_name); ex.ok()) return Error::from_errno(EEXIST, new_name);
  else if (ex.err() != ENOENT) return ex.error();
  if (auto st = copy_up(n); !st.ok()) return st.error();
  auto ud = upper_dir(p);
  if (!ud.ok()) return ud.error();
  bool wh = false;
  if (auto cl = clear_upper_name(ud->get(), new_name, &wh); !cl.ok()) return cl.error();
  auto src = open_ref(n, 0, O_PATH, Op::modify);
  if (!src.ok()) return src.error();
  if (::linkat(src->get(), "", ud->get(), new_name.c_str(), AT_EMPTY_PATH) != 0) return sys_error("link " + new_name);
  p->children[new_name] = n;
  add_name(n, join_path(p->path, new_name));
  upper_links_[n->refs[0]->id] = n;
  return entry_for(n, Op::modify);
}

// --- removing ------------------------------------------------------------

Status UnionFs::unlink(NodeId parent, const std::string& name) {
  std::lock_guard lk(mu_);
  auto p = find(parent);
  if (!p) return Error::from_errno(ESTALE, "unknown node");
  auto c = child_locked(p, name);
  if (!c.ok()) return c.error();
  NodePtr n = *c;
  if (n->is_dir) return Error::from_errno(EISDIR, n->path);
  // Before anything changes: a name below that cannot be checked must not
  // come back into view for lack of a whiteout.
  auto lower = lower_has(p, name);
  if (!lower.ok()) return lower.error();
  if (n->refs[0]) {
    auto ud = upper_dir(p);
    if (!ud.ok()) return ud.error();
    if (::unlinkat(ud->get(), name.c_str(), 0) != 0) return sys_error("unlink " + n->path);
  }
  // A name below, or one only in a read-only layer: a whiteout hides it.
  if (*lower || !n->refs[0])
    if (auto st = whiteout(p, name); !st.ok()) return st;
  p->children.erase(name);
  drop_name(n, join_path(p->path, name));
  return {};
}

Status UnionFs::rmdir(NodeId parent, const std::string& name) {
  std::lock_guard lk(mu_);
  auto p = find(parent);
  if (!p) return Error::from_errno(ESTALE, "unknown node");
  auto c = child_locked(p, name);
  if (!c.ok()) return c.error();
  NodePtr n = *c;
  if (!n->is_dir) return Error::from_errno(ENOTDIR, n->path);
  if (auto st = load_children(n); !st.ok()) return st;
  if (!n->children.empty()) return Error::from_errno(ENOTEMPTY, n->path);
  if (n->refs[0]) {
    auto dfd = open_ref(n, 0, O_RDONLY | O_DIRECTORY, Op::modify);
    if (!dfd.ok()) return dfd.error();
    auto entries = read_dir(dfd->get());
    if (!entries.ok()) return entries.error();
    for (auto& e : *entries) {
      auto stx = statx_at(dfd->get(), e.name);
      if (stx.ok() && !is_whiteout(*stx) && !internal_name(e.name)) return Error::from_errno(ENOTEMPTY, n->path);
      ::unlinkat(dfd->get(), e.name.c_str(), 0);
    }
    auto ud = upper_dir(p);
    if (!ud.ok()) return ud.error();
    if (::unlinkat(ud->get(), name.c_str(), AT_REMOVEDIR) != 0) return sys_error("rmdir " + n->path);
  }
  bool lower_dir = false;
  for (size_t i = 1; i < n->refs.size(); ++i) lower_dir |= n->refs[i].has_value();
  if (lower_dir) {
    if (auto st = whiteout(p, name); !st.ok()) return st;
  }
  p->children.erase(name);
  drop_name(n, join_path(p->path, name));
  return {};
}

void UnionFs::add_name(const NodePtr& n, const std::string& path) {
  if (n->path != path && std::find(n->aliases.begin(), n->aliases.end(), path) == n->aliases.end())
    n->aliases.push_back(path);
}

void UnionFs::drop_name(const NodePtr& n, const std::string& path) {
  if (n->path != path) {
    n->aliases.erase(std::remove(n->aliases.begin(), n->aliases.end(), path), n->aliases.end());
    return;
  }
  if (!n->aliases.empty()) {
    // Another name of the hard link carries on: paths must name a live object.
    std::string next = n->aliases.back();
    n->aliases.pop_back();
    n->path = next;
    for (auto& r : n->refs)
      if (r) r->path = next;
    return;
  }
  // The last name: only open files still reach the object (fgetattr, reads).
  for (auto& r : n->refs) r.reset();
}

void UnionFs::move_name(const NodePtr& n, const std::string& from, const std::string& to) {
  if (n->path != from) {
    std::replace(n->aliases.begin(), n->aliases.end(), from, to);
    return;
  }
  path_ino_[to] = n->ino;
  n->path = to;
  for (auto& r : n->refs)
    if (r) r->path = to;
  for (auto& [name, c] : n->children) move_name(c, join_path(from, name), join_path(to, name));
}

Status UnionFs::rename(NodeId parent, const std::string& name, NodeId new_parent, const std::string& new_name,
                       unsigned flags) {
  if (flags & ~unsigned(RENAME_NOREPLACE | RENAME_EXCHANGE)) return Error::from_errno(EINVAL, "rename flags");
  return with_content(parent, name, [&] {
    if (!(flags & RENAME_EXCHANGE)) return rename_locked(parent, name, new_parent, new_name, flags);
    return with_content(new_parent, new_name,
                        [&] { return rename_locked(parent, name, new_parent, new_name, flags); });
  });
}

Status UnionFs::rename_locked(NodeId parent, const std::string& name, NodeId new_parent,
                              const std::string& new_name, unsigned flags) {
  std::lock_guard lk(mu_);
  auto p = find(parent);
  auto np = find(new_parent);
  if (!p || !np) return Error::from_errno(ESTALE, "unknown node");
  if (new_name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, new_name);
  auto sc = child_locked(p, name);
  if (!sc.ok()) return sc.error();
  NodePtr src = *sc;
  auto dc = child_locked(np, new_name);
  if (!dc.ok() && dc.err() != ENOENT) return dc.error();
  NodePtr dst = dc.ok() ? *dc : nullptr;
  if (dst == src) return {};
  auto merged_dir = [&](const NodePtr& n) {
    if (!n->is_dir) return false;
    for (size_t i = 1; i < n->refs.size(); ++i)
      if (n->refs[i]) return true;
    return false;
  };
  // Like overlayfs without redirect_dir: directories from read-only layers
  // cannot move; callers (mv) fall back to copying.
  if (merged_dir(src) || (flags & RENAME_EXCHANGE && dst && merged_dir(dst)))
    return Error::from_errno(EXDEV, src->path);
  if (flags & RENAME_NOREPLACE && dst) return Error::from_errno(EEXIST, new_name);
  if (flags & RENAME_EXCHANGE && !dst) return Error::from_errno(ENOENT, new_name);
  if (dst && !(flags & RENAME_EXCHANGE)) {
    if (dst->is_dir && !src->is_dir) return Error::from_errno(EISDIR, dst->path);
    if (!dst->is_dir && src->is_dir) return Error::from_errno(ENOTDIR, dst->path);
    if (dst->is_dir) {
      if (auto st = load_children(dst); !st.ok()) return st;
      if (!dst->children.empty()) return Error::from_errno(ENOTEMPTY, dst->path);
    }
  }
  if (src->is_dir) {
    // Moving a directory into itself is EINVAL, as for any filesystem.
    std::string to = join_path(np->path, new_name);
    if (to.size() > src->path.size() && to.compare(0, src->path.size() + 1, src->path + "/") == 0)
      return Error::from_errno(EINVAL, to);
  }
  // Before anything changes (see unlink).
  Result<bool> lower_src = false;
  if (!(flags & RENAME_EXCHANGE)) {
    lower_src = lower_has(p, name);
    if (!lower_src.ok()) return lower_src.error();
  }
  if (auto st = copy_up(src); !st.ok()) return st;
  if (flags & RENAME_EXCHANGE)
    if (auto st = copy_up(dst); !st.ok()) return st;
  auto sud = upper_dir(p);
  if (!sud.ok()) return sud.error();
  auto dud = upper_dir(np);
  if (!dud.ok()) return dud.error();
  // A directory landing on a lower directory's name must not merge with it.
  bool dst_lower_dir = dst && dst->is_dir && merged_dir(dst);
  if (dst && dst->is_dir && !dst->refs[0] && !(flags & RENAME_EXCHANGE)) {
    // dst exists only below: nothing to replace in upper.
  } else if (dst && !(flags & RENAME_EXCHANGE) && dst->is_dir && dst->refs[0]) {
    // An empty merged-away upper directory may still hold whiteouts.
    auto dfd = open_ref(dst, 0, O_RDONLY | O_DIRECTORY, Op::modify);
    if (dfd.ok())
      if (auto entries = read_dir(dfd->get()); entries.ok())
        for (auto& e : *entries) ::unlinkat(dfd->get(), e.name.c_str(), 0);
  }
  unsigned sys_flags = flags & RENAME_EXCHANGE;
  if (::renameat2(sud->get(), name.c_str(), dud->get(), new_name.c_str(), sys_flags) != 0)
    return sys_error("rename " + src->path);
  if (dst_lower_dir) {
    int dfd = ::openat(dud->get(), new_name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd >= 0) {
      UniqueFd g(dfd);
      ::fsetxattr(dfd, kOpaqueXattr, "y", 1, 0);
      src->opaque = true;
    }
  }
  const std::string from = join_path(p->path, name), to = join_path(np->path, new_name);
  if (!(flags & RENAME_EXCHANGE)) {
    if (*lower_src)
      if (auto st = whiteout(p, name); !st.ok()) return st;
    p->children.erase(name);
    if (dst) {
      np->children.erase(new_name);
      drop_name(dst, to);
    }
    np->children[new_name] = src;
    move_name(src, from, to);
    if (auto r = layers_[0]->resolve_at(dud->get(), np->path, new_name); r.ok()) {
      r->path = src->path;  // a hard link's path may be another of its names
      src->refs[0] = std::move(*r);
    }
  } else {
    p->children[name] = dst;
    np->children[new_name] = src;
    move_name(src, from, to);
    move_name(dst, to, from);
  }
  return {};
}

// --- data ----------------------------------------------------------------

Result<UniqueFd> UnionFs::open(NodeId node, int flags, OpenDetails* details) {
  return retrying([&] { return open_once(node, flags, details); });
}

Result<UniqueFd> UnionFs::open_once(NodeId node, int flags, OpenDetails* details) {
  const int acc = flags & O_ACCMODE;
  const bool write = acc != O_RDONLY || (flags & O_TRUNC);
  flags &= ~(O_CREAT | O_EXCL | O_NOCTTY);
  if (details) *details = OpenDetails{};
  if (write) {
    return with_content(node, [&]() -> Result<UniqueFd> {
      std::lock_guard lk(mu_);
      auto n = find(node);
      if (!n) return Error::from_errno(ESTALE, "unknown node");
      if (n->is_dir) return Error::from_errno(EISDIR, n->path);
      if (n->top() < 0) return Error::from_errno(ENOENT, n->path);
      if (auto st = copy_up(n); !st.ok()) return st.error();
      return open_ref(n, 0, flags, Op::open);
    });
  }
  std::string hook_path;
  size_t hook_layer = 0;
  {
    std::lock_guard lk(mu_);
    auto n = find(node);
    if (!n) return Error::from_errno(ESTALE, "unknown node");
    int top = n->top();
    if (top < 0) return Error::from_errno(ENOENT, n->path);
    hook_layer = size_t(top);
    hook_path = n->refs[size_t(top)]->path;
  }
  // Fetching content may take a network round trip: no lock held.
  if (auto st = layers_[hook_layer]->hooks().before_open(hook_path); !st.ok()) return st.error();
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  int top = n->top();
  if (top < 0) return Error::from_errno(ENOENT, n->path);
  auto fd = open_ref(n, size_t(top), flags, Op::open);
  if (!fd.ok()) return fd;
  // The path's current content is in place (before_open); an object of this
  // node still waiting for its bytes is an older version that never gets
  // them: the node is superseded, never served as a placeholder's zeros.
  if (!layers_[size_t(top)]->hooks().content_ready(n->refs[size_t(top)]->id.ino)) {
    on_estale(n, size_t(top), Op::open);
    return Error::from_errno(ESTALE, "open " + n->path + ": superseded before its content arrived");
  }
  if (details) details->read_only_layer = !layers_[size_t(top)]->writable();
  return fd;
}

Result<std::vector<DirEntry>> UnionFs::opendir(NodeId node) {
  return retrying([&] { return opendir_once(node); });
}

Result<std::vector<DirEntry>> UnionFs::opendir_once(NodeId node) {
  if (auto st = run_dir_hooks(node); !st.ok()) return st.error();
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  if (!n->is_dir) return Error::from_errno(ENOTDIR, n->path);
  int top = n->top();
  if (top < 0) return Error::from_errno(ENOENT, n->path);
  // Upstream re-opens the directory's handle on opendir: ESTALE surfaces here.
  if (auto fd = open_ref(n, size_t(top), O_PATH | O_DIRECTORY, Op::opendir); !fd.ok()) return fd.error();
  if (auto st = ensure_children(n); !st.ok()) return st.error();
  std::vector<DirEntry> out;
  out.reserve(n->children.size() + 2);
  out.push_back({".", n->ino, S_IFDIR});
  out.push_back({"..", n == root_ ? 1 : path_ino_[split_parent(n->path).first], S_IFDIR});
  for (auto& [name, c] : n->children) out.push_back({name, c->ino, c->type});
  return out;
}

Result<struct statvfs> UnionFs::statfs() {
  struct statvfs sv;
  if (::fstatvfs(layers_[0]->root_fd(), &sv) != 0) return sys_error("statfs");
  return sv;
}

Result<struct stat> UnionFs::setattr(NodeId node, const struct stat& attr, int to_set, int fd) {
  return with_content(node, [&] { return setattr_locked(node, attr, to_set, fd); });
}

Result<struct stat> UnionFs::setattr_locked(NodeId node, const struct stat& attr, int to_set, int fd) {
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  // An open file whose names are all gone (or whose name now holds another
  // object): only an fd reaches it. One of the read-only layers is not ours
  // to change: the kernel's re-walk reaches the name's current object.
  const bool gone = n->top() < 0 || n->retired;
  bool ro = false;
  if (gone && fd < 0) fd = open_fd(n, &ro);
  if (gone && (fd < 0 || ro)) return Error::from_errno(n->top() < 0 ? ENOENT : ESTALE, n->path);
  const bool by_fd = gone;
  UniqueFd pfd_owner;
  if (!by_fd) {
    if (auto st = copy_up(n); !st.ok()) return st.error();
    auto pfd = open_ref(n, 0, O_PATH, Op::setattr);
    if (!pfd.ok()) return pfd.error();
    pfd_owner = std::move(*pfd);
  }
  const int target = by_fd ? fd : pfd_owner.get();
  const std::string proc = proc_fd(target);
  // FUSE_SET_ATTR_* values, spelled out to keep this file free of fuse headers.
  constexpr int kMode = 1 << 0, kUid = 1 << 1, kGid = 1 << 2, kSize = 1 << 3, kAtime = 1 << 4, kMtime = 1 << 5,
                kAtimeNow = 1 << 7, kMtimeNow = 1 << 8;
  if (to_set & kMode && !S_ISLNK(n->type))
    if (::chmod(proc.c_str(), attr.st_mode & 07777) != 0) return sys_error("chmod " + n->path);
  if (to_set & (kUid | kGid)) {
    uid_t u = to_set & kUid ? attr.st_uid : uid_t(-1);
    gid_t g = to_set & kGid ? attr.st_gid : gid_t(-1);
    if (::fchownat(target, "", u, g, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return sys_error("chown " + n->path);
  }
  if (to_set & kSize) {
    int r = fd >= 0 ? ::ftruncate(fd, attr.st_size) : ::truncate(proc.c_str(), attr.st_size);
    if (r != 0) return sys_error("truncate " + n->path);
  }
  if (to_set & (kAtime | kMtime | kAtimeNow | kMtimeNow)) {
    struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
    if (to_set & kAtimeNow) ts[0].tv_nsec = UTIME_NOW;
    else if (to_set & kAtime) ts[0] = attr.st_atim;
    if (to_set & kMtimeNow) ts[1].tv_nsec = UTIME_NOW;
    else if (to_set & kMtime) ts[1] = attr.st_mtim;
    if (S_ISLNK(n->type)) {
      // A symlink's own times: through its parent, without following it
      // (utimensat takes no O_PATH fd of a symlink).
      auto [parent_path, leaf] = split_parent(n->path);
      auto dir = layers_[0]->open_path(parent_path, O_PATH | O_DIRECTORY);
      if (!dir.ok()) return dir.error();
      if (::utimensat(dir->get(), leaf.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) return sys_error("utimens " + n->path);
    } else if (::utimensat(AT_FDCWD, proc.c_str(), ts, 0) != 0) {
      return sys_error("utimens " + n->path);
    }
  }
  if (by_fd) {
    auto stx = statx_at(fd, "");
    if (!stx.ok()) return stx.error();
    struct stat st = to_stat(*stx);
    present(st, n, false);
    return st;
  }
  return stat_locked(n, Op::setattr);
}

// --- xattrs --------------------------------------------------------------

Result<std::string> UnionFs::getxattr(NodeId node, const std::string& name) {
  return retrying([&] { return getxattr_once(node, name); });
}

Result<std::string> UnionFs::getxattr_once(NodeId node, const std::string& name) {
  if (name.rfind("trusted.overlay.", 0) == 0) return Error::from_errno(ENODATA, name);
  std::lock_guard lk(mu_);
  NodePtr n;
  auto fd = open_top_locked(node, O_PATH, Op::xattr, &n);
  if (!fd.ok()) return fd.error();
  std::string proc = proc_fd(fd->get());
  ssize_t len = ::getxattr(proc.c_str(), name.c_str(), nullptr, 0);
  if (len < 0) return sys_error("getxattr " + name);
  std::string v(size_t(len), '\0');
  len = ::getxattr(proc.c_str(), name.c_str(), v.data(), v.size());
  if (len < 0) return sys_error("getxattr " + name);
  v.resize(size_t(len));
  return v;
}

Result<std::string> UnionFs::listxattr(NodeId node) {
  return retrying([&] { return listxattr_once(node); });
}

Result<std::string> UnionFs::listxattr_once(NodeId node) {
  std::lock_guard lk(mu_);
  NodePtr n;
  auto fd = open_top_locked(node, O_PATH, Op::xattr, &n);
  if (!fd.ok()) return fd.error();
  std::string proc = proc_fd(fd->get());
  ssize_t len = ::listxattr(proc.c_str(), nullptr, 0);
  if (len < 0) return sys_error("listxattr");
  std::string all(size_t(len), '\0');
  len = ::listxattr(proc.c_str(), all.data(), all.size());
  if (len < 0) return sys_error("listxattr");
  std::string out;
  for (size_t i = 0; i < size_t(len);) {
    std::string nm(all.c_str() + i);
    i += nm.size() + 1;
    if (nm.rfind("trusted.overlay.", 0) != 0) out += nm + '\0';
  }
  return out;
}

Status UnionFs::setxattr(NodeId node, const std::string& name, const std::string& value, int flags) {
  if (name.rfind("trusted.overlay.", 0) == 0) return Error::from_errno(EPERM, name);
  return with_content(node, [&] { return setxattr_locked(node, name, value, flags); });
}

Status UnionFs::setxattr_locked(NodeId node, const std::string& name, const std::string& value, int flags) {
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  if (auto st = copy_up(n); !st.ok()) return st;
  auto fd = open_ref(n, 0, O_PATH, Op::xattr);
  if (!fd.ok()) return fd.error();
  if (::setxattr(proc_fd(fd->get()).c_str(), name.c_str(), value.data(), value.size(), flags) != 0)
    return sys_error("setxattr " + name);
  return {};
}

Status UnionFs::removexattr(NodeId node, const std::string& name) {
  if (name.rfind("trusted.overlay.", 0) == 0) return Error::from_errno(EPERM, name);
  return with_content(node, [&] { return removexattr_locked(node, name); });
}

Status UnionFs::removexattr_locked(NodeId node, const std::string& name) {
  std::lock_guard lk(mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  if (auto st = copy_up(n); !st.ok()) return st;
  auto fd = open_ref(n, 0, O_PATH, Op::xattr);
  if (!fd.ok()) return fd.error();
  if (::removexattr(proc_fd(fd->get()).c_str(), name.c_str()) != 0) return sys_error("removexattr " + name);
  return {};
}

// --- invalidation ----------------------------------------------------------

std::vector<KernelInvalidation> UnionFs::on_layer_change(size_t layer, const std::vector<LayerChange>& changes) {
  std::vector<KernelInvalidation> out;
  std::lock_guard lk(mu_);
  for (const auto& ch : changes) {
    // Walk the loaded part of the tree down to the changed path's parent.
    auto [parent_path, name] = split_parent(ch.path);
    auto walked = walk_locked(parent_path, false);
    if (!walked.ok()) continue;  // nothing cached on that path, nothing to tell
    NodePtr dir = *walked;
    dir->loaded = false;   // re-read the names on the next lookup
    out.push_back({KernelInvalidation::Kind::entry, dir->id, name});
    auto it = dir->children.find(name);
    if (it == dir->children.end()) continue;
    NodePtr n = it->second;
    auto& ref = n->refs[layer];
    if (!ref) continue;  // a layer this name does not show: nothing cached from it
    auto fresh = layers_[layer]->resolve(ref->path);
    if (fresh.ok() && fresh->id == ref->id) continue;  // the same object (our own change)
    layers_[layer]->cache().erase(ref->id);
    if (n->is_dir && fresh.ok()) {
      ref = std::move(*fresh);  // directories are re-pointed: no pages to mix
      n->loaded = false;
    } else if (n->is_dir && layer != size_t(n->top())) {
      ref.reset();  // a lower part of a merged directory is gone
      n->loaded = false;
    } else {
      retire(n);  // one node, one object: the name gets a new node on reload
    }
    out.push_back({KernelInvalidation::Kind::inode, n->id, {}});
  }
  return out;
}

void UnionFs::drop_caches() {
  std::lock_guard lk(mu_);
  std::vector<NodePtr> stack{root_};
  std::set<Node*> seen;
  for (auto& [id, n] : nodes_) stack.push_back(n);
  while (!stack.empty()) {
    NodePtr n = stack.back();
    stack.pop_back();
    if (!seen.insert(n.get()).second) continue;
    for (size_t i = 0; i < n->refs.size(); ++i) {
      auto& ref = n->refs[i];
      if (!ref) continue;
      layers_[i]->cache().erase(ref->id);
      // Directories are re-pointed; a replaced file's node is retired when
      // next used, and its name loads a new node.
      if (n->is_dir)
        if (auto fresh = layers_[i]->resolve(ref->path); fresh.ok()) ref = std::move(*fresh);
    }
    for (auto& [name, c] : n->children) stack.push_back(c);
    n->loaded = false;
  }
}

}  // namespace antares::fs
