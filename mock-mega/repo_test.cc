// Unit tests of the repository model: generation, oids, mutations, CLs.
#include "mock-mega/repo.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

namespace antares::mock {
namespace {

MutationRequest mut(MutationKind k, std::string path, std::string to = "", uint32_t cl = 0, std::string action = "") {
  return MutationRequest{k, std::move(path), std::move(to), cl, std::move(action)};
}

std::vector<std::string> walk(Repository& r, const std::string& dir = "/") {
  std::vector<std::string> out;
  auto entries = r.list(dir);
  EXPECT_TRUE(entries.ok()) << dir;
  if (!entries) return out;
  for (const auto& e : *entries) {
    std::string p = dir == "/" ? "/" + e.name : dir + "/" + e.name;
    out.push_back(p + " " + e.oid.hex());
    if (e.is_dir) {
      auto sub = walk(r, p);
      out.insert(out.end(), sub.begin(), sub.end());
    }
  }
  return out;
}

size_t count_files(Repository& r, const std::string& dir = "/") {
  size_t n = 0;
  for (const auto& e : *r.list(dir)) {
    std::string p = dir == "/" ? "/" + e.name : dir + "/" + e.name;
    n += e.is_dir ? count_files(r, p) : 1;
  }
  return n;
}

TEST(Repository, GeneratesExactlyTheRequestedFileCount) {
  for (uint64_t n : {1, 2, 5, 17, 100, 1000, 5000}) {
    Repository r({.seed = 3, .files = n, .cls = 0});
    EXPECT_EQ(r.file_count(), n);
    EXPECT_EQ(count_files(r), n) << n;
  }
}

TEST(Repository, HasBuck2Shape) {
  Repository r({.seed = 11, .files = 2000, .cls = 3});
  EXPECT_EQ(r.paths_of(FileClass::buckconfig), std::vector<std::string>{"/.buckconfig"});
  EXPECT_GT(r.paths_of(FileClass::buck).size(), 20u);
  EXPECT_GT(r.paths_of(FileClass::package).size(), 3u);
  EXPECT_GE(r.paths_of(FileClass::bzl).size(), 4u);
  // BUCK files load .bzl files that exist.
  auto bucks = r.paths_of(FileClass::buck);
  auto st = r.stat(bucks[0]);
  ASSERT_TRUE(st.ok() && st->has_value());
  auto spec = r.find_blob((*st)->oid);
  ASSERT_TRUE(spec);
  std::string text = r.content(*spec);
  auto pos = text.find("load(\"//tools/build_defs:");
  ASSERT_NE(pos, std::string::npos) << text;
  std::string label = text.substr(pos + 6, text.find('"', pos + 6) - pos - 6);
  std::string path = "/tools/build_defs/" + label.substr(label.find(':') + 1);
  EXPECT_TRUE(r.stat(path)->has_value()) << path;
  // Sizes vary across orders of magnitude.
  std::set<int> magnitudes;
  for (auto& p : r.paths_of(FileClass::source)) magnitudes.insert(static_cast<int>(std::log2((*r.stat(p))->size + 1)));
  EXPECT_GE(magnitudes.size(), 6u);
}

TEST(Repository, SameSeedSameTreeDifferentSeedDifferentTree) {
  Repository a({.seed = 5, .files = 3000}), b({.seed = 5, .files = 3000}), c({.seed = 6, .files = 3000});
  auto wa = walk(a);
  EXPECT_EQ(wa, walk(b));
  EXPECT_NE(wa, walk(c));
  EXPECT_EQ(a.cl_files(1)->size(), b.cl_files(1)->size());
}

TEST(Repository, ContentMatchesOidAndSize) {
  Repository r({.seed = 9, .files = 300});
  for (auto cls : {FileClass::buckconfig, FileClass::buck, FileClass::bzl, FileClass::source}) {
    for (auto& p : r.paths_of(cls)) {
      auto e = **r.stat(p);
      std::string bytes = r.content(*r.find_blob(e.oid));
      EXPECT_EQ(git_blob_oid(bytes), e.oid) << p;
      EXPECT_EQ(bytes.size(), e.size) << p;
    }
  }
}

TEST(Repository, ListingIsDirectoriesFirstThenByName) {
  Repository r({.seed = 2, .files = 500});
  auto entries = *r.list("/");
  bool seen_file = false;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (!entries[i].is_dir) {
      seen_file = true;
    } else {
      EXPECT_FALSE(seen_file) << "directory after a file";
    }
    if (i > 0 && entries[i].is_dir == entries[i - 1].is_dir) {
      EXPECT_LT(entries[i - 1].name, entries[i].name);
    }
  }
}

TEST(Repository, BadPathsAreRejected) {
  Repository r({.seed = 2, .files = 50});
  for (const char* bad : {"", "apps", "/apps/../x", "/./apps", "//apps", "/a//b"})
    EXPECT_EQ(r.list(bad).err(), EINVAL) << bad;
  EXPECT_EQ(r.list("/nope").err(), ENOENT);
  EXPECT_EQ(r.list("/.buckconfig").err(), ENOTDIR);
  EXPECT_TRUE(r.list("/apps/").ok());
  EXPECT_FALSE(r.stat("/nope")->has_value());
  EXPECT_EQ((*r.stat("/"))->name, "");
}

class RepositoryMutation : public ::testing::Test {
 protected:
  Repository r{{.seed = 21, .files = 400, .cls = 2}};
  std::string buck = r.paths_of(FileClass::buck).front();
  std::string src = r.paths_of(FileClass::source).front();

