// A passthrough layer: a local directory whose objects the union reaches
// through kernel file handles (name_to_handle_at / open_by_handle_at against
// the layer's root fd), as libfuse-fs 0.1.9 does, or by path beneath the root
// (strategy C). No fd is held per object: a LayerRef is a path, a handle and
// the identity the handle cache is keyed by.
//
// The three layers (upper, CL, lower) are all instances of Layer; what differs
// is the LayerHooks the lower layer installs (fetch a listing before a
// directory is read, fetch a blob before a file is opened) and writability.
//
// A LayerRef is small and holds no path: the union keeps one per node and
// layer for every entry it has seen (a million at monorepo scale), and
// computes a path from its tree only when a strategy needs one.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/result.h"
#include "common/unique_fd.h"

namespace antares::fs {

// Which backing object a handle denotes: (st_ino, btime) from statx, the key
// upstream's handle cache uses. ext4 may reuse an inode number; btime differs.
struct Identity {
  uint64_t ino = 0;
  int64_t btime_sec = 0;
  uint32_t btime_nsec = 0;
  bool operator==(const Identity&) const = default;
};
struct IdentityHash {
  size_t operator()(const Identity& i) const {
    return std::hash<uint64_t>()(i.ino * 0x9e3779b97f4a7c15ULL ^ uint64_t(i.btime_sec) ^ i.btime_nsec);
  }
};

// An opaque kernel file handle, a value. Handles of the common filesystems
// (ext4: 8 bytes, xfs, btrfs) fit the inline buffer; longer ones (up to
// MAX_HANDLE_SZ) go to the heap.
class FileHandle {
 public:
  FileHandle() = default;
  FileHandle(const FileHandle& o) { assign(o.type_, o.data(), o.size_); }
  FileHandle& operator=(const FileHandle& o) {
    if (this != &o) assign(o.type_, o.data(), o.size_);
    return *this;
  }
  ~FileHandle() { release(); }
  bool empty() const { return size_ == 0 && type_ == 0; }
  bool operator==(const FileHandle& o) const;

  // The handle of `name` in `dirfd` ("" = dirfd itself); never follows symlinks.
  static Result<FileHandle> of(int dirfd, const std::string& name);
  // open_by_handle_at(mount_fd, ...): ESTALE once the object was replaced or removed.
  Result<UniqueFd> open(int mount_fd, int flags) const;

 private:
  static constexpr size_t kInline = 24;
  const unsigned char* data() const { return size_ > kInline ? heap_ : inline_; }
  void assign(int type, const unsigned char* bytes, uint32_t size);
  void release();
  int type_ = 0;
  uint32_t size_ = 0;
  union {
    unsigned char inline_[kInline];
    unsigned char* heap_;
  };
};

// A union node's presence in one layer: the object's handle and identity.
// Where it is (its path beneath the layer root) is the union's to know.
struct LayerRef {
  FileHandle handle;
  Identity id;
  mode_t type = 0;  // S_IFMT bits at resolve time
};

struct HandleCacheStats {
  std::atomic<uint64_t> hits{0}, misses{0}, dropped{0};
};

// Handles keyed by Identity, as upstream's cache is. Bounded and small: when
// full it is cleared (the refs that use handles hold their own copies, so
// clearing only costs re-creating a handle when a name is resolved anew).
class HandleCache {
 public:
  explicit HandleCache(size_t capacity = 1 << 16) : capacity_(capacity) {}
  std::optional<FileHandle> get(const Identity& id);
  void put(const Identity& id, const FileHandle& h);
  void erase(const Identity& id);
  size_t size() const;
  const HandleCacheStats& stats() const { return stats_; }

