// ClBuilder: builds and re-syncs the CL layer's backing directory from a
// changelist's file list (GET /api/v1/cl/{cl}/files-list): new and modified
// files are written with their blob's bytes, deleted files become whiteouts
// (character device 0/0). A re-sync replaces changed files the way upstream
// does (temp file + rename over the old name), which is one of the real
// triggers of ESTALE in the passthrough layer above it; the LayerChange
// events it emits let the filesystem drop the handles it invalidated.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "common/oid.h"
#include "common/result.h"
#include "fs/layers/layer_change.h"
#include "fs/lower/mirror_fs.h"
#include "fs/remote/mega_client.h"

namespace antares::fs {

struct ClBuilderStats {
  std::atomic<uint64_t> builds{0};         // successful build() calls
  std::atomic<uint64_t> resyncs{0};        // resync() calls that changed the directory
  std::atomic<uint64_t> files_written{0};  // files and whiteouts created or replaced
  std::atomic<uint64_t> dropped_paths{0};  // hostile or duplicate paths skipped
  std::atomic<uint64_t> kept{0};           // replaced or removed files in the attic now
};

class ClBuilder {
 public:
  // cl_dir: an existing directory this builder owns; build() wipes its contents.
  // keep_max > 0: a file a resync replaces or removes keeps its inode, linked
  // into an attic inside cl_dir (hidden: a temp name), until keep_max newer
  // ones push it out, so a handle of it still opens (a file the kernel opened
  // without asking the daemon keeps reading its version). 0: nothing kept.
  ClBuilder(remote::MegaClient& mega, std::string cl_id, std::string cl_dir, size_t keep_max = 0);

  // Fetches the list and every blob it needs, then wipes cl_dir's contents and
  // writes the layer (dirs 0755, files 0644, whiteouts for deletions). On an
  // HTTP failure (ETIMEDOUT, ENOENT for an unknown CL, else EIO) nothing on
  // disk has changed yet. A rebuild of a built directory emits `removed` for
  // every old top-level name and `added` for every new one.
  Status build();

  // Fetches the list again: false if it equals the last one. Otherwise applies
  // the difference by replacement (temp + rename: changed files get new inodes,
  // unchanged ones keep theirs), removes entries that left the list (leaving
  // their directories), emits added/replaced/removed events and returns true.
  // Before any successful build() it builds and returns true. HTTP failures
  // are returned and leave the directory as it was.
  Result<bool> resync();

  // See LayerChangeListener; called with no lock of the builder held.
  void set_listener(LayerChangeListener listener);

  const ClBuilderStats& stats() const { return stats_; }
  const std::string& cl_dir() const { return cl_dir_; }
  // statx of an object of the layer (fd): a directory's mtime stays the one
  // it had while a resync renames a new version of a file into it.
  Result<struct statx> stat(int fd) const { return kept_mtimes_.stat(fd); }

 private:
  struct Want {  // desired state of one path
    remote::ClAction action = remote::ClAction::modified;
    std::optional<Oid> sha;  // files only
    bool whiteout() const { return action == remote::ClAction::deleted; }
    bool same_list_entry(const Want& o) const { return action == o.action && sha == o.sha; }
    bool same_on_disk(const Want& o) const {
      return whiteout() == o.whiteout() && (whiteout() || sha == o.sha);
    }
  };
  using List = std::map<std::string, Want>;  // rel path ("a/b") -> state

  Result<List> fetch_list();
  Result<std::map<Oid, std::string>> fetch_blobs(const List& list, const List* old);
  // Writes one entry; replace: via temp + rename. On success *created_dir is
  // the topmost parent directory this made ("" if none).
  Status write_entry(int root_fd, const std::string& path, const Want& want,
                     const std::map<Oid, std::string>& blobs, bool replace, std::string* created_dir);
  // Requires mu_. Links regular file `name` of dirfd into the attic (see the
  // constructor) before it is replaced or removed; best effort.
  void keep(int root_fd, int dirfd, const std::string& name);
  // Requires mu_. Calls begin_change before the first change to the directory.
  Status build_locked(std::vector<LayerChange>& events, LayerChangeListener& listener, bool& begun);
  LayerChangeListener listener();
  // begin() of the listener once per batch, before the first change on disk.
  void begin_change(LayerChangeListener& l, bool& begun);
  // end(events) of a batch that began; called with mu_ released.
  static void end_change(LayerChangeListener& l, bool begun, const std::vector<LayerChange>& events);

  remote::MegaClient& mega_;
  const std::string cl_id_;
  const std::string cl_dir_;
  const size_t keep_max_;
  ClBuilderStats stats_;
  mirror::KeptMtimes kept_mtimes_;  // see stat()

  // Lock order: mu_ before listener_mu_. mu_ serializes build/resync and is
  // held across their HTTP calls (only callers of this builder wait on it);
  // listener_mu_ guards only listener_ and is never held while calling it.
  std::mutex mu_;
  std::optional<List> last_;  // guarded by mu_; what is on disk, nullopt before a build
  std::deque<uint64_t> kept_;  // guarded by mu_; inode numbers in the attic, oldest first
  std::mutex listener_mu_;
  LayerChangeListener listener_;  // guarded by listener_mu_
};

}  // namespace antares::fs
