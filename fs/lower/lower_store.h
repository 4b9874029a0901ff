// LowerStore: the backing store of the "Dicfuse" lower layer. It keeps a local
// mirror directory in step with the Mega monorepo, lazily: a directory is
// listed (GET tree/content-hash) when first asked for and refreshed when the
// repository changed; a file is a placeholder of the right size until first
// opened, then its blob is written into it (from the blob cache, else fetched).
// The filesystem serves the mirror through its passthrough layer.
//
// Design note.
// - State. One DirState per directory the store has met (root = slot 0):
//   its own name, its parent's slot, the oid of the listing it applied and
//   that listing as a vector of Entry sorted by name. An Entry is 64 bytes:
//   the name relative to its directory (heap only beyond the SSO), the oid,
//   the kind, a materialized flag, and the file's size or the directory's
//   slot. No path is stored per entry and no map is keyed by path, so the
//   state is ~90 bytes per mirrored entry (pinned by a test at 200k
//   entries). Placeholder inodes still waiting for bytes sit in a flat hash
//   set (content_ready). A DirState is made only for directories a caller
//   reached; the others are just their parent's Entry.
// - Refresh = diff of the new listing against the applied one: unchanged oid
//   -> untouched (same inode); new dir -> mkdir; new file -> placeholder;
//   changed file -> a new placeholder renamed over the old name; type change
//   -> remove then create; vanished -> removed with all state beneath.
// - Replacing a changed file is deliberate: it is what upstream's layers do
//   behind the mount's back, and the reason old file handles (name_to_handle_at)
//   go stale. The LayerChange events tell the filesystem what was replaced.
//   Both refresh modes below use exactly this mechanism.
// - Refresh modes. `per-dir` (upstream's): each directory is re-listed when
//   its own listing is older than the TTL; a child whose tree oid changed is
//   expired at once. `merkle` (default): Mega's trees are content-addressed,
//   so a directory's oid changes iff something beneath it changed. Freshness
//   is global: once the TTL has passed, the next ensure_dir asks
//   tree/dir-hash for "/" (one request, single-flight; every caller waits for
//   it). Unchanged -> the whole mirror is fresh for another TTL. Changed ->
//   the root is re-listed and then, wave by wave, every directory the store
//   has listed whose oid changed (up to refresh_parallelism at once).
//   Directories never listed need nothing; after k changed files at depth d
//   that is at most (d+1)k listings and one dir-hash. A directory is "stale"
//   when its applied listing's oid differs from its entry in the parent
//   (from the last dir-hash for the root); a stale one whose re-list failed
//   is served as it is and retried by the next check (or by a caller after
//   a TTL). expire() forces the next check.
// - Order of requests. A directory's expected oid is read before its listing
//   is fetched, so a listing newer than its recorded oid is possible (then it
//   is listed once more) but an older one is not.
// - Persistence (`persist`). State lives on the objects it describes, as
//   xattrs: `user.antares.oid` on every mirrored file (oid + pending or
//   materialized) and directory (its entry oid), `user.antares.tree` on every
//   listed directory (the oid of the applied listing). Chosen over a
//   manifest because every update is one syscall on the object it is about
//   (no rewrite amplification, no second source of truth to keep in step with
//   renames), a replaced file takes its stale state with it, and a directory
//   loads on its own, lazily. The mirror root carries `user.antares.mirror`:
//   the format and "clean" or "dirty". It is set dirty (and fsynced) at open
//   and clean at destruction after syncfs(), so only a mirror whose last
//   store shut down cleanly is trusted: after a crash, bytes written without
//   fsync may be missing behind a "materialized" flag, and that mirror is
//   wiped (it is ours, marked by its owner file) and rebuilt, as is one of
//   another format. A trusted mirror's directories load from disk on first
//   access without HTTP; the root is revalidated by its oid, directories by
//   their parent's entries, and materialized files whose oid matches are
//   never fetched again. A directory whose files lack state is cleared and
//   listed afresh (counted as damaged).
// - Kept objects (set_keep_replaced, under the fix strategies). Between a
//   caller's lookup of a name and its open, a refresh may replace or remove
//   the file; the kernel retries such an open once, after a fresh lookup,
//   and a second replacement in that short gap would surface as ESTALE. A
//   local filesystem has no such gap: the looked-up inode outlives its name.
//   So a file about to be replaced or removed is first hard-linked into the
//   attic (outside the mirror, same filesystem) as "<ino>" and kept for
//   keep_for: its handle still opens, open_kept reaches it by inode number
//   (strategy C), and fill_kept gives a placeholder that was never filled
//   the bytes of the version it stood for. A kept object is one the caller
//   was given before the change, so what it reads is at most as old as the
//   kernel's own entry cache allows. Bounded by keep_max; swept as changes
//   come in, and emptied at start and at destruction.
// - Blob cache (BlobCache, optional): consulted before every download,
//   filled after each; its bytes are copied into the placeholder, never
//   linked (see blob_cache.h).
// - Prefetch (prefetch_threads > 0). The first time a caller reaches a
//   directory, its not-yet-listed subdirectories and its pending BUCK,
//   BUCK.v2 and PACKAGE files are queued (bounded queue, duplicates and
//   overflow dropped); a listing made by prefetch queues that directory's
//   build files too, so workers stay one level ahead of a breadth-first
//   walk. Workers use the same single flights as callers, so a caller never
//   waits for anything it did not need itself. Errors are counted and
//   logged, never returned; the destructor drops the queue and joins the
//   workers (each finishes at most its current request).
// - Single flight. A directory or file has at most one fetch in progress
//   (a Flight); other callers wait on it under mu_'s condition. HTTP runs
//   with no lock held; waits are bounded by the client's timeouts and retries.
// - Placeholders vs. fetched bytes. A file's fetch is superseded (a counter
//   in its flight, bumped under mu_) whenever its name is given a new
//   placeholder or removed, and the placeholder is opened for writing under
//   mu_ only while not superseded. So the write either lands in the
//   placeholder it was fetched for, or in an already-unlinked old inode;
//   never in a newer one.
// - Failures. A listing failure on a never-listed directory is the caller's
//   error (ETIMEDOUT, ENOENT, else EIO); on a listed one the old mirror is
//   served and the next try waits a TTL. A failed dir-hash serves the mirror
//   as it is for another TTL. Blob failures leave the file pending.
// - Safety. Names are validated (see mirror_fs.h); every write is an *at()
//   syscall beneath the mirror root without following symlinks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/clock.h"
#include "common/oid.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "fs/layers/layer_change.h"
#include "fs/lower/mirror_fs.h"
#include "fs/remote/mega_client.h"

