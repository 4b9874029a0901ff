// --dir-open kernel: directories are opened by the kernel without a request
// (FUSE's zero-message opendir), so a walk sends no OPENDIR and no
// RELEASEDIR, and the kernel caches every listing until the daemon
// invalidates it. Pinned here: after the first directory open no OPENDIR or
// RELEASEDIR reaches the daemon; a directory larger than one READDIR reply
// lists every name exactly once, even when names before the reader's
// position are removed between two of its READDIRs; names made through the
// mount, behind it in the upper layer and on the server all appear; the
// strategies that do not invalidate are refused, at startup and at runtime.
// --file-open kernel, the same for files: no OPEN or RELEASE after the
// first; reads, writes (copy-up, O_TRUNC, ftruncate), fstat and fsync of a
// file the daemon never opened; a file unlinked or renamed over while open
// stays readable and writable; one replaced on the server keeps reading the
// version it was opened at.
#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

using namespace std::chrono_literals;
using testing::read_file;

// The names of `path`, each exactly once (a duplicate fails the test).
std::set<std::string> names_once(const std::string& path) {
  auto names = list_dir(path);
  EXPECT_TRUE(names) << path;
  if (!names) return {};
  std::set<std::string> out(names->begin(), names->end());
  EXPECT_EQ(out.size(), names->size()) << path << ": a name was listed twice";
  return out;
}

bool lists(const std::string& dir, const std::string& name) {
  auto names = list_dir(dir);
  return names && std::find(names->begin(), names->end(), name) != names->end();
}

MountOptions kernel_dirs(const std::string& strategy, std::vector<std::string> more = {}) {
  MountOptions o;
  o.strategy = strategy;
  o.extra = {"--dir-open", "kernel"};
  o.extra.insert(o.extra.end(), more.begin(), more.end());
  return o;
}

TEST(DirOpenKernel, WalkSendsNoOpendirAndListingsStayExact) {
  TempDir dir;
  MegaProcess mega(dir);
  Mount m(dir, mega.url(), kernel_dirs("auto"));
  ASSERT_TRUE(m.ok()) << m.log();
  // A large directory behind the mount (many READDIR replies).
  constexpr int kFiles = 1500;
  const std::string big = m.upper() + "/big";
  ASSERT_EQ(::mkdir(big.c_str(), 0755), 0) << strerror(errno);
  std::set<std::string> want;
  for (int i = 0; i < kFiles; ++i) {
    std::string name = "a_rather_long_file_name_so_replies_fill_up_" + std::to_string(i);
    std::ofstream(big + "/" + name) << i;
    want.insert(name);
  }
  // The lower tree, as a walk meets it.
  const auto lower = lower_only_files(mega, 1);
  const std::string lower_dir = m.path(rel(split_repo_path(lower[0]).first));
  ASSERT_FALSE(names_once(lower_dir).empty());
  ASSERT_FALSE(names_once(m.mnt()).empty());

  const uint64_t opendirs = fuse_requests(m, "opendir");
  EXPECT_LE(opendirs, 1u) << "the first open is answered ENOSYS, after which the kernel asks no more";
  for (int pass = 0; pass < 2; ++pass) {
    EXPECT_EQ(names_once(m.path("big")), want) << "pass " << pass;
    EXPECT_FALSE(names_once(lower_dir).empty());
  }
  EXPECT_EQ(fuse_requests(m, "opendir"), opendirs);
  EXPECT_EQ(fuse_requests(m, "releasedir"), 0u);
  EXPECT_GT(fuse_requests(m, "readdirplus") + fuse_requests(m, "readdir"), 0u);

  // A name made through the mount appears in the kernel's cached listing.
  ASSERT_TRUE(write_file(m.path("big/made_through_the_mount"), "x"));
  want.insert("made_through_the_mount");
  EXPECT_EQ(names_once(m.path("big")), want);

  // One made behind the mount in upper: the watcher's invalidation drops it.
  std::ofstream(big + "/made_behind_the_mount") << "y";
  EXPECT_TRUE(testing::wait_until([&] { return lists(m.path("big"), "made_behind_the_mount"); }, 20s))
      << "a name added in upper never appeared";

  // One added on the server: the refresh's invalidation drops the listing.
  const std::string added = split_repo_path(lower[0]).first + "/added_on_the_server.rs";
  mutate(mega, json::array({{{"kind", "add"}, {"path", added}}}));
  refresh(m);
  EXPECT_TRUE(testing::wait_until([&] { return lists(lower_dir, "added_on_the_server.rs"); }, 20s))
      << "a name added on the server never appeared";
  EXPECT_EQ(fuse_requests(m, "opendir"), opendirs);
}

