// UnionFs: the merged view of the layers (upper, CL, lower), addressed by node
// id the way the FUSE low-level API is. It owns the node tree, the directory
// children caches, copy-up and whiteouts. It knows nothing of FUSE: the
// adapter in fs/fuse turns its Results into replies, and every handle use
// goes through the current HandleStrategy.
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
// The kernel retries only once: if the object behind the new node is
// replaced again between that lookup and the operation, a layer that keeps
// replaced objects for a while (LayerHooks::open_kept; the lower store does)
// serves the node's own object instead, as a local filesystem serves the
// inode a lookup found. Only then: for kRetryGrace after the kernel was
// answered ESTALE for a name, a node a lookup of that name hands out may
// use its kept object, for the caller that was answered ESTALE until it
// repeats that call (the kernel retries in that caller's task, and may ask
// for attributes on the way; other callers holding the new node neither
// use the grace up nor are served the kept object);
// any other use of a replaced object is ESTALE as above,
// so a cached dentry never serves an old version where the re-walk finds
// the new one. A node in its retry whose object is gone and whose name is
// gone too answers ENOENT, as a local filesystem would.
//
// Scale. A node holds its name relative to its parent and one small LayerRef
// per layer it is in (no paths, no per-path maps): paths are computed from
// the tree when a strategy or a hook needs one. Inode numbers are per node
// and a name's new node inherits its predecessor's, so a path keeps its
// number across replacements for as long as its directory is cached.
//
// Locking (docs/architecture.md, "Threads and locks"). tree_mu_ is a
// reader-writer lock: requests that only read the namespace (lookup,
// getattr, open for reading, readdir, xattr reads) hold it shared and run in
// parallel; requests that change the namespace or a node's layers (create,
// unlink, rename, copy-up's commit, setattr, xattr writes, layer change
// events, strategy switches) hold it exclusively, and only for their
// metadata work: no network and no data copying ever happens under it
// (copy-up copies into a temporary file first). Under the shared lock, a
// directory's children and load state are guarded by its stripe of dir_mu_
// and a node's refs by its stripe of ref_mu_; the node table by its shard's
// mutex. Order: tree_mu_ -> dir_mu_ -> ref_mu_ -> table shards, prepared_mu_,
// links_mu_, open_mu_ (leaves) -> HandleCache::mu_. No dir_mu_ stripe is held
// while another is taken.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "fs/layers/layer.h"
#include "fs/layers/layer_change.h"
#include "fs/layers/strategy.h"

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
  // The index of the file's layer; -1 if unknown.
  int layer = -1;
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
  std::atomic<uint64_t> nodes{0};         // nodes the kernel holds
  // Layer change events that named something the union already showed as it
  // is (its own writes seen by the upper watcher): nothing to drop or tell.
  std::atomic<uint64_t> changes_already_known{0};
};

// A kernel cache entry to drop, queued by strategy B (see Invalidator).
struct KernelInvalidation {
  enum class Kind { inode, entry } kind = Kind::inode;
  NodeId node{0};  // inode: the node (attributes, pages, a directory's listing); entry: the parent
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

  // The process (thread) whose request this thread serves from now on: the
  // kernel's retry of an ESTALE runs in the task that met it, so the retry's
  // grace is that caller's (see the class comment). The adapter sets it per
  // request; 0 (the default) is one anonymous caller.
  static void set_request_caller(pid_t caller);

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

  // Files the kernel opens without asking (--file-open kernel): READ, WRITE,
  // fstat and fsync then come without an fd of ours. open_unopened opens,
  // for one such call, the object the node stands for: written to, it is
  // copied up first (no O_TRUNC: the kernel truncates with SETATTR). With
  // no OPEN to send back to the kernel's re-walk, a node then reaches its
  // own object for as long as it exists (a replaced one while its owner
  // keeps it): reads, fstat (a plain GETATTR) and the rest. And since no
  // open fd keeps an object whose last name is removed through the mount,
  // the union keeps one itself for as long as the kernel holds the node
  // (until FORGET; at most kMaxKeptForKernel).
  void set_unopened_files(bool on) { unopened_files_ = on; }
  Result<UniqueFd> open_unopened(NodeId node, int flags);
  static constexpr size_t kMaxKeptForKernel = 4096;