namespace antares::fs {

class BlobCache;

enum class RefreshMode { merkle, per_dir };
const char* refresh_mode_name(RefreshMode m);  // "merkle", "per-dir"
std::optional<RefreshMode> parse_refresh_mode(std::string_view s);

struct LowerStoreOptions {
  Clock::Duration ttl = std::chrono::seconds(5);
  RefreshMode refresh = RefreshMode::merkle;
  // Keep the mirror across restarts (see the design note). The caller
  // guarantees the mirror root is the store's to wipe. Off: the mirror is
  // expected to start empty and nothing is persisted.
  bool persist = false;
  BlobCache* blob_cache = nullptr;   // borrowed; none = every blob is downloaded
  unsigned prefetch_threads = 0;     // 0 = no prefetch
  size_t prefetch_queue = 4096;      // tasks waiting at most; more are dropped (counted)
  unsigned refresh_parallelism = 8;  // directories a Merkle diff re-lists at once
  // Where replaced and removed files are kept for keep_for (see "Kept
  // objects"): a directory on the mirror's filesystem, outside the mirror,
  // owned by the store (emptied at start and at destruction). "" = never kept.
  std::string attic;
  Clock::Duration keep_for = std::chrono::seconds(5);
  size_t keep_max = 4096;  // at most this many kept at once (the oldest go first)
};

// Monotonic counters for metrics and tests.
struct LowerStoreStats {
  std::atomic<uint64_t> listings_fetched{0};  // successful content-hash listings applied (all reasons)
  // ... by reason: a directory's first listing for a caller, its own TTL
  // (per-dir), an oid that changed (merkle), or prefetch.
  std::atomic<uint64_t> listings_first{0}, listings_ttl{0}, listings_changed{0}, listings_prefetch{0};
  std::atomic<uint64_t> refreshes{0};         // re-listings of a listed dir that changed something
  std::atomic<uint64_t> entries_changed{0};   // names added + replaced + removed
  std::atomic<uint64_t> dir_hash_checks{0};   // dir-hash requests for "/" (merkle)
  std::atomic<uint64_t> dir_hash_unchanged{0};  // ... that found nothing to re-list
  std::atomic<uint64_t> dirs_loaded{0};       // directories read back from a persisted mirror
  std::atomic<uint64_t> dirs_damaged{0};      // ... whose state was unusable (cleared and re-listed)
  std::atomic<uint64_t> blobs_fetched{0};     // successful blob downloads
  std::atomic<uint64_t> blob_bytes{0};
  std::atomic<uint64_t> blobs_from_cache{0};  // files filled from the blob cache
  std::atomic<uint64_t> fetch_errors{0};      // failed listings, dir-hashes, HEADs and blob downloads
  std::atomic<uint64_t> dropped_names{0};     // entries left out: hostile or duplicate names, malformed entries
  std::atomic<uint64_t> kept{0};              // replaced or removed files kept in the attic
  std::atomic<uint64_t> keep_failures{0};     // ... that could not be linked there
  std::atomic<uint64_t> prefetch_queued{0}, prefetch_done{0}, prefetch_dropped{0}, prefetch_errors{0};
  std::atomic<uint64_t> mirror_restored{0};   // 1 if a persisted mirror was trusted at open
  std::atomic<uint64_t> mirror_wiped{0};      // 1 if a persisted mirror was unusable and wiped
};

class LowerStore {
 public:
  // mirror_root: an existing directory owned by this store. Without
  // `persist` it should be empty (names that are already there and collide
  // with the repository are replaced; others are left alone, so a
  // misconfigured path is never wiped). If it cannot be opened, status() and
  // every call return that error.
  LowerStore(remote::MegaClient& mega, std::string mirror_root, LowerStoreOptions opts,
             Clock& clock = SystemClock::instance());
  // Defaults but the TTL (merkle refresh, nothing persisted, no prefetch).
  LowerStore(remote::MegaClient& mega, std::string mirror_root, Clock::Duration ttl,
             Clock& clock = SystemClock::instance());
  // Stops prefetch; with `persist`, syncs the mirror and marks it clean.
  ~LowerStore();
  // Drops the prefetch queue and joins the workers (each finishes at most its
  // current request), so no listener call comes from them afterwards. An
  // owner whose listener reaches objects that die before the store calls it
  // first. Idempotent; ensure_dir/ensure_file keep working without prefetch.
  void stop_prefetch();
  // Starts the prefetch workers (prefetch_threads of them; tasks queued
  // before wait for them). Not in the constructor: a daemon builds its store
  // before it forks to detach, and threads do not survive a fork (the child
  // would join threads it does not have and may inherit a held pf_mu_).
  // Idempotent; a no-op after stop_prefetch().
  void start_prefetch();
  LowerStore(const LowerStore&) = delete;
  LowerStore& operator=(const LowerStore&) = delete;

