// The stale-handle strategy: the object the union consults on every use of a
// layer object (getattr, open, opendir, child lookup, access, xattr), swapped
// at runtime behind an atomic pointer (StrategySlot), never an `if` on a name
// scattered through the filesystem.
//
//   none  upstream's behaviour: open the cached handle, pass ESTALE up;
//         directories are loaded once and never re-checked.
//   A     recover on ESTALE: drop the cache entry, re-resolve the path beneath
//         the layer root, store the new handle on the ref, retry once.
//   B     proactive: the lower store's refreshes and CL re-syncs invalidate
//         handles, union children and kernel caches as they happen.
//   C     no file handles: every use opens the path beneath the layer root.
//   auto  B with A as the backstop for changes nobody announced.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "fs/layers/layer.h"

namespace antares::fs {

struct StrategyStats {
  std::atomic<uint64_t> recovered{0};        // ESTALE turned into a successful re-resolve (A)
  std::atomic<uint64_t> recovered_gone{0};   // ESTALE whose path no longer exists (ENOENT)
  std::atomic<uint64_t> identity_changes{0}; // recoveries that found a different object
};

// Where a ref's object is beneath its layer's root, computed only when a
// strategy needs it (C on every use, A on recovery): refs hold no paths.
using PathOf = std::function<std::string()>;

class HandleStrategy {
 public:
  virtual ~HandleStrategy() = default;
  virtual std::string_view name() const = 0;
  // Opens what `ref` denotes in `layer`. May replace *ref (a directory's
  // re-resolved handle or identity); the caller holds the lock guarding ref.
  // A file's ESTALE (or, for C, another object at its path) is returned:
  // the union retires its node. Thread-safe otherwise.
  virtual Result<UniqueFd> open(Layer& layer, LayerRef& ref, const PathOf& path, int flags) const = 0;
  // Whether a loaded directory is re-checked against its backing directories
  // on lookup and readdir, and a name whose backing object changed gets a new
  // node id. Upstream (none) loads a directory once.
  virtual bool revalidates() const = 0;
  // Whether layer change events invalidate handles, children and the kernel (B).
  virtual bool invalidates() const = 0;
};

// The five strategies of one mount, sharing its StrategyStats.
class StrategySet {
 public:
  StrategySet();
  ~StrategySet();
  // "none", "A", "B", "C", "auto" (case-insensitive); nullptr if unknown.
  // The pointer lives as long as the set.
  const HandleStrategy* find(std::string_view name) const;
  StrategyStats& stats() { return stats_; }

 private:
  StrategyStats stats_;
  std::unique_ptr<HandleStrategy> all_[5];
};
// The default a mount gets: see docs/strategies.md.
inline constexpr std::string_view kDefaultStrategy = "auto";

// The current strategy, switchable while requests run: a request reads the
// pointer once and uses that strategy for its whole duration.
class StrategySlot {
 public:
  explicit StrategySlot(const HandleStrategy* s) : cur_(s) {}
  const HandleStrategy& get() const { return *cur_.load(std::memory_order_acquire); }
  void set(const HandleStrategy* s) { cur_.store(s, std::memory_order_release); }

 private:
  std::atomic<const HandleStrategy*> cur_;
};

}  // namespace antares::fs