  // Opening a directory: runs its layers' hooks and checks it (upstream
  // re-opens the directory's handle here, so ESTALE shows up at opendir).
  // Opens a directory: an O_PATH fd of its top layer's directory, which the
  // caller keeps while the directory is open (track_open), so that fstat of
  // an open directory removed behind it still answers.
  Result<UniqueFd> opendir(NodeId node, OpenDetails* details = nullptr);
  // The merged listing ("." and ".." first), sorted by name.
  Result<std::vector<DirEntry>> readdir(NodeId node);
  Result<struct statvfs> statfs();

  Result<std::string> getxattr(NodeId node, const std::string& name);
  Result<std::string> listxattr(NodeId node);  // NUL-separated names
  Status setxattr(NodeId node, const std::string& name, const std::string& value, int flags);
  Status removexattr(NodeId node, const std::string& name);

  // Strategy B: a layer's owner changed these paths in layer `layer`. Drops
  // affected handles and cached children now, and returns what the kernel
  // must be told (the caller sends it from a thread holding no lock): only
  // names and nodes the kernel may hold, only for what really changed.
  std::vector<KernelInvalidation> on_layer_change(size_t layer, const std::vector<LayerChange>& changes);
  // Switching strategy: forget every cached handle and loaded directory so a
  // fix heals nodes that already went stale under none. Returns what the
  // kernel must drop: every inode it holds (cached listings, pages and
  // attributes may date from a strategy that no longer invalidates them).
  std::vector<KernelInvalidation> drop_caches();

  // Called (no union lock held but a dir_mu_ stripe may be; must be quick and
  // take only leaf locks) each time an upper-layer directory is read, so a
  // watcher can follow it.
  void set_upper_dir_observer(std::function<void(const std::string&)> f) { upper_dir_observer_ = std::move(f); }

  // Called (under union locks; must only queue work) when a directory node
  // was re-pointed at a new directory (a recovery), so the kernel can be told
  // to drop what it cached for it.
  void set_identity_observer(std::function<void(NodeId)> f) { identity_observer_ = std::move(f); }

  const UnionStats& stats() const { return stats_; }
  size_t layer_count() const { return layers_.size(); }
  Layer& layer(size_t i) { return *layers_[i]; }

 private:
  struct Node;
  struct DirState;
  using NodePtr = std::shared_ptr<Node>;
  using Shared = std::shared_lock<std::shared_mutex>;
  using Exclusive = std::unique_lock<std::shared_mutex>;
  // A node's ref in one layer, copied out of it under its ref_mu_ stripe.
  struct TopRef {
    size_t layer = 0;
    LayerRef ref;
  };
  // A regular file's content, copied into a temporary file in its upper
  // directory with no union lock held, for copy_up to rename into place.
  struct PreparedCopy {
    std::string tmp;   // name in the upper directory
    Identity source;   // the object it was copied from
  };

  // --- the node tree -------------------------------------------------------
  NodePtr find(NodeId id) const;
  NodePtr new_node(const NodePtr& parent, const std::string& name, bool is_dir, uint64_t ino = 0);
  std::string path_of(const Node& n) const;       // beneath the layer roots; "" is the root
  std::string path_of(const NodePtr& n) const { return path_of(*n); }
  std::mutex& dir_mu(const Node& n) const;
  std::mutex& ref_mu(const Node& n) const;
  std::optional<TopRef> top_ref(const NodePtr& n) const;
  std::optional<LayerRef> ref_at(const NodePtr& n, size_t layer) const;
  void set_ref(const NodePtr& n, size_t layer, std::optional<LayerRef> ref);
  int top_layer(const NodePtr& n) const;
  bool has_lower(const NodePtr& n) const;  // a ref below the upper layer
  // The node at union path `path`, from the root: loading directories as
  // needed (load) or only through what is cached. Requires tree_mu_.
  Result<NodePtr> walk(const std::string& path, bool load);
  Result<NodePtr> child(const NodePtr& parent, const std::string& name);  // requires tree_mu_
  NodePtr cached_child(const NodePtr& dir, const std::string& name);      // requires tree_mu_
  // The entry `name` of dir becomes c (its primary name or an alias).
  void put_child(const NodePtr& dir, const std::string& name, const NodePtr& c);  // requires tree_mu_ exclusive
  void erase_child(const NodePtr& dir, const std::string& name);                  // requires tree_mu_ exclusive
  Status load_children(const NodePtr& dir);    // requires tree_mu_ and dir_mu(dir)
  Status ensure_children(const NodePtr& dir);  // requires tree_mu_; takes dir_mu(dir)
  bool children_stale(const NodePtr& dir);     // requires dir_mu(dir)
  void invalidate_children(const NodePtr& dir);
  bool kernel_knows(const NodePtr& n) const;
  Result<Entry> entry_for(const NodePtr& n, Op op);  // requires tree_mu_
  Status run_dir_hooks(NodeId node);                  // no union lock held

