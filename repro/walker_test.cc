// The walker against a plain local tree (no FUSE): what it reads, in which
// order, and what it writes.
#include "repro/walker.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

namespace antares::repro {
namespace {

namespace fs = std::filesystem;

class WalkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/repro-walker-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    put(".buckconfig", "[buildfile]\n  name = BUCK.v2,BUCK\n[project]\n  ignore = buck-out, .git\n");
    put("PACKAGE", "load(\"//tools/build_defs:pkg.bzl\", \"package_defaults\")\npackage()\n");
    put("tools/build_defs/rules.bzl", "def base_rule(): pass\n");
    put("tools/build_defs/rust.bzl", "load(\"//tools/build_defs:rules.bzl\", \"base_rule\")\n");
    put("tools/build_defs/pkg.bzl", "def package_defaults(): pass\n");
    put("tools/build_defs/unused.bzl", "never loaded\n");
    put("apps/PACKAGE", "package()\n");
    put("apps/web/BUCK", "load(\"//tools/build_defs:rust.bzl\", \"alpha_rule\")\nrust_library(name = \"w\")\n");
    put("apps/web/main.rs", "fn main() {}\n");
    put("apps/web/src/lib.rs", "pub fn f() {}\n");
    put("apps/web/inner/BUCK.v2", "load(\":local.bzl\", \"x\")\n");
    put("apps/web/inner/BUCK", "ignored: BUCK.v2 wins\n");
    put("apps/web/inner/local.bzl", "def x(): pass\n");
    put("apps/web/inner/inner.rs", "// inner\n");
    put("libs/nobuild/file.rs", "// not in any package\n");
    put("buck-out/old/stale.txt", "ignored\n");
    put(".git/HEAD", "ignored\n");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  void put(const std::string& rel, const std::string& content) {
    fs::create_directories(fs::path(root_ + "/" + rel).parent_path());
    std::ofstream(root_ + "/" + rel) << content;
  }
  WalkOptions opts(double share = 1.0) {
    WalkOptions o;
    o.root = root_;
    o.threads = 4;
    o.dirs_in_flight = 3;
    o.source_share = share;
    return o;
  }
  std::string root_;
};

std::vector<std::string> paths_of(const std::vector<OpEvent>& ev, Op op) {
  std::vector<std::string> out;
  for (const auto& e : ev)
    if (e.op == op) out.push_back(e.path);
  return out;
}

size_t index_of(const std::vector<OpEvent>& ev, Op op, const std::string& path) {
  for (size_t i = 0; i < ev.size(); ++i)
    if (ev[i].op == op && ev[i].path == path) return i;
  return SIZE_MAX;
}

TEST_F(WalkerTest, ReadsWhatBuck2Reads) {
  Recorder rec;
  auto sum = walk(opts(), &rec);
  auto ev = rec.take();
  for (const auto& e : ev) EXPECT_EQ(e.err, 0) << op_name(e.op) << " " << e.path;
  // .buckconfig first.
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.front().op, Op::read);
  EXPECT_EQ(ev.front().path, ".buckconfig");
  auto reads = paths_of(ev, Op::read);
  auto count = [&](const std::string& p) { return std::count(reads.begin(), reads.end(), p); };
  EXPECT_EQ(count("apps/web/BUCK"), 1);
  EXPECT_EQ(count("apps/web/inner/BUCK.v2"), 1);
  EXPECT_EQ(count("apps/web/inner/BUCK"), 0);  // BUCK.v2 has priority
  EXPECT_EQ(count("PACKAGE"), 1);              // once per walk, though two packages need it
  EXPECT_EQ(count("apps/PACKAGE"), 1);
  EXPECT_EQ(count("tools/build_defs/rust.bzl"), 1);
  EXPECT_EQ(count("tools/build_defs/rules.bzl"), 1);  // loaded by rust.bzl
  EXPECT_EQ(count("tools/build_defs/pkg.bzl"), 1);    // loaded by PACKAGE
  EXPECT_EQ(count("apps/web/inner/local.bzl"), 1);    // ":local.bzl"
  EXPECT_EQ(count("tools/build_defs/unused.bzl"), 0);
  EXPECT_EQ(count("apps/web/main.rs"), 1);
  EXPECT_EQ(count("apps/web/src/lib.rs"), 1);
  EXPECT_EQ(count("apps/web/inner/inner.rs"), 1);
  EXPECT_EQ(count("libs/nobuild/file.rs"), 0);        // no package owns it
  // PACKAGE files (root first) before the BUCK file that needs them.
  size_t buck = index_of(ev, Op::read, "apps/web/BUCK");
  EXPECT_LT(index_of(ev, Op::read, "apps/PACKAGE"), buck);
  EXPECT_LT(index_of(ev, Op::read, "PACKAGE"), index_of(ev, Op::read, "apps/PACKAGE"));
  // Every component of a source is lstat'ed before the read.
  size_t src = index_of(ev, Op::read, "apps/web/src/lib.rs");
  for (const char* p : {"apps", "apps/web", "apps/web/src", "apps/web/src/lib.rs"})
    EXPECT_LT(index_of(ev, Op::lstat, p), src) << p;
  // Ignored directories are never listed.
  auto listed = paths_of(ev, Op::readdir);
  EXPECT_EQ(std::count(listed.begin(), listed.end(), "buck-out"), 0);
  EXPECT_EQ(std::count(listed.begin(), listed.end(), ".git"), 0);
  EXPECT_GE(std::count(listed.begin(), listed.end(), "apps/web"), 2);  // BFS + the package's glob
  // Reads carry the oid of their bytes.
  for (const auto& e : ev)
    if (e.op == Op::read) {
      ASSERT_TRUE(e.oid);
      EXPECT_GE(e.end_us, e.t_us);
    }
  EXPECT_EQ(sum.packages, 2u);
  EXPECT_EQ(sum.buildfiles, 2u);
  EXPECT_EQ(sum.sources, 3u);
  EXPECT_EQ(sum.errors, 0u);
  // buck-out: one output per package, written to a temp name and renamed.
  EXPECT_EQ(sum.writes, 2u);
  EXPECT_TRUE(fs::exists(root_ + "/buck-out/v2/gen/apps/web/targets.out"));
  EXPECT_TRUE(fs::exists(root_ + "/buck-out/v2/gen/apps/web/inner/targets.out"));
  EXPECT_FALSE(fs::exists(root_ + "/buck-out/v2/gen/apps/web/.targets.tmp"));
  EXPECT_EQ(paths_of(ev, Op::rename).size(), 2u);
}