  // Whether the mirror root could be opened.
  Status status() const;

  // Makes the mirror directory `rel` reflect the repository as of a check no
  // older than the TTL (merkle) or its own listing no older than the TTL
  // (per-dir). ENOENT if `rel` is not a mirrored directory (its parent's
  // listing did not create it) or the server says it does not exist;
  // ETIMEDOUT/EIO if it was never listed and the listing failed. A listed
  // directory whose refresh fails keeps its old mirror (ok). Thread-safe;
  // blocks while fetching.
  Status ensure_dir(const std::string& rel);

  // Materializes the pending file `rel`: copies its blob from the cache or
  // fetches it, and writes it into the placeholder in place (same inode). Ok
  // at once if already materialized. Ok, doing nothing, for paths the store
  // does not track as files (directories, names no listing produced): the
  // caller's own open of the mirror path reports those. ENOENT if the file
  // vanished during the fetch; ETIMEDOUT on a timeout; EIO for other failures
  // (including a blob whose bytes do not hash to its oid); the file then
  // stays pending. Thread-safe; blocks while fetching.
  Status ensure_file(const std::string& rel);

  // per-dir: expires the listings of rel_prefix and every directory beneath
  // it (all if ""), so their next ensure_dir refetches. merkle: the next
  // ensure_dir checks the root's oid. Never blocks on HTTP.
  void expire(const std::string& rel_prefix);

