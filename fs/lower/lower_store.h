// LowerStore: the backing store of the "Dicfuse" lower layer. It keeps a local
// mirror directory in step with the Mega monorepo, lazily: a directory is
// listed (GET tree/content-hash) when first asked for and again once its
// listing is older than the TTL; a file is a placeholder of the right size
// until first opened, then its blob is fetched and written into it. The
// filesystem serves the mirror through its passthrough layer.
//
// Design note.
// - State. dirs_ maps every mirrored directory ("" = root) to its last applied
//   listing (name -> type, oid) and freshness; files_ maps every mirrored file
//   to {oid, size, generation, materialized}. Both are std::map so a removed
//   subtree ("a/b" and "a/b/...") is one contiguous range.
// - Refresh = diff of the new listing against the last one: unchanged oid ->
//   untouched (same inode); new dir -> mkdir; new file -> placeholder; changed
//   file -> a new placeholder renamed over the old name; type change -> remove
//   then create; vanished -> removed with all state beneath. A directory
//   whose tree oid changed keeps its inode but its own listing is expired.
// - Replacing a changed file is deliberate: it is what upstream's layers do
//   behind the mount's back, and the reason old file handles (name_to_handle_at)
//   go stale. The LayerChange events tell the filesystem what was replaced.
// - Single flight. A directory or file has at most one fetch in progress
//   (a Flight); other callers wait on it under mu_'s condition and share its
//   result. HTTP runs with no lock held; waits are bounded by the client's
//   timeouts and retries.
// - Placeholders vs. fetched bytes. A fetch remembers the file's generation;
//   the generation is bumped (under mu_) whenever the name is replaced or
//   removed, and the placeholder is opened for writing under mu_ only if the
//   generation is unchanged. So the write either lands in the placeholder it
//   was fetched for, or in an already-unlinked old inode; never in a newer one.
// - Failures. A listing failure on a never-listed directory is the caller's
//   error (ETIMEDOUT, ENOENT, else EIO); on a listed one the old mirror is
//   served and the next try waits a TTL. Blob failures leave the file pending.
// - Safety. Names are validated (see mirror_fs.h); every write is an *at()
//   syscall beneath the mirror root without following symlinks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <set>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "common/clock.h"
#include "common/oid.h"
#include "common/result.h"
#include "fs/layers/layer_change.h"
#include "fs/remote/mega_client.h"

namespace antares::fs {

// Monotonic counters for metrics and tests.
struct LowerStoreStats {
  std::atomic<uint64_t> listings_fetched{0};  // successful content-hash listings applied
  std::atomic<uint64_t> refreshes{0};         // re-listings of a listed dir that changed something
  std::atomic<uint64_t> entries_changed{0};   // names added + replaced + removed
  std::atomic<uint64_t> blobs_fetched{0};     // successful blob downloads
  std::atomic<uint64_t> blob_bytes{0};
  std::atomic<uint64_t> fetch_errors{0};      // failed listings, HEADs and blob downloads
  std::atomic<uint64_t> dropped_names{0};     // entries left out: hostile or duplicate names, malformed entries
};

class LowerStore {
 public:
  // mirror_root: an existing, empty directory owned by this store (names that
  // are already there and collide with the repository are replaced; others
  // are left alone, so a misconfigured path is never wiped). If it cannot be
  // opened, status() and every call return that error.
  LowerStore(remote::MegaClient& mega, std::string mirror_root, Clock::Duration ttl,
             Clock& clock = SystemClock::instance());
  ~LowerStore();
  LowerStore(const LowerStore&) = delete;
  LowerStore& operator=(const LowerStore&) = delete;

  // Whether the mirror root could be opened.
  Status status() const;

  // Makes the mirror directory `rel` reflect a listing no older than the TTL.
  // ENOENT if `rel` is not a mirrored directory (its parent's listing did not
  // create it) or the server says it does not exist; ETIMEDOUT/EIO if it was
  // never listed and the listing failed. A listed directory whose refresh
  // fails keeps its old mirror (ok). Thread-safe; blocks while fetching.
  Status ensure_dir(const std::string& rel);

  // Materializes the pending file `rel`: fetches its blob and writes it into
  // the placeholder in place (same inode). Ok at once if already
  // materialized. Ok, doing nothing, for paths the store does not track as
  // files (directories, names no listing produced): the caller's own open of
  // the mirror path reports those. ENOENT if the file vanished during the
  // fetch; ETIMEDOUT on a timeout; EIO for other failures (including a blob
  // whose bytes do not hash to its oid); the file then stays pending.
  // Thread-safe; blocks while fetching.
  Status ensure_file(const std::string& rel);