 private:
  const size_t capacity_;
  mutable std::mutex mu_;  // leaf lock
  std::unordered_map<Identity, FileHandle, IdentityHash> map_;  // guarded by mu_
  HandleCacheStats stats_;
};

// What a layer's owner does before the union reads it. All may block on the
// network; the union calls them with no lock held. Thread-safe.
class LayerHooks {
 public:
  virtual ~LayerHooks() = default;
  // Before a directory's entries or a child of it are read: e.g. refresh a stale listing.
  virtual Status before_dir(const std::string& /*rel*/) { return {}; }
  // Before a regular file is opened for reading: e.g. fetch its content.
  virtual Status before_open(const std::string& /*rel*/) { return {}; }
  // After before_open and an open of inode `ino` of this layer: false if that
  // inode is a placeholder whose content never arrived (an older version
  // replaced before it was fetched). The union then never serves it.
  virtual bool content_ready(uint64_t /*ino*/) { return true; }
  // The object that had inode `ino` in this layer, after its name was
  // replaced or removed, if the owner still keeps it (the lower store does
  // for a few seconds under the fixes). ENOENT otherwise.
  virtual Result<UniqueFd> open_kept(uint64_t /*ino*/, int /*flags*/) {
    return Error::from_errno(ENOENT, "not kept");
  }
  // Whether inode `ino` is such a kept object (replaced or removed).
  virtual bool is_kept(uint64_t /*ino*/) { return false; }
  // Gives a kept placeholder the bytes of its own version, so that
  // content_ready(ino) holds. ENOENT if `ino` is not kept.
  virtual Status fill_kept(uint64_t /*ino*/) { return Error::from_errno(ENOENT, "not kept"); }
  // statx of this layer's object open at `fd`, as the union presents it:
  // the owner may know better than the backing inode (the lower store
  // answers the mtime it keeps while it writes to an object for itself).
  virtual Result<struct statx> stat(int fd);
  // Names the owner keeps in the directory for itself (temporary files).
  virtual bool hidden(std::string_view /*name*/) const { return false; }
};

class Layer {
 public:
  // root must be an existing directory. hooks (optional) is borrowed.
  static Result<std::unique_ptr<Layer>> open(std::string name, const std::string& root, bool writable,
                                             LayerHooks* hooks = nullptr);
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  const std::string& name() const { return name_; }
  const std::string& root() const { return root_; }
  bool writable() const { return writable_; }
  int root_fd() const { return root_fd_.get(); }
  LayerHooks& hooks() { return *hooks_; }
  HandleCache& cache() { return cache_; }

  // The owner brackets every change it makes to the directory (a refresh or
  // re-sync that changes something) between begin_change() and end_change(),
  // delivering its change events in between. A handle use that met ESTALE
  // while a change was in flight, or across one, can then wait for the
  // change's invalidations and retry (strategy B). begin_change() is a
  // counter bump, safe under any lock.
  void begin_change() { changing_++; }
  void end_change();
  // Completed changes so far; with changing() > 0, one is in flight.
  uint64_t change_epoch() const { return epoch_.load(); }
  int changing() const { return changing_.load(); }
  // Waits until no change is in flight; false on timeout.
  bool wait_quiet(std::chrono::milliseconds timeout);

  // statx + handle of `name` in the open directory `dirfd`. The handle comes
  // from the cache when the identity is known; otherwise it is taken between
  // two statx calls that must agree, so a name replaced meanwhile never pairs
  // one object's identity with another's handle.
  Result<LayerRef> resolve_at(int dirfd, const std::string& name);
  // The same for a path beneath the root, resolved without following symlinks.
  Result<LayerRef> resolve(const std::string& rel);
  // Opens what ref's handle denotes (the upstream way: no ESTALE handling).
  // `rel` names it in errors only.
  Result<UniqueFd> open_handle(const LayerRef& ref, int flags, std::string_view rel = {});
  // Opens rel beneath the root: openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
  // O_NOFOLLOW: always the object currently at that path. A path longer than
  // the kernel's PATH_MAX is walked in pieces, each beneath the last.
  Result<UniqueFd> open_path(const std::string& rel, int flags);

 private:
  Layer(std::string name, std::string root, bool writable, UniqueFd root_fd, LayerHooks* hooks);
  const std::string name_, root_;
  const bool writable_;
  UniqueFd root_fd_;
  LayerHooks default_hooks_;
  LayerHooks* hooks_;
  HandleCache cache_;
  std::atomic<int> changing_{0};
  std::atomic<uint64_t> epoch_{0};
  std::mutex quiet_mu_;  // leaf; pairs with quiet_cv_
  std::condition_variable quiet_cv_;
};

// statx with the fields identity and attributes need.
Result<struct statx> statx_at(int dirfd, const std::string& name);
Identity identity_of(const struct statx& stx);
std::string join_path(const std::string& dir, const std::string& name);

}  // namespace antares::fs
