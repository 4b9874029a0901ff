#include "repro/oracle.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace antares::repro {
namespace {

Oid oid(const std::string& s) { return git_blob_oid(s); }
constexpr int64_t kMs = 1000;
constexpr int64_t kWindow = 2000 * kMs;

LogEntry entry(uint64_t id, int64_t t_us, std::string kind, std::string path, std::optional<Oid> old_oid,
               std::optional<Oid> new_oid, std::string to = "") {
  LogEntry e;
  e.id = id;
  e.time_us = t_us;
  e.kind = std::move(kind);
  e.path = std::move(path);
  e.to = std::move(to);
  e.old_oid = old_oid;
  e.new_oid = new_oid;
  return e;
}

TEST(Oracle, FreshStaleWithinBeyondWrong) {
  History h;
  h.add_initial_file("/a/BUCK", oid("v1"));
  h.apply(entry(1, 10'000 * kMs, "modify", "/a/BUCK", oid("v1"), oid("v2")));
  // Before the change: v1 is fresh.
  EXPECT_EQ(h.classify_read("/a/BUCK", oid("v1"), 9'000 * kMs, 9'001 * kMs, kWindow).cls, ReadClass::fresh);
  // A read spanning the change may see either.
  EXPECT_EQ(h.classify_read("/a/BUCK", oid("v1"), 9'999 * kMs, 10'001 * kMs, kWindow).cls, ReadClass::fresh);
  EXPECT_EQ(h.classify_read("/a/BUCK", oid("v2"), 9'999 * kMs, 10'001 * kMs, kWindow).cls, ReadClass::fresh);
  // After: v2 fresh, v1 stale within the window, then beyond it.
  EXPECT_EQ(h.classify_read("/a/BUCK", oid("v2"), 11'000 * kMs, 11'001 * kMs, kWindow).cls, ReadClass::fresh);
  auto within = h.classify_read("/a/BUCK", oid("v1"), 11'000 * kMs, 11'001 * kMs, kWindow);
  EXPECT_EQ(within.cls, ReadClass::stale_within);
  EXPECT_EQ(within.age_us, 1'000 * kMs);
  ASSERT_TRUE(within.cause);
  EXPECT_EQ(within.cause->id, 1u);
  EXPECT_EQ(h.classify_read("/a/BUCK", oid("v1"), 12'500 * kMs, 12'501 * kMs, kWindow).cls, ReadClass::stale_beyond);
  EXPECT_EQ(h.classify_read("/a/BUCK", oid("garbage"), 11'000 * kMs, 11'001 * kMs, kWindow).cls, ReadClass::wrong);
  EXPECT_EQ(h.classify_read("/nope", oid("v1"), 11'000 * kMs, 11'001 * kMs, kWindow).cls, ReadClass::unknown);
}

TEST(Oracle, LogOldOidCorrectsARacingSnapshot) {
  History h;
  h.set_base(0);
  h.add_initial_file("/f", oid("v2"));  // the snapshot already saw the change
  h.apply(entry(1, 5'000 * kMs, "modify", "/f", oid("v1"), oid("v2")));
  EXPECT_EQ(h.at("/f", 4'000 * kMs), oid("v1"));
  EXPECT_EQ(h.at("/f", 6'000 * kMs), oid("v2"));
  // Entries at or below the last applied id are ignored.
  h.apply(entry(1, 9'000 * kMs, "modify", "/f", oid("v2"), oid("v9")));
  EXPECT_EQ(h.at("/f", 10'000 * kMs), oid("v2"));
}

TEST(Oracle, DeleteAddRenameAndDirectories) {
  History h;
  h.add_initial_file("/d/x.rs", oid("x"));
  h.add_initial_file("/d/sub/y.rs", oid("y"));
  h.add_initial_file("/e/z.rs", oid("z"));
  h.apply(entry(1, 1'000 * kMs, "rename", "/e/z.rs", oid("z"), oid("z"), "/e/z2.rs"));
  EXPECT_FALSE(h.at("/e/z.rs", 2'000 * kMs));
  EXPECT_EQ(h.at("/e/z2.rs", 2'000 * kMs), oid("z"));
  h.apply(entry(2, 2'000 * kMs, "rename_dir", "/d", std::nullopt, std::nullopt, "/d2"));
  EXPECT_FALSE(h.at("/d/sub/y.rs", 3'000 * kMs));
  EXPECT_EQ(h.at("/d2/sub/y.rs", 3'000 * kMs), oid("y"));
  EXPECT_TRUE(h.present_at("/d", 1'500 * kMs));
  EXPECT_FALSE(h.present_at("/d", 3'000 * kMs));
  EXPECT_TRUE(h.present_at("/d2/sub", 3'000 * kMs));
  h.apply(entry(3, 3'000 * kMs, "delete", "/d2", oid("tree"), std::nullopt));
  EXPECT_FALSE(h.present_at("/d2", 4'000 * kMs));
  h.apply(entry(4, 4'000 * kMs, "add", "/d2/new.rs", std::nullopt, oid("n")));
  EXPECT_TRUE(h.present_at("/d2", 5'000 * kMs));
  // Delete + re-add of one file: the timeline shows the gap.
  h.apply(entry(5, 5'000 * kMs, "delete", "/e/z2.rs", oid("z"), std::nullopt));
  h.apply(entry(6, 6'000 * kMs, "add", "/e/z2.rs", std::nullopt, oid("z-new")));
  auto tl = h.timeline("/e/z2.rs");
  ASSERT_EQ(tl.size(), 4u);  // absent, z, absent, z-new
  EXPECT_FALSE(tl[0].second);
  EXPECT_EQ(tl[3].second, oid("z-new"));
  EXPECT_EQ(h.classify_read("/e/z2.rs", oid("z"), 6'500 * kMs, 6'501 * kMs, kWindow).cls, ReadClass::stale_within);
}

TEST(Oracle, ClOverridesLowerAndWhiteouts) {
  History h(1);
  h.add_initial_file("/a/f.rs", oid("lower"));
  h.add_initial_file("/a/g.rs", oid("g"));
  h.add_initial_cl("/a/f.rs", oid("cl1"), false);
  h.add_initial_cl("/a/g.rs", std::nullopt, true);  // deleted in the CL: a whiteout
  EXPECT_EQ(h.at("/a/f.rs", 0), oid("cl1"));
  EXPECT_FALSE(h.at("/a/g.rs", 0));
  LogEntry e = entry(1, 1'000 * kMs, "cl", "/a/f.rs", oid("cl1"), oid("cl2"));
  e.cl = 1;
  e.action = "modified";
  h.apply(e);
  EXPECT_EQ(h.at("/a/f.rs", 2'000 * kMs), oid("cl2"));
  // A lower change under a CL file does not show.
  h.apply(entry(2, 2'000 * kMs, "modify", "/a/f.rs", oid("lower"), oid("lower2")));
  EXPECT_EQ(h.at("/a/f.rs", 3'000 * kMs), oid("cl2"));
  // Another CL's change is ignored.
  LogEntry other = entry(3, 3'000 * kMs, "cl", "/a/f.rs", std::nullopt, oid("other"));
  other.cl = 2;
  other.action = "modified";
  h.apply(other);
  EXPECT_EQ(h.at("/a/f.rs", 4'000 * kMs), oid("cl2"));
  // "remove" drops the entry: the lower layer shows through again.
  LogEntry rm = entry(4, 4'000 * kMs, "cl", "/a/f.rs", std::nullopt, std::nullopt);
  rm.cl = 1;
  rm.action = "remove";
  h.apply(rm);
  EXPECT_EQ(h.at("/a/f.rs", 5'000 * kMs), oid("lower2"));
}

TEST(Oracle, UpperOverridesEverything) {
  History h;
  h.add_initial_file("/x", oid("lower"));
  h.record_upper("/x", oid("up1"), 1'000 * kMs, "upper-write");
  h.record_upper("/buck-out/o", oid("o1"), 1'000 * kMs, "upper-write");
  h.record_upper("/buck-out/o", oid("o2"), 2'000 * kMs, "upper-replace");
  EXPECT_EQ(h.at("/x", 500 * kMs), oid("lower"));
  EXPECT_EQ(h.at("/x", 1'500 * kMs), oid("up1"));
  EXPECT_EQ(h.classify_read("/buck-out/o", oid("o1"), 2'100 * kMs, 2'101 * kMs, kWindow).cls,
            ReadClass::stale_within);
  auto c = h.cause("/buck-out/o", 2'200 * kMs);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->kind, "upper-replace");
}

TEST(Oracle, ErrorClassification) {
  History h;
  h.add_initial_file("/a/f", oid("f"));
  h.add_initial_file("/a/g", oid("g"));
  h.apply(entry(1, 10'000 * kMs, "delete", "/a/g", oid("g"), std::nullopt));
  EXPECT_EQ(h.classify_error("/a/f", ESTALE, 1, 2, kWindow), ErrClass::estale);
  EXPECT_EQ(h.classify_error("/a/f", EIO, 1, 2, kWindow), ErrClass::other);
  EXPECT_EQ(h.classify_error("/a/f", ENOENT, 20'000 * kMs, 20'001 * kMs, kWindow), ErrClass::enoent_exists);
  EXPECT_EQ(h.classify_error("/a/g", ENOENT, 20'000 * kMs, 20'001 * kMs, kWindow), ErrClass::enoent_expected);
  // Deleted but ENOENT just before the delete, within the window: tolerated? No: it existed throughout.
  EXPECT_EQ(h.classify_error("/a/g", ENOENT, 5'000 * kMs, 5'001 * kMs, kWindow), ErrClass::enoent_exists);
  // A directory that exists.
  EXPECT_EQ(h.classify_error("/a", ENOENT, 20'000 * kMs, 20'001 * kMs, kWindow), ErrClass::enoent_exists);
  EXPECT_EQ(h.classify_error("/nowhere", ENOENT, 1, 2, kWindow), ErrClass::other);
  // Added later: ENOENT shortly after the add is within the window.
  h.apply(entry(2, 30'000 * kMs, "add", "/a/new", std::nullopt, oid("n")));
  EXPECT_EQ(h.classify_error("/a/new", ENOENT, 30'500 * kMs, 30'501 * kMs, kWindow), ErrClass::enoent_expected);
  EXPECT_EQ(h.classify_error("/a/new", ENOENT, 40'000 * kMs, 40'001 * kMs, kWindow), ErrClass::enoent_exists);
}

TEST(Oracle, CauseIsTheLatestChangeTouchingThePath) {
  History h;
  h.add_initial_file("/a/b/c", oid("c"));
  h.apply(entry(1, 1'000 * kMs, "modify", "/a/b/c", oid("c"), oid("c2")));
  h.apply(entry(2, 2'000 * kMs, "modify", "/z", std::nullopt, oid("z")));
  h.apply(entry(3, 3'000 * kMs, "rename_dir", "/a/b", std::nullopt, std::nullopt, "/a/q"));
  EXPECT_EQ(h.cause("/a/b/c", 2'500 * kMs)->id, 1u);
  EXPECT_EQ(h.cause("/a/b/c", 3'500 * kMs)->id, 3u);
  EXPECT_EQ(h.cause("/a", 3'500 * kMs)->id, 3u);  // a change beneath a directory
  EXPECT_FALSE(h.cause("/a/b/c", 500 * kMs));
}

// Mock-mega applies a batch of mutations in one millisecond: a file
// modified and then moved with its directory in the same batch arrives at
// the new path with the new bytes.
TEST(Oracle, ChangesInOneMillisecondApplyInLogOrder) {
  History h;
  h.add_initial_file("/d/f", oid("v1"));
  h.add_initial_file("/e/g", oid("g1"));
  h.apply(entry(1, 5'000 * kMs, "modify", "/d/f", oid("v1"), oid("v2")));
  h.apply(entry(2, 5'000 * kMs, "rename_dir", "/d", std::nullopt, std::nullopt, "/d2"));
  EXPECT_EQ(h.classify_read("/d2/f", oid("v2"), 6'000 * kMs, 6'001 * kMs, kWindow).cls, ReadClass::fresh);
  h.apply(entry(3, 7'000 * kMs, "modify", "/e/g", oid("g1"), oid("g2")));
  h.apply(entry(4, 7'000 * kMs, "delete", "/e", std::nullopt, std::nullopt));
  // The deleted file was g1 until the batch: stale within the window after it.
  EXPECT_EQ(h.classify_read("/e/g", oid("g1"), 7'500 * kMs, 7'501 * kMs, kWindow).cls, ReadClass::stale_within);
}

TEST(Oracle, LogEntryJsonRoundTrip) {
  auto j = nlohmann::json::parse(R"({"id":7,"version":8,"time_ms":1764043200123,"kind":"cl","path":"/apps/x/BUCK",
    "old_oid":null,"new_oid":"0123456789abcdef0123456789abcdef01234567","cl":1,"action":"new"})");
  auto e = LogEntry::from_json(j);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->id, 7u);
  EXPECT_EQ(e->time_us, 1764043200123000);
  EXPECT_EQ(e->cl, 1u);
  EXPECT_EQ(e->action, "new");
  EXPECT_FALSE(e->old_oid);
  ASSERT_TRUE(e->new_oid);
  EXPECT_EQ(e->to_json()["new_oid"], "0123456789abcdef0123456789abcdef01234567");
  EXPECT_FALSE(LogEntry::from_json(nlohmann::json::parse(R"({"id":"x"})")));
  EXPECT_FALSE(LogEntry::from_json(nlohmann::json::array()));
}

}  // namespace
}  // namespace antares::repro
