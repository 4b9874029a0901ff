// Tests of BlobCache: layout by oid, verified copies into an existing inode,
// damaged blobs removed, the size bound with LRU eviction (driven by a
// FakeClock, maintain() run by the test), and the startup scan's total.
#include "fs/lower/blob_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

#include "fs/lower/lower_test_util.h"
#include "testing/subprocess.h"

namespace antares::fs {
namespace {

using namespace std::chrono_literals;
using test::lstat_of;
using test::slurp;

std::unique_ptr<BlobCache> open_cache(const std::string& dir, uint64_t max, Clock& clock) {
  auto c = BlobCache::open(dir, max, clock, /*background=*/false);
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().describe());
  return c.ok() ? std::move(*c) : nullptr;
}

// A file to copy into, like a placeholder: created with the right size.
struct Target {
  explicit Target(const std::string& path, uint64_t size) : path(path) {
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, off_t(size)), 0);
  }
  ~Target() { ::close(fd); }
  std::string path;
  int fd = -1;
};

TEST(BlobCache, StoresByOidAndCopiesIntoTheSameInode) {
  antares::testing::TempDir dir;
  FakeClock clock;
  auto cache = open_cache(dir.path(), 1 << 20, clock);
  ASSERT_TRUE(cache);
  const std::string content = "cached bytes\n";
  const Oid oid = git_blob_oid(content);
  cache->maintain();
  EXPECT_FALSE(cache->contains(oid));
  cache->put(oid, content);
  EXPECT_TRUE(cache->contains(oid));
  const std::string hex = oid.hex();
  EXPECT_EQ(cache->path_of(oid), dir.path() + "/" + hex.substr(0, 2) + "/" + hex.substr(2));
  EXPECT_EQ(slurp(cache->path_of(oid)), content);
  EXPECT_EQ(cache->stats().bytes.load(), int64_t(content.size()));

  Target t(dir.path() + "/target", content.size());
  auto before = lstat_of(t.path);
  auto hit = cache->copy_to(oid, content.size(), t.fd);
  ASSERT_TRUE(hit.ok()) << hit.error().describe();
  EXPECT_TRUE(*hit);
  EXPECT_EQ(slurp(t.path), content);
  EXPECT_EQ(lstat_of(t.path)->st_ino, before->st_ino);
  EXPECT_EQ(lstat_of(t.path)->st_nlink, 1u) << "a copy, never a hard link";
  EXPECT_EQ(lstat_of(cache->path_of(oid))->st_nlink, 1u);
  EXPECT_EQ(cache->stats().hits.load(), 1u);

  const Oid other = git_blob_oid("not cached");
  auto miss = cache->copy_to(other, 10, t.fd);
  ASSERT_TRUE(miss.ok());
  EXPECT_FALSE(*miss);
  EXPECT_EQ(cache->stats().misses.load(), 1u);
  // A second put of the same oid changes nothing.
  cache->put(oid, content);
  EXPECT_EQ(cache->stats().inserts.load(), 1u);
  EXPECT_EQ(cache->stats().bytes.load(), int64_t(content.size()));
}

TEST(BlobCache, DamagedBlobIsRemovedNotServed) {
  antares::testing::TempDir dir;
  FakeClock clock;
  auto cache = open_cache(dir.path(), 1 << 20, clock);
  ASSERT_TRUE(cache);
  cache->maintain();
  const std::string content = "the real content";
  const Oid oid = git_blob_oid(content);
  cache->put(oid, content);
  // Same size, other bytes: what a torn write after a crash can leave.
  std::ofstream(cache->path_of(oid), std::ios::trunc) << "the real CONTENT";
  Target t(dir.path() + "/target", content.size());
  ::testing::internal::CaptureStderr();
  auto r = cache->copy_to(oid, content.size(), t.fd);
  std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_NE(err.find("blob_cache_damaged"), std::string::npos) << err;
  EXPECT_FALSE(cache->contains(oid));
  EXPECT_EQ(cache->stats().damaged.load(), 1u);
  EXPECT_EQ(cache->stats().bytes.load(), 0);
  EXPECT_EQ(slurp(t.path), std::string(content.size(), '\0')) << "nothing copied";
  // A short file (an empty one after a crash) too.
  cache->put(oid, content);
  ASSERT_EQ(::truncate(cache->path_of(oid).c_str(), 0), 0);
  ::testing::internal::CaptureStderr();
  r = cache->copy_to(oid, content.size(), t.fd);
  ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_EQ(cache->stats().damaged.load(), 2u);
}

