// The strategies themselves: each is a few lines on top of Layer; what they
// change in the union is expressed by revalidates() and invalidates().
#include "fs/layers/strategy.h"

#include <cerrno>
#include <strings.h>

namespace antares::fs {

namespace {

class NoneStrategy final : public HandleStrategy {
 public:
  std::string_view name() const override { return "none"; }
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, const PathOf&, int flags) const override {
    return layer.open_handle(ref, flags);
  }
  bool revalidates() const override { return false; }
  bool invalidates() const override { return false; }
};

// Recover on ESTALE; shared by A and auto. A directory's handle is
// re-resolved from its path. A file's ESTALE goes up: its node is retired and
// the kernel's re-walk meets the file's new node (see union_fs.h), so a node's
// pages never mix two objects.
Result<UniqueFd> open_recovering(Layer& layer, LayerRef& ref, const PathOf& path, int flags, StrategyStats* stats) {
  auto fd = layer.open_handle(ref, flags);
  if (fd.err() != ESTALE) return fd;
  layer.cache().erase(ref.id);
  if (ref.type != S_IFDIR) return fd;
  const std::string rel = path();
  auto fresh = layer.resolve(rel);
  if (!fresh.ok()) {
    if (fresh.err() == ENOENT || fresh.err() == ENOTDIR || fresh.err() == ELOOP) {
      stats->recovered_gone++;
      return Error::from_errno(ENOENT, "recovering " + layer.name() + ":/" + rel + ": gone");
    }
    return fresh.error();
  }
  if (!(fresh->id == ref.id)) stats->identity_changes++;
  ref = std::move(*fresh);
  stats->recovered++;
  return layer.open_handle(ref, flags);
}

class RecoverStrategy final : public HandleStrategy {
 public:
  RecoverStrategy(std::string_view name, bool invalidates, StrategyStats* stats)
      : name_(name), invalidates_(invalidates), stats_(stats) {}
  std::string_view name() const override { return name_; }
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, const PathOf& path, int flags) const override {
    return open_recovering(layer, ref, path, flags, stats_);
  }
  // auto learns of directory changes from B's events; re-checking every
  // loaded directory on each lookup as A does would be the same work twice.
  bool revalidates() const override { return !invalidates_; }
  bool invalidates() const override { return invalidates_; }

 private:
  std::string_view name_;
  bool invalidates_;
  StrategyStats* stats_;
};

// B alone: handles as upstream, but the filesystem's own changes to backing
// directories drop handles and children and tell the kernel before the next
// request can use them.
class InvalidateStrategy final : public HandleStrategy {
 public:
  std::string_view name() const override { return "B"; }
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, const PathOf&, int flags) const override {
    return layer.open_handle(ref, flags);
  }
  bool revalidates() const override { return false; }
  bool invalidates() const override { return true; }
};

// C's way to a file object no longer at its path: the layer's owner may
// still keep it (see LayerHooks::open_kept), as a handle would reach it.
Result<UniqueFd> open_kept_object(Layer& layer, const LayerRef& ref, int flags, const std::string& why) {
  auto kept = layer.hooks().open_kept(ref.id.ino, flags);
  if (kept.ok()) {
    auto stx = statx_at(kept->get(), "");
    if (stx.ok() && identity_of(*stx) == ref.id) return kept;
  }
  return Error::from_errno(ESTALE, why);
}

class PathStrategy final : public HandleStrategy {
 public:
  std::string_view name() const override { return "C"; }
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, const PathOf& path, int flags) const override {
    const std::string rel = path();
    auto fd = layer.open_path(rel, flags);
    // A file's object gone from its path is as stale as a stale handle: the
    // union retires the node and the kernel's re-walk answers for the name.
    if (fd.err() == ENOENT && ref.type != S_IFDIR)
      return open_kept_object(layer, ref, flags, layer.name() + ":/" + rel + " is gone");
    if (!fd.ok()) return fd;
    auto stx = statx_at(fd->get(), "");
    if (!stx.ok()) return stx.error();
    const Identity now = identity_of(*stx);
    if (now == ref.id) return fd;
    // Another object at the path: a directory is followed; a file's node
    // stands for the object it was made for (ESTALE: the union retires it).
    if (ref.type == S_IFDIR && S_ISDIR(stx->stx_mode)) {
      ref.id = now;
      return fd;
    }
    return open_kept_object(layer, ref, flags, layer.name() + ":/" + rel + " is another object now");
  }
  bool revalidates() const override { return true; }
  bool invalidates() const override { return false; }
};

}  // namespace

StrategySet::StrategySet() {
  all_[0] = std::make_unique<NoneStrategy>();
  all_[1] = std::make_unique<RecoverStrategy>("A", false, &stats_);
  all_[2] = std::make_unique<InvalidateStrategy>();
  all_[3] = std::make_unique<PathStrategy>();
  all_[4] = std::make_unique<RecoverStrategy>("auto", true, &stats_);
}
StrategySet::~StrategySet() = default;

const HandleStrategy* StrategySet::find(std::string_view name) const {
  for (const auto& s : all_)
    if (s->name().size() == name.size() && strncasecmp(s->name().data(), name.data(), name.size()) == 0)
      return s.get();
  return nullptr;
}

}  // namespace antares::fs
