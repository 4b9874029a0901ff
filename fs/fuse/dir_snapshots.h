// Listings kept between the READDIRs of one read of a directory opened
// without a handle (--dir-open kernel).
//
// The kernel reads a directory in replies of one page at increasing offsets,
// an offset being the position of an entry in the listing it first got. With
// a handle, the handle holds that listing; without one, each READDIR would
// have to be cut from a fresh listing: a directory of k replies listed k
// times, and a name removed (or added) before the reader's position between
// two replies would shift the rest, skipping (or repeating) unchanged names.
// So the first READDIR (offset 0) of each reader keeps its listing here, the
// following ones continue it, and the reply at the end (nothing left) drops
// it. A reader is a directory and the calling thread. Bounded: readers that
// stop halfway are forgotten oldest first.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "fs/union/union_fs.h"

namespace antares::fs {

class DirSnapshots {
 public:
  using Listing = std::shared_ptr<const std::vector<DirEntry>>;
  static constexpr size_t kMaxReaders = 64;

  // The listing `ino`'s read by `caller` started with, or null.
  Listing find(uint64_t ino, pid_t caller) const {
    std::lock_guard l(mu_);
    for (auto& r : readers_)
      if (r.ino == ino && r.caller == caller) return r.listing;
    return nullptr;
  }
  // A read starts (offset 0): its listing replaces any older one of this reader.
  void start(uint64_t ino, pid_t caller, Listing listing) {
    std::lock_guard l(mu_);
    drop_locked(ino, caller);
    readers_.push_front({ino, caller, std::move(listing)});
    if (readers_.size() > kMaxReaders) readers_.pop_back();
  }
  // The read reached the end.
  void finish(uint64_t ino, pid_t caller) {
    std::lock_guard l(mu_);
    drop_locked(ino, caller);
  }
  size_t size() const {
    std::lock_guard l(mu_);
    return readers_.size();
  }

 private:
  struct Reader {
    uint64_t ino;
    pid_t caller;
    Listing listing;
  };
  void drop_locked(uint64_t ino, pid_t caller) {
    readers_.remove_if([&](const Reader& r) { return r.ino == ino && r.caller == caller; });
  }
  mutable std::mutex mu_;      // leaf
  std::list<Reader> readers_;  // newest first; guarded by mu_
};

}  // namespace antares::fs