// The names getdents64 returns into a buffer of `bytes` (one call), as a
// reader with a small buffer sees them; empty at the end of the directory.
std::vector<std::string> getdents_once(int fd, size_t bytes) {
  std::vector<char> buf(bytes);
  long n = ::syscall(SYS_getdents64, fd, buf.data(), buf.size());
  EXPECT_GE(n, 0) << strerror(errno);
  std::vector<std::string> out;
  for (long pos = 0; pos < n;) {
    auto* d = reinterpret_cast<const struct dirent64*>(buf.data() + pos);
    out.emplace_back(d->d_name);
    pos += d->d_reclen;
  }
  return out;
}

// A reader that takes a directory a few names at a time meets READDIRs at
// increasing offsets. Names it has passed are removed between two of them
// (through the mount: the kernel drops its partial listing at once). POSIX:
// a name removed or added meanwhile may or may not be returned, every other
// name exactly once. Each READDIR cut from a fresh listing by offset would
// skip as many names as were removed before the reader's position.
TEST(DirOpenKernel, NamesRemovedBehindAReaderShiftNothing) {
  TempDir dir;
  MegaProcess mega(dir);
  Mount m(dir, mega.url(), kernel_dirs("auto"));
  ASSERT_TRUE(m.ok()) << m.log();
  constexpr int kFiles = 600;
  const std::string big = m.upper() + "/big";
  ASSERT_EQ(::mkdir(big.c_str(), 0755), 0) << strerror(errno);
  std::set<std::string> all;
  for (int i = 0; i < kFiles; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "f%04d", i);
    std::ofstream(big + "/" + name) << i;
    all.insert(name);
  }
  int fd = ::open(m.path("big").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  std::vector<std::string> seen = getdents_once(fd, 256);  // a handful of names
  ASSERT_GT(seen.size(), 4u);
  std::set<std::string> removed;
  for (auto& name : seen) {
    if (name == "." || name == ".." || removed.size() == 3) continue;
    EXPECT_EQ(::unlink(m.path("big/" + name).c_str()), 0) << name << ": " << strerror(errno);
    removed.insert(name);
  }
  for (;;) {
    auto more = getdents_once(fd, 256);
    if (more.empty()) break;
    seen.insert(seen.end(), more.begin(), more.end());
  }
  ::close(fd);
  std::multiset<std::string> got(seen.begin(), seen.end());
  for (auto& name : all) {
    if (removed.count(name)) continue;
    EXPECT_EQ(got.count(name), 1u) << name << " was listed " << got.count(name) << " times";
  }
  // Later reads see the removals.
  std::set<std::string> now = all;
  for (auto& name : removed) now.erase(name);
  EXPECT_EQ(names_once(m.path("big")), now);
}

MountOptions kernel_opens(const std::string& strategy = "auto") {
  return kernel_dirs(strategy, {"--file-open", "kernel"});
}

std::string pread_all(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  for (off_t off = 0; (n = ::pread(fd, buf, sizeof buf, off)) > 0; off += n) out.append(buf, size_t(n));
  if (n < 0) return std::string("pread: ") + strerror(errno);
  return out;
}

