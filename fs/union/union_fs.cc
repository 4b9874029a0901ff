// The union's rules (see union_fs.h): lookups from cached children, merged
// readdir, copy-up, whiteouts and opaque directories, each handle use through
// the current strategy; the node tree and its locks.
#include "fs/union/union_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/limits.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
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

// Extended attributes the filesystem keeps to itself: overlayfs-style
// whiteout/opaque markers, and the lower store's bookkeeping (user.antares.*).
// Never listed, read, set, removed or copied up for a caller.
bool reserved_xattr(const std::string& name) {
  return name.rfind("trusted.overlay.", 0) == 0 || name.rfind("user.antares.", 0) == 0;
}

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
    if (reserved_xattr(name)) continue;
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

// ------------------------------------------------------------------- the tree

// A directory's cached children and load state. Under tree_mu_ shared it is
// guarded by the directory's dir_mu_ stripe; under tree_mu_ exclusive it is
// the writer's alone.
struct UnionFs::DirState {
  std::vector<NodePtr> children;  // nodes whose primary name is here, sorted by name
  // Names here of nodes whose primary name is elsewhere (hard links; rare).
  std::unique_ptr<std::map<std::string, NodePtr>> aliases;
  // Inode numbers of names that went away here, for the name's next object:
  // a path keeps its number across delete and re-create (bounded).
  std::unique_ptr<std::unordered_map<std::string, uint64_t>> gone;
  static constexpr size_t kMaxGone = 4096;
  void bury(const std::string& name, uint64_t ino) {
    if (!gone) gone = std::make_unique<std::unordered_map<std::string, uint64_t>>();
    if (gone->size() >= kMaxGone) gone->clear();
    (*gone)[name] = ino;
  }
  uint64_t unbury(const std::string& name) {
    if (!gone) return 0;
    auto it = gone->find(name);
    if (it == gone->end()) return 0;
    uint64_t ino = it->second;
    gone->erase(it);
    return ino;
  }
  std::atomic<uint32_t> gen{0};   // bumped (no lock) to make the next access reload
  uint32_t loaded_gen = 0;
  bool loaded = false;  // ever loaded
  bool opaque = false;
  uint32_t subdirs = 0;
  struct Stamp {
    bool set = false;
    uint64_t ino = 0;
    int64_t sec = 0;
    uint32_t nsec = 0;
  };
  std::array<Stamp, UnionStats::kMaxLayers> stamps{};  // each layer dir's inode and mtime at load

  bool fresh() const { return loaded && loaded_gen == gen.load(std::memory_order_acquire); }
  std::vector<NodePtr>::iterator at(std::string_view name);
  NodePtr get(const std::string& name);
  size_t size() const { return children.size() + (aliases ? aliases->size() : 0); }
};

struct UnionFs::Node {
  Node(NodeId i, uint64_t n, bool d) : id(i), ino(n), is_dir(d) {
    if (d) dir = std::make_unique<DirState>();
  }
  const NodeId id;
  const uint64_t ino;
  const bool is_dir;
  mode_t type = 0;
  // Its primary name. Changed only under tree_mu_ exclusive.
  std::weak_ptr<Node> parent;
  std::string name;
  // Hard links: its other names (rare). Under tree_mu_ exclusive.
  std::unique_ptr<std::vector<std::pair<std::weak_ptr<Node>, std::string>>> aliases;
  std::unique_ptr<DirState> dir;  // directories only
  std::atomic<uint64_t> nlookup{0};
  std::atomic<bool> retired{false};  // its object was replaced or removed (fixes only)

  // Per-layer refs, packed: bit i of mask says layer i is present. Guarded by
  // the node's ref_mu_ stripe (or tree_mu_ exclusive).
  uint8_t mask = 0;
  std::unique_ptr<LayerRef[]> refs;

  int top() const { return mask ? std::countr_zero(unsigned(mask)) : -1; }
  LayerRef* at(size_t i) {
    if (!(mask & (1u << i))) return nullptr;
    return &refs[size_t(std::popcount(unsigned(mask) & ((1u << i) - 1)))];
  }
  void set(size_t i, std::optional<LayerRef> r) {
    if (LayerRef* cur = at(i)) {
      if (r) {
        *cur = std::move(*r);
        return;
      }
    } else if (!r) {
      return;
    }
    const uint8_t next = r ? uint8_t(mask | (1u << i)) : uint8_t(mask & ~(1u << i));
    auto packed = next ? std::make_unique<LayerRef[]>(size_t(std::popcount(unsigned(next)))) : nullptr;
    size_t k = 0;
    for (size_t l = 0; l < 8; ++l) {
      if (!(next & (1u << l))) continue;
      packed[k++] = l == i ? std::move(*r) : *at(l);
    }
    mask = next;
    refs = std::move(packed);
  }
  void clear() {
    mask = 0;
    refs.reset();
  }
};

std::vector<UnionFs::NodePtr>::iterator UnionFs::DirState::at(std::string_view name) {
  return std::lower_bound(children.begin(), children.end(), name,
                          [](const NodePtr& c, std::string_view n) { return c->name < n; });
}

UnionFs::NodePtr UnionFs::DirState::get(const std::string& name) {
  auto it = at(name);
  if (it != children.end() && (*it)->name == name) return *it;
  if (aliases)
    if (auto a = aliases->find(name); a != aliases->end()) return a->second;
  return nullptr;
}

template <class F>
auto UnionFs::with_content(NodeId node, F&& op) {
  using R = decltype(op());
  if (auto st = prepare_copy_up(node); !st.ok()) return R(st.error());
  return op();
}

template <class F>
auto UnionFs::with_content(NodeId parent, const std::string& name, F&& op) {
  using R = decltype(op());
  if (auto st = prepare_copy_up(parent, name); !st.ok()) return R(st.error());
  return op();
}

UnionFs::UnionFs(std::vector<std::unique_ptr<Layer>> layers, StrategySlot& strategy)
    : layers_(std::move(layers)), strategy_(strategy) {}

UnionFs::~UnionFs() = default;

Status UnionFs::init() {
  if (layers_.empty() || layers_.size() > size_t(UnionStats::kMaxLayers))
    return Error::from_errno(EINVAL, "the union takes 1 to 3 layers");
  Exclusive lk(tree_mu_);
  root_ = std::make_shared<Node>(kRootNode, 1, true);
  root_->type = S_IFDIR;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto ref = layers_[i]->resolve("");
    if (!ref.ok()) return ref.error();
    root_->set(i, std::move(*ref));
  }
  root_->nlookup = 1;
  Shard& s = table_[1 % table_.size()];
  std::lock_guard sl(s.mu);
  s.nodes[1] = root_;
  stats_.nodes = 1;
  return {};
}

std::mutex& UnionFs::dir_mu(const Node& n) const { return dir_mu_[raw(n.id) % dir_mu_.size()]; }
std::mutex& UnionFs::ref_mu(const Node& n) const { return ref_mu_[raw(n.id) % ref_mu_.size()]; }

UnionFs::NodePtr UnionFs::find(NodeId id) const {
  const Shard& s = table_[raw(id) % table_.size()];
  std::lock_guard lk(const_cast<std::mutex&>(s.mu));
  auto it = s.nodes.find(raw(id));
  return it == s.nodes.end() ? nullptr : it->second;
}

UnionFs::NodePtr UnionFs::new_node(const NodePtr& parent, const std::string& name, bool is_dir, uint64_t ino) {
  const NodeId id{next_node_.fetch_add(1)};
  // One allocation per node (with its control block).
  auto n = std::make_shared<Node>(id, ino ? ino : next_ino_.fetch_add(1), is_dir);
  n->parent = parent;
  n->name = name;
  return n;
}

std::string UnionFs::path_of(const Node& n) const {
  // Names from the node up to the root, joined root first.
  std::vector<const std::string*> names;
  std::vector<NodePtr> hold;  // keeps the ancestors alive while we read them
  size_t len = 0;
  const Node* cur = &n;
  while (cur != root_.get()) {
    names.push_back(&cur->name);
    len += cur->name.size() + 1;
    NodePtr p = cur->parent.lock();
    if (!p) break;  // a detached node: its path as far as it still reaches
    hold.push_back(p);
    cur = p.get();
  }
  std::string out;
  out.reserve(len);
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    if (!out.empty()) out += '/';
    out += **it;
  }
  return out;
}

std::optional<UnionFs::TopRef> UnionFs::top_ref(const NodePtr& n) const {
  std::lock_guard lk(ref_mu(*n));
  int top = n->top();
  if (top < 0) return std::nullopt;
  return TopRef{size_t(top), *n->at(size_t(top))};
}

std::optional<LayerRef> UnionFs::ref_at(const NodePtr& n, size_t layer) const {
  std::lock_guard lk(ref_mu(*n));
  if (LayerRef* r = n->at(layer)) return *r;
  return std::nullopt;
}

void UnionFs::set_ref(const NodePtr& n, size_t layer, std::optional<LayerRef> ref) {
  std::lock_guard lk(ref_mu(*n));
  n->set(layer, std::move(ref));
}

int UnionFs::top_layer(const NodePtr& n) const {
  std::lock_guard lk(ref_mu(*n));
  return n->top();
}

bool UnionFs::has_lower(const NodePtr& n) const {
  std::lock_guard lk(ref_mu(*n));
  return (n->mask & ~1u) != 0;
}

bool UnionFs::kernel_knows(const NodePtr& n) const { return n->nlookup.load(std::memory_order_relaxed) > 0; }

