#include "fs/fuse/dir_snapshots.h"

#include <gtest/gtest.h>

namespace antares::fs {
namespace {

DirSnapshots::Listing listing(std::initializer_list<const char*> names) {
  std::vector<DirEntry> v;
  for (auto* n : names) v.push_back({n, 1, 0});
  return std::make_shared<const std::vector<DirEntry>>(std::move(v));
}

TEST(DirSnapshots, EachReaderContinuesItsOwnListingUntilTheEnd) {
  DirSnapshots s;
  auto a = listing({".", "..", "x"});
  auto b = listing({".", "..", "y"});
  s.start(7, 100, a);
  s.start(7, 200, b);  // another thread reads the same directory
  s.start(8, 100, b);  // the first thread, another directory
  EXPECT_EQ(s.find(7, 100), a);
  EXPECT_EQ(s.find(7, 200), b);
  EXPECT_EQ(s.find(8, 100), b);
  EXPECT_EQ(s.find(9, 100), nullptr);
  s.start(7, 100, b);  // a new read (offset 0) replaces the old listing
  EXPECT_EQ(s.find(7, 100), b);
  EXPECT_EQ(s.size(), 3u);
  s.finish(7, 100);
  EXPECT_EQ(s.find(7, 100), nullptr);
  EXPECT_EQ(s.find(7, 200), b);
  s.finish(7, 100);  // twice: nothing left to drop
  EXPECT_EQ(s.size(), 2u);
}

TEST(DirSnapshots, ReadersThatStopHalfwayAreForgottenOldestFirst) {
  DirSnapshots s;
  auto l = listing({"."});
  for (uint64_t ino = 1; ino <= DirSnapshots::kMaxReaders + 10; ++ino) s.start(ino, 1, l);
  EXPECT_EQ(s.size(), DirSnapshots::kMaxReaders);
  EXPECT_EQ(s.find(10, 1), nullptr);
  EXPECT_EQ(s.find(11, 1), l);
  EXPECT_EQ(s.find(DirSnapshots::kMaxReaders + 10, 1), l);
}

}  // namespace
}  // namespace antares::fs