TEST(FileOpenKernel, ReadsAndWritesOfFilesTheDaemonNeverOpened) {
  TempDir dir;
  MegaProcess mega(dir);
  Mount m(dir, mega.url(), kernel_opens());
  ASSERT_TRUE(m.ok()) << m.log();
  const auto files = lower_only_files(mega, 4);
  for (auto& f : files) EXPECT_EQ(read_file(m.path(rel(f))), server_content(mega, f)) << f;
  EXPECT_LE(fuse_requests(m, "open"), 1u) << "the first open is answered ENOSYS, after which the kernel asks no more";
  EXPECT_LE(fuse_requests(m, "release"), 1u);
  EXPECT_GE(fuse_requests(m, "read"), files.size() - 1);

  // Written in place: copied up first, the rest of the file kept.
  const std::string a = m.path(rel(files[0])), a_was = server_content(mega, files[0]);
  int fd = ::open(a.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  ASSERT_EQ(::pwrite(fd, "XY", 2, 0), 2) << strerror(errno);
  EXPECT_EQ(::fsync(fd), 0) << strerror(errno);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0) << strerror(errno);
  EXPECT_EQ(size_t(st.st_size), a_was.size());
  ::close(fd);
  EXPECT_EQ(read_file(m.upper() + "/" + rel(files[0])), "XY" + a_was.substr(2));
  EXPECT_EQ(read_file(a), "XY" + a_was.substr(2));

  // O_TRUNC reaches the file (as a SETATTR), and so does ftruncate.
  fd = ::open(m.path(rel(files[1])).c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  ASSERT_EQ(::write(fd, "new", 3), 3) << strerror(errno);
  ASSERT_EQ(::ftruncate(fd, 2), 0) << strerror(errno);
  ::close(fd);
  EXPECT_EQ(read_file(m.path(rel(files[1]))), "ne");
  EXPECT_EQ(read_file(m.upper() + "/" + rel(files[1])), "ne");

  // Read-write through one descriptor, and mmap.
  fd = ::open(m.path(rel(files[2])).c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  ASSERT_EQ(::pwrite(fd, "Q", 1, 1), 1) << strerror(errno);
  std::string want = server_content(mega, files[2]);
  want[1] = 'Q';
  EXPECT_EQ(pread_all(fd), want);
  ::close(fd);
  EXPECT_LE(fuse_requests(m, "open"), 1u);
}

TEST(FileOpenKernel, AFileWhoseNameGoesWhileOpenStaysReadableAndWritable) {
  TempDir dir;
  MegaProcess mega(dir);
  Mount m(dir, mega.url(), kernel_opens());
  ASSERT_TRUE(m.ok()) << m.log();
  const auto lower = lower_only_files(mega, 1);
  ASSERT_TRUE(write_file(m.path("scratch"), "scratch bytes"));
  ASSERT_TRUE(write_file(m.path("target"), "target bytes"));
  ASSERT_TRUE(write_file(m.path("other"), "other bytes"));
  int scratch = ::open(m.path("scratch").c_str(), O_RDWR | O_CLOEXEC);
  int target = ::open(m.path("target").c_str(), O_RDONLY | O_CLOEXEC);
  int low = ::open(m.path(rel(lower[0])).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_TRUE(scratch >= 0 && target >= 0 && low >= 0) << strerror(errno);
  ASSERT_EQ(::unlink(m.path("scratch").c_str()), 0) << strerror(errno);
  ASSERT_EQ(::rename(m.path("other").c_str(), m.path("target").c_str()), 0) << strerror(errno);
  ASSERT_EQ(::unlink(m.path(rel(lower[0])).c_str()), 0) << strerror(errno);
  // Dropped from the page cache, the bytes must come from the daemon again.
  for (int fd : {scratch, target, low}) ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  EXPECT_EQ(pread_all(scratch), "scratch bytes");
  EXPECT_EQ(::pwrite(scratch, "S", 1, 0), 1) << strerror(errno);
  ::posix_fadvise(scratch, 0, 0, POSIX_FADV_DONTNEED);
  EXPECT_EQ(pread_all(scratch), "Scratch bytes");
  struct stat st {};
  EXPECT_EQ(::fstat(scratch, &st), 0) << strerror(errno);
  EXPECT_EQ(st.st_nlink, 0u);
  EXPECT_EQ(pread_all(target), "target bytes");
  EXPECT_EQ(pread_all(low), server_content(mega, lower[0]));
  for (int fd : {scratch, target, low}) ::close(fd);
  EXPECT_EQ(read_file(m.path("target")), "other bytes");
}

TEST(FileOpenKernel, AFileReplacedOnTheServerKeepsReadingTheVersionItOpened) {
  TempDir dir;
  MegaProcess mega(dir);
  Mount m(dir, mega.url(), kernel_opens());
  ASSERT_TRUE(m.ok()) << m.log();
  const std::string f = lower_only_files(mega, 1)[0];
  const std::string old_bytes = server_content(mega, f);
  int fd = ::open(m.path(rel(f)).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  ASSERT_EQ(pread_all(fd), old_bytes);
  mutate(mega, json::array({{{"kind", "modify"}, {"path", f}}}));
  const std::string new_bytes = server_content(mega, f);
  ASSERT_NE(new_bytes, old_bytes);
  refresh(m);
  EXPECT_TRUE(testing::wait_until([&] { return read_file(m.path(rel(f))) == new_bytes; }, 20s))
      << "the new version never appeared";
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  EXPECT_EQ(pread_all(fd), old_bytes) << "an open file must keep its version";
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0) << strerror(errno);
  EXPECT_EQ(size_t(st.st_size), old_bytes.size());
  ::close(fd);
}

// The CL layer's re-sync replaces a changed file's inode as the lower
// refresh does; the replaced inode stays reachable for the open file.
TEST(FileOpenKernel, AClFileUpdatedWhileOpenKeepsReadingTheVersionItOpened) {
  TempDir dir;
  MegaProcess mega(dir);
  const std::string f = cl1_file(mega);
  MountOptions o = kernel_opens();
  o.cl = "1";
  Mount m(dir, mega.url(), o);
  ASSERT_TRUE(m.ok()) << m.log();
  int fd = ::open(m.path(rel(f)).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  const std::string old_bytes = pread_all(fd);
  ASSERT_EQ(old_bytes.rfind("pread:", 0), std::string::npos) << old_bytes;
  mutate(mega, json::array({{{"kind", "cl"}, {"cl", 1}, {"path", f}, {"action", "modified"}}}));
  refresh(m);  // re-syncs the CL: the file's new version is renamed over the old
  EXPECT_TRUE(testing::wait_until([&] { return read_file(m.path(rel(f))) != old_bytes; }, 20s))
      << "the CL's new version never appeared";
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  EXPECT_EQ(pread_all(fd), old_bytes) << "an open file must keep its version\n" << m.log();
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0) << strerror(errno);
  EXPECT_EQ(size_t(st.st_size), old_bytes.size());
  ::close(fd);
  auto root = list_dir(m.mnt());
  ASSERT_TRUE(root);
  EXPECT_EQ(std::count(root->begin(), root->end(), ".antares-tmp-attic"), 0) << "the attic is not part of the layer";
}

TEST(DirOpenKernel, OnlyStrategiesThatInvalidate) {
  TempDir dir;
  MegaProcess mega(dir);
  // A's kernel would keep listings nobody invalidates; under per-dir
  // refresh the opens are what refresh a directory.
  for (const MountOptions& o : {kernel_dirs("A"), kernel_dirs("auto", {"--refresh", "per-dir"})}) {
    Mount m(dir, mega.url(), o);
    EXPECT_FALSE(m.ok()) << o.strategy;
    EXPECT_NE(m.log().find("--dir-open kernel"), std::string::npos) << m.log();
  }
  for (const char* s : {"none", "A", "C"}) {
    MountOptions o;
    o.strategy = s;
    o.extra = {"--file-open", "kernel"};
    Mount m(dir, mega.url(), o);
    EXPECT_FALSE(m.ok()) << s;
    EXPECT_NE(m.log().find("--file-open kernel"), std::string::npos) << m.log();
  }
  {
    Mount m(dir, mega.url(), kernel_opens("B"));
    ASSERT_TRUE(m.ok()) << m.log();
    std::string err;
    EXPECT_NE(m.ctl({"strategy", "none"}, nullptr, &err), 0);
    EXPECT_NE(err.find("kernel"), std::string::npos) << err;
  }
  Mount m(dir, mega.url(), kernel_dirs("B"));
  ASSERT_TRUE(m.ok()) << m.log();
  for (const char* s : {"none", "A", "C"}) {
    std::string err;
    EXPECT_NE(m.ctl({"strategy", s}, nullptr, &err), 0) << s;
    EXPECT_NE(err.find("--dir-open kernel"), std::string::npos) << s << ": " << err;
  }
  set_strategy(m, "auto");
  EXPECT_EQ(status(m)["strategy"].get<std::string>(), "auto");
}

}  // namespace
}  // namespace antares::e2e
