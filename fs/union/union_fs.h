// UnionFs: the merged view of the layers (upper, CL, lower), addressed by node
// id the way the FUSE low-level API is. It owns the node table, the per-path
// stable inode numbers, the directory children caches, copy-up and whiteouts.
// It knows nothing of FUSE: the adapter in fs/fuse turns its Results into
// replies, and every handle use goes through the current HandleStrategy.
//
// Upstream fidelity (strategy none): a directory's children are loaded once
// and later lookups are answered from that cache with the same node id; the
// child's cached handle is re-opened for every getattr/open, so a replaced
// backing object gives ESTALE until the kernel forgets the node. Only the
// probe that loads a directory treats ESTALE as "not in this layer".
//
// The fixes rest on one rule: a node denotes one backing object. When the
// object behind a name is replaced, the name gets a new node id; the old node
// is retired, never re-pointed, so the kernel's pages and attributes of a node
// always belong to one object and open fds keep reading what they opened. A
// use of a retired node answers ESTALE on purpose: the kernel then walks the
// path again (LOOKUP_REVAL) and meets the new node, so callers never see it.
// (Directories have no pages: their refs are re-pointed instead.)
//
// Locking: mu_ guards the node table, every node's refs and children, and the
// path->ino map. It is held across local syscalls on layer directories but
// never across LayerHooks (network) nor while replying. Lock order:
// UnionFs::mu_ -> HandleCache::mu_ (leaf).
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "fs/layers/layer.h"
#include "fs/layers/strategy.h"
#include "fs/layers/layer_change.h"

namespace antares::fs {

enum class NodeId : uint64_t {};
inline constexpr NodeId kRootNode{1};  // FUSE_ROOT_ID; 0 is never handed out
inline uint64_t raw(NodeId n) { return static_cast<uint64_t>(n); }

struct Entry {
  NodeId node{0};
  struct stat attr {};
};

struct DirEntry {
  std::string name;
  uint64_t ino = 0;
  mode_t type = 0;  // S_IFMT bits
};

// The caller of a creating operation: new objects are owned by it, and its
// umask (only) applies to their mode.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t umask = 0;
  // Whether the caller is in group g (supplementary groups included); asked
  // only when a set-gid directory hands a new file a group. Null: only gid.
  std::function<bool(gid_t)> in_group;
};

// What the union tells the adapter about a file it opened.
struct OpenDetails {
  // The file's layer is read-only (CL, lower): fstat of its fd goes through
  // fgetattr so the attributes match what getattr reports.
  bool read_only_layer = false;
};

// The operations the union counts ESTALE for, by layer.
enum class Op { lookup, getattr, setattr, open, opendir, readdir, access, xattr, readlink, modify, kCount };
const char* op_name(Op op);

struct UnionStats {
  static constexpr int kMaxLayers = 3;
  std::atomic<uint64_t> estale[kMaxLayers][int(Op::kCount)]{};
  std::atomic<uint64_t> copy_ups{0}, whiteouts{0}, dir_loads{0}, dir_reloads{0}, renewed_nodes{0};
  // Fixes: nodes whose object was replaced or removed; their use answered
  // ESTALE for the kernel to re-walk (not counted in estale[]).
  std::atomic<uint64_t> retired_nodes{0};
  std::atomic<uint64_t> change_races{0};  // B: ESTALE met during a change, retried after its invalidation
  std::atomic<uint64_t> nodes{0};
};

// A kernel cache entry to drop, queued by strategy B (see Invalidator).
struct KernelInvalidation {
  enum class Kind { inode, entry } kind = Kind::inode;
  NodeId node{0};  // inode: the node; entry: the parent
  std::string name;
};

class UnionFs {
 public:
  // layers: top to bottom; layers[0] is the writable upper layer.
  UnionFs(std::vector<std::unique_ptr<Layer>> layers, StrategySlot& strategy);
  ~UnionFs();
  UnionFs(const UnionFs&) = delete;
  UnionFs& operator=(const UnionFs&) = delete;

  // Resolves the layers' roots; must succeed before any other call.
  Status init();

  Result<Entry> lookup(NodeId parent, const std::string& name);
  void forget(NodeId node, uint64_t nlookup);
  Result<struct stat> getattr(NodeId node);
  // fstat of an open file of the node (FUSE getattr with a file handle): the
  // object the caller opened, even if its name is gone or was replaced.
  Result<struct stat> fgetattr(NodeId node, int fd, const OpenDetails& d);
  // to_set: FUSE_SET_ATTR_* bits. fd: an open fd of the node, if the kernel gave one.
  Result<struct stat> setattr(NodeId node, const struct stat& attr, int to_set, int fd);
  Result<std::string> readlink(NodeId node);
  Status access(NodeId node, int mask);