  // Merkle: if the TTL has passed since the last check, runs one now (the
  // dir-hash of "/" and the re-lists it calls for, reported to the listener
  // as any refresh is), so changes are found even when nobody asks for a
  // directory: what lets the filesystem keep long kernel caches that are
  // safe because every change is invalidated. Joins a check in progress.
  // True if a check ran or was joined. per-dir: does nothing (false); its
  // freshness is driven by callers. Thread-safe; blocks while fetching.
  bool check_due();

  // The root's oid as the caller has just learned it from Mega (the daemon's
  // startup probe): counts as a check made now (merkle).
  void set_root_oid(const Oid& oid);

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

  // Kept objects. While on (and an attic is configured), a file a refresh
  // replaces or removes is first hard-linked into the attic as "<ino>" and
  // stays there keep_for: a handle or an fd-less open of the object a caller
  // has just been given keeps working, as it does on a local filesystem
  // where the looked-up inode outlives its name. Off (strategy none, which
  // reproduces the stale handles upstream gets): nothing is kept.
  void set_keep_replaced(bool on);
  // Opens the kept object that had inode `ino` (flags as for openat; O_NOFOLLOW
  // added). ENOENT if it is not kept (never, or expired).
  Result<UniqueFd> open_kept(uint64_t ino, int flags);
  // Writes the blob of a kept placeholder that was never filled (the version
  // it stood for, from the blob cache or Mega), so content_ready(ino) turns
  // true. Ok at once if it has its bytes; ENOENT if `ino` is not kept.
  // Blocks while fetching; no lock held meanwhile.
  Status fill_kept(uint64_t ino);
  // Whether `ino` is kept (a replaced or removed file). Lock-free when nothing is.
  bool is_kept(uint64_t ino);

  // statx of a mirror object the union opened (fd): while the store writes
  // to it for itself (a first listing, a new version renamed in, a
  // placeholder filled in), the mtime it keeps, never a passing one.
  Result<struct statx> stat(int fd) const { return kept_mtimes_.stat(fd); }

  enum class FileState { untracked, pending, materialized };
  // What the store knows about `rel` (tests, `antares-ctl`); loads nothing.
  FileState file_state(const std::string& rel) const;

  const LowerStoreStats& stats() const { return stats_; }
  const LowerStoreOptions& options() const { return opts_; }
  const std::string& mirror_root() const { return mirror_root_; }
  // O_PATH fd of the mirror root, valid for the store's lifetime (-1 if status() failed).
  int root_fd() const { return root_fd_; }

 private:
  static constexpr uint32_t kNoDir = UINT32_MAX;
  enum : uint8_t { kFile = 0, kDir = 1 };
  enum : uint8_t { kMaterialized = 1, kFromDisk = 2 };