TEST_F(WalkerTest, SourceShareSelectsDeterministically) {
  EXPECT_EQ(source_selected("a/b.rs", 1, 0, 0.5), source_selected("a/b.rs", 1, 0, 0.5));
  int picked = 0;
  for (int i = 0; i < 10000; ++i) picked += source_selected("f" + std::to_string(i), 7, 0, 0.2);
  EXPECT_NEAR(picked, 2000, 200);
  EXPECT_FALSE(source_selected("x", 1, 0, 0.0));
  EXPECT_TRUE(source_selected("x", 1, 0, 1.0));
  Recorder rec;
  auto sum = walk(opts(0.0), &rec);
  EXPECT_EQ(sum.sources, 0u);
}

TEST_F(WalkerTest, LstatsEveryListedEntryWhenAsked) {
  // The benchmark's walk (bench/walk): readdir, lstat every entry, read the
  // build files; no sources, no buck-out writes.
  auto o = opts(0.0);
  o.lstat_entries = true;
  o.write_buck_out = false;
  Recorder rec;
  auto sum = walk(o, &rec);
  auto ev = rec.take();
  auto lstats = paths_of(ev, Op::lstat);
  auto count = [&](const std::string& p) { return std::count(lstats.begin(), lstats.end(), p); };
  // Once per entry of every directory the breadth-first pass lists, ignored ones included.
  for (const char* p : {".buckconfig", "PACKAGE", "apps", "apps/PACKAGE", "apps/web", "apps/web/main.rs",
                        "apps/web/src", "apps/web/src/lib.rs", "apps/web/inner/inner.rs", "libs/nobuild/file.rs",
                        "tools/build_defs/unused.bzl", "buck-out"})
    EXPECT_EQ(count(p), 1) << p;
  EXPECT_EQ(count("buck-out/old"), 0);  // inside an ignored directory: never listed
  EXPECT_EQ(sum.sources, 0u);
  EXPECT_EQ(sum.writes, 0u);
  EXPECT_EQ(sum.buildfiles, 2u);
  EXPECT_EQ(sum.errors, 0u);
  // Off by default: the reproduction's walk lstats only the sources it reads.
  Recorder rec2;
  walk(opts(0.0), &rec2);
  EXPECT_TRUE(paths_of(rec2.take(), Op::lstat).empty());
}

TEST_F(WalkerTest, PackageGlobListingsCanBeTurnedOff) {
  // Without the glob()s, every directory is listed exactly once (the
  // breadth-first pass) and the build files are still read.
  auto o = opts(0.0);
  o.write_buck_out = false;
  o.list_package_globs = false;
  Recorder rec;
  auto sum = walk(o, &rec);
  auto listed = paths_of(rec.take(), Op::readdir);
  for (const char* d : {"", "apps", "apps/web", "apps/web/src", "apps/web/inner", "libs", "tools/build_defs"})
    EXPECT_EQ(std::count(listed.begin(), listed.end(), d), 1) << d;
  EXPECT_EQ(sum.buildfiles, 2u);
  EXPECT_EQ(sum.package_files, 2u);
  EXPECT_EQ(sum.errors, 0u);
}

TEST_F(WalkerTest, ErrorsAreRecordedWithTheirErrno) {
  // A BUCK file that cannot be opened: the walk goes on and records EACCES/ENOENT.
  fs::remove(root_ + "/apps/web/inner/local.bzl");
  Recorder rec;
  auto sum = walk(opts(), &rec);
  auto ev = rec.take();
  bool seen = false;
  for (const auto& e : ev)
    if (e.path == "apps/web/inner/local.bzl") {
      EXPECT_EQ(e.op, Op::open);
      EXPECT_EQ(e.err, ENOENT);
      seen = true;
    }
  EXPECT_TRUE(seen);
  EXPECT_EQ(sum.errors, 1u);
  EXPECT_EQ(rec.errors(), 1u);
}

TEST_F(WalkerTest, StopsWhenAsked) {
  std::atomic<bool> stop{true};
  auto o = opts();
  o.stop = &stop;
  Recorder rec;
  auto sum = walk(o, &rec);
  EXPECT_TRUE(sum.stopped);
  EXPECT_EQ(sum.dirs, 0u);
}

}  // namespace
}  // namespace antares::repro
