// A passthrough layer: a local directory whose objects the union reaches
// through kernel file handles (name_to_handle_at / open_by_handle_at against
// the layer's root fd), as libfuse-fs 0.1.9 does, or by path beneath the root
// (strategy C). No fd is held per object: a LayerRef is a path, a handle and
// the identity the handle cache is keyed by.
//
// The three layers (upper, CL, lower) are all instances of Layer; what differs
// is the LayerHooks the lower layer installs (fetch a listing before a
// directory is read, fetch a blob before a file is opened) and writability.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
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

// An opaque kernel file handle. Immutable; shared between the cache and refs.
class FileHandle {
 public:
  // The handle of `name` in `dirfd` ("" = dirfd itself); never follows symlinks.
  static Result<std::shared_ptr<const FileHandle>> of(int dirfd, const std::string& name);
  // open_by_handle_at(mount_fd, ...): ESTALE once the object was replaced or removed.
  Result<UniqueFd> open(int mount_fd, int flags) const;

 private:
  std::string bytes_;  // struct file_handle, header included
};

// A union node's presence in one layer.
struct LayerRef {
  std::string path;  // beneath the layer root, no leading '/'; "" is the root
  std::shared_ptr<const FileHandle> handle;
  Identity id;
  mode_t type = 0;  // S_IFMT bits at resolve time
};

struct HandleCacheStats {
  std::atomic<uint64_t> hits{0}, misses{0}, dropped{0};
};

// Handles keyed by Identity. Bounded: when full it is cleared (handles are
// also held by the refs that use them, so clearing only costs re-creation).
class HandleCache {
 public:
  explicit HandleCache(size_t capacity = 1 << 20) : capacity_(capacity) {}
  std::shared_ptr<const FileHandle> get(const Identity& id);
  void put(const Identity& id, std::shared_ptr<const FileHandle> h);
  void erase(const Identity& id);
  size_t size() const;
  const HandleCacheStats& stats() const { return stats_; }

 private:
  const size_t capacity_;
  mutable std::mutex mu_;  // leaf lock
  std::unordered_map<Identity, std::shared_ptr<const FileHandle>, IdentityHash> map_;  // guarded by mu_
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

  // statx + handle of `name` in the open directory `dirfd`, whose layer path is
  // dir_rel. The handle comes from the cache when the identity is known;
  // otherwise it is taken between two statx calls that must agree, so a name
  // replaced meanwhile never pairs one object's identity with another's handle.
  Result<LayerRef> resolve_at(int dirfd, const std::string& dir_rel, const std::string& name);
  // The same for a path beneath the root, resolved without following symlinks.
  Result<LayerRef> resolve(const std::string& rel);
  // Opens what ref's handle denotes (the upstream way: no ESTALE handling).
  Result<UniqueFd> open_handle(const LayerRef& ref, int flags);
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
