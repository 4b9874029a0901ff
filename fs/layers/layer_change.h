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

// How a layer's owner reports a batch of changes to its backing directory.
// begin() is called before the first change of a batch is made, end(changes)
// after the last one, from the same thread; every begin() is followed by
// exactly one end(). begin() may run under the owner's lock and must only
// bump a counter; end() runs with no lock of the owner held and must not
// block. Owners call neither when a refresh or re-sync changes nothing, so a
// request that met ESTALE waits only for changes that really happen.
struct LayerChangeListener {
  std::function<void()> begin;
  std::function<void(const std::vector<LayerChange>&)> end;
  explicit operator bool() const { return bool(end); }
};

}  // namespace antares::fs
