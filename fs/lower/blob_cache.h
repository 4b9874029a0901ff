// BlobCache: a persistent, content-addressed store of the blobs the lower
// layer has fetched, laid out as git does (`<dir>/ab/cdef...` by oid), so a
// restart, a file changed back to an earlier version, or the same content
// under another name costs no download. A cached blob is *copied* into its
// placeholder (copy_file_range), never hard-linked: a mirror file must be its
// own inode, or an old version still linked here would keep its handle valid
// and hide the ESTALE trigger the project reproduces.
//
// Design note.
// - Writes: a temp file in the blob's subdirectory, renamed into place with
//   RENAME_NOREPLACE, so a name only ever holds complete bytes of one oid. No
//   fsync: after a crash a short or empty file is possible, so every copy out
//   verifies the bytes against the oid first and a damaged blob is removed
//   (counted), never served.
// - Bound and LRU: the disk is the index. A file's mtime is its last use (set
//   from the Clock's wall time at insertion and at every hit); the total size
//   is a counter. When it passes max_bytes, maintain() evicts the least
//   recently used files down to 90% of the bound in two passes over the
//   directory (find the mtime cutoff, then unlink), holding 16 bytes per blob
//   only while it runs. No per-blob memory otherwise.
// - Startup: the total is summed by a background scan (no hashing, one stat
//   per file); until it ends nothing is evicted. Inserts and removals during
//   the scan are counted exactly (a subdirectory is either scanned before or
//   after the change, never during it).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "common/clock.h"
#include "common/oid.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace antares::fs {

struct BlobCacheStats {
  std::atomic<uint64_t> hits{0};            // copies served from the cache
  std::atomic<uint64_t> misses{0};          // lookups that found nothing usable
  std::atomic<uint64_t> inserts{0};         // blobs added
  std::atomic<uint64_t> evictions{0};       // blobs removed by the size bound
  std::atomic<uint64_t> evicted_bytes{0};
  std::atomic<uint64_t> damaged{0};         // blobs whose bytes did not match their oid (removed)
  std::atomic<uint64_t> errors{0};          // failed inserts and scans
  std::atomic<int64_t> bytes{0};            // bytes held now (complete once scanned() is true)
};

class BlobCache {
 public:
  // dir: an existing directory the cache owns (the caller claimed it).
  // max_bytes > 0. With `background`, a thread scans the directory once and
  // then evicts whenever the bound is passed; without it the caller runs
  // maintain() (tests).
  static Result<std::unique_ptr<BlobCache>> open(const std::string& dir, uint64_t max_bytes,
                                                 Clock& clock = SystemClock::instance(), bool background = true);
  ~BlobCache();
  BlobCache(const BlobCache&) = delete;
  BlobCache& operator=(const BlobCache&) = delete;

  // If blob `oid` (`size` bytes) is cached and its bytes hash to the oid,
  // copies it into `fd` at offset 0, truncates `fd` to `size` and returns
  // true. False (a miss) if it is absent or damaged (a damaged copy is
  // removed). An Error only if writing `fd` failed.
  Result<bool> copy_to(const Oid& oid, uint64_t size, int fd);
  // Whether `oid` is cached (no verification; tests and metrics).
  bool contains(const Oid& oid) const;
  // Keeps `bytes`, which the caller verified hash to `oid`. Best effort:
  // failures are logged and counted, never returned.
  void put(const Oid& oid, std::string_view bytes);

  // Sums the sizes on disk if not done yet, then evicts the least recently
  // used blobs down to 90% of the bound if over it.
  void maintain();
  bool scanned() const { return scan_done_.load(); }

  const BlobCacheStats& stats() const { return stats_; }
  uint64_t max_bytes() const { return max_bytes_; }
  const std::string& dir() const { return dir_; }
  // "<dir>/ab/cdef..." (tests).
  std::string path_of(const Oid& oid) const;

 private:
  BlobCache(std::string dir, uint64_t max_bytes, Clock& clock, UniqueFd root);
  void scan();
  void evict();
  void run();
  struct timespec now_ts() const;
  // Adjusts the total for a file added (+) or removed (-) in subdirectory
  // `sub`, unless the startup scan has yet to reach it (it will count it).
  // Requires scan_mu_ while the scan runs.
  void account(unsigned sub, int64_t delta);

  const std::string dir_;
  const uint64_t max_bytes_;
  Clock& clock_;
  UniqueFd root_;
  BlobCacheStats stats_;

  // Held across each subdirectory's scan and, while the scan runs, across an
  // insert's rename or a removal and its accounting.
  std::mutex scan_mu_;
  unsigned scanned_upto_ = 0;  // guarded by scan_mu_: subdirectories [0, n) are summed
  std::atomic<bool> scan_done_{false};

  std::mutex run_mu_;          // guards stop_, puts_ and wakes the background thread
  std::condition_variable run_cv_;
  bool stop_ = false;
  uint64_t puts_ = 0;          // inserts that found the total over the bound
  std::atomic<bool> stopping_{false};  // ends a scan or eviction early
  std::thread thread_;
};

// Parses a size: a number of bytes, optionally followed by K, M, G or T
// (powers of 1024; "KiB", "kB", "G" ... accepted). nullopt if malformed.
std::optional<uint64_t> parse_size(std::string_view text);

}  // namespace antares::fs