bool UnionFs::fixes() const {
  const HandleStrategy& s = strategy_.get();
  return s.revalidates() || s.invalidates();
}

void UnionFs::invalidate_children(const NodePtr& dir) {
  if (dir && dir->dir) dir->dir->gen.fetch_add(1, std::memory_order_acq_rel);
}

UnionFs::NodePtr UnionFs::cached_child(const NodePtr& dir, const std::string& name) {
  std::lock_guard lk(dir_mu(*dir));
  return dir->dir->get(name);
}

void UnionFs::put_child(const NodePtr& dir, const std::string& name, const NodePtr& c) {
  DirState& d = *dir->dir;
  erase_child(dir, name);
  if (c->name == name && c->parent.lock() == dir) {
    d.children.insert(d.at(name), c);
  } else {
    if (!d.aliases) d.aliases = std::make_unique<std::map<std::string, NodePtr>>();
    (*d.aliases)[name] = c;
  }
  d.subdirs += c->is_dir;
}

void UnionFs::erase_child(const NodePtr& dir, const std::string& name) {
  DirState& d = *dir->dir;
  NodePtr gone;
  if (auto it = d.at(name); it != d.children.end() && (*it)->name == name) {
    gone = *it;
    d.children.erase(it);
  } else if (d.aliases) {
    if (auto a = d.aliases->find(name); a != d.aliases->end()) {
      gone = a->second;
      d.aliases->erase(a);
    }
  }
  if (gone && gone->is_dir && d.subdirs) d.subdirs--;
}

Result<UnionFs::NodePtr> UnionFs::walk(const std::string& path, bool load) {
  NodePtr dir = root_;
  for (size_t pos = 0; pos < path.size();) {
    size_t slash = path.find('/', pos);
    std::string comp = path.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    pos = slash == std::string::npos ? path.size() : slash + 1;
    if (load) {
      auto c = child(dir, comp);
      if (!c.ok()) return c.error();
      dir = *c;
    } else {
      if (!dir->is_dir) return Error::from_errno(ENOTDIR, path);
      // Children created through the mount are cached even before a load.
      NodePtr c = cached_child(dir, comp);
      if (!c) return Error::from_errno(ENOENT, path);
      dir = c;
    }
  }
  return dir;
}

Result<UnionFs::NodePtr> UnionFs::child(const NodePtr& parent, const std::string& name) {
  if (!parent->is_dir) return Error::from_errno(ENOTDIR, path_of(parent));
  if (name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, name);
  if (auto st = ensure_children(parent); !st.ok()) return st.error();
  NodePtr c = cached_child(parent, name);
  if (!c) return Error::from_errno(ENOENT, join_path(path_of(parent), name));
  return c;
}

Status UnionFs::ensure_children(const NodePtr& dir) {
  std::lock_guard lk(dir_mu(*dir));
  if (dir->dir->fresh() && !(strategy_.get().revalidates() && children_stale(dir))) return {};
  return load_children(dir);
}

bool UnionFs::children_stale(const NodePtr& dir) {
  const std::string path = path_of(dir);
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto ref = ref_at(dir, i);
    if (!ref) continue;
    auto fd = strategy_.get().open(*layers_[i], *ref, [&] { return path; }, O_PATH | O_DIRECTORY);
    if (!fd.ok()) return true;
    auto stx = statx_at(fd->get(), "");
    if (!stx.ok()) return true;
    const auto& was = dir->dir->stamps[i];
    if (!was.set || stx->stx_mtime.tv_sec != was.sec || stx->stx_mtime.tv_nsec != was.nsec ||
        stx->stx_ino != was.ino)
      return true;
  }
  return false;
}

Status UnionFs::load_children(const NodePtr& dir) {
  DirState& d = *dir->dir;
  const uint32_t gen = d.gen.load(std::memory_order_acquire);
  const bool reload = d.loaded;
  const std::string dir_path = path_of(dir);
  const HandleStrategy& strategy = strategy_.get();
  const bool fix = strategy.revalidates() || strategy.invalidates();
  // The old children by name, for reuse (the same object keeps its node).
  std::vector<NodePtr> old;
  old.swap(d.children);
  std::unique_ptr<std::map<std::string, NodePtr>> old_aliases = std::move(d.aliases);
  auto restore = [&] {
    d.children.swap(old);
    d.aliases = std::move(old_aliases);
  };
  auto old_child = [&](const std::string& name) -> NodePtr {
    auto it = std::lower_bound(old.begin(), old.end(), name,
                               [](const NodePtr& c, const std::string& n) { return c->name < n; });
    if (it != old.end() && (*it)->name == name) return *it;
    if (old_aliases)
      if (auto a = old_aliases->find(name); a != old_aliases->end()) return a->second;
    return nullptr;
  };
  // A child's refs are gathered here and published at the end, all at once:
  // the child may be in use beside this load (its own reload, a stat of it),
  // which must see its layers before or after, never a part of them.
  using Refs = std::array<std::optional<LayerRef>, UnionStats::kMaxLayers>;
  struct Seen {
    NodePtr node;  // null: whited out or shadowed by a non-directory
    bool merging = false;  // a directory still taking lower layers' directories
    Refs refs;
  };
  std::map<std::string, Seen> seen;
  // The directory's own layers, read once: its parent's load may be
  // publishing new ones meanwhile.
  Refs dir_refs;
  {
    std::lock_guard rl(ref_mu(*dir));
    for (size_t i = 0; i < layers_.size(); ++i)
      if (LayerRef* r = dir->at(i)) dir_refs[i] = *r;
  }
  d.stamps = {};
  bool any_layer = false;
  Error first_error = Error::from_errno(ENOENT, "directory " + dir_path + " is in no layer");
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& ref = dir_refs[i];
    if (!ref) continue;
    // The stat probe: ESTALE here means "not in this layer", as upstream.
    auto fd = strategy.open(*layers_[i], *ref, [&] { return dir_path; }, O_RDONLY | O_DIRECTORY);
    if (!fd.ok()) {
      if (fd.err() != ESTALE && fd.err() != ENOENT) first_error = fd.error();
      continue;
    }
    any_layer = true;
    if (auto stx = statx_at(fd->get(), ""); stx.ok())
      d.stamps[i] = {true, stx->stx_ino, stx->stx_mtime.tv_sec, stx->stx_mtime.tv_nsec};
    bool opaque = false;
    if (layers_[i]->writable()) {
      if (upper_dir_observer_) upper_dir_observer_(dir_path);
      char v[4];
      ssize_t len = ::fgetxattr(fd->get(), kOpaqueXattr, v, sizeof v);
      opaque = len == 1 && v[0] == 'y';
      d.opaque = opaque;
    }
    auto entries = read_dir(fd->get());
    if (!entries.ok()) {
      restore();
      return entries.error();
    }
    for (auto& e : *entries) {
      if (internal_name(e.name) || layers_[i]->hooks().hidden(e.name)) continue;
      auto it = seen.find(e.name);
      if (it != seen.end() && (!it->second.node || !it->second.merging)) continue;
      auto stx = statx_at(fd->get(), e.name);
      if (!stx.ok()) continue;  // raced with a removal
      if (it != seen.end()) {
        // Already seen as a directory above: merge this layer's directory, or
        // stop merging at a non-directory (a whiteout or a file).
        if (S_ISDIR(stx->stx_mode)) {
          if (auto r = layers_[i]->resolve_at(fd->get(), e.name); r.ok()) it->second.refs[i] = std::move(*r);
        } else {
          it->second.merging = false;
        }
        continue;
      }
      if (is_whiteout(*stx)) {
        seen[e.name] = {nullptr, false, {}};
        continue;
      }
      const bool is_dir = S_ISDIR(stx->stx_mode);
      const Identity id = identity_of(*stx);
      NodePtr node;
      NodePtr prev = old_child(e.name);
      if (prev) {
        auto prev_top = top_ref(prev);
        // Upstream keeps the cached child whatever happened behind it; the
        // fixes give a replaced object a new node id (one node, one object).
        bool same = prev_top && prev_top->layer == i && prev->is_dir == is_dir && prev_top->ref.id == id &&
                    !prev->retired.load();
        if (same || !fix) node = prev;
      }
      // Every name of an upper hard link is the same node.
      if (!node && i == 0 && !is_dir && stx->stx_nlink > 1) {
        NodePtr linked;
        {
          std::lock_guard ll(links_mu_);
          if (auto l = upper_links_.find(id); l != upper_links_.end()) linked = l->second.lock();
        }
        if (linked && !linked->retired.load()) {
          node = linked;
          add_name(node, dir, e.name);
        }
      }
      std::optional<LayerRef> ref_now;
      if (node) {
        auto cur = top_ref(node);
        if (cur && cur->layer == i && cur->ref.id == id) {
          ref_now = std::move(cur->ref);  // the same object: keep its handle
        }
      }
      if (!ref_now) {
        auto r = layers_[i]->resolve_at(fd->get(), e.name);
        if (!r.ok()) continue;
        ref_now = std::move(*r);
      }
      if (!node) {
        // A name's new node takes its predecessor's inode number.
        node = new_node(dir, e.name, is_dir, prev ? prev->ino : d.unbury(e.name));
        if (reload) stats_.renewed_nodes++;
      }
      node->type = stx->stx_mode & S_IFMT;
      if (i == 0 && !is_dir && stx->stx_nlink > 1) {
        std::lock_guard ll(links_mu_);
        upper_links_[id] = node;
      }
      Seen& s = seen[e.name];
      s = {node, is_dir, {}};
      s.refs[i] = std::move(ref_now);
    }
    if (opaque) break;
  }
  if (!any_layer) {
    restore();
    return first_error;
  }
  d.children.reserve(seen.size());
  uint32_t subdirs = 0;
  for (auto& [name, v] : seen) {  // std::map: in name order
    if (!v.node) continue;
    {
      // A reused node's layers are the ones read now: a merged directory
      // may have lost one.
      std::lock_guard rl(ref_mu(*v.node));
      v.node->clear();
      for (size_t i = 0; i < layers_.size(); ++i)
        if (v.refs[i]) v.node->set(i, std::move(v.refs[i]));
    }
    subdirs += v.node->is_dir;
    if (v.node->name == name && v.node->parent.lock() == dir) {
      d.children.push_back(v.node);
    } else {
      // A second name of a hard link whose primary name is elsewhere.
      if (!d.aliases) d.aliases = std::make_unique<std::map<std::string, NodePtr>>();
      (*d.aliases)[name] = v.node;
    }
  }
  d.subdirs = subdirs;
  for (auto& o : old)
    if (!d.get(o->name)) d.bury(o->name, o->ino);
  d.loaded = true;
  d.loaded_gen = gen;
  (reload ? stats_.dir_reloads : stats_.dir_loads)++;
  return {};
}

