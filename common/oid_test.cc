#include "common/oid.h"

#include <gtest/gtest.h>

namespace antares {
namespace {

TEST(Oid, BlobMatchesGitHashObject) {
  // `printf 'hello\n' | git hash-object --stdin`
  EXPECT_EQ(git_blob_oid("hello\n").hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
  // `git hash-object /dev/null`
  EXPECT_EQ(git_blob_oid("").hex(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
}

TEST(Oid, EmptyTreeMatchesGit) {
  EXPECT_EQ(git_tree_oid({}).hex(), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
}

TEST(Oid, TreeSortsDirectoriesAsIfSlashTerminated) {
  // "a.b" < "a/" (since '.' < '/') but "a" (file) < "a.b"; git orders a dir "a" after "a.b".
  Oid blob = git_blob_oid("x");
  std::vector<TreeEntry> one = {{"a", true, blob}, {"a.b", false, blob}};
  std::vector<TreeEntry> two = {{"a.b", false, blob}, {"a", true, blob}};
  EXPECT_EQ(git_tree_oid(one), git_tree_oid(two));
}

TEST(Oid, HexRoundTripAndRejectsGarbage) {
  auto o = Oid::from_hex("CE013625030ba8dba906f756967f9e9ca394464a");
  ASSERT_TRUE(o);
  EXPECT_EQ(o->hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
  EXPECT_FALSE(Oid::from_hex("ce01"));
  EXPECT_FALSE(Oid::from_hex("zz013625030ba8dba906f756967f9e9ca394464a"));
  EXPECT_FALSE(Oid::from_hex(""));
}

TEST(Oid, IncrementalHashEqualsOneShot) {
  GitHasher h("blob", 11);
  h.update("hello ");
  h.update("world");
  EXPECT_EQ(h.finish(), git_blob_oid("hello world"));
}

}  // namespace
}  // namespace antares
