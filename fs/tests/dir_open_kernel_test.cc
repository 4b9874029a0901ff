// --dir-open kernel: directories are opened by the kernel without a request
// (FUSE's zero-message opendir), so a walk sends no OPENDIR and no
// RELEASEDIR, and the kernel caches every listing until the daemon
// invalidates it. Pinned here: after the first directory open no OPENDIR or
// RELEASEDIR reaches the daemon; a directory larger than one READDIR reply
// lists every name exactly once; names made through the mount, behind it in
// the upper layer and on the server all appear; the strategies that do not
// invalidate are refused, at startup and at runtime.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

using namespace std::chrono_literals;

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