  Entry stat(const std::string& p) {
    auto e = r.stat(p);
    EXPECT_TRUE(e.ok() && e->has_value()) << p;
    return e.ok() && e->has_value() ? **e : Entry{};
  }
  LogEntry apply1(MutationRequest m) {
    auto res = r.apply({m}, 1000);
    EXPECT_TRUE(res.ok()) << (res.ok() ? "" : res.error().message);
    return res.ok() ? res->at(0) : LogEntry{};
  }
};

TEST_F(RepositoryMutation, ModifyChangesBlobAndAncestorTrees_OldBlobStaysFetchable) {
  Oid root_before = stat("/").oid, old = stat(buck).oid;
  uint64_t v = r.version();
  LogEntry e = apply1(mut(MutationKind::modify, buck));
  EXPECT_EQ(e.old_oid, old);
  EXPECT_EQ(e.new_oid, stat(buck).oid);
  EXPECT_NE(stat(buck).oid, old);
  EXPECT_NE(stat("/").oid, root_before);
  EXPECT_EQ(r.version(), v + 1);
  EXPECT_EQ(e.version, r.version());
  EXPECT_TRUE(r.find_blob(old));
}

TEST_F(RepositoryMutation, ReplaceGivesNewContentAtSamePath) {
  Oid old = stat(src).oid;
  LogEntry e = apply1(mut(MutationKind::replace, src));
  EXPECT_EQ(e.kind, MutationKind::replace);
  EXPECT_NE(stat(src).oid, old);
}

TEST_F(RepositoryMutation, DeleteFileAndDirectory) {
  uint64_t files = r.file_count();
  apply1(mut(MutationKind::remove, src));
  EXPECT_FALSE(r.stat(src)->has_value());
  EXPECT_EQ(r.file_count(), files - 1);
  Oid tools = stat("/tools").oid;
  LogEntry e = apply1(mut(MutationKind::remove, "/tools"));
  EXPECT_EQ(e.old_oid, tools);
  EXPECT_FALSE(e.new_oid);
  EXPECT_FALSE(r.stat("/tools/build_defs/rules.bzl")->has_value());
  EXPECT_TRUE(r.paths_of(FileClass::bzl).empty());
}

TEST_F(RepositoryMutation, AddCreatesParents) {
  const size_t bucks_before = r.paths_of(FileClass::buck).size();
  const uint64_t files_before = r.file_count();
  LogEntry e = apply1(mut(MutationKind::add, "/new/dir/BUCK"));
  EXPECT_FALSE(e.old_oid);
  EXPECT_EQ(stat("/new/dir/BUCK").oid, e.new_oid);
  EXPECT_TRUE(stat("/new").is_dir);
  // The new file is indexed under its class (from its name) and counted once.
  EXPECT_EQ(r.paths_of(FileClass::buck).size(), bucks_before + 1);
  EXPECT_EQ(r.file_count(), files_before + 1);
  auto bucks = r.paths_of(FileClass::buck);
  EXPECT_NE(std::find(bucks.begin(), bucks.end(), "/new/dir/BUCK"), bucks.end());
}

TEST_F(RepositoryMutation, RenameKeepsContent) {
  Oid oid = stat(src).oid;
  LogEntry e = apply1(mut(MutationKind::rename, src, "/moved/here.rs"));
  EXPECT_FALSE(r.stat(src)->has_value());
  EXPECT_EQ(stat("/moved/here.rs").oid, oid);
  EXPECT_EQ(e.to, "/moved/here.rs");
}

TEST_F(RepositoryMutation, RenameDirMovesSubtreeAndKeepsTreeOid) {
  Oid tree = stat("/tools").oid;
  apply1(mut(MutationKind::rename_dir, "/tools", "/tools2"));
  EXPECT_FALSE(r.stat("/tools")->has_value());
  EXPECT_EQ(stat("/tools2").oid, tree);
  EXPECT_TRUE(r.stat("/tools2/build_defs/rules.bzl")->has_value());
}

TEST_F(RepositoryMutation, ClChangesFileList) {
  auto before = *r.cl_files(1);
  LogEntry e = apply1(mut(MutationKind::cl, "/x/cl_file.rs", "", 1, "new"));
  auto after = *r.cl_files(1);
  ASSERT_EQ(after.size(), before.size() + 1);
  EXPECT_EQ(after.back().path, "/x/cl_file.rs");
  ASSERT_TRUE(after.back().sha);
  EXPECT_TRUE(r.find_blob(*after.back().sha));
  EXPECT_EQ(e.cl, 1u);
  apply1(mut(MutationKind::cl, "/x/cl_file.rs", "", 1, "remove"));
  EXPECT_EQ(r.cl_files(1)->size(), before.size());
  // Random CL changes always apply and always change the list or a sha.
  for (int i = 0; i < 20; ++i) apply1(mut(MutationKind::cl, "", "", 2, ""));
  EXPECT_EQ(r.cl_files(3).err(), ENOENT);
}

TEST_F(RepositoryMutation, RejectedRequestAppliesNothing) {
  auto snapshot = walk(r);
  uint64_t v = r.version();
  auto res = r.apply({mut(MutationKind::modify, buck),
                      mut(MutationKind::rename_dir, "/tools", "/tools3"),
                      mut(MutationKind::add, "/added.rs"),
                      mut(MutationKind::remove, src),
                      mut(MutationKind::add, "/tools3/build_defs/rules.bzl")},  // exists after the rename
                     1000);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.err(), EEXIST);
  EXPECT_NE(res.error().message.find("mutation 4"), std::string::npos) << res.error().message;
  EXPECT_EQ(walk(r), snapshot);
  EXPECT_EQ(r.version(), v);
  EXPECT_TRUE(r.log_since(0).empty());
  // And the random stream is unaffected: same as a twin that never saw the request.
  Repository twin({.seed = 21, .files = 400, .cls = 2});
  auto a = r.apply_random(30, 5), b = twin.apply_random(30, 5);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].path, b[i].path) << i;
}