  struct Flight {
    bool done = false;
    Status result;
    std::condition_variable cv;  // waited on with mu_
    uint64_t superseded = 0;     // files: bumped when the name gets a new placeholder or goes
  };
  // One name of a listed directory. 64 bytes; see the design note.
  struct Entry {
    std::string name;
    Oid oid;             // the blob (files) or the tree as the directory's listing says (dirs)
    uint8_t kind = kFile;
    uint8_t flags = 0;   // kMaterialized (files); kFromDisk (dirs read back from a persisted mirror)
    uint64_t v = 0;      // files: size; dirs: DirState slot or kNoDir
  };
  enum class DirKind : uint8_t { on_disk, unlisted, listed };
  struct DirState {
    uint64_t id = 0;           // unique per creation: a fetch notices its dir was replaced
    uint32_t parent = kNoDir;
    DirKind kind = DirKind::unlisted;
    bool seen = false;         // a caller reached it (prefetch is queued once)
    bool by_prefetch = false;  // listed by prefetch and not yet reached by a caller
    std::string name;          // relative to the parent ("" for the root)
    Oid listed_oid;            // the tree oid the applied listing was fetched for
    std::vector<Entry> entries;      // the applied listing, sorted by name
    Clock::TimePoint fresh_until{};  // per-dir: refetch at or after; merkle: retry a failed re-list at or after
    uint64_t expire_epoch = 0;       // bumped by expire(), so an expire during a fetch is kept
    std::shared_ptr<Flight> flight;  // the listing or load in progress, if any
  };
  struct Item {  // one validated entry of a fetched listing
    std::string name;
    bool is_dir = false;
    Oid oid;
    uint64_t size = 0;  // files that are new or changed
  };
  struct OldItem {  // what fetch_listing needs of the applied listing
    std::string name;
    bool is_dir;
    Oid oid;
  };
  // Open-addressing set of inode numbers (8 bytes a slot).
  class InoSet {
   public:
    bool contains(uint64_t k) const;
    void insert(uint64_t k);
    void erase(uint64_t k);
    size_t size() const { return n_ + zero_; }
    size_t bytes() const { return slots_.capacity() * sizeof(uint64_t); }

   private:
    size_t home(uint64_t k) const;
    std::vector<uint64_t> slots_;  // 0 = empty
    size_t n_ = 0;
    bool zero_ = false;
  };
  enum class Reason { first, ttl, changed, prefetch };
  enum class Caller { foreground, prefetch };
  struct Task {
    bool dir;
    std::string path;
  };

  Status ensure_dir_impl(const std::string& rel, Caller who);
  Status ensure_file_impl(const std::string& rel);
  // The slot of directory `rel`, making DirStates down the path; loads
  // persisted ancestors (dropping the lock). ENOENT if not mirrored.
  Result<uint32_t> resolve(std::unique_lock<std::mutex>& l, const std::string& rel);
  // Without side effects: kNoDir if any part is not listed in memory.
  uint32_t find_dir(const std::string& rel) const;
  Entry* find_entry(DirState& d, std::string_view name);
  const Entry* find_entry(const DirState& d, std::string_view name) const;
  DirState* slot(uint32_t idx, uint64_t id);
  uint32_t new_dir(uint32_t parent, std::string name, DirKind kind);
  void free_dir(uint32_t idx);  // and every DirState beneath it
  std::string path_of(uint32_t idx) const;
  // The oid directory idx should have been listed at: its entry in the
  // parent, the last dir-hash for the root. nullopt if unknown.
  std::optional<Oid> expected_oid(uint32_t idx) const;
  bool stale(uint32_t idx) const;

  // Merkle: dir-hash of "/" and the diff it calls for. Requires mu_ (dropped inside).
  void check(std::unique_lock<std::mutex>& l, Clock::TimePoint start);
  // Merkle: re-lists the stale directories of `wave`, then wave by wave the
  // listed children whose oid changed. Requires mu_ (dropped inside).
  void refresh_waves(std::unique_lock<std::mutex>& l, std::vector<uint32_t> wave, Clock::TimePoint start);
  // Lists directory idx (which has no flight). `changed`: listed children whose
  // oid changed (merkle). Requires mu_ (dropped inside; held on return).
  Status list_one(std::unique_lock<std::mutex>& l, uint32_t idx, Reason why, Clock::TimePoint start,
                  std::vector<uint32_t>* changed);
  // Reads directory idx's persisted state. Requires mu_ (dropped inside).
  Status load_dir(std::unique_lock<std::mutex>& l, uint32_t idx);

