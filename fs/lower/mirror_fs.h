// Internal helpers of fs/lower: the only code that touches the local backing
// directories (the lower mirror and the CL directory). Every operation is an
// *at() syscall beneath a directory fd, walked one validated component at a
// time with O_NOFOLLOW, so neither a hostile name from the server nor a
// symlink planted in the directory can make us write outside it. Errors keep
// the raw errno of the syscall that failed.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace antares::fs::mirror {

using Fd = antares::UniqueFd;  // owns one file descriptor

// Temp files are created under this prefix and renamed into place; readers of
// the directories (readdir of the filesystem) must hide such names.
inline constexpr std::string_view kTempPrefix = ".antares-tmp-";
inline bool is_temp_name(std::string_view name) { return name.starts_with(kTempPrefix); }
// A temp name this process made (it may be in flight): only others' are leftovers.
bool is_own_temp_name(std::string_view name);

// nullptr if `name` is usable as one path component, else why not:
// empty, ".", "..", '/', NUL, longer than 255 bytes, or our temp prefix.
const char* bad_name_reason(std::string_view name);
// For log lines: printable ASCII kept, '\\' and everything else as \xNN.
std::string escape(std::string_view s);

// "a/b/c" -> {"a","b","c"}; "" -> {}. EINVAL if any component is bad.
Result<std::vector<std::string>> split_rel(std::string_view rel);
inline std::string join_rel(const std::string& dir, std::string_view name) {
  return dir.empty() ? std::string(name) : dir + "/" + std::string(name);
}

// Error from the current errno: "<what> <path>: <strerror>".
Error errno_error(const char* what, std::string_view path);

// Opens directory `rel` beneath root_fd as O_PATH|O_DIRECTORY, one component at
// a time without following symlinks. With create, missing components are
// made 0755 and *first_created (if given) is set to the rel path of the
// topmost directory made ("" if none).
Result<Fd> open_dir(int root_fd, std::string_view rel, bool create = false,
                    std::string* first_created = nullptr);

// Removes `name` in dirfd, recursively if it is a directory, never following
// symlinks. A missing name is success.
Status remove_tree(int dirfd, const std::string& name);
// Removes every child of the directory dirfd (which may be O_PATH).
Status clear_dir(int dirfd);

// The file that marks a directory antares-fs owns (the lower mirror
// --cache/lower, the CL directory). Only a marked directory, or an empty one,
// is ever wiped: a mistyped flag must not destroy the user's data. Its name
// has the temp prefix, so every layer hides it and no server name can match.
inline constexpr std::string_view kOwnerMarker = ".antares-tmp-owner";
// Claims directory `dir` (which exists) for antares-fs: success if it carries
// the marker, or if it is empty (the marker is then written). ENOTEMPTY with a
// message naming `what` if it holds anything else: nothing is removed.
Status claim_dir(const std::string& dir, std::string_view what);
// clear_dir, but the owner marker at the top level stays.
Status clear_owned_dir(int dirfd);
// The names in directory dirfd (without "." and "..").
Result<std::vector<std::string>> list_dir(int dirfd);

// A fresh, uniquely named temp file (O_WRONLY, mode applied exactly) in dirfd.
Result<std::pair<Fd, std::string>> create_temp_file(int dirfd, mode_t mode);
// A fresh, uniquely named whiteout (char device 0/0, mode 0000) in dirfd.
Result<std::string> create_temp_whiteout(int dirfd);
// Writes all of data at offset 0 and truncates the file to its length.
Status write_whole(int fd, std::string_view data, std::string_view path);
// The objects whose mtime the owner is keeping while it writes to them for
// itself (a first listing written out, a file's new version renamed into its
// directory, a placeholder filled in): the mtime is put back afterwards, but
// a stat between the write and the restore would see a passing one. Readers
// stat through stat(), which answers the kept mtime meanwhile. Thread-safe.
class KeptMtimes {
 public:
  // Registers fd's object with its current mtime until destroyed: make it
  // before the first write, destroy it after the mtime is put back.
  class Scope {
   public:
    Scope(KeptMtimes& kept, int fd);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    bool ok() const { return ok_; }
    const struct timespec& mtime() const { return mtime_; }

   private:
    KeptMtimes& kept_;
    bool ok_ = false;
    uint64_t ino_ = 0;
    struct timespec mtime_ {};
  };
  // statx of fd's object (as statx_at(fd, "")), with its kept mtime while a
  // Scope holds it.
  Result<struct statx> stat(int fd) const;

 private:
  struct Live {
    struct timespec mtime;
    int scopes;
  };
  mutable std::mutex mu_;  // leaf
  std::unordered_map<uint64_t, Live> live_;  // by inode; guarded by mu_
  // Scopes ended so far, bumped under mu_ as one leaves live_: a stat that
  // sees it move may have read a passing mtime whose Scope is gone.
  std::atomic<uint64_t> ended_{0};
};

// Keeps a directory's mtime across a change that is not a change of its
// names: a file replaced by a new inode (how a new version lands), a first
// listing written out. Readers of the union must not see those as the
// directory changing (tar's "file changed as we read it"). Records the mtime
// when made, puts it back when destroyed; best effort. With `kept`, stat()
// answers that mtime throughout.
class KeepDirMtime {
 public:
  explicit KeepDirMtime(int dirfd, KeptMtimes* kept = nullptr);
  ~KeepDirMtime();
  KeepDirMtime(const KeepDirMtime&) = delete;
  KeepDirMtime& operator=(const KeepDirMtime&) = delete;

 private:
  std::optional<KeptMtimes::Scope> scope_;  // outlives the restore
  int dirfd_;
  bool ok_ = false;
  struct timespec mtime_ {};
};

// Extended attributes of `name` in dirfd, or of dirfd itself if `name` is
// empty (dirfd may be O_PATH), never following a symlink at `name`.
// get_xattr: ENODATA if absent, ENOTSUP if the filesystem has none.
Result<std::string> get_xattr(int dirfd, const std::string& name, const char* key);
Status set_xattr(int dirfd, const std::string& name, const char* key, std::string_view value);
Status remove_xattr(int dirfd, const std::string& name, const char* key);

// renameat(dirfd, from, dirfd, to); on failure the temp `from` is unlinked.
Status rename_into_place(int dirfd, const std::string& from, const std::string& to, std::string_view path);

}  // namespace antares::fs::mirror