  // --- handles and the strategy ----------------------------------------------
  Result<UniqueFd> open_ref(const NodePtr& n, size_t layer, int flags, Op op);  // requires tree_mu_
  Result<UniqueFd> open_top(const NodePtr& n, int flags, Op op);
  // The ESTALE of a handle use: the fixes retire the node, none logs the bug.
  void on_estale(const NodePtr& n, size_t layer, Op op);
  // The kernel's retry (see the class comment): names whose node met ESTALE,
  // and nodes a lookup of such a name handed out, for kRetryGrace; both per
  // caller (set_request_caller).
  void note_estale_name(const NodePtr& n, Op op);
  void grace_if_retried(const NodePtr& parent, const std::string& name, const NodePtr& c);
  bool in_retry_grace(const NodePtr& n);
  bool in_retry_grace(NodeId id);
  void count_retries();  // requires retry_mu_: sets retry_entries_
  // Ends the caller's grace if op is the call it was for; ESTALE of a node
  // in its retry grace -> ENOENT (the kernel would pass it on).
  template <typename R>
  R gone_in_retry(NodeId node, Op op, R r);
  bool name_gone(NodeId node);  // the node's name, looked up now, is ENOENT
  // What a call gives the kernel: gone_in_retry, and an ESTALE noted for the retry.
  template <typename R>
  R answered(NodeId node, Op op, R r);
  void retire(const NodePtr& n);
  bool fixes() const;
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
  void log_estale(const NodePtr& n, size_t layer, Op op);

  // --- attributes --------------------------------------------------------------
  Result<struct stat> stat_node(const NodePtr& n, Op op);  // requires tree_mu_
  void present(struct stat& st, const NodePtr& n, bool read_only_layer);
  int open_fd(const NodePtr& n, bool* read_only_layer) const;

  // --- copy-up -------------------------------------------------------------------
  // Fetches a regular file's content (network) and copies it into a
  // temporary file in its upper directory, with no union lock held; copy_up
  // then only renames it into place. Makes the upper directories first.
  Status prepare_copy_up(NodeId node);
  Status prepare_copy_up(NodeId parent, const std::string& name);
  Status prepare_copy_up_node(const NodePtr& n);
  template <class F>
  auto with_content(NodeId node, F&& op);
  template <class F>
  auto with_content(NodeId parent, const std::string& name, F&& op);
  Status copy_up(const NodePtr& n);                  // requires tree_mu_ exclusive
  Result<UniqueFd> upper_dir(const NodePtr& dir);    // copies the dir chain up as needed; exclusive
  Status copy_data(int in, int out, const std::string& what);

  // --- names ---------------------------------------------------------------------
  Result<bool> lower_has(const NodePtr& parent, const std::string& name);
  Status whiteout(const NodePtr& parent, const std::string& name);
  Status clear_upper_name(int upper_dir_fd, const std::string& name, bool* was_whiteout);
  Result<Entry> finish_create(const NodePtr& parent, const std::string& name, int upper_dir_fd, mode_t mode,
                              const Caller& c, bool opaque);
  Status own_new(int upper_dir_fd, const std::string& name, mode_t mode, const Caller& c);
  // Hard links: a node may have more names than its primary (aliases, under
  // links_mu_); the directories hold those names in DirState::aliases.
  void add_name(const NodePtr& n, const NodePtr& parent, const std::string& name);
  // Removes one name; the node keeps another or, with none left, its refs go.
  void drop_name(const NodePtr& n, const NodePtr& parent, const std::string& name);
  // Moves one name of n.
  void move_name(const NodePtr& n, const NodePtr& from_parent, const std::string& from, const NodePtr& to_parent,
                 const std::string& to);

