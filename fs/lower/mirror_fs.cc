// Implementation of the fs/lower directory helpers (see mirror_fs.h).
#include "fs/lower/mirror_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "fs/layers/layer.h"

namespace antares::fs::mirror {


const char* bad_name_reason(std::string_view name) {
  if (name.empty()) return "empty";
  if (name == ".") return "dot";
  if (name == "..") return "dotdot";
  if (name.size() > 255) return "too_long";
  if (name.find('/') != std::string_view::npos) return "slash";
  if (name.find('\0') != std::string_view::npos) return "nul";
  if (is_temp_name(name)) return "reserved";
  return nullptr;
}

std::string escape(std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

Result<std::vector<std::string>> split_rel(std::string_view rel) {
  std::vector<std::string> parts;
  if (rel.empty()) return parts;
  size_t start = 0;
  while (true) {
    size_t slash = rel.find('/', start);
    std::string_view comp = rel.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (const char* why = bad_name_reason(comp))
      return Error::from_errno(EINVAL, "bad path component (" + std::string(why) + ") in '" + escape(rel) + "'");
    parts.emplace_back(comp);
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return parts;
}

Error errno_error(const char* what, std::string_view path) {
  int e = errno ? errno : EIO;
  return Error::from_errno(e, std::string(what) + " " + escape(path) + ": " + std::strerror(e));
}

Result<Fd> open_dir(int root_fd, std::string_view rel, bool create, std::string* first_created) {
  if (first_created) first_created->clear();
  auto parts = split_rel(rel);
  if (!parts) return parts.error();
  Fd cur(::openat(root_fd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!cur.valid()) return errno_error("open", "<root>");
  std::string done;
  for (const auto& p : *parts) {
    done = join_rel(done, p);
    int fd = ::openat(cur.get(), p.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
      if (::mkdirat(cur.get(), p.c_str(), 0755) != 0 && errno != EEXIST) return errno_error("mkdir", done);
      if (first_created && first_created->empty()) *first_created = done;
      fd = ::openat(cur.get(), p.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) return errno_error("open dir", done);
    cur = Fd(fd);
  }
  return cur;
}

Result<std::vector<std::string>> list_dir(int dirfd) {
  int fd = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_error("open", ".");
  DIR* d = ::fdopendir(fd);
  if (!d) {
    Error e = errno_error("fdopendir", ".");
    ::close(fd);
    return e;
  }
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent* de = ::readdir(d)) {
    std::string_view n = de->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  int e = errno;
  ::closedir(d);
  if (e != 0) return Error::from_errno(e, "readdir failed");
  return names;
}

Status clear_dir(int dirfd) {
  auto names = list_dir(dirfd);
  if (!names) return names.error();
  for (const auto& n : *names)
    if (auto s = remove_tree(dirfd, n); !s) return s;
  return {};
}

Status clear_owned_dir(int dirfd) {
  auto names = list_dir(dirfd);
  if (!names) return names.error();
  for (const auto& n : *names)
    if (n != kOwnerMarker)
      if (auto s = remove_tree(dirfd, n); !s) return s;
  return {};
}

Status claim_dir(const std::string& dir, std::string_view what) {
  Fd d(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!d.valid()) return errno_error("open", dir);
  auto names = list_dir(d.get());
  if (!names) return names.error();
  for (const auto& n : *names)
    if (n == kOwnerMarker) return {};
  if (!names->empty())
    return Error::from_errno(ENOTEMPTY, std::string(what) + " " + dir +
                                            " is not empty and was not created by antares-fs (it has no " +
                                            std::string(kOwnerMarker) +
                                            " marker): refusing to wipe it. Use an empty or new directory, or "
                                            "empty this one yourself");
  Fd m(::openat(d.get(), std::string(kOwnerMarker).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!m.valid() && errno != EEXIST) return errno_error("create owner marker in", dir);
  if (m.valid()) {
    static constexpr std::string_view kText =
        "This directory belongs to antares-fs, which wipes it at every mount.\n";
    if (auto s = write_whole(m.get(), kText, dir); !s) return s;
  }
  return {};
}

Status remove_tree(int dirfd, const std::string& name) {
  if (::unlinkat(dirfd, name.c_str(), 0) == 0 || errno == ENOENT) return {};
  if (errno != EISDIR && errno != EPERM) return errno_error("unlink", name);
  // A directory: empty it (through a fd opened without following symlinks) first.
  Fd sub(::openat(dirfd, name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!sub.valid()) return errno_error("open dir", name);
  if (auto s = clear_dir(sub.get()); !s) return s;
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) return errno_error("rmdir", name);
  return {};
}

namespace {
std::string next_temp_name() {
  static std::atomic<uint64_t> counter{0};
  return std::string(kTempPrefix) + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}
}  // namespace

bool is_own_temp_name(std::string_view name) {
  return name.starts_with(std::string(kTempPrefix) + std::to_string(::getpid()) + "-");
}

Result<std::pair<Fd, std::string>> create_temp_file(int dirfd, mode_t mode) {
  for (int i = 0; i < 100; ++i) {
    std::string name = next_temp_name();
    Fd fd(::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (fd.valid()) {
      // Exact mode whatever the process umask: the layer's files must look alike.
      if (::fchmod(fd.get(), mode) != 0) {
        Error e = errno_error("chmod", name);
        ::unlinkat(dirfd, name.c_str(), 0);
        return e;
      }
      return std::make_pair(std::move(fd), std::move(name));
    }
    if (errno != EEXIST) return errno_error("create", name);
  }
  return Error::from_errno(EEXIST, "no free temp name");
}

Result<std::string> create_temp_whiteout(int dirfd) {
  for (int i = 0; i < 100; ++i) {
    std::string name = next_temp_name();
    if (::mknodat(dirfd, name.c_str(), S_IFCHR | 0000, makedev(0, 0)) == 0) return name;
    if (errno != EEXIST) return errno_error("mknod whiteout", name);
  }
  return Error::from_errno(EEXIST, "no free temp name");
}

Status write_whole(int fd, std::string_view data, std::string_view path) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::pwrite(fd, data.data() + off, data.size() - off, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("write", path);
    }
    off += static_cast<size_t>(n);
  }
  if (::ftruncate(fd, static_cast<off_t>(data.size())) != 0) return errno_error("truncate", path);
  return {};
}

KeptMtimes::Scope::Scope(KeptMtimes& kept, int fd) : kept_(kept) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return;
  ok_ = true;
  ino_ = uint64_t(st.st_ino);
  mtime_ = st.st_mtim;
  std::lock_guard l(kept_.mu_);
  // A second writer of the same object keeps the first one's mtime.
  auto [it, fresh] = kept_.live_.try_emplace(ino_, Live{mtime_, 0});
  if (!fresh) mtime_ = it->second.mtime;
  it->second.scopes++;
}

KeptMtimes::Scope::~Scope() {
  if (!ok_) return;
  std::lock_guard l(kept_.mu_);
  auto it = kept_.live_.find(ino_);
  if (it != kept_.live_.end() && --it->second.scopes == 0) {
    kept_.live_.erase(it);
    kept_.ended_.fetch_add(1, std::memory_order_release);
  }
}

Result<struct statx> KeptMtimes::stat(int fd) const {
  for (int attempt = 0;; ++attempt) {
    const uint64_t ended = ended_.load(std::memory_order_acquire);
    auto stx = statx_at(fd, "");
    if (!stx.ok()) return stx;
    {
      std::lock_guard l(mu_);
      if (auto it = live_.find(stx->stx_ino); it != live_.end()) {
        stx->stx_mtime = {it->second.mtime.tv_sec, uint32_t(it->second.mtime.tv_nsec), 0};
        return stx;
      }
    }
    // Not being written now. If no Scope ended since before the statx, none
    // was live across it either: what it read is the object's own mtime.
    // Otherwise read again (a writer that just put the mtime back); the
    // bound only stops a livelock under a storm of unrelated writes.
    if (ended_.load(std::memory_order_acquire) == ended || attempt == 8) return stx;
  }
}

KeepDirMtime::KeepDirMtime(int dirfd, KeptMtimes* kept) : dirfd_(dirfd) {
  if (kept) scope_.emplace(*kept, dirfd);
  struct stat st;
  ok_ = ::fstat(dirfd, &st) == 0;
  mtime_ = st.st_mtim;
  if (scope_ && scope_->ok()) mtime_ = scope_->mtime();
}

KeepDirMtime::~KeepDirMtime() {
  if (!ok_) return;
  const struct timespec ts[2] = {{0, UTIME_OMIT}, mtime_};
  // dirfd may be O_PATH: its /proc link reaches the directory itself.
  ::utimensat(AT_FDCWD, ("/proc/self/fd/" + std::to_string(dirfd_)).c_str(), ts, 0);
}

namespace {
// There is no getxattrat(2) in glibc 2.36: the fd's /proc link reaches the
// directory (O_PATH included), and the final component is not followed.
std::string proc_path(int dirfd, const std::string& name) {
  std::string p = "/proc/self/fd/" + std::to_string(dirfd);
  if (!name.empty()) p += "/" + name;
  return p;
}
}  // namespace

Result<std::string> get_xattr(int dirfd, const std::string& name, const char* key) {
  const std::string p = proc_path(dirfd, name);
  char buf[256];
  ssize_t n = name.empty() ? ::getxattr(p.c_str(), key, buf, sizeof buf) : ::lgetxattr(p.c_str(), key, buf, sizeof buf);
  if (n < 0) return errno_error("getxattr", name.empty() ? "." : name);
  return std::string(buf, size_t(n));
}

Status set_xattr(int dirfd, const std::string& name, const char* key, std::string_view value) {
  const std::string p = proc_path(dirfd, name);
  int r = name.empty() ? ::setxattr(p.c_str(), key, value.data(), value.size(), 0)
                       : ::lsetxattr(p.c_str(), key, value.data(), value.size(), 0);
  if (r != 0) return errno_error("setxattr", name.empty() ? "." : name);
  return {};
}

Status remove_xattr(int dirfd, const std::string& name, const char* key) {
  const std::string p = proc_path(dirfd, name);
  int r = name.empty() ? ::removexattr(p.c_str(), key) : ::lremovexattr(p.c_str(), key);
  if (r != 0 && errno != ENODATA) return errno_error("removexattr", name.empty() ? "." : name);
  return {};
}

Status rename_into_place(int dirfd, const std::string& from, const std::string& to, std::string_view path) {
  if (::renameat(dirfd, from.c_str(), dirfd, to.c_str()) == 0) return {};
  Error e = errno_error("rename over", path);
  ::unlinkat(dirfd, from.c_str(), 0);
  return e;
}

}  // namespace antares::fs::mirror
