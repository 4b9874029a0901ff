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

// The caller of a creating operation: new objects are owned by it.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t umask = 0;
};

// The operations the union counts ESTALE for, by layer.
enum class Op { lookup, getattr, setattr, open, opendir, readdir, access, xattr, readlink, modify, kCount };
const char* op_name(Op op);

struct UnionStats {
  static constexpr int kMaxLayers = 3;
  std::atomic<uint64_t> estale[kMaxLayers][int(Op::kCount)]{};
  std::atomic<uint64_t> copy_ups{0}, whiteouts{0}, dir_loads{0}, dir_reloads{0}, renewed_nodes{0};
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

  // Opens the node's current top object; write access copies it up first.
  // *changed (optional) is set when the object differs from the one whose
  // pages or attributes (size) the kernel holds for this node: the adapter then
  // opens it with direct I/O so no cached page or size can cut the read.
  Result<UniqueFd> open(NodeId node, int flags, bool* changed = nullptr);
  Result<std::pair<Entry, UniqueFd>> create(NodeId parent, const std::string& name, mode_t mode, int flags,
                                            const Caller& c);
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

  // Called (under the union lock; must only queue work) when a handle use
  // found a different object behind a node (a recovery), so the kernel can be
  // told to drop its pages and attributes for that node.
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
  Result<struct stat> getattr_once(NodeId node);
  Status access_once(NodeId node, int mask);
  Result<std::string> readlink_once(NodeId node);
  Result<UniqueFd> open_once(NodeId node, int flags, bool* changed);
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
  Result<UniqueFd> upper_dir(const NodePtr& dir);  // copies the dir chain up as needed
  Result<bool> lower_has(const NodePtr& parent, const std::string& name);
  Status whiteout(const NodePtr& parent, const std::string& name);
  Status clear_upper_name(int upper_dir_fd, const std::string& name, bool* was_whiteout);
  Result<Entry> finish_create(const NodePtr& parent, const std::string& name, int upper_dir_fd, const Caller& c,
                              bool opaque);
  void set_path(const NodePtr& n, const std::string& path);
  void note_open(const NodePtr& n, size_t layer, bool* changed);
  void log_estale(const NodePtr& n, size_t layer, Op op, const std::string& path);

  std::vector<std::unique_ptr<Layer>> layers_;
  StrategySlot& strategy_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, NodePtr> nodes_;           // guarded by mu_: nodes the kernel knows
  std::unordered_map<std::string, uint64_t> path_ino_;    // guarded by mu_
  uint64_t next_node_ = 2;                                // guarded by mu_
  uint64_t next_ino_ = 2;                                 // guarded by mu_
  NodePtr root_;
  UnionStats stats_;
  std::function<void(const std::string&)> upper_dir_observer_;
  std::function<void(NodeId)> identity_observer_;
};

}  // namespace antares::fs
