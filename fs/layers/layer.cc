// Passthrough layer over a local directory: file handles, the handle cache and
// path resolution beneath the root. Errors keep the syscall's errno.
#include "fs/layers/layer.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <thread>
#include <vector>

namespace antares::fs {

namespace {
Error sys_error(const char* what, const std::string& path) {
  int e = errno ? errno : EIO;
  return Error::from_errno(e, std::string(what) + " " + path + ": " + std::strerror(e));
}
}  // namespace

std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

Result<struct statx> statx_at(int dirfd, const std::string& name) {
  struct statx stx;
  int flags = AT_SYMLINK_NOFOLLOW | (name.empty() ? AT_EMPTY_PATH : 0);
  if (::statx(dirfd, name.c_str(), flags, STATX_BASIC_STATS | STATX_BTIME, &stx) != 0)
    return sys_error("statx", name);
  return stx;
}

Result<struct statx> LayerHooks::stat(int fd) { return statx_at(fd, ""); }

Identity identity_of(const struct statx& stx) {
  Identity id;
  id.ino = stx.stx_ino;
  if (stx.stx_mask & STATX_BTIME) {
    id.btime_sec = stx.stx_btime.tv_sec;
    id.btime_nsec = stx.stx_btime.tv_nsec;
  }
  return id;
}

void FileHandle::release() {
  if (size_ > kInline) delete[] heap_;
  size_ = 0;
  type_ = 0;
}

void FileHandle::assign(int type, const unsigned char* bytes, uint32_t size) {
  if (size > kInline) {
    auto* copy = new unsigned char[size];
    std::memcpy(copy, bytes, size);
    release();
    heap_ = copy;
  } else {
    unsigned char tmp[kInline];
    std::memcpy(tmp, bytes, size);  // bytes may alias our own buffer
    release();
    std::memcpy(inline_, tmp, size);
  }
  type_ = type;
  size_ = size;
}

bool FileHandle::operator==(const FileHandle& o) const {
  return type_ == o.type_ && size_ == o.size_ && std::memcmp(data(), o.data(), size_) == 0;
}

Result<FileHandle> FileHandle::of(int dirfd, const std::string& name) {
  alignas(struct file_handle) unsigned char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  auto* fh = reinterpret_cast<struct file_handle*>(buf);
  fh->handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  int flags = name.empty() ? AT_EMPTY_PATH : 0;
  if (::name_to_handle_at(dirfd, name.c_str(), fh, &mount_id, flags) != 0)
    return sys_error("name_to_handle_at", name);
  FileHandle h;
  h.assign(fh->handle_type, fh->f_handle, fh->handle_bytes);
  return h;
}

Result<UniqueFd> FileHandle::open(int mount_fd, int flags) const {
  alignas(struct file_handle) unsigned char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  auto* fh = reinterpret_cast<struct file_handle*>(buf);
  fh->handle_type = type_;
  fh->handle_bytes = size_;
  std::memcpy(fh->f_handle, data(), size_);
  int fd = ::open_by_handle_at(mount_fd, fh, flags | O_CLOEXEC);
  // A removed object's inode number may be taken by a file being created
  // beside it; until that new inode is set up, the kernel answers the old
  // handle ENOMEM instead of ESTALE (iget_locked returns NULL for an inode
  // still being created). That lasts microseconds: ask again, briefly, so the
  // caller sees ESTALE (or a real shortage of memory after ~100 ms).
  auto delay = std::chrono::microseconds(50);
  for (auto waited = std::chrono::microseconds(0); fd < 0 && errno == ENOMEM && waited < std::chrono::milliseconds(100);
       waited += delay, delay = std::min(delay * 2, std::chrono::microseconds(5000))) {
    std::this_thread::sleep_for(delay);
    fd = ::open_by_handle_at(mount_fd, fh, flags | O_CLOEXEC);
  }
  if (fd < 0) return sys_error("open_by_handle_at", "");
  return UniqueFd(fd);
}

std::optional<FileHandle> HandleCache::get(const Identity& id) {
  std::lock_guard lk(mu_);
  auto it = map_.find(id);
  if (it == map_.end()) {
    stats_.misses++;
    return std::nullopt;
  }
  stats_.hits++;
  return it->second;
}

void HandleCache::put(const Identity& id, const FileHandle& h) {
  std::lock_guard lk(mu_);
  if (map_.size() >= capacity_) {
    stats_.dropped += map_.size();
    map_.clear();
  }
  map_[id] = h;
}

void HandleCache::erase(const Identity& id) {
  std::lock_guard lk(mu_);
  stats_.dropped += map_.erase(id);
}

size_t HandleCache::size() const {
  std::lock_guard lk(mu_);
  return map_.size();
}

void Layer::end_change() {
  {
    std::lock_guard lk(quiet_mu_);
    epoch_++;
    changing_--;
  }
  quiet_cv_.notify_all();
}

bool Layer::wait_quiet(std::chrono::milliseconds timeout) {
  std::unique_lock lk(quiet_mu_);
  return quiet_cv_.wait_for(lk, timeout, [&] { return changing_.load() == 0; });
}

Layer::Layer(std::string name, std::string root, bool writable, UniqueFd root_fd, LayerHooks* hooks)
    : name_(std::move(name)), root_(std::move(root)), writable_(writable), root_fd_(std::move(root_fd)),
      hooks_(hooks ? hooks : &default_hooks_) {}

Result<std::unique_ptr<Layer>> Layer::open(std::string name, const std::string& root, bool writable,
                                           LayerHooks* hooks) {
  // O_RDONLY, not O_PATH: open_by_handle_at refuses an O_PATH mount fd (EBADF).
  int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return sys_error(("open layer " + name).c_str(), root);
  UniqueFd rfd(fd);
  // Fail at mount time, not on the first request, if handles are unsupported here.
  auto h = FileHandle::of(rfd.get(), "");
  if (!h.ok())
    return Error::from_errno(h.err(), "layer " + name + " at " + root +
                                          " does not support file handles: " + h.error().message);
  return std::unique_ptr<Layer>(new Layer(std::move(name), root, writable, std::move(rfd), hooks));
}

Result<LayerRef> Layer::resolve_at(int dirfd, const std::string& name) {
  LayerRef ref;
  for (int attempt = 0;; ++attempt) {
    auto stx = statx_at(dirfd, name);
    if (!stx.ok()) return stx.error();
    ref.id = identity_of(*stx);
    ref.type = stx->stx_mode & S_IFMT;
    if (auto cached = cache_.get(ref.id)) {
      ref.handle = std::move(*cached);
      return ref;
    }
    auto h = FileHandle::of(dirfd, name);
    if (!h.ok()) return h.error();
    // The name may have been replaced between the statx and the handle: the
    // handle is the identity's only if the name still shows that identity.
    auto again = statx_at(dirfd, name);
    if (!again.ok()) return again.error();
    if (identity_of(*again) == ref.id) {
      ref.handle = std::move(*h);
      cache_.put(ref.id, ref.handle);
      return ref;
    }
    if (attempt == 3) return Error::from_errno(ESTALE, "resolve " + name_ + ": " + name + " kept being replaced");
  }
}

Result<LayerRef> Layer::resolve(const std::string& rel) {
  if (rel.empty()) return resolve_at(root_fd_.get(), "");
  auto fd = open_path(rel, O_PATH);
  if (!fd.ok()) return fd.error();
  return resolve_at(fd->get(), "");
}

Result<UniqueFd> Layer::open_handle(const LayerRef& ref, int flags, std::string_view rel) {
  auto fd = ref.handle.open(root_fd_.get(), flags);
  if (!fd.ok()) return Error::from_errno(fd.err(), "open_by_handle_at " + name_ + ":/" + std::string(rel));
  return fd;
}

namespace {
int openat2_beneath(int dirfd, const char* path, int flags) {
  struct open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = uint64_t(flags | O_NOFOLLOW | O_CLOEXEC);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  int fd;
  do {
    fd = int(::syscall(SYS_openat2, dirfd, path, &how, sizeof how));
  } while (fd < 0 && errno == EAGAIN);
  return fd;
}
}  // namespace

Result<UniqueFd> Layer::open_path(const std::string& rel, int flags) {
  // The kernel takes at most PATH_MAX bytes per call; a deeper path (legal:
  // callers reach it through directory fds) is opened a piece at a time.
  constexpr size_t kPiece = PATH_MAX / 2;
  UniqueFd dir;
  size_t start = 0;
  while (rel.size() - start >= kPiece) {
    size_t cut = rel.rfind('/', start + kPiece);
    if (cut == std::string::npos || cut <= start) return Error::from_errno(ENAMETOOLONG, "/" + rel);
    std::string piece = rel.substr(start, cut - start);
    int fd = openat2_beneath(dir.valid() ? dir.get() : root_fd_.get(), piece.c_str(), O_PATH | O_DIRECTORY);
    if (fd < 0) return sys_error(("openat2 " + name_ + ":").c_str(), "/" + rel.substr(0, cut));
    dir = UniqueFd(fd);
    start = cut + 1;
  }
  const char* p = start == rel.size() ? "." : rel.c_str() + start;
  int fd = openat2_beneath(dir.valid() ? dir.get() : root_fd_.get(), p, flags);
  if (fd < 0) return sys_error(("openat2 " + name_ + ":").c_str(), "/" + rel);
  return UniqueFd(fd);
}

}  // namespace antares::fs