  // Expires the listings of rel_prefix and every directory beneath it (all if
  // ""), so their next ensure_dir refetches. Never blocks on HTTP.
  void expire(const std::string& rel_prefix);

  // True for the temp names the store (and ClBuilder) use while replacing
  // files: the filesystem must hide them from readdir and lookup.
  static bool is_internal_name(std::string_view name);

  // Receives the changes each refresh applies (see LayerChangeListener): begin
  // under the store's lock just before a listing that differs from the last
  // is applied, end with the changes once they are on disk and the lock is
  // released. Batches of two concurrent refreshes (of different directories)
  // may interleave.
  void set_listener(LayerChangeListener listener);

  // False while inode `ino` of the mirror is a placeholder whose bytes were
  // never written (including placeholders replaced before they were filled):
  // whoever opened it must not serve it. True for every other inode.
  bool content_ready(uint64_t ino) const;

  enum class FileState { untracked, pending, materialized };
  // What the store knows about `rel` (tests, `antares-ctl`).
  FileState file_state(const std::string& rel) const;

  const LowerStoreStats& stats() const { return stats_; }
  const std::string& mirror_root() const { return mirror_root_; }
  // O_PATH fd of the mirror root, valid for the store's lifetime (-1 if status() failed).
  int root_fd() const { return root_fd_; }

 private:
  struct Flight {
    bool done = false;
    Status result;
    std::condition_variable cv;  // waited on with mu_
  };
  struct Child {
    bool is_dir = false;
    Oid oid;
  };
  struct Dir {
    uint64_t id = 0;           // unique per creation: a fetch notices its dir was replaced
    bool listed = false;
    Clock::TimePoint fresh_until{};  // refetch at or after this
    uint64_t expire_epoch = 0;       // bumped by expire(), so an expire during a fetch is kept
    std::map<std::string, Child> children;  // the last applied listing
    std::shared_ptr<Flight> flight;         // the fetch in progress, if any
  };
  struct File {
    Oid oid;
    uint64_t size = 0;
    uint64_t gen = 0;  // bumped whenever the name is given a new placeholder
    uint64_t ino = 0;  // the placeholder's inode
    bool materialized = false;
    std::shared_ptr<Flight> flight;  // kept across replacements: its owner retries
  };
  struct Item {  // one validated entry of a fetched listing
    std::string name;
    bool is_dir = false;
    Oid oid;
    uint64_t size = 0;  // files that are new or changed
  };

  static bool listing_differs(const std::map<std::string, Child>& old, const std::vector<Item>& items);
  // Counts entries a listing left out, and warns once per directory.
  void note_dropped(const std::string& rel, const std::vector<remote::DroppedItem>& dropped);
  Result<std::vector<Item>> fetch_listing(const std::string& rel, const std::map<std::string, Child>& old);
  Status apply_listing(const std::string& rel, Dir& dir, const std::vector<Item>& items,
                       std::vector<LayerChange>& events);
  // *ino: the new placeholder's inode (files).
  Status create_entry(int dirfd, const std::string& path, const Item& item, bool replace, uint64_t* ino);
  void drop_state(const std::string& path);
  // files_[path] becomes a pending file of item's oid and size, with a new
  // generation, at inode ino. Requires mu_.
  void track_pending(const std::string& path, const Item& item, uint64_t ino);
  // f by value: the owner resets the field it came from while we wait.
  static Status wait(std::unique_lock<std::mutex>& l, std::shared_ptr<Flight> f);
  static void mark_stale(Dir& d);
  static void finish(const std::shared_ptr<Flight>& f, Status result);

  remote::MegaClient& mega_;
  const std::string mirror_root_;
  const Clock::Duration ttl_;
  Clock& clock_;
  int root_fd_ = -1;
  Error root_error_;
  LowerStoreStats stats_;

  // Lock order: mu_ is the only lock of the store and a leaf: it is never held
  // during HTTP or while calling the listener, and nothing else is locked
  // while holding it. Local syscalls on the mirror run under it (they are
  // what keeps names, generations and inodes consistent).
  mutable std::mutex mu_;
  std::map<std::string, Dir> dirs_;    // guarded by mu_
  std::map<std::string, File> files_;  // guarded by mu_
  std::unordered_set<uint64_t> pending_inos_;  // guarded by mu_; see content_ready
  std::set<std::string> warned_dirs_;          // guarded by mu_; see note_dropped
  uint64_t next_id_ = 1;               // guarded by mu_; dir ids and file generations
  LayerChangeListener listener_;       // guarded by mu_; copied out before calling
};

}  // namespace antares::fs