  Result<Entry> mknod(NodeId parent, const std::string& name, mode_t mode, dev_t rdev, const Caller& c);
  Result<Entry> mkdir(NodeId parent, const std::string& name, mode_t mode, const Caller& c);
  Result<Entry> symlink(NodeId parent, const std::string& name, const std::string& target, const Caller& c);
  Result<Entry> link(NodeId node, NodeId new_parent, const std::string& new_name);
  Status unlink(NodeId parent, const std::string& name);
  Status rmdir(NodeId parent, const std::string& name);
  // flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
  Status rename(NodeId parent, const std::string& name, NodeId new_parent, const std::string& new_name,
                unsigned flags);

  // Opens the node's object; write access copies it up first (a node keeps
  // its id across copy-up: same bytes, same pages).
  Result<UniqueFd> open(NodeId node, int flags, OpenDetails* details = nullptr);
  Result<std::pair<Entry, UniqueFd>> create(NodeId parent, const std::string& name, mode_t mode, int flags,
                                            const Caller& c);
  // The adapter's open files of a node, between a successful open or create
  // and the release: when a node's names are gone or its object was
  // replaced, an open fd is the only way left to reach its object (fstat of
  // an unlinked file arrives as a plain getattr).
  void track_open(NodeId node, int fd, const OpenDetails& d);
  void track_close(NodeId node, int fd);

  // The merged listing ("." and ".." first), for one opendir.
  Result<std::vector<DirEntry>> opendir(NodeId node);
  Result<struct statvfs> statfs();

  Result<std::string> getxattr(NodeId node, const std::string& name);
  Result<std::string> listxattr(NodeId node);  // NUL-separated names
  Status setxattr(NodeId node, const std::string& name, const std::string& value, int flags);
  Status removexattr(NodeId node, const std::string& name);

  // Strategy B: a layer's owner changed these paths in layer `layer`. Drops
  // affected handles and cached children now, and returns what the kernel
  // must be told (the caller sends it from a thread holding no lock).
  std::vector<KernelInvalidation> on_layer_change(size_t layer, const std::vector<LayerChange>& changes);
  // Switching strategy: forget every cached handle and loaded directory so a
  // fix heals nodes that already went stale under none.
  void drop_caches();

  // Called (under the union lock; must be quick and take only leaf locks)
  // each time an upper-layer directory is read, so a watcher can follow it.
  void set_upper_dir_observer(std::function<void(const std::string&)> f) { upper_dir_observer_ = std::move(f); }

  // Called (under the union lock; must only queue work) when a directory
  // node was re-pointed at a new directory (a recovery), so the kernel can be
  // told to drop what it cached for it.
  void set_identity_observer(std::function<void(NodeId)> f) { identity_observer_ = std::move(f); }

  const UnionStats& stats() const { return stats_; }
  size_t layer_count() const { return layers_.size(); }
  Layer& layer(size_t i) { return *layers_[i]; }

 private:
  struct Node;
  using NodePtr = std::shared_ptr<Node>;
  struct Locked;

