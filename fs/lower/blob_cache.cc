// Implementation of the content-addressed blob cache (see blob_cache.h).
#include "fs/lower/blob_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <vector>

#include "common/log.h"
#include "fs/lower/mirror_fs.h"

namespace antares::fs {

namespace {

constexpr unsigned kSubdirs = 256;

std::string sub_name(unsigned sub) {
  static const char kHex[] = "0123456789abcdef";
  return {kHex[sub >> 4], kHex[sub & 15]};
}

// The oid's 38 hex digits after its subdirectory, or false for other names.
bool is_blob_name(std::string_view n) {
  return n.size() == 38 && std::all_of(n.begin(), n.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Calls f(name, stat) for every blob file of subdirectory fd; removes our
// temp leftovers (an insert interrupted by a crash).
template <class F>
void for_each_blob(int fd, F f) {
  auto names = mirror::list_dir(fd);
  if (!names) return;
  for (const auto& n : *names) {
    if (mirror::is_temp_name(n)) {
      // A leftover of an earlier process; ours may be a put in flight.
      if (!mirror::is_own_temp_name(n)) ::unlinkat(fd, n.c_str(), 0);
      continue;
    }
    if (!is_blob_name(n)) continue;
    struct stat st;
    if (::fstatat(fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
    f(n, st);
  }
}

int64_t mtime_ns(const struct stat& st) { return int64_t(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec; }

}  // namespace

std::optional<uint64_t> parse_size(std::string_view text) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || p == text.data()) return std::nullopt;
  std::string unit(p, text.data() + text.size());
  for (auto& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  if (unit.ends_with("IB")) unit.resize(unit.size() - 2);
  else if (unit.size() == 2 && unit[1] == 'B') unit.resize(1);
  int shift = 0;
  if (unit.empty() || unit == "B") shift = 0;
  else if (unit == "K") shift = 10;
  else if (unit == "M") shift = 20;
  else if (unit == "G") shift = 30;
  else if (unit == "T") shift = 40;
  else return std::nullopt;
  if (shift && n > (UINT64_MAX >> shift)) return std::nullopt;
  return n << shift;
}

Result<std::unique_ptr<BlobCache>> BlobCache::open(const std::string& dir, uint64_t max_bytes, Clock& clock,
                                                   bool background) {
  if (max_bytes == 0) return Error::from_errno(EINVAL, "blob cache: a size bound of 0");
  UniqueFd root(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) return mirror::errno_error("open blob cache", dir);
  std::unique_ptr<BlobCache> c(new BlobCache(dir, max_bytes, clock, std::move(root)));
  if (background) c->thread_ = std::thread([p = c.get()] { p->run(); });
  return c;
}

BlobCache::BlobCache(std::string dir, uint64_t max_bytes, Clock& clock, UniqueFd root)
    : dir_(std::move(dir)), max_bytes_(max_bytes), clock_(clock), root_(std::move(root)) {}

BlobCache::~BlobCache() {
  stopping_ = true;
  {
    std::lock_guard l(run_mu_);
    stop_ = true;
  }
  run_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::string BlobCache::path_of(const Oid& oid) const {
  std::string hex = oid.hex();
  return dir_ + "/" + hex.substr(0, 2) + "/" + hex.substr(2);
}

struct timespec BlobCache::now_ts() const {
  int64_t ms = clock_.wall_ms();
  return {time_t(ms / 1000), long(ms % 1000) * 1'000'000};
}

void BlobCache::account(unsigned sub, int64_t delta) {
  if (scan_done_.load() || sub < scanned_upto_) stats_.bytes += delta;
}

bool BlobCache::contains(const Oid& oid) const {
  const std::string hex = oid.hex();
  struct stat st;
  return ::fstatat(root_.get(), (hex.substr(0, 2) + "/" + hex.substr(2)).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
         S_ISREG(st.st_mode);
}

Result<bool> BlobCache::copy_to(const Oid& oid, uint64_t size, int fd) {
  const std::string hex = oid.hex();
  const unsigned sub = oid.bytes[0];
  const std::string rel = hex.substr(0, 2) + "/" + hex.substr(2);
  UniqueFd in(::openat(root_.get(), rel.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!in.valid()) {
    ++stats_.misses;
    return false;
  }
  struct stat st;
  bool intact = ::fstat(in.get(), &st) == 0 && S_ISREG(st.st_mode) && uint64_t(st.st_size) == size;
  if (intact) {
    // A crash may have left a short or zero-filled file under the name.
    GitHasher h("blob", size);
    char buf[65536];
    uint64_t off = 0;
    while (off < size) {
      ssize_t n = ::pread(in.get(), buf, std::min<uint64_t>(sizeof buf, size - off), off_t(off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      h.update({buf, size_t(n)});
      off += uint64_t(n);
    }
    intact = off == size && h.finish() == oid;
  }
  if (!intact) {
    ++stats_.damaged;
    ++stats_.misses;
    log::warn("blob_cache_damaged", {{"oid", hex}});
    std::unique_lock l(scan_mu_, std::defer_lock);
    if (!scan_done_.load()) l.lock();
    struct stat cur;
    if (::fstatat(root_.get(), rel.c_str(), &cur, AT_SYMLINK_NOFOLLOW) == 0 && cur.st_ino == st.st_ino &&
        ::unlinkat(root_.get(), rel.c_str(), 0) == 0)
      account(sub, -int64_t(cur.st_size));
    return false;
  }
  // Into the placeholder in place: the caller's inode keeps its identity.
  uint64_t off = 0;
  while (off < size) {
    loff_t src = loff_t(off), dst = loff_t(off);
    ssize_t n = ::copy_file_range(in.get(), &src, fd, &dst, size - off, 0);
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
      char buf[65536];
      n = ::pread(in.get(), buf, std::min<uint64_t>(sizeof buf, size - off), off_t(off));
      if (n > 0 && ::pwrite(fd, buf, size_t(n), off_t(off)) != n) n = -1;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n == 0 ? Error::from_errno(EIO, "blob cache: " + hex + " shrank while copied")
                              : mirror::errno_error("copy from blob cache", hex);
    off += uint64_t(n);
  }
  if (::ftruncate(fd, off_t(size)) != 0) return mirror::errno_error("truncate", hex);
  const struct timespec ts[2] = {{0, UTIME_OMIT}, now_ts()};
  ::futimens(in.get(), ts);  // its last use, for the LRU order; best effort
  ++stats_.hits;
  return true;
}

void BlobCache::put(const Oid& oid, std::string_view bytes) {
  const std::string hex = oid.hex();
  const unsigned sub = oid.bytes[0];
  const std::string subdir = hex.substr(0, 2), name = hex.substr(2);
  auto fail = [&](const Error& e) {
    ++stats_.errors;
    log::warn("blob_cache_put_failed", {{"oid", hex}, {"error", e.describe()}});
  };
  if (::mkdirat(root_.get(), subdir.c_str(), 0755) != 0 && errno != EEXIST)
    return fail(mirror::errno_error("mkdir", subdir));
  UniqueFd dfd(::openat(root_.get(), subdir.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dfd.valid()) return fail(mirror::errno_error("open", subdir));
  if (::faccessat(dfd.get(), name.c_str(), F_OK, AT_SYMLINK_NOFOLLOW) == 0) return;  // already there
  auto tmp = mirror::create_temp_file(dfd.get(), 0644);
  if (!tmp) return fail(tmp.error());
  Status w = mirror::write_whole(tmp->first.get(), bytes, hex);
  if (w) {
    const struct timespec ts[2] = {{0, UTIME_OMIT}, now_ts()};
    if (::futimens(tmp->first.get(), ts) != 0) w = mirror::errno_error("set mtime", hex);
  }
  tmp->first.reset();
  if (!w) {
    ::unlinkat(dfd.get(), tmp->second.c_str(), 0);
    return fail(w.error());
  }
  {
    std::unique_lock l(scan_mu_, std::defer_lock);
    if (!scan_done_.load()) l.lock();
    if (::renameat2(dfd.get(), tmp->second.c_str(), dfd.get(), name.c_str(), RENAME_NOREPLACE) != 0) {
      Error e = mirror::errno_error("rename into", hex);
      ::unlinkat(dfd.get(), tmp->second.c_str(), 0);
      if (e.err != EEXIST) fail(e);  // EEXIST: another thread stored it first
      return;
    }
    account(sub, int64_t(bytes.size()));
  }
  ++stats_.inserts;
  if (stats_.bytes.load() > int64_t(max_bytes_)) {
    std::lock_guard l(run_mu_);  // no lost wake-up between the thread's check and its wait
    ++puts_;
    run_cv_.notify_all();
  }
}

void BlobCache::scan() {
  for (unsigned sub = 0; sub < kSubdirs; ++sub) {
    if (stopping_.load()) return;  // the total stays incomplete: nothing is evicted
    std::lock_guard l(scan_mu_);
    int64_t sum = 0;
    UniqueFd fd(::openat(root_.get(), sub_name(sub).c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (fd.valid()) for_each_blob(fd.get(), [&](const std::string&, const struct stat& st) { sum += st.st_size; });
    stats_.bytes += sum;
    scanned_upto_ = sub + 1;
  }
  scan_done_ = true;
  log::info("blob_cache_scanned", {{"dir", dir_}, {"bytes", std::to_string(stats_.bytes.load())}});
}

void BlobCache::evict() {
  const int64_t low = int64_t(max_bytes_ / 10 * 9);
  const int64_t before = stats_.bytes.load();
  if (before <= low) return;
  // Pass 1: the mtime below which the oldest files add up to `need`.
  std::vector<std::pair<int64_t, int64_t>> seen;  // (mtime, size), only while evicting
  int64_t total = 0;
  for (unsigned sub = 0; sub < kSubdirs && !stopping_.load(); ++sub) {
    UniqueFd fd(::openat(root_.get(), sub_name(sub).c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (fd.valid())
      for_each_blob(fd.get(), [&](const std::string&, const struct stat& st) {
        seen.emplace_back(mtime_ns(st), st.st_size);
        total += st.st_size;
      });
  }
  if (stopping_.load()) return;
  // Files removed behind our back: the disk is the truth.
  if (total < before) stats_.bytes -= before - total;
  int64_t need = stats_.bytes.load() - low;
  if (need <= 0) return;
  std::sort(seen.begin(), seen.end());
  int64_t acc = 0, cutoff = INT64_MIN;
  for (const auto& [t, size] : seen) {
    cutoff = t;
    acc += size;
    if (acc >= need) break;
  }
  seen.clear();
  seen.shrink_to_fit();
  // Pass 2: oldest first is approximated by "at or before the cutoff"; a file
  // used meanwhile has a newer mtime and stays.
  for (unsigned sub = 0; sub < kSubdirs && need > 0 && !stopping_.load(); ++sub) {
    UniqueFd fd(::openat(root_.get(), sub_name(sub).c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) continue;
    for_each_blob(fd.get(), [&](const std::string& n, const struct stat& st) {
      if (need <= 0 || mtime_ns(st) > cutoff) return;
      if (::unlinkat(fd.get(), n.c_str(), 0) != 0) return;
      stats_.bytes -= st.st_size;
      need -= st.st_size;
      ++stats_.evictions;
      stats_.evicted_bytes += uint64_t(st.st_size);
    });
  }
}

void BlobCache::maintain() {
  if (!scan_done_.load()) scan();
  if (stats_.bytes.load() > int64_t(max_bytes_)) evict();
}

void BlobCache::run() {
  std::unique_lock l(run_mu_);
  while (!stop_) {
    const uint64_t seen = puts_;
    l.unlock();
    maintain();
    l.lock();
    // Woken by an insert that passed the bound, never spinning on one that
    // eviction could not bring under it.
    run_cv_.wait(l, [&] { return stop_ || puts_ != seen; });
  }
}

}  // namespace antares::fs