TEST_F(RepositoryMutation, Rejections) {
  auto err_of = [&](MutationRequest m) { return r.apply({m}, 0).err(); };
  EXPECT_EQ(err_of(mut(MutationKind::modify, "/does/not/exist")), ENOENT);
  EXPECT_EQ(err_of(mut(MutationKind::modify, "/tools")), EISDIR);
  EXPECT_EQ(err_of(mut(MutationKind::add, src)), EEXIST);
  EXPECT_EQ(err_of(mut(MutationKind::add, src + "/under_a_file")), ENOTDIR);
  EXPECT_EQ(err_of(mut(MutationKind::rename, src, buck)), EEXIST);
  EXPECT_EQ(err_of(mut(MutationKind::rename, "/tools", "/t")), EISDIR);
  EXPECT_EQ(err_of(mut(MutationKind::rename_dir, src, "/t")), ENOTDIR);
  EXPECT_EQ(err_of(mut(MutationKind::rename_dir, "/tools", "/tools/inside")), EINVAL);
  EXPECT_EQ(err_of(mut(MutationKind::remove, "/")), EINVAL);
  EXPECT_EQ(err_of(mut(MutationKind::add, "/a/../b")), EINVAL);
  EXPECT_EQ(err_of(mut(MutationKind::cl, "", "", 99, "")), ENOENT);
  EXPECT_EQ(err_of(mut(MutationKind::cl, "/p", "", 1, "bogus")), EINVAL);
  EXPECT_TRUE(r.log_since(0).empty());
}

TEST(RepositoryRandom, SameSeedSameMutationsAndEveryKindAppears) {
  Repository a({.seed = 77, .files = 2000, .cls = 3}), b({.seed = 77, .files = 2000, .cls = 3});
  auto la = a.apply_random(400, 1), lb = b.apply_random(400, 1);
  ASSERT_EQ(la.size(), 400u);
  ASSERT_EQ(la.size(), lb.size());
  std::set<MutationKind> kinds;
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(la[i].path, lb[i].path);
    EXPECT_EQ(la[i].new_oid, lb[i].new_oid);
    kinds.insert(la[i].kind);
  }
  EXPECT_EQ(kinds.size(), static_cast<size_t>(kMutationKindCount));
  EXPECT_EQ(walk(a), walk(b));
  EXPECT_EQ(a.file_count(), static_cast<uint64_t>(count_files(a)));
}

TEST(RepositoryRandom, SurvivesATinyRepository) {
  Repository r({.seed = 1, .files = 2, .cls = 1});
  auto log = r.apply_random(200, 1);
  EXPECT_EQ(log.size(), 200u);
  EXPECT_EQ(r.file_count(), static_cast<uint64_t>(count_files(r)));
}

TEST(Weights, Parse) {
  Weights w;
  EXPECT_TRUE(parse_kind_weights("modify=1,delete=0", &w));
  EXPECT_EQ(w.kind[0], 1u);
  EXPECT_EQ(w.kind[static_cast<int>(MutationKind::remove)], 0u);
  EXPECT_TRUE(parse_class_weights("buck=9", &w));
  EXPECT_EQ(w.cls[static_cast<int>(FileClass::buck)], 9u);
  EXPECT_FALSE(parse_kind_weights("modify", &w));
  EXPECT_FALSE(parse_kind_weights("bogus=1", &w));
  EXPECT_FALSE(parse_class_weights("buck=-1", &w));
}

}  // namespace
}  // namespace antares::mock