  NodePtr find(NodeId id) const;  // requires mu_
  Result<Entry> lookup_once(NodeId parent, const std::string& name);
  Result<Entry> link_locked(NodeId node, NodeId new_parent, const std::string& new_name);
  Status rename_locked(NodeId parent, const std::string& name, NodeId new_parent, const std::string& new_name,
                       unsigned flags);
  Result<struct stat> setattr_locked(NodeId node, const struct stat& attr, int to_set, int fd);
  Status setxattr_locked(NodeId node, const std::string& name, const std::string& value, int flags);
  Status removexattr_locked(NodeId node, const std::string& name);
  Result<struct stat> getattr_once(NodeId node);
  Status access_once(NodeId node, int mask);
  Result<std::string> readlink_once(NodeId node);
  Result<UniqueFd> open_once(NodeId node, int flags, OpenDetails* details);
  Result<std::vector<DirEntry>> opendir_once(NodeId node);
  Result<std::string> getxattr_once(NodeId node, const std::string& name);
  Result<std::string> listxattr_once(NodeId node);
  // Changes the layers' owners completed so far, all layers together.
  uint64_t changes_completed() const;
  // Strategy B: whether an ESTALE raced a change being applied (then waits for it).
  bool should_retry_after_change(int err, uint64_t changes_before);
  // Runs op, and once more if its ESTALE raced a change (B). op locks itself.
  template <class F>
  auto retrying(F&& op) {
    const uint64_t before = changes_completed();
    auto r = op();
    if (should_retry_after_change(r.err(), before)) r = op();
    return r;
  }
  // The node at union path `path`, from the root: loading directories as
  // needed (load) or only through what is cached; requires mu_.
  Result<NodePtr> walk_locked(const std::string& path, bool load);
  // The node's top object, opened through the strategy; requires mu_.
  Result<UniqueFd> open_top_locked(NodeId node, int flags, Op op, NodePtr* out = nullptr);
  NodePtr new_node(const std::string& path, bool is_dir);
  uint64_t ino_for(const std::string& path);
  Result<NodePtr> child_locked(const NodePtr& parent, const std::string& name);
  Status load_children(const NodePtr& dir);
  // Loads dir's children if not loaded, or reloads them if the strategy
  // re-checks directories and a layer directory changed. Requires mu_.
  Status ensure_children(const NodePtr& dir);
  bool children_stale(const NodePtr& dir);
  Result<UniqueFd> open_ref(const NodePtr& n, size_t layer, int flags, Op op);
  Result<struct stat> stat_locked(const NodePtr& n, Op op);
  Result<Entry> entry_for(const NodePtr& n, Op op);
  Status run_dir_hooks(NodeId node);
  Status copy_up(const NodePtr& n);
  // Fetches the content a copy-up of (parent, name) or node will need, with
  // no lock held; ops that copy up run after it (see with_content).
  Status prefetch_for_copy_up(const NodePtr& n);
  template <class F>
  auto with_content(NodeId node, F&& op);
  template <class F>
  auto with_content(NodeId parent, const std::string& name, F&& op);
  // The node's object is gone or replaced: a fix retires it (see the class
  // comment) and makes the names it had load afresh. Requires mu_.
  void retire(const NodePtr& n);
  // The ESTALE of a handle use: the fixes retire the node, none logs the bug.
  void on_estale(const NodePtr& n, size_t layer, Op op);
  // stat of the node's object as the union reports it. Requires mu_.
  void present(struct stat& st, const NodePtr& n, bool read_only_layer) const;
  // An fd the adapter holds open on n (-1 if none), and its layer kind. Requires mu_.
  int open_fd(const NodePtr& n, bool* read_only_layer) const;
  // A directory's link count as the union knows it. Requires mu_.
  static struct stat finish_stat(struct stat st, const NodePtr& n);
  // Hard links: a node may have more names than its path (aliases).
  void add_name(const NodePtr& n, const std::string& path);
  // Removes one name; the node keeps another or, with none left, its refs go.
  void drop_name(const NodePtr& n, const std::string& path);
  // Renames one name of n (and the names beneath it, for directories).
  void move_name(const NodePtr& n, const std::string& from, const std::string& to);
  // Owner and exact mode of a just-created upper object (see Caller).
  Status own_new(int upper_dir_fd, const std::string& name, mode_t mode, const Caller& c);
  Result<UniqueFd> upper_dir(const NodePtr& dir);  // copies the dir chain up as needed
  Result<bool> lower_has(const NodePtr& parent, const std::string& name);
  Status whiteout(const NodePtr& parent, const std::string& name);
  Status clear_upper_name(int upper_dir_fd, const std::string& name, bool* was_whiteout);
  Result<Entry> finish_create(const NodePtr& parent, const std::string& name, int upper_dir_fd, mode_t mode,
                              const Caller& c, bool opaque);
  void log_estale(const NodePtr& n, size_t layer, Op op, const std::string& path);

  std::vector<std::unique_ptr<Layer>> layers_;
  StrategySlot& strategy_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, NodePtr> nodes_;           // guarded by mu_: nodes the kernel knows
  std::unordered_map<std::string, uint64_t> path_ino_;    // guarded by mu_
  // Upper objects with more than one name, by identity: every name of a hard
  // link is the same node (one inode number, one page cache). Guarded by mu_.
  std::unordered_map<Identity, std::weak_ptr<Node>, IdentityHash> upper_links_;
  // track_open: node id -> (fd, read-only layer). Guarded by mu_.
  std::unordered_map<uint64_t, std::vector<std::pair<int, bool>>> open_files_;
  uint64_t next_node_ = 2;                                // guarded by mu_
  uint64_t next_ino_ = 2;                                 // guarded by mu_
  NodePtr root_;
  UnionStats stats_;
  std::function<void(const std::string&)> upper_dir_observer_;
  std::function<void(NodeId)> identity_observer_;
};

}  // namespace antares::fs