Result<Entry> UnionFs::entry_for(const NodePtr& n, Op op) {
  auto st = stat_node(n, op);
  if (!st.ok()) return st.error();
  Shard& s = table_[raw(n->id) % table_.size()];
  {
    std::lock_guard lk(s.mu);
    if (n->nlookup.fetch_add(1) == 0) {
      s.nodes[raw(n->id)] = n;
      stats_.nodes++;
    }
  }
  return Entry{n->id, *st};
}

Status UnionFs::run_dir_hooks(NodeId node) {
  std::vector<std::pair<size_t, std::string>> todo;
  {
    Shared lk(tree_mu_);
    auto n = find(node);
    if (!n || !n->is_dir) return {};
    const std::string path = path_of(n);
    for (size_t i = 0; i < layers_.size(); ++i)
      if (ref_at(n, i)) todo.emplace_back(i, path);
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

// ------------------------------------------------------ handles, strategy, ESTALE

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

void UnionFs::log_estale(const NodePtr& n, size_t layer, Op op) {
  if (layer < size_t(UnionStats::kMaxLayers)) stats_.estale[layer][int(op)]++;
  const std::string path = path_of(n);
  log::warn("estale", {{"layer", layers_[layer]->name()},
                       {"op", op_name(op)},
                       {"path", path.empty() ? "/" : path},
                       {"node", std::to_string(raw(n->id))},
                       {"strategy", std::string(strategy_.get().name())}});
}

Result<UniqueFd> UnionFs::open_ref(const NodePtr& n, size_t layer, int flags, Op op) {
  auto ref = ref_at(n, layer);
  if (!ref) return Error::from_errno(ENOENT, "no such layer object");
  const Identity before = ref->id;
  auto fd = strategy_.get().open(*layers_[layer], *ref, [&] { return path_of(n); }, flags);
  if (fd.ok() && ref->type != S_IFDIR && fixes() && !unopened_files_.load() && layers_[layer]->hooks().is_kept(ref->id.ino) &&
      !in_retry_grace(n)) {
    // Replaced or removed since the kernel got this node: ESTALE, so the
    // kernel walks the path again (see the class comment).
    fd = Error::from_errno(ESTALE, path_of(n) + ": replaced");
  }
  if (fd.err() == ESTALE) on_estale(n, layer, op);
  if (!(ref->id == before)) {
    // Only directories are re-pointed (see the class comment).
    {
      std::lock_guard lk(ref_mu(*n));
      if (LayerRef* cur = n->at(layer); cur && cur->id == before) *cur = *ref;
    }
    if (identity_observer_) identity_observer_(n->id);
  }
  return fd;
}

Result<UniqueFd> UnionFs::open_top(const NodePtr& n, int flags, Op op) {
  int top = top_layer(n);
  if (top < 0) return Error::from_errno(ENOENT, path_of(n));
  return open_ref(n, size_t(top), flags, op);
}

void UnionFs::on_estale(const NodePtr& n, size_t layer, Op op) {
  if (fixes()) {
    retire(n);
    return;
  }
  log_estale(n, layer, op);
}

namespace {
// The caller whose request this thread serves (set_request_caller).
thread_local pid_t t_request_caller = 0;
}  // namespace

void UnionFs::set_request_caller(pid_t caller) { t_request_caller = caller; }

void UnionFs::count_retries() { retry_entries_ = estale_names_.size() + grace_nodes_.size(); }

void UnionFs::note_estale_name(const NodePtr& n, Op op) {
  NodePtr p = n->parent.lock();
  if (!p) return;
  const auto now = Steady::now();
  std::lock_guard l(retry_mu_);
  std::erase_if(estale_names_, [&](const auto& e) { return e.second.until <= now; });
  if (estale_names_.size() >= 1024) estale_names_.clear();  // a storm: bounded, and the kernel retries at once
  estale_names_[{raw(p->id), n->name, t_request_caller}] = Retry{now + kRetryGrace, op};
  count_retries();
}

void UnionFs::grace_if_retried(const NodePtr& parent, const std::string& name, const NodePtr& c) {
  if (retry_entries_.load() == 0) return;
  const auto now = Steady::now();
  std::lock_guard l(retry_mu_);
  auto it = estale_names_.find({raw(parent->id), name, t_request_caller});
  if (it == estale_names_.end()) return;
  if (it->second.until <= now) {
    estale_names_.erase(it);
  } else {
    // Kept until it expires: the kernel's re-walk may look the name up twice
    // (revalidation, then a fresh lookup) and meet a newer node the second time.
    std::erase_if(grace_nodes_, [&](const auto& e) { return e.second.until <= now; });
    grace_nodes_[{raw(c->id), t_request_caller}] = it->second;
  }
  count_retries();
}

bool UnionFs::in_retry_grace(const NodePtr& n) { return in_retry_grace(n->id); }

bool UnionFs::in_retry_grace(NodeId id) {
  if (retry_entries_.load() == 0) return false;
  std::lock_guard l(retry_mu_);
  auto it = grace_nodes_.find({raw(id), t_request_caller});
  return it != grace_nodes_.end() && it->second.until > Steady::now();
}

template <typename R>
R UnionFs::gone_in_retry(NodeId node, Op op, R r) {
  if (retry_entries_.load() == 0) return r;
  bool in_grace = false;
  {
    // A retry is one repeated call: it ends its caller's grace. Other calls
    // on the way (the kernel's permission check asks for attributes) do
    // not. (An fd the retry opened keeps its object; fstat is answered
    // through it.)
    std::lock_guard l(retry_mu_);
    auto it = grace_nodes_.find({raw(node), t_request_caller});
    if (it != grace_nodes_.end()) {
      in_grace = it->second.until > Steady::now();
      if (it->second.op == op || !in_grace) grace_nodes_.erase(it);
      count_retries();
    }
  }
  // The kernel does not retry its retry: an object gone again (and not kept)
  // is what a local filesystem reports for a name removed after its lookup.
  if (in_grace && r.err() == ESTALE && fixes() && name_gone(node))
    return Error::from_errno(ENOENT, "removed during the kernel's retry: " + r.error().describe());
  return r;
}

bool UnionFs::name_gone(NodeId node) {
  NodePtr p;
  std::string name;
  {
    Shared lk(tree_mu_);
    auto n = find(node);
    if (!n) return false;
    p = n->parent.lock();
    name = n->name;
  }
  return p && lookup_once(p->id, name).err() == ENOENT;
}

template <typename R>
R UnionFs::answered(NodeId node, Op op, R r) {
  r = gone_in_retry(node, op, std::move(r));
  // The kernel walks the path again and repeats the call once: the name's
  // next lookup hands out a node with one retry's grace.
  if (r.err() == ESTALE && fixes()) {
    Shared lk(tree_mu_);
    if (auto n = find(node)) note_estale_name(n, op);
  }
  return r;
}

void UnionFs::retire(const NodePtr& n) {
  if (n == root_) return;
  if (!n->retired.exchange(true)) {
    stats_.retired_nodes++;
    log::debug("node_retired", {{"path", path_of(n)}, {"node", std::to_string(raw(n->id))}});
  }
  // The next lookup of each of its names loads afresh and finds the new object.
  invalidate_children(n->parent.lock());
  std::lock_guard ll(links_mu_);
  if (n->aliases)
    for (auto& [p, name] : *n->aliases) invalidate_children(p.lock());
}

// ------------------------------------------------------------------ attributes

void UnionFs::present(struct stat& st, const NodePtr& n, bool read_only_layer) {
  st.st_ino = n->ino;
  if (read_only_layer) {
    // A read-only layer's ctime and directory size record our own bookkeeping
    // (a placeholder filled in, a listing written out), not a change of the
    // object: tools that compare them before and after reading (tar, rsync)
    // must see one version's attributes throughout.
    st.st_ctim = st.st_mtim;
    if (S_ISDIR(st.st_mode)) st.st_size = 4096;
  }
  if (!n->is_dir) return;
  std::lock_guard lk(dir_mu(*n));
  if (n->dir->loaded) {
    st.st_nlink = 2 + n->dir->subdirs;
    return;
  }
  std::lock_guard rl(ref_mu(*n));
  // A merged directory not read yet: reading it here would bypass the lower
  // layer's refresh. 1 means "unknown" to find(1), as on overlayfs.
  if (std::popcount(unsigned(n->mask)) > 1) st.st_nlink = 1;
}

int UnionFs::open_fd(const NodePtr& n, bool* read_only_layer) const {
  std::lock_guard lk(open_mu_);
  auto it = open_files_.find(raw(n->id));
  if (it == open_files_.end() || it->second.empty()) return -1;
  *read_only_layer = it->second.front().second;
  return it->second.front().first;
}

void UnionFs::track_open(NodeId node, int fd, const OpenDetails& d) {
  std::lock_guard lk(open_mu_);
  open_files_[raw(node)].emplace_back(fd, d.read_only_layer);
}

void UnionFs::track_close(NodeId node, int fd) {
  std::lock_guard lk(open_mu_);
  auto it = open_files_.find(raw(node));
  if (it == open_files_.end()) return;
  auto& v = it->second;
  v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& f) { return f.first == fd; }), v.end());
  if (v.empty()) open_files_.erase(it);
}

