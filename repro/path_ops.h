// The filesystem operations the reproduction performs, each timed and
// recorded as an OpEvent: the only place the walker and the scenarios touch
// the mount, so every syscall's errno reaches the oracle unchanged (ESTALE
// is never folded into a generic failure). Paths are relative to the root.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "repro/event.h"

namespace antares::repro {

struct DirEntry {
  std::string name;
  unsigned char type = 0;  // DT_DIR, DT_REG, ... (DT_UNKNOWN resolved with fstatat)
};

// Thread-safe (stateless apart from the recorder, which is thread-safe).
class PathOps {
 public:
  PathOps(std::string root, Recorder* rec) : root_(std::move(root)), rec_(rec) {}

  // opendir + readdir (d_type); records one readdir (bytes = entries). nullopt on failure.
  std::optional<std::vector<DirEntry>> list(const std::string& rel) const;
  // open + read the whole file; records open (on failure) or read (with the oid).
  std::optional<std::string> read(const std::string& rel) const;
  // lstat / stat; records the op. Returns the errno (0 on success).
  int lstat(const std::string& rel, struct stat* st = nullptr) const;
  int stat(const std::string& rel, struct stat* st = nullptr) const;
  // open(O_CREAT|O_TRUNC) + write + close; records write. Returns the errno.
  int write(const std::string& rel, const std::string& content) const;
  int rename(const std::string& from, const std::string& to) const;
  // mkdir -p; records one mkdir per component created or failing (EEXIST is success).
  int mkdirs(const std::string& rel) const;

  std::string full(const std::string& rel) const { return rel.empty() ? root_ : root_ + "/" + rel; }
  const std::string& root() const { return root_; }

 private:
  void record(Op op, const std::string& rel, int64_t t0, int err, uint64_t bytes,
              std::optional<Oid> oid = std::nullopt, std::string head = {}) const;
  std::string root_;
  Recorder* rec_;
};

}  // namespace antares::repro
