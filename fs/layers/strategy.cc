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
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, int flags) const override {
    return layer.open_handle(ref, flags);
  }
  bool revalidates() const override { return false; }
  bool invalidates() const override { return false; }
};

// Recover on ESTALE; shared by A and auto.
Result<UniqueFd> open_recovering(Layer& layer, LayerRef& ref, int flags, StrategyStats* stats) {
  auto fd = layer.open_handle(ref, flags);
  if (fd.err() != ESTALE) return fd;
  layer.cache().erase(ref.id);
  auto fresh = layer.resolve(ref.path);
  if (!fresh.ok()) {
    if (fresh.err() == ENOENT || fresh.err() == ENOTDIR || fresh.err() == ELOOP) {
      stats->recovered_gone++;
      return Error::from_errno(ENOENT, "recovering " + layer.name() + ":/" + ref.path + ": gone");
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
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, int flags) const override {
    return open_recovering(layer, ref, flags, stats_);
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
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, int flags) const override {
    return layer.open_handle(ref, flags);
  }
  bool revalidates() const override { return false; }
  bool invalidates() const override { return true; }
};

class PathStrategy final : public HandleStrategy {
 public:
  std::string_view name() const override { return "C"; }
  Result<UniqueFd> open(Layer& layer, LayerRef& ref, int flags) const override {
    auto fd = layer.open_path(ref.path, flags);
    // Keep the ref's identity current: the union compares it with what the
    // kernel was told, to renew node ids and bypass stale kernel caches.
    if (fd.ok())
      if (auto stx = statx_at(fd->get(), ""); stx.ok()) {
        ref.id = identity_of(*stx);
        ref.type = stx->stx_mode & S_IFMT;
      }
    return fd;
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
