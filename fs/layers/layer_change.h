// What a layer's owner (the lower store's refresh, the CL re-sync, the upper
// watcher) changed in its backing directory. Strategy B turns these into
// dropped handles, dropped union children and kernel invalidations; other
// strategies ignore them. It lives with the layers because both its
// producers (fs/lower, fs/fuse) and its consumer (fs/union) link them.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace antares::fs {

struct LayerChange {
  enum class Kind {
    added,     // a name appeared in `path`'s parent
    replaced,  // the object at `path` was replaced (new inode: old handles go stale)
    removed,   // the object at `path` (and anything beneath it) is gone
  };
  Kind kind = Kind::replaced;
  std::string path;  // relative to the layer root, no leading '/': "a/b/BUCK"
};

// Called after the changes are applied to the backing directory, from the
// thread that applied them, with no lock of the caller held. Must not block.
using LayerChangeListener = std::function<void(const std::vector<LayerChange>&)>;

}  // namespace antares::fs