Result<struct stat> UnionFs::stat_node(const NodePtr& n, Op op) {
  int top = top_layer(n);
  Error why = Error::from_errno(ENOENT, path_of(n));
  if (top >= 0 && (!n->retired.load() || in_retry_grace(n) || unopened_files_.load())) {
    auto fd = open_ref(n, size_t(top), O_PATH, op);
    if (fd.ok()) {
      auto stx = layers_[size_t(top)]->hooks().stat(fd->get());
      if (!stx.ok()) return stx.error();
      struct stat st = to_stat(*stx);
      present(st, n, !layers_[size_t(top)]->writable());
      return st;
    }
    if (fd.err() != ESTALE) return fd.error();
    why = fd.error();
  } else if (top >= 0) {
    why = Error::from_errno(ESTALE, path_of(n) + ": replaced");
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

// ------------------------------------------------------------ reading operations

Result<Entry> UnionFs::lookup(NodeId parent, const std::string& name) {
  auto r = retrying([&] { return lookup_once(parent, name); });
  // A child whose object was replaced answers ESTALE once, is retired and
  // its directory's children dropped: the name's next lookup finds the
  // current object, or none. Only a stale parent is the kernel's to re-walk
  // (then every try answers ESTALE at once).
  for (int i = 0; i < 2 && r.err() == ESTALE && fixes(); ++i) r = lookup_once(parent, name);
  return r;
}

Result<Entry> UnionFs::lookup_once(NodeId parent, const std::string& name) {
  if (auto st = run_dir_hooks(parent); !st.ok()) return st.error();
  Shared lk(tree_mu_);
  auto p = find(parent);
  if (!p) return Error::from_errno(ESTALE, "unknown node");
  auto c = child(p, name);
  if (!c.ok()) return c.error();
  grace_if_retried(p, name, *c);
  return entry_for(*c, Op::lookup);
}

void UnionFs::forget(NodeId node, uint64_t nlookup) {
  if (node == kRootNode) return;
  Shard& s = table_[raw(node) % table_.size()];
  NodePtr dropped;  // destroyed with no lock held
  std::lock_guard lk(s.mu);
  auto it = s.nodes.find(raw(node));
  if (it == s.nodes.end()) return;
  NodePtr n = it->second;
  uint64_t cur = n->nlookup.load();
  uint64_t next = nlookup >= cur ? 0 : cur - nlookup;
  n->nlookup = next;
  if (next == 0) {
    dropped = std::move(it->second);
    s.nodes.erase(it);
    stats_.nodes--;
    if (unopened_files_.load()) release_kept_for_kernel(node);
  }
}

Result<struct stat> UnionFs::getattr(NodeId node) {
  return answered(node, Op::getattr, retrying([&] { return getattr_once(node); }));
}

Result<struct stat> UnionFs::getattr_once(NodeId node) {
  Shared lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  return stat_node(n, Op::getattr);
}

Result<struct stat> UnionFs::fgetattr(NodeId node, int fd, const OpenDetails& d) {
  auto stx = d.layer >= 0 && size_t(d.layer) < layers_.size() ? layers_[size_t(d.layer)]->hooks().stat(fd)
                                                                : statx_at(fd, "");
  if (!stx.ok()) return stx.error();
  struct stat st = to_stat(*stx);
  Shared lk(tree_mu_);
  if (auto n = find(node)) present(st, n, d.read_only_layer);
  return st;
}

Status UnionFs::access(NodeId node, int /*mask*/) {
  return retrying([&] { return access_once(node); });
}

Status UnionFs::access_once(NodeId node) {
  if (auto st = run_dir_hooks(node); !st.ok()) return st;
  Shared lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  // Permissions are checked by the kernel (default_permissions); this is the
  // existence check, and a handle use like upstream's.
  auto st = stat_node(n, Op::access);
  if (!st.ok()) return st.error();
  return {};
}

Result<std::string> UnionFs::readlink(NodeId node) {
  return retrying([&] { return readlink_once(node); });
}

Result<std::string> UnionFs::readlink_once(NodeId node) {
  Shared lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  auto fd = open_top(n, O_PATH, Op::readlink);
  if (!fd.ok()) return fd.error();
  char buf[PATH_MAX];
  ssize_t len = ::readlinkat(fd->get(), "", buf, sizeof buf);
  if (len < 0) return sys_error("readlink " + path_of(n));
  return std::string(buf, size_t(len));
}

Result<UniqueFd> UnionFs::opendir(NodeId node, OpenDetails* details) {
  return answered(node, Op::opendir, retrying([&] { return opendir_once(node, details); }));
}

Result<UniqueFd> UnionFs::opendir_once(NodeId node, OpenDetails* details) {
  if (auto st = run_dir_hooks(node); !st.ok()) return st.error();
  Shared lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  if (!n->is_dir) return Error::from_errno(ENOTDIR, path_of(n));
  const int top = top_layer(n);
  if (top < 0) return Error::from_errno(ENOENT, path_of(n));
  // Upstream re-opens the directory's handle on opendir: ESTALE surfaces
  // here. The fixes have a fresh listing to show without loading it again.
  auto fd = open_ref(n, size_t(top), O_PATH | O_DIRECTORY, Op::opendir);
  if (!fd.ok()) return fd.error();
  if (details) {
    details->read_only_layer = !layers_[size_t(top)]->writable();
    details->layer = top;
  }
  {
    std::lock_guard dl(dir_mu(*n));
    if (fixes() && n->dir->fresh() && !strategy_.get().revalidates()) return fd;
  }
  if (auto st = ensure_children(n); !st.ok()) return st.error();
  return fd;
}

Result<std::vector<DirEntry>> UnionFs::readdir(NodeId node) {
  // READDIR works on an open directory: the kernel never retries it after an
  // ESTALE. Under a fix, a directory whose object is gone (removed, or
  // replaced by another) answers what a local filesystem answers for a
  // removed directory that is still open: ENOENT.
  auto gone = [&](const NodePtr& n) {
    return Error::from_errno(ENOENT, "directory removed after it was opened: " + path_of(n));
  };
  auto r = retrying([&]() -> Result<std::vector<DirEntry>> {
    if (auto st = run_dir_hooks(node); !st.ok()) return st.error();
    Shared lk(tree_mu_);
    auto n = find(node);
    if (!n) return Error::from_errno(ESTALE, "unknown node");
    if (!n->is_dir) return Error::from_errno(ENOTDIR, path_of(n));
    if (fixes() && n->retired.load()) return gone(n);
    if (auto st = ensure_children(n); !st.ok()) return st.error();
    NodePtr parent = n->parent.lock();
    std::vector<DirEntry> out;
    std::lock_guard dl(dir_mu(*n));
    out.reserve(n->dir->size() + 2);
    out.push_back({".", n->ino, S_IFDIR});
    out.push_back({"..", parent ? parent->ino : 1, S_IFDIR});
    for (auto& c : n->dir->children) out.push_back({c->name, c->ino, c->type});
    if (n->dir->aliases && !n->dir->aliases->empty()) {
      for (auto& [name, c] : *n->dir->aliases) out.push_back({name, c->ino, c->type});
      std::sort(out.begin() + 2, out.end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
    }
    return out;
  });
  // Whatever went stale on the way (the node itself, a layer directory met
  // before its removal was announced), a fix never hands READDIR an ESTALE.
  if (!r.ok() && r.err() == ESTALE && fixes())
    return Error::from_errno(ENOENT, "directory removed after it was opened: " + r.error().describe());
  return r;
}

Result<struct statvfs> UnionFs::statfs() {
  struct statvfs sv;
  if (::fstatvfs(layers_[0]->root_fd(), &sv) != 0) return sys_error("statfs");
  return sv;
}

namespace {
// One call into a buffer as large as Linux allows for a value or a name list
// (XATTR_SIZE_MAX = XATTR_LIST_MAX = 64 KiB), rather than asking the size
// first: one syscall per request, and no ERANGE if the value grows between two.
template <typename Call>
Result<std::string> read_xattr_buffer(const std::string& what, Call call) {
  std::string buf(XATTR_SIZE_MAX, '\0');
  ssize_t len = call(buf.data(), buf.size());
  if (len < 0) return sys_error(what);
  buf.resize(size_t(len));
  return buf;
}
}  // namespace

Result<std::string> UnionFs::getxattr(NodeId node, const std::string& name) {
  return retrying([&] { return getxattr_once(node, name); });
}

Result<std::string> UnionFs::getxattr_once(NodeId node, const std::string& name) {
  if (reserved_xattr(name)) return Error::from_errno(ENODATA, name);
  Shared lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  auto fd = open_top(n, O_PATH, Op::xattr);
  if (!fd.ok()) return fd.error();
  const std::string proc = proc_fd(fd->get());
  return read_xattr_buffer("getxattr " + name,
                           [&](char* buf, size_t size) { return ::getxattr(proc.c_str(), name.c_str(), buf, size); });
}

Result<std::string> UnionFs::listxattr(NodeId node) {
  return retrying([&] { return listxattr_once(node); });
}

Result<std::string> UnionFs::listxattr_once(NodeId node) {
  Shared lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  auto fd = open_top(n, O_PATH, Op::xattr);
  if (!fd.ok()) return fd.error();
  const std::string proc = proc_fd(fd->get());
  auto all = read_xattr_buffer("listxattr", [&](char* buf, size_t size) { return ::listxattr(proc.c_str(), buf, size); });
  if (!all.ok()) return all.error();
  std::string out;
  for (size_t i = 0; i < all->size();) {
    std::string nm(all->c_str() + i);
    i += nm.size() + 1;
    if (!reserved_xattr(nm)) out += nm + '\0';
  }
  return out;
}

// ------------------------------------------------------------------------ open

Result<UniqueFd> UnionFs::open(NodeId node, int flags, OpenDetails* details) {
  return answered(node, Op::open, retrying([&] { return open_once(node, flags, details); }));
}

Result<UniqueFd> UnionFs::open_once(NodeId node, int flags, OpenDetails* details) {
  const int acc = flags & O_ACCMODE;
  const bool write = acc != O_RDONLY || (flags & O_TRUNC);
  flags &= ~(O_CREAT | O_EXCL | O_NOCTTY);
  if (details) *details = OpenDetails{};
  if (write) {
    // A file already in upper needs no change of the union: shared lock.
    {
      Shared lk(tree_mu_);
      auto n = find(node);
      if (!n) return Error::from_errno(ESTALE, "unknown node");
      if (n->is_dir) return Error::from_errno(EISDIR, path_of(n));
      if (top_layer(n) < 0) return Error::from_errno(ENOENT, path_of(n));
      if (top_layer(n) == 0) return open_ref(n, 0, flags, Op::open);
    }
    return with_content(node, [&]() -> Result<UniqueFd> {
      Exclusive lk(tree_mu_);
      auto n = find(node);
      if (!n) return Error::from_errno(ESTALE, "unknown node");
      if (top_layer(n) < 0) return Error::from_errno(ENOENT, path_of(n));
      if (auto st = copy_up(n); !st.ok()) return st.error();
      return open_ref(n, 0, flags, Op::open);
    });
  }
  std::string hook_path;
  size_t hook_layer = 0;
  {
    Shared lk(tree_mu_);
    auto n = find(node);
    if (!n) return Error::from_errno(ESTALE, "unknown node");
    int top = top_layer(n);
    if (top < 0) return Error::from_errno(ENOENT, path_of(n));
    hook_layer = size_t(top);
    hook_path = path_of(n);
  }
  // Fetching content may take a network round trip: no lock held.
  if (auto st = layers_[hook_layer]->hooks().before_open(hook_path); !st.ok()) return st.error();
  Shared lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  int top = top_layer(n);
  if (top < 0) return Error::from_errno(ENOENT, path_of(n));
  auto fd = open_ref(n, size_t(top), flags, Op::open);
  if (!fd.ok()) return fd;
  // The path's current content is in place (before_open); an object of this
  // node still waiting for its bytes is an older version that never gets
  // them: the node is superseded, never served as a placeholder's zeros.
  auto ref = ref_at(n, size_t(top));
  if (ref && !layers_[size_t(top)]->hooks().content_ready(ref->id.ino)) {
    // Replaced before its bytes came: if its owner still keeps the object
    // (the version this node stands for), it gets them, with no lock held.
    LayerHooks& hooks = layers_[size_t(top)]->hooks();
    const uint64_t ino = ref->id.ino;
    lk.unlock();
    const bool filled = hooks.fill_kept(ino).ok() && hooks.content_ready(ino);
    lk.lock();
    if (!filled) {
      on_estale(n, size_t(top), Op::open);
      return Error::from_errno(ESTALE, "open " + path_of(n) + ": superseded before its content arrived");
    }
  }
  if (details) {
    details->read_only_layer = !layers_[size_t(top)]->writable();
    details->layer = top;
  }
  return fd;
}

Result<UniqueFd> UnionFs::open_unopened(NodeId node, int flags) {
  {
    std::lock_guard lk(open_mu_);
    if (auto it = kept_for_kernel_.find(raw(node)); it != kept_for_kernel_.end()) {
      int fd = ::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0);
      if (fd < 0) return sys_error("dup");
      return UniqueFd(fd);
    }
  }
  return open(node, flags & ~(O_TRUNC | O_CREAT | O_EXCL));
}

void UnionFs::keep_for_kernel(const NodePtr& n) {
  if (!unopened_files_.load() || !S_ISREG(n->type) || n->nlookup.load() == 0) return;
  {
    std::lock_guard ll(links_mu_);
    if (n->aliases && !n->aliases->empty()) return;  // another name carries on
  }
  int top = top_layer(n);
  if (top < 0) return;
  {
    std::lock_guard lk(open_mu_);
    if (kept_for_kernel_.contains(raw(n->id))) return;
    if (kept_for_kernel_.size() >= kMaxKeptForKernel) {
      log::warn("kept_for_kernel_full", {{"path", path_of(n)}, {"limit", std::to_string(kMaxKeptForKernel)}});
      return;
    }
  }
  auto ref = ref_at(n, size_t(top));
  // A placeholder still waiting for its bytes would serve zeros (unlink and
  // rename fetch them first, best effort): such a file's reads fail instead.
  if (!ref || !layers_[size_t(top)]->hooks().content_ready(ref->id.ino)) return;
  auto fd = open_ref(n, size_t(top), layers_[size_t(top)]->writable() ? O_RDWR : O_RDONLY, Op::modify);
  if (!fd.ok()) return;
  std::lock_guard lk(open_mu_);
  const int raw_fd = fd->get();
  open_files_[raw(n->id)].emplace_back(raw_fd, !layers_[size_t(top)]->writable());
  kept_for_kernel_.emplace(raw(n->id), std::move(*fd));
}

void UnionFs::release_kept_for_kernel(NodeId node) {
  UniqueFd gone;
  std::lock_guard lk(open_mu_);
  auto it = kept_for_kernel_.find(raw(node));
  if (it == kept_for_kernel_.end()) return;
  gone = std::move(it->second);
  kept_for_kernel_.erase(it);
  if (auto o = open_files_.find(raw(node)); o != open_files_.end()) {
    std::erase_if(o->second, [&](const auto& f) { return f.first == gone.get(); });
    if (o->second.empty()) open_files_.erase(o);
  }
}

// -------------------------------------------------------------------- copy-up

Status UnionFs::prepare_copy_up(NodeId node) {
  NodePtr n;
  {
    Shared lk(tree_mu_);
    n = find(node);
  }
  return prepare_copy_up_node(n);
}

Status UnionFs::prepare_copy_up(NodeId parent, const std::string& name) {
  NodePtr n;
  {
    Shared lk(tree_mu_);
    if (auto p = find(parent))
      if (auto c = child(p, name); c.ok()) n = *c;
  }
  return prepare_copy_up_node(n);
}

Status UnionFs::prepare_copy_up_node(const NodePtr& n) {
  if (!n || n->is_dir) return {};
  std::string path, parent_path;
  std::optional<TopRef> src;
  {
    Shared lk(tree_mu_);
    src = top_ref(n);
    if (!src || src->layer == 0) return {};
    path = path_of(n);
    parent_path = split_parent(path).first;
  }
  // A network round trip: no lock held.
  if (auto st = layers_[src->layer]->hooks().before_open(path); !st.ok()) return st;
  // The upper directories: a short metadata change.
  {
    Exclusive lk(tree_mu_);
    NodePtr parent = n->parent.lock();
    if (!parent) return {};
    if (auto ud = upper_dir(parent); !ud.ok()) return ud.error();
  }
  // The bytes, into a temporary file beside the name, with no lock held.
  auto in = strategy_.get().open(*layers_[src->layer], src->ref, [&] { return path; }, O_RDONLY);
  if (!in.ok()) return {};  // copy_up itself decides (ESTALE: retired)
  if (!layers_[src->layer]->hooks().content_ready(src->ref.id.ino)) return {};
  auto dir = layers_[0]->open_path(parent_path, O_PATH | O_DIRECTORY);
  if (!dir.ok()) return {};
  std::string tmp = kCopyUpPrefix + std::to_string(raw(n->id)) + "-" + std::to_string(::gettid());
  ::unlinkat(dir->get(), tmp.c_str(), 0);
  int out = ::openat(dir->get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (out < 0) return sys_error("copy-up create " + path);
  UniqueFd outfd(out);
  if (auto st = copy_data(in->get(), out, path); !st.ok()) {
    ::unlinkat(dir->get(), tmp.c_str(), 0);
    return st;
  }
  std::lock_guard pl(prepared_mu_);
  if (auto old = prepared_.find(raw(n->id)); old != prepared_.end())
    ::unlinkat(dir->get(), old->second.tmp.c_str(), 0);
  prepared_[raw(n->id)] = PreparedCopy{tmp, src->ref.id};
  return {};
}

Status UnionFs::copy_data(int in, int out, const std::string& what) {
  for (;;) {
    ssize_t c = ::copy_file_range(in, nullptr, out, nullptr, 1 << 20, 0);
    if (c < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS)) {
      char buf[65536];
      c = ::read(in, buf, sizeof buf);
      if (c > 0 && ::write(out, buf, size_t(c)) != c) c = -1;
    }
    if (c < 0) return sys_error("copy-up data " + what);
    if (c == 0) return {};
  }
}

Result<UniqueFd> UnionFs::upper_dir(const NodePtr& dir) {
  if (!ref_at(dir, 0)) {
    auto st = copy_up(dir);
    if (!st.ok()) return st.error();
  }
  if (upper_dir_observer_) upper_dir_observer_(path_of(dir));
  return open_ref(dir, 0, O_PATH | O_DIRECTORY, Op::modify);
}

Status UnionFs::copy_up(const NodePtr& n) {
  if (ref_at(n, 0)) return {};
  auto src_top = top_ref(n);
  if (!src_top) return Error::from_errno(ENOENT, path_of(n));
  const size_t top = src_top->layer;
  NodePtr parent = n->parent.lock();
  if (!parent) return Error::from_errno(ENOENT, path_of(n));
  // The parent chain first.
  if (!ref_at(parent, 0))
    if (auto st = copy_up(parent); !st.ok()) return st;
  auto updir = open_ref(parent, 0, O_PATH | O_DIRECTORY, Op::modify);
  if (!updir.ok()) return updir.error();
  auto src = open_ref(n, top, O_PATH, Op::modify);
  if (!src.ok()) return src.error();
  auto stx = layers_[top]->hooks().stat(src->get());  // the times the union presented
  if (!stx.ok()) return stx.error();
  const mode_t mode = stx->stx_mode;
  const int ud = updir->get();
  const std::string& name = n->name;
  if (S_ISDIR(mode)) {
    if (::mkdirat(ud, name.c_str(), mode & 07777) != 0 && errno != EEXIST)
      return sys_error("copy-up mkdir " + path_of(n));
  } else if (S_ISLNK(mode)) {
    char target[PATH_MAX];
    ssize_t len = ::readlinkat(src->get(), "", target, sizeof target - 1);
    if (len < 0) return sys_error("copy-up readlink " + path_of(n));
    target[len] = '\0';
    if (::symlinkat(target, ud, name.c_str()) != 0) return sys_error("copy-up symlink " + path_of(n));
  } else if (S_ISREG(mode)) {
    // The bytes were copied with no lock held (prepare_copy_up) when the
    // operation could see it coming; an object still waiting for its content
    // was superseded meanwhile.
    std::optional<PreparedCopy> prepared;
    {
      std::lock_guard pl(prepared_mu_);
      if (auto it = prepared_.find(raw(n->id)); it != prepared_.end()) {
        prepared = std::move(it->second);
        prepared_.erase(it);
      }
    }
    if (!layers_[top]->hooks().content_ready(src_top->ref.id.ino)) {
      if (prepared) ::unlinkat(ud, prepared->tmp.c_str(), 0);
      on_estale(n, top, Op::modify);
      return Error::from_errno(ESTALE, "copy-up " + path_of(n) + ": superseded before its content arrived");
    }
    std::string tmp;
    if (prepared && prepared->source == src_top->ref.id) {
      tmp = prepared->tmp;
    } else {
      if (prepared) ::unlinkat(ud, prepared->tmp.c_str(), 0);
      auto in = open_ref(n, top, O_RDONLY, Op::modify);
      if (!in.ok()) return in.error();
      tmp = kCopyUpPrefix + std::to_string(raw(n->id));
      ::unlinkat(ud, tmp.c_str(), 0);
      int out = ::openat(ud, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
      if (out < 0) return sys_error("copy-up create " + path_of(n));
      UniqueFd outfd(out);
      if (auto st = copy_data(in->get(), out, path_of(n)); !st.ok()) {
        ::unlinkat(ud, tmp.c_str(), 0);
        return st;
      }
    }
    int out = ::openat(ud, tmp.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (out < 0) return sys_error("copy-up reopen " + path_of(n));
    UniqueFd outfd(out);
    auto in = open_ref(n, top, O_RDONLY, Op::modify);
    if (in.ok()) (void)copy_xattrs(in->get(), out);
    ::fchown(out, stx->stx_uid, stx->stx_gid);
    ::fchmod(out, mode & 07777);  // after chown, which clears set-id bits
    struct timespec ts[2] = {{stx->stx_atime.tv_sec, stx->stx_atime.tv_nsec},
                             {stx->stx_mtime.tv_sec, stx->stx_mtime.tv_nsec}};
    ::futimens(out, ts);
    if (::renameat(ud, tmp.c_str(), ud, name.c_str()) != 0) {
      ::unlinkat(ud, tmp.c_str(), 0);
      return sys_error("copy-up rename " + path_of(n));
    }
  } else {
    dev_t rdev = makedev(stx->stx_rdev_major, stx->stx_rdev_minor);
    if (::mknodat(ud, name.c_str(), mode, rdev) != 0) return sys_error("copy-up mknod " + path_of(n));
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
  auto ref = layers_[0]->resolve_at(ud, name);
  if (!ref.ok()) return ref.error();
  {
    std::lock_guard lk(ref_mu(*n));
    if (!n->is_dir) n->clear();
    n->set(0, std::move(*ref));
  }
  // A copied-up directory joins the merge: its children must be re-read.
  if (n->is_dir) invalidate_children(n);
  stats_.copy_ups++;
  return {};
}

// ------------------------------------------------------------------ whiteouts

Result<bool> UnionFs::lower_has(const NodePtr& parent, const std::string& name) {
  {
    std::lock_guard lk(dir_mu(*parent));
    if (parent->dir->opaque) return false;
  }
  for (size_t i = 1; i < layers_.size(); ++i) {
    if (!ref_at(parent, i)) continue;
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

// ------------------------------------------------------------------- names

void UnionFs::add_name(const NodePtr& n, const NodePtr& parent, const std::string& name) {
  if (n->name == name && n->parent.lock() == parent) return;
  std::lock_guard ll(links_mu_);
  if (!n->aliases) n->aliases = std::make_unique<std::vector<std::pair<std::weak_ptr<Node>, std::string>>>();
  for (auto& [p, nm] : *n->aliases)
    if (nm == name && p.lock() == parent) return;
  n->aliases->emplace_back(parent, name);
}

void UnionFs::drop_name(const NodePtr& n, const NodePtr& parent, const std::string& name) {
  std::unique_lock ll(links_mu_);
  if (!(n->name == name && n->parent.lock() == parent)) {
    if (n->aliases)
      std::erase_if(*n->aliases, [&](const auto& a) { return a.second == name && a.first.lock() == parent; });
    return;
  }
  while (n->aliases && !n->aliases->empty()) {
    // Another name of the hard link carries on: the primary must name a live object.
    auto [wp, nm] = n->aliases->back();
    n->aliases->pop_back();
    NodePtr p = wp.lock();
    if (!p) continue;
    ll.unlock();
    n->parent = p;
    n->name = nm;
    put_child(p, nm, n);  // from the directory's aliases to its children
    return;
  }
  ll.unlock();
  // The last name: only open files still reach the object (fgetattr, reads).
  {
    std::lock_guard dl(dir_mu(*parent));
    parent->dir->bury(name, n->ino);
  }
  std::lock_guard lk(ref_mu(*n));
  n->clear();
}

void UnionFs::move_name(const NodePtr& n, const NodePtr& from_parent, const std::string& from,
                        const NodePtr& to_parent, const std::string& to) {
  if (n->name == from && n->parent.lock() == from_parent) {
    n->parent = to_parent;
    n->name = to;
    return;
  }
  std::lock_guard ll(links_mu_);
  if (n->aliases)
    for (auto& a : *n->aliases)
      if (a.second == from && a.first.lock() == from_parent) a = {to_parent, to};
}

// ------------------------------------------------------------------ creating

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
  auto ref = layers_[0]->resolve_at(ud, name);
  if (!ref.ok()) return ref.error();
  const bool is_dir = S_ISDIR(ref->type);
  // A name's new node takes its predecessor's inode number.
  uint64_t ino = 0;
  {
    std::lock_guard dl(dir_mu(*parent));
    ino = parent->dir->unbury(name);
  }
  auto node = new_node(parent, name, is_dir, ino);
  node->type = ref->type;
  node->set(0, std::move(*ref));
  if (is_dir) {
    node->dir->opaque = opaque;
    if (upper_dir_observer_) upper_dir_observer_(path_of(node));
  }
  put_child(parent, name, node);
  return entry_for(node, Op::modify);
}

template <class MakeFn>
Result<Entry> UnionFs::create_common(NodeId parent, const std::string& name, const Caller& c, MakeFn&& make,
                                     bool whiteout_makes_opaque) {
  Exclusive lk(tree_mu_);
  auto p = find(parent);
  if (!p) return Error::from_errno(ESTALE, "unknown node");
  if (name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, name);
  if (auto ex = child(p, name); ex.ok()) return Error::from_errno(EEXIST, name);
  else if (ex.err() != ENOENT) return ex.error();
  auto ud = upper_dir(p);
  if (!ud.ok()) return ud.error();
  bool had_whiteout = false;
  if (auto cl = clear_upper_name(ud->get(), name, &had_whiteout); !cl.ok()) return cl.error();
  auto mode = make(ud->get());
  if (!mode.ok()) return mode.error();
  // A directory created where a whiteout hid a lower one must not merge with it.
  return finish_create(p, name, ud->get(), *mode, c, whiteout_makes_opaque && had_whiteout);
}

Result<Entry> UnionFs::mknod(NodeId parent, const std::string& name, mode_t mode, dev_t rdev, const Caller& c) {
  return create_common(parent, name, c, [&](int ud) -> Result<mode_t> {
    mode_t m = (mode & S_IFMT) | (mode & 07777 & ~c.umask);
    if (::mknodat(ud, name.c_str(), m, rdev) != 0) return sys_error("mknod " + name);
    return m;
  }, false);
}

Result<Entry> UnionFs::mkdir(NodeId parent, const std::string& name, mode_t mode, const Caller& c) {
  return create_common(parent, name, c, [&](int ud) -> Result<mode_t> {
    mode_t m = S_IFDIR | (mode & 07777 & ~c.umask);
    if (::mkdirat(ud, name.c_str(), m & 07777) != 0) return sys_error("mkdir " + name);
    return m;
  }, true);
}

Result<Entry> UnionFs::symlink(NodeId parent, const std::string& name, const std::string& target, const Caller& c) {
  return create_common(parent, name, c, [&](int ud) -> Result<mode_t> {
    if (::symlinkat(target.c_str(), ud, name.c_str()) != 0) return sys_error("symlink " + name);
    return mode_t(S_IFLNK | 0777);
  }, false);
}

Result<std::pair<Entry, UniqueFd>> UnionFs::create(NodeId parent, const std::string& name, mode_t mode, int flags,
                                                   const Caller& c) {
  UniqueFd file;
  auto e = create_common(parent, name, c, [&](int ud) -> Result<mode_t> {
    mode_t m = S_IFREG | (mode & 07777 & ~c.umask);
    int fd = ::openat(ud, name.c_str(), (flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC) & ~O_NOCTTY, m & 07777);
    if (fd < 0) return sys_error("create " + name);
    file.reset(fd);
    return m;
  }, false);
  if (!e.ok()) return e.error();
  return std::make_pair(*e, std::move(file));
}

Result<Entry> UnionFs::link(NodeId node, NodeId new_parent, const std::string& new_name) {
  return with_content(node, [&] { return link_locked(node, new_parent, new_name); });
}

Result<Entry> UnionFs::link_locked(NodeId node, NodeId new_parent, const std::string& new_name) {
  Exclusive lk(tree_mu_);
  auto n = find(node);
  auto p = find(new_parent);
  if (!n || !p) return Error::from_errno(ESTALE, "unknown node");
  if (n->is_dir) return Error::from_errno(EPERM, path_of(n));
  if (new_name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, new_name);
  if (auto ex = child(p, new_name); ex.ok()) return Error::from_errno(EEXIST, new_name);
  else if (ex.err() != ENOENT) return ex.error();
  if (auto st = copy_up(n); !st.ok()) return st.error();
  auto ud = upper_dir(p);
  if (!ud.ok()) return ud.error();
  bool wh = false;
  if (auto cl = clear_upper_name(ud->get(), new_name, &wh); !cl.ok()) return cl.error();
  auto src = open_ref(n, 0, O_PATH, Op::modify);
  if (!src.ok()) return src.error();
  if (::linkat(src->get(), "", ud->get(), new_name.c_str(), AT_EMPTY_PATH) != 0) return sys_error("link " + new_name);
  // The same node under a second name.
  add_name(n, p, new_name);
  put_child(p, new_name, n);
  if (auto r = ref_at(n, 0)) {
    std::lock_guard ll(links_mu_);
    upper_links_[r->id] = n;
  }
  return entry_for(n, Op::modify);
}

// ------------------------------------------------------------------ removing

void UnionFs::fetch_before_removal(NodeId parent, const std::string& name) {
  if (!unopened_files_.load()) return;
  std::string path;
  size_t layer = 0;
  {
    Shared lk(tree_mu_);
    auto p = find(parent);
    NodePtr n = p && p->is_dir ? cached_child(p, name) : nullptr;
    auto src = n && !n->is_dir && n->nlookup.load() > 0 ? top_ref(n) : std::nullopt;
    if (!src || layers_[src->layer]->writable()) return;
    path = path_of(n);
    layer = src->layer;
  }
  // A network round trip: no lock held. Best effort (see keep_for_kernel).
  (void)layers_[layer]->hooks().before_open(path);
}

Status UnionFs::unlink(NodeId parent, const std::string& name) {
  fetch_before_removal(parent, name);
  Exclusive lk(tree_mu_);
  auto p = find(parent);
  if (!p) return Error::from_errno(ESTALE, "unknown node");
  auto c = child(p, name);
  if (!c.ok()) return c.error();
  NodePtr n = *c;
  if (n->is_dir) return Error::from_errno(EISDIR, path_of(n));
  // Before anything changes: a name below that cannot be checked must not
  // come back into view for lack of a whiteout.
  auto lower = lower_has(p, name);
  if (!lower.ok()) return lower.error();
  const bool in_upper = ref_at(n, 0).has_value();
  keep_for_kernel(n);
  if (in_upper) {
    auto ud = upper_dir(p);
    if (!ud.ok()) return ud.error();
    if (::unlinkat(ud->get(), name.c_str(), 0) != 0) return sys_error("unlink " + path_of(n));
  }
  // A name below, or one only in a read-only layer: a whiteout hides it.
  if (*lower || !in_upper)
    if (auto st = whiteout(p, name); !st.ok()) return st;
  erase_child(p, name);
  drop_name(n, p, name);
  return {};
}

Status UnionFs::rmdir(NodeId parent, const std::string& name) {
  Exclusive lk(tree_mu_);
  auto p = find(parent);
  if (!p) return Error::from_errno(ESTALE, "unknown node");
  auto c = child(p, name);
  if (!c.ok()) return c.error();
  NodePtr n = *c;
  if (!n->is_dir) return Error::from_errno(ENOTDIR, path_of(n));
  {
    std::lock_guard dl(dir_mu(*n));
    if (auto st = load_children(n); !st.ok()) return st;
    if (!n->dir->children.empty()) return Error::from_errno(ENOTEMPTY, path_of(n));
  }
  if (ref_at(n, 0)) {
    auto dfd = open_ref(n, 0, O_RDONLY | O_DIRECTORY, Op::modify);
    if (!dfd.ok()) return dfd.error();
    auto entries = read_dir(dfd->get());
    if (!entries.ok()) return entries.error();
    for (auto& e : *entries) {
      auto stx = statx_at(dfd->get(), e.name);
      if (stx.ok() && !is_whiteout(*stx) && !internal_name(e.name)) return Error::from_errno(ENOTEMPTY, path_of(n));
      ::unlinkat(dfd->get(), e.name.c_str(), 0);
    }
    auto ud = upper_dir(p);
    if (!ud.ok()) return ud.error();
    if (::unlinkat(ud->get(), name.c_str(), AT_REMOVEDIR) != 0) return sys_error("rmdir " + path_of(n));
  }
  if (has_lower(n))
    if (auto st = whiteout(p, name); !st.ok()) return st;
  erase_child(p, name);
  drop_name(n, p, name);
  return {};
}

// ------------------------------------------------------------------ renaming

Status UnionFs::rename(NodeId parent, const std::string& name, NodeId new_parent, const std::string& new_name,
                       unsigned flags) {
  if (flags & ~unsigned(RENAME_NOREPLACE | RENAME_EXCHANGE)) return Error::from_errno(EINVAL, "rename flags");
  if (!(flags & RENAME_EXCHANGE)) fetch_before_removal(new_parent, new_name);
  return with_content(parent, name, [&] {
    if (!(flags & RENAME_EXCHANGE)) return rename_locked(parent, name, new_parent, new_name, flags);
    return with_content(new_parent, new_name,
                        [&] { return rename_locked(parent, name, new_parent, new_name, flags); });
  });
}

Status UnionFs::rename_locked(NodeId parent, const std::string& name, NodeId new_parent,
                              const std::string& new_name, unsigned flags) {
  Exclusive lk(tree_mu_);
  auto p = find(parent);
  auto np = find(new_parent);
  if (!p || !np) return Error::from_errno(ESTALE, "unknown node");
  if (new_name.size() > NAME_MAX) return Error::from_errno(ENAMETOOLONG, new_name);
  auto sc = child(p, name);
  if (!sc.ok()) return sc.error();
  NodePtr src = *sc;
  auto dc = child(np, new_name);
  if (!dc.ok() && dc.err() != ENOENT) return dc.error();
  NodePtr dst = dc.ok() ? *dc : nullptr;
  if (dst == src) return {};
  auto merged_dir = [&](const NodePtr& n) { return n->is_dir && has_lower(n); };
  // Like overlayfs without redirect_dir: directories from read-only layers
  // cannot move; callers (mv) fall back to copying.
  if (merged_dir(src) || (flags & RENAME_EXCHANGE && dst && merged_dir(dst)))
    return Error::from_errno(EXDEV, path_of(src));
  if (flags & RENAME_NOREPLACE && dst) return Error::from_errno(EEXIST, new_name);
  if (flags & RENAME_EXCHANGE && !dst) return Error::from_errno(ENOENT, new_name);
  if (dst && !(flags & RENAME_EXCHANGE)) {
    if (dst->is_dir && !src->is_dir) return Error::from_errno(EISDIR, path_of(dst));
    if (!dst->is_dir && src->is_dir) return Error::from_errno(ENOTDIR, path_of(dst));
    if (dst->is_dir) {
      std::lock_guard dl(dir_mu(*dst));
      if (auto st = load_children(dst); !st.ok()) return st;
      if (!dst->dir->children.empty()) return Error::from_errno(ENOTEMPTY, path_of(dst));
    }
  }
  if (src->is_dir) {
    // Moving a directory into itself is EINVAL, as for any filesystem.
    for (NodePtr a = np; a; a = a->parent.lock())
      if (a == src) return Error::from_errno(EINVAL, join_path(path_of(np), new_name));
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
  bool dst_lower_dir = dst && merged_dir(dst);
  if (dst && dst->is_dir && !ref_at(dst, 0) && !(flags & RENAME_EXCHANGE)) {
    // dst exists only below: nothing to replace in upper.
  } else if (dst && !(flags & RENAME_EXCHANGE) && dst->is_dir && ref_at(dst, 0)) {
    // An empty merged-away upper directory may still hold whiteouts.
    auto dfd = open_ref(dst, 0, O_RDONLY | O_DIRECTORY, Op::modify);
    if (dfd.ok())
      if (auto entries = read_dir(dfd->get()); entries.ok())
        for (auto& e : *entries) ::unlinkat(dfd->get(), e.name.c_str(), 0);
  }
  unsigned sys_flags = flags & RENAME_EXCHANGE;
  if (dst && !(flags & RENAME_EXCHANGE)) keep_for_kernel(dst);
  if (::renameat2(sud->get(), name.c_str(), dud->get(), new_name.c_str(), sys_flags) != 0)
    return sys_error("rename " + path_of(src));
  if (dst_lower_dir) {
    int dfd = ::openat(dud->get(), new_name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd >= 0) {
      UniqueFd g(dfd);
      ::fsetxattr(dfd, kOpaqueXattr, "y", 1, 0);
      src->dir->opaque = true;
    }
  }
  if (!(flags & RENAME_EXCHANGE)) {
    if (*lower_src)
      if (auto st = whiteout(p, name); !st.ok()) return st;
    erase_child(p, name);
    if (dst) {
      erase_child(np, new_name);
      drop_name(dst, np, new_name);
    }
    move_name(src, p, name, np, new_name);
    put_child(np, new_name, src);
    if (auto r = layers_[0]->resolve_at(dud->get(), new_name); r.ok()) set_ref(src, 0, std::move(*r));
  } else {
    erase_child(p, name);
    erase_child(np, new_name);
    move_name(src, p, name, np, new_name);
    move_name(dst, np, new_name, p, name);
    put_child(np, new_name, src);
    put_child(p, name, dst);
  }
  return {};
}

// ------------------------------------------------------------------ setattr, xattrs

Result<struct stat> UnionFs::setattr(NodeId node, const struct stat& attr, int to_set, int fd) {
  return with_content(node, [&] { return setattr_locked(node, attr, to_set, fd); });
}

Result<struct stat> UnionFs::setattr_locked(NodeId node, const struct stat& attr, int to_set, int fd) {
  Exclusive lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  // An open file whose names are all gone (or whose name now holds another
  // object): only an fd reaches it. One of the read-only layers is not ours
  // to change: the kernel's re-walk reaches the name's current object.
  const bool gone = top_layer(n) < 0 || n->retired.load();
  bool ro = false;
  if (gone && fd < 0) fd = open_fd(n, &ro);
  if (gone && (fd < 0 || ro)) return Error::from_errno(top_layer(n) < 0 ? ENOENT : ESTALE, path_of(n));
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
    if (::chmod(proc.c_str(), attr.st_mode & 07777) != 0) return sys_error("chmod " + path_of(n));
  if (to_set & (kUid | kGid)) {
    uid_t u = to_set & kUid ? attr.st_uid : uid_t(-1);
    gid_t g = to_set & kGid ? attr.st_gid : gid_t(-1);
    if (::fchownat(target, "", u, g, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0)
      return sys_error("chown " + path_of(n));
  }
  if (to_set & kSize) {
    int r = fd >= 0 ? ::ftruncate(fd, attr.st_size) : ::truncate(proc.c_str(), attr.st_size);
    if (r != 0) return sys_error("truncate " + path_of(n));
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
      NodePtr parent = n->parent.lock();
      if (!parent) return Error::from_errno(ENOENT, path_of(n));
      auto dir = open_ref(parent, 0, O_PATH | O_DIRECTORY, Op::setattr);
      if (!dir.ok()) return dir.error();
      if (::utimensat(dir->get(), n->name.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0)
        return sys_error("utimens " + path_of(n));
    } else if (::utimensat(AT_FDCWD, proc.c_str(), ts, 0) != 0) {
      return sys_error("utimens " + path_of(n));
    }
  }
  if (by_fd) {
    auto stx = statx_at(fd, "");
    if (!stx.ok()) return stx.error();
    struct stat st = to_stat(*stx);
    present(st, n, false);
    return st;
  }
  return stat_node(n, Op::setattr);
}

Status UnionFs::setxattr(NodeId node, const std::string& name, const std::string& value, int flags) {
  if (reserved_xattr(name)) return Error::from_errno(EPERM, name);
  return with_content(node, [&] { return setxattr_locked(node, name, value, flags); });
}

Status UnionFs::setxattr_locked(NodeId node, const std::string& name, const std::string& value, int flags) {
  Exclusive lk(tree_mu_);
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
  if (reserved_xattr(name)) return Error::from_errno(EPERM, name);
  return with_content(node, [&] { return removexattr_locked(node, name); });
}

Status UnionFs::removexattr_locked(NodeId node, const std::string& name) {
  Exclusive lk(tree_mu_);
  auto n = find(node);
  if (!n) return Error::from_errno(ESTALE, "unknown node");
  if (auto st = copy_up(n); !st.ok()) return st;
  auto fd = open_ref(n, 0, O_PATH, Op::xattr);
  if (!fd.ok()) return fd.error();
  if (::removexattr(proc_fd(fd->get()).c_str(), name.c_str()) != 0) return sys_error("removexattr " + name);
  return {};
}

// --------------------------------------------------------------- invalidation

std::vector<KernelInvalidation> UnionFs::on_layer_change(size_t layer, const std::vector<LayerChange>& changes) {
  std::vector<KernelInvalidation> out;
  std::set<uint64_t> listings;  // directories whose names changed: their cached listing goes
  Exclusive lk(tree_mu_);
  for (const auto& ch : changes) {
    auto [parent_path, name] = split_parent(ch.path);
    auto walked = walk(parent_path, false);
    if (!walked.ok()) continue;  // nothing cached on that path, nothing to tell
    NodePtr dir = *walked;
    if (!dir->is_dir) continue;
    // A directory never read: no child of it was ever shown, the kernel holds
    // nothing beneath it (its first listing, above all, is no change).
    if (!dir->dir->loaded) continue;
    NodePtr n = cached_child(dir, name);
    auto ref = n ? ref_at(n, layer) : std::nullopt;
    std::optional<LayerRef> fresh;
    if (auto r = layers_[layer]->resolve(ch.path); r.ok()) fresh = std::move(*r);
    // What the union already shows as it is (the daemon's own writes seen by
    // the upper watcher, a name it created or removed itself): no change.
    const bool known = (n && ref && fresh && fresh->id == ref->id) || (!n && !fresh);
    if (known) {
      stats_.changes_already_known++;
      continue;
    }
    invalidate_children(dir);
    if (kernel_knows(dir)) {
      out.push_back({KernelInvalidation::Kind::entry, dir->id, name});
      listings.insert(raw(dir->id));
    }
    if (!n || !ref) continue;  // a layer this name does not show: nothing cached from it
    layers_[layer]->cache().erase(ref->id);
    if (n->is_dir && fresh) {
      set_ref(n, layer, std::move(fresh));  // directories are re-pointed: no pages to mix
      invalidate_children(n);
    } else if (n->is_dir && int(layer) != top_layer(n)) {
      set_ref(n, layer, std::nullopt);  // a lower part of a merged directory is gone
      invalidate_children(n);
    } else {
      retire(n);  // one node, one object: the name gets a new node on reload
    }
    if (kernel_knows(n)) out.push_back({KernelInvalidation::Kind::inode, n->id, {}});
  }
  for (uint64_t d : listings) out.push_back({KernelInvalidation::Kind::inode, NodeId{d}, {}});
  return out;
}

std::vector<KernelInvalidation> UnionFs::drop_caches() {
  std::vector<KernelInvalidation> out;
  Exclusive lk(tree_mu_);
  std::vector<NodePtr> stack{root_};
  std::set<Node*> seen;
  for (auto& shard : table_) {
    std::lock_guard sl(shard.mu);
    for (auto& [id, n] : shard.nodes) {
      stack.push_back(n);
      out.push_back({KernelInvalidation::Kind::inode, n->id, {}});
    }
  }
  while (!stack.empty()) {
    NodePtr n = stack.back();
    stack.pop_back();
    if (!seen.insert(n.get()).second) continue;
    for (size_t i = 0; i < layers_.size(); ++i) {
      auto ref = ref_at(n, i);
      if (!ref) continue;
      layers_[i]->cache().erase(ref->id);
      // Directories are re-pointed; a replaced file's node is retired when
      // next used, and its name loads a new node.
      if (n->is_dir)
        if (auto fresh = layers_[i]->resolve(path_of(n)); fresh.ok()) set_ref(n, i, std::move(*fresh));
    }
    if (n->is_dir) {
      for (auto& c : n->dir->children) stack.push_back(c);
      if (n->dir->aliases)
        for (auto& [name, c] : *n->dir->aliases) stack.push_back(c);
      invalidate_children(n);
    }
  }
  return out;
}

}  // namespace antares::fs