  // --- the operations' bodies ----------------------------------------------------
  Result<Entry> lookup_once(NodeId parent, const std::string& name);
  Result<struct stat> getattr_once(NodeId node);
  Status access_once(NodeId node);
  Result<std::string> readlink_once(NodeId node);
  Result<UniqueFd> open_once(NodeId node, int flags, OpenDetails* details);
  Result<UniqueFd> opendir_once(NodeId node, OpenDetails* details);
  Result<std::string> getxattr_once(NodeId node, const std::string& name);
  Result<std::string> listxattr_once(NodeId node);
  Result<Entry> link_locked(NodeId node, NodeId new_parent, const std::string& new_name);
  Status rename_locked(NodeId parent, const std::string& name, NodeId new_parent, const std::string& new_name,
                       unsigned flags);
  Result<struct stat> setattr_locked(NodeId node, const struct stat& attr, int to_set, int fd);
  Status setxattr_locked(NodeId node, const std::string& name, const std::string& value, int flags);
  Status removexattr_locked(NodeId node, const std::string& name);
  template <class MakeFn>
  Result<Entry> create_common(NodeId parent, const std::string& name, const Caller& c, MakeFn&& make,
                              bool whiteout_makes_opaque);

  std::vector<std::unique_ptr<Layer>> layers_;
  StrategySlot& strategy_;
  mutable std::shared_mutex tree_mu_;
  mutable std::array<std::mutex, 64> dir_mu_;
  mutable std::array<std::mutex, 64> ref_mu_;
  struct Shard {
    std::mutex mu;
    std::unordered_map<uint64_t, NodePtr> nodes;  // the nodes the kernel holds
  };
  mutable std::array<Shard, 16> table_;
  std::atomic<uint64_t> next_node_{2};
  std::atomic<uint64_t> next_ino_{2};
  NodePtr root_;
  UnionStats stats_;
  // Upper objects with more than one name, by identity: every name of a hard
  // link is the same node (one inode number, one page cache).
  std::mutex links_mu_;
  std::unordered_map<Identity, std::weak_ptr<Node>, IdentityHash> upper_links_;  // guarded by links_mu_
  // track_open: node id -> (fd, read-only layer).
  mutable std::mutex open_mu_;
  static constexpr std::chrono::milliseconds kRetryGrace{1000};
  using Steady = std::chrono::steady_clock;
  std::mutex retry_mu_;  // leaf
  // One retry per ESTALE a caller got, moved from (parent, name, caller) to
  // (node its lookup found, caller): until when, and the call it repeats.
  struct Retry {
    Steady::time_point until;
    Op op;
  };
  using RetryCaller = pid_t;
  std::map<std::tuple<uint64_t, std::string, RetryCaller>, Retry> estale_names_;  // guarded by retry_mu_
  std::map<std::pair<uint64_t, RetryCaller>, Retry> grace_nodes_;                 // guarded by retry_mu_
  std::atomic<size_t> retry_entries_{0};  // estale_names_ + grace_nodes_: 0 skips the lock
  std::unordered_map<uint64_t, std::vector<std::pair<int, bool>>> open_files_;  // guarded by open_mu_
  std::unordered_map<uint64_t, UniqueFd> kept_for_kernel_;                      // guarded by open_mu_
  std::atomic<bool> unopened_files_{false};
  void keep_for_kernel(const NodePtr& n);  // before the last name of n goes
  void fetch_before_removal(NodeId parent, const std::string& name);  // its bytes, for keep_for_kernel
  void release_kept_for_kernel(NodeId node);
  // prepare_copy_up -> copy_up, by node id.
  std::mutex prepared_mu_;
  std::unordered_map<uint64_t, PreparedCopy> prepared_;  // guarded by prepared_mu_
  std::function<void(const std::string&)> upper_dir_observer_;
  std::function<void(NodeId)> identity_observer_;
};

}  // namespace antares::fs