  static bool listing_differs(const std::vector<Entry>& old, const std::vector<Item>& items);
  // Counts entries a listing left out, and warns once per directory.
  void note_dropped(const std::string& rel, const std::vector<remote::DroppedItem>& dropped);
  Result<std::vector<Item>> fetch_listing(const std::string& rel, const std::vector<OldItem>& old);
  // False if some entry could not be written (the listing is then not
  // recorded as applied, so it is tried again).
  bool apply_listing(int dirfd, const std::string& rel, DirState& dir, const std::vector<Item>& items,
                     std::vector<LayerChange>& events, std::vector<uint32_t>* changed);
  // *ino: the new placeholder's inode (files).
  Status create_entry(int dirfd, const std::string& path, const Item& item, bool replace, uint64_t* ino);
  // Forgets an entry that is gone from disk: its DirStates, and supersedes
  // fetches of files at or beneath `path`. Requires mu_.
  void drop_entry(const std::string& path, const Entry& e);
  void supersede(const std::string& path, bool subtree);
  static Status wait(std::unique_lock<std::mutex>& l, std::shared_ptr<Flight> f);
  static void mark_stale(DirState& d);
  static void finish(const std::shared_ptr<Flight>& f, Status result);
  void count_listing(Reason why);

  // Kept objects. Requires mu_.
  void keep(int dirfd, const Entry& e);
  void sweep_kept(bool all);

  // Persistence (no-ops unless persist_).
  void open_persisted();
  void persist_dir_oid(int dirfd, const std::string& name, const Oid& oid);
  void persist_listed(int dirfd, const Oid& oid);

  // Prefetch.
  void queue_prefetch(std::vector<Task> tasks);
  void prefetch_for(const DirState& d, const std::string& rel, bool subdirs, std::vector<Task>* out) const;
  void prefetch_worker();

  remote::MegaClient& mega_;
  const std::string mirror_root_;
  const LowerStoreOptions opts_;
  Clock& clock_;
  int root_fd_ = -1;
  Error root_error_;
  bool persist_ = false;  // opts_.persist and the filesystem keeps user xattrs
  LowerStoreStats stats_;

  // Lock order: mu_ is the store's lock and is never held during HTTP, while
  // calling the listener or the blob cache. pf_mu_ is a leaf. Local syscalls
  // on the mirror run under mu_ (they are what keeps names, flights and
  // inodes consistent), except reading a persisted directory, which nobody
  // else can reach until it is loaded.
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<DirState>> dirs_;   // guarded by mu_; slot 0 is the root
  std::vector<uint32_t> free_dirs_;               // guarded by mu_
  std::unordered_map<std::string, std::shared_ptr<Flight>> file_flights_;  // guarded by mu_; by path
  InoSet pending_inos_;                           // guarded by mu_; see content_ready
  struct Kept {
    uint64_t ino;
    Oid oid;
    uint64_t size;
    Clock::TimePoint until;
  };
  mirror::KeptMtimes kept_mtimes_;                // see stat()
  int attic_fd_ = -1;                             // O_RDONLY dir fd of opts_.attic, -1 if none
  bool keep_replaced_ = false;                    // guarded by mu_
  std::deque<Kept> kept_;                         // guarded by mu_; oldest first
  std::unordered_set<uint64_t> kept_inos_;        // guarded by mu_; the inos in kept_
  std::atomic<size_t> kept_count_{0};             // kept_.size(), readable without mu_
  std::set<uint32_t> stale_dirs_;                 // guarded by mu_; merkle re-lists that failed
  std::set<std::string> warned_dirs_;             // guarded by mu_; see note_dropped
  uint64_t next_id_ = 1;                          // guarded by mu_
  LayerChangeListener listener_;                  // guarded by mu_; copied out before calling
  // Merkle, guarded by mu_.
  std::optional<Oid> root_oid_;                   // the last dir-hash of "/"
  Clock::TimePoint fresh_until_ = Clock::TimePoint::min();
  uint64_t check_epoch_ = 0;
  std::shared_ptr<Flight> check_flight_;

  std::mutex pf_mu_;
  std::condition_variable pf_cv_;
  std::deque<Task> pf_queue_;                     // guarded by pf_mu_
  std::unordered_set<std::string> pf_queued_;     // guarded by pf_mu_: paths in pf_queue_
  bool pf_stop_ = false;                          // guarded by pf_mu_
  std::vector<std::thread> pf_threads_;
};

}  // namespace antares::fs