TEST(BlobCache, EvictsLeastRecentlyUsedDownToNinetyPercent) {
  antares::testing::TempDir dir;
  FakeClock clock;
  auto cache = open_cache(dir.path(), 1000, clock);
  ASSERT_TRUE(cache);
  cache->maintain();
  std::vector<std::string> blobs;
  std::vector<Oid> oids;
  for (char c : std::string("ABCDE")) {
    blobs.push_back(std::string(300, c));
    oids.push_back(git_blob_oid(blobs.back()));
    cache->put(oids.back(), blobs.back());
    clock.advance(1s);
  }
  // A is used again: the least recently used are now B and C.
  Target t(dir.path() + "/target", 300);
  ASSERT_TRUE(*cache->copy_to(oids[0], 300, t.fd));
  clock.advance(1s);
  EXPECT_EQ(cache->stats().bytes.load(), 1500);
  cache->maintain();
  EXPECT_TRUE(cache->contains(oids[0])) << "recently used";
  EXPECT_FALSE(cache->contains(oids[1]));
  EXPECT_FALSE(cache->contains(oids[2]));
  EXPECT_TRUE(cache->contains(oids[3]));
  EXPECT_TRUE(cache->contains(oids[4]));
  EXPECT_EQ(cache->stats().bytes.load(), 900);
  EXPECT_EQ(cache->stats().evictions.load(), 2u);
  EXPECT_EQ(cache->stats().evicted_bytes.load(), 600u);
  cache->maintain();
  EXPECT_EQ(cache->stats().evictions.load(), 2u) << "under the bound: nothing more";
}

TEST(BlobCache, StartupScanCountsWhatIsThereAndDropsLeftovers) {
  antares::testing::TempDir dir;
  FakeClock clock;
  std::vector<Oid> oids;
  {
    auto cache = open_cache(dir.path(), 1 << 20, clock);
    cache->maintain();
    for (int i = 0; i < 20; ++i) {
      std::string b = "blob " + std::to_string(i);
      oids.push_back(git_blob_oid(b));
      cache->put(oids.back(), b);
    }
  }
  const std::string sub = dir.path() + "/" + oids[0].hex().substr(0, 2);
  std::ofstream(sub + "/.antares-tmp-1-1") << "an insert cut short";
  std::ofstream(sub + "/not-a-blob") << "left alone";
  auto cache = open_cache(dir.path(), 1 << 20, clock);
  EXPECT_FALSE(cache->scanned());
  // An insert before the scan is counted once.
  cache->put(git_blob_oid("late"), "late");
  cache->maintain();
  EXPECT_TRUE(cache->scanned());
  int64_t want = 4;
  for (int i = 0; i < 20; ++i) want += int64_t(("blob " + std::to_string(i)).size());
  EXPECT_EQ(cache->stats().bytes.load(), want);
  EXPECT_FALSE(lstat_of(sub + "/.antares-tmp-1-1"));
  EXPECT_TRUE(lstat_of(sub + "/not-a-blob"));
}

TEST(BlobCache, BackgroundThreadEvictsAndStopsCleanly) {
  antares::testing::TempDir dir;
  FakeClock clock;
  auto c = BlobCache::open(dir.path(), 1000, clock, /*background=*/true);
  ASSERT_TRUE(c.ok());
  auto& cache = **c;
  for (int i = 0; i < 10; ++i) {
    cache.put(git_blob_oid(std::string(200, char('a' + i))), std::string(200, char('a' + i)));
    clock.advance(1s);
  }
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  // The total is complete only once the startup scan is done: until then a
  // low figure proves nothing.
  while ((!cache.scanned() || cache.stats().bytes.load() > 1000) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(cache.scanned());
  EXPECT_LE(cache.stats().bytes.load(), 1000);
  EXPECT_GE(cache.stats().evictions.load(), 5u);
  c->reset();  // joins the thread
}

TEST(BlobCache, ParsesSizes) {
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("1234"), 1234u);
  EXPECT_EQ(parse_size("10G"), 10ull << 30);
  EXPECT_EQ(parse_size("10g"), 10ull << 30);
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("4k"), 4096u);
  EXPECT_EQ(parse_size("2T"), 2ull << 40);
  EXPECT_EQ(parse_size("1GB"), 1ull << 30);
  for (const char* bad : {"", "G", "10X", "-1", "1.5G", "99999999999999999999", "16777216T", "10 G"})
    EXPECT_FALSE(parse_size(bad)) << bad;
}

}  // namespace
}  // namespace antares::fs
