// antares-fs's command line: both spellings, -o lists as mount(8), mount.fuse3
// and fstab pass them, the FUSE option defaults by who mounts, error messages
// for missing values, and the directory checks that protect user data.
#include "fs/fuse/daemon_options.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "testing/subprocess.h"

namespace antares::fs {
namespace {

ParsedArgs parse(std::vector<std::string> args, bool root = true) { return parse_daemon_args(args, root, "/run/antares"); }

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// Each -o suffix (after upper=/u,cache=/c) is refused with a message containing its text.
void expect_refused(const std::vector<std::pair<std::string, std::string>>& cases) {
  for (const auto& [args, want] : cases) {
    auto p = parse({"u", "/m", "-o", "upper=/u,cache=/c," + args});
    ASSERT_EQ(p.kind, ParsedArgs::Kind::error) << args;
    EXPECT_NE(p.error.find(want), std::string::npos) << args << " -> " << p.error;
  }
}

TEST(DaemonOptions, LongOptions) {
  auto p = parse({"--mega", "http://m:1", "--mountpoint", "/mnt/x", "--upper", "/u", "--cache=/c", "--ttl", "300ms",
                  "--strategy", "b", "--threads", "4", "--foreground", "--startup-timeout", "2s"});
  ASSERT_EQ(p.kind, ParsedArgs::Kind::run) << p.error;
  EXPECT_EQ(p.options.mega, "http://m:1");
  EXPECT_EQ(p.options.mountpoint, "/mnt/x");
  EXPECT_EQ(p.options.cache, "/c");
  EXPECT_EQ(p.options.ttl, std::chrono::milliseconds(300));
  EXPECT_EQ(p.options.strategy, "B");  // canonical
  EXPECT_EQ(p.options.threads, 4);
  EXPECT_TRUE(p.options.foreground);
  EXPECT_EQ(p.options.startup_timeout, std::chrono::seconds(2));
  EXPECT_EQ(p.options.run_dir, "/run/antares");
}

TEST(DaemonOptions, MountSpellingWithOptionList) {
  // What mount.fuse3 runs for an fstab line: source, mountpoint, -o with dev,suid added.
  auto p = parse({"http://m:1", "/mnt/x", "-o",
                  "rw,upper=/u,cache=/c,cl=3,cl_dir=/cl,strategy=auto,ttl=5s,entry_timeout=2,attr-timeout=1.5,"
                  "run_dir=/r,log_file=/l,log_level=warn,_netdev,nofail,x-systemd.requires=net.target,noauto,dev,suid"});
  ASSERT_EQ(p.kind, ParsedArgs::Kind::run) << p.error;
  const auto& o = p.options;
  EXPECT_EQ(o.mega, "http://m:1");
  EXPECT_EQ(o.mountpoint, "/mnt/x");
  EXPECT_EQ(o.upper, "/u");
  EXPECT_EQ(o.cl, "3");
  EXPECT_EQ(o.cl_dir, "/cl");
  EXPECT_EQ(o.ttl, std::chrono::seconds(5));
  EXPECT_DOUBLE_EQ(o.entry_timeout, 2.0);
  EXPECT_DOUBLE_EQ(o.attr_timeout, 1.5);
  EXPECT_EQ(o.run_dir, "/r");
  EXPECT_EQ(o.log_file, "/l");
  ASSERT_TRUE(o.log_level);
  EXPECT_EQ(*o.log_level, log::Level::warn);
  EXPECT_FALSE(o.foreground);  // mount helpers expect the daemon to detach
  // FUSE options kept; mount(8)/systemd ones dropped; defaults added.
  for (const char* f : {"rw", "dev", "suid", "default_permissions", "allow_other", "subtype=antares-fs"})
    EXPECT_TRUE(has(o.fuse_options, f)) << f;
  EXPECT_TRUE(has(o.fuse_options, "fsname=http://m:1"));
  for (const auto& f : o.fuse_options) {
    EXPECT_EQ(f.find("_netdev"), std::string::npos);
    EXPECT_EQ(f.find("x-systemd"), std::string::npos);
    EXPECT_NE(f, "nofail");
    EXPECT_NE(f, "noauto");
  }
}

TEST(DaemonOptions, SeveralOptionListsAndGluedSpelling) {
  auto p = parse({"-oupper=/u", "http://m:1", "-o", "cache=/c,ro", "/mnt/x", "-f"});
  ASSERT_EQ(p.kind, ParsedArgs::Kind::run) << p.error;
  EXPECT_EQ(p.options.upper, "/u");
  EXPECT_EQ(p.options.cache, "/c");
  EXPECT_TRUE(p.options.foreground);
  EXPECT_TRUE(has(p.options.fuse_options, "ro"));
}

TEST(DaemonOptions, AllowOtherDefaultsByWhoMounts) {
  std::vector<std::string> base = {"http://m:1", "/mnt/x", "-o", "upper=/u,cache=/c"};
  auto root = parse(base, true);
  ASSERT_EQ(root.kind, ParsedArgs::Kind::run);
  EXPECT_TRUE(has(root.options.fuse_options, "allow_other"));
  EXPECT_TRUE(has(root.options.fuse_options, "default_permissions"));
  auto user = parse(base, false);
  ASSERT_EQ(user.kind, ParsedArgs::Kind::run);
  EXPECT_FALSE(has(user.options.fuse_options, "allow_other"));
  EXPECT_TRUE(has(user.options.fuse_options, "default_permissions"));
  // Explicit choices win.
  auto off = parse({"http://m:1", "/mnt/x", "-o", "upper=/u,cache=/c,no_allow_other,no_default_permissions"}, true);
  ASSERT_EQ(off.kind, ParsedArgs::Kind::run) << off.error;
  EXPECT_FALSE(has(off.options.fuse_options, "allow_other"));
  EXPECT_FALSE(has(off.options.fuse_options, "default_permissions"));
  auto on = parse({"http://m:1", "/mnt/x", "-o", "upper=/u,cache=/c,allow_other,fsname=mega,subtype=x"}, false);
  ASSERT_EQ(on.kind, ParsedArgs::Kind::run) << on.error;
  EXPECT_EQ(std::count(on.options.fuse_options.begin(), on.options.fuse_options.end(), "allow_other"), 1);
  EXPECT_TRUE(has(on.options.fuse_options, "fsname=mega"));
  EXPECT_FALSE(has(on.options.fuse_options, "fsname=http://m:1"));
  EXPECT_FALSE(has(on.options.fuse_options, "subtype=antares-fs"));
}

TEST(DaemonOptions, LowerStoreKnobsInBothSpellings) {
  auto d = parse({"u", "/m", "-o", "upper=/u,cache=/c"});
  ASSERT_EQ(d.kind, ParsedArgs::Kind::run) << d.error;
  EXPECT_EQ(d.options.refresh, "merkle");
  EXPECT_EQ(d.options.cache_size, 10ull << 30);
  EXPECT_EQ(d.options.prefetch, 8);
  auto l = parse({"u", "/m", "-o", "upper=/u,cache=/c", "--refresh", "per-dir", "--cache-size", "512M", "--prefetch", "0"});
  ASSERT_EQ(l.kind, ParsedArgs::Kind::run) << l.error;
  EXPECT_EQ(l.options.refresh, "per-dir");
  EXPECT_EQ(l.options.cache_size, 512ull << 20);
  EXPECT_EQ(l.options.prefetch, 0);
  auto o = parse({"u", "/m", "-o", "upper=/u,cache=/c,refresh=merkle,cache_size=0,prefetch=32"});
  ASSERT_EQ(o.kind, ParsedArgs::Kind::run) << o.error;
  EXPECT_EQ(o.options.refresh, "merkle");
  EXPECT_EQ(o.options.cache_size, 0u) << "0: no blob cache";
  EXPECT_EQ(o.options.prefetch, 32);
  expect_refused({
      {"refresh=ttl", "--refresh: unknown mode 'ttl' (merkle, per-dir)"},
      {"cache_size=10X", "--cache-size: not a size"},
      {"cache_size=-1", "--cache-size: not a size"},
      {"cache_size=100", "--cache-size: at least 1M"},
      {"prefetch=1000", "--prefetch: expected 0..64"},
      {"prefetch=x", "--prefetch: expected 0..64"}});
  std::string usage = daemon_usage();
  for (const char* s : {"--refresh", "--cache-size", "--prefetch"}) EXPECT_NE(usage.find(s), std::string::npos) << s;
}

TEST(DaemonOptions, KernelOpensOnlyWhereCachesAreInvalidated) {
  auto d = parse({"u", "/m", "-o", "upper=/u,cache=/c"});
  ASSERT_EQ(d.kind, ParsedArgs::Kind::run) << d.error;
  EXPECT_EQ(d.options.dir_open, "daemon");
  EXPECT_EQ(d.options.file_open, "daemon");
  for (const char* s : {"auto", "B"}) {
    auto k = parse({"u", "/m", "-o", std::string("upper=/u,cache=/c,dir_open=kernel,file_open=kernel,strategy=") + s});
    ASSERT_EQ(k.kind, ParsedArgs::Kind::run) << s << ": " << k.error;
    EXPECT_EQ(k.options.dir_open, "kernel");
    EXPECT_EQ(k.options.file_open, "kernel");
  }
  expect_refused({
      {"dir_open=yes", "--dir-open: expected daemon or kernel, got 'yes'"},
      {"dir_open=kernel,strategy=none", "--dir-open kernel needs --strategy B or auto (got none)"},
      {"dir_open=kernel,strategy=C", "--dir-open kernel needs --strategy B or auto (got C)"},
      {"dir_open=kernel,refresh=per-dir", "--dir-open kernel needs --refresh merkle"},
      {"file_open=no", "--file-open: expected daemon or kernel, got 'no'"},
      {"file_open=kernel,strategy=A", "--file-open kernel needs --strategy B or auto (got A)"},
      {"file_open=kernel,refresh=per-dir", "--file-open kernel needs --refresh merkle"}});
}

TEST(DaemonOptions, CommasInValuesAreEscapedForLibfuse) {
  auto p = parse({"http://m:1/a,b", "/mnt/x", "-o", "upper=/u\\,1,cache=/c"});
  ASSERT_EQ(p.kind, ParsedArgs::Kind::run) << p.error;
  EXPECT_EQ(p.options.upper, "/u,1");
  EXPECT_TRUE(has(p.options.fuse_options, "fsname=http://m:1/a\\,b"));
}

TEST(DaemonOptions, MissingValuesSaySo) {
  struct Case {
    std::vector<std::string> args;
    std::string want;
  };
  for (const auto& c : std::vector<Case>{
           {{"--mega", "u", "--mountpoint", "/m", "--upper", "/u", "--cache", "/c", "--ttl"}, "option --ttl needs a value"},
           {{"u", "/m", "-o"}, "option -o needs a value"},
           {{"u", "/m", "-o", "upper"}, "mount option upper needs a value"},
           {{"u", "/m", "-o", "upper=/u,cache=/c,fsname="}, "mount option fsname needs a value"},
           {{"u", "/m", "-o", "upper=/u,cache=/c,bogus"}, "unknown mount option 'bogus'"},
           {{"u", "/m", "-o", "upper=/u,cache=/c", "--bogus", "1"}, "unknown option --bogus"},
           {{"u", "/m", "-o", "upper=/u,cache=/c", "extra"}, "unexpected argument 'extra'"},
           {{"u", "/m", "-o", "upper=/u,cache=/c,strategy=Z"}, "unknown strategy 'Z'"},
           {{"u", "/m", "-o", "upper=/u,cache=/c,ttl=soon"}, "--ttl: not a duration"},
           {{"u", "/m", "-o", "upper=/u"}, "--cache DIR"},
           {{"--mountpoint", "/m", "-o", "upper=/u,cache=/c"}, "--mega URL is required"},
           {{"u", "/m", "-o", "upper=/u,cache=/c,cl=1"}, "--cl and --cl-dir go together"},
           {{"--mega", "a", "b", "/m", "-o", "upper=/u,cache=/c"}, "two Mega URLs"},
       }) {
    auto p = parse(c.args);
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    ASSERT_EQ(p.kind, ParsedArgs::Kind::error) << joined;
    EXPECT_NE(p.error.find(c.want), std::string::npos) << joined << " -> " << p.error;
  }
}

TEST(DaemonOptions, HelpAndVersion) {
  EXPECT_EQ(parse({"--help"}).kind, ParsedArgs::Kind::help);
  EXPECT_EQ(parse({"u", "-h"}).kind, ParsedArgs::Kind::help);
  EXPECT_EQ(parse({"--version"}).kind, ParsedArgs::Kind::version);
  EXPECT_EQ(parse({"-V"}).kind, ParsedArgs::Kind::version);
  std::string usage = daemon_usage();
  for (const char* s : {"--startup-timeout", "--log-file", "allow_other", "_netdev", "Exit codes"})
    EXPECT_NE(usage.find(s), std::string::npos) << s;
}

TEST(DaemonOptions, PathsOverlap) {
  EXPECT_TRUE(paths_overlap("/a", "/a"));
  EXPECT_TRUE(paths_overlap("/a", "/a/b"));
  EXPECT_TRUE(paths_overlap("/a/b/c", "/a"));
  EXPECT_TRUE(paths_overlap("/", "/x"));
  EXPECT_FALSE(paths_overlap("/a", "/ab"));
  EXPECT_FALSE(paths_overlap("/a/b", "/a/c"));
}

class ValidatePaths : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto d : {"mnt", "upper", "cache", "cl"}) std::filesystem::create_directories(tmp_ / d);
    o_.mega = "http://m:1";
    o_.mountpoint = tmp_ / "mnt";
    o_.upper = tmp_ / "upper";
    o_.cache = tmp_ / "cache";
    o_.run_dir = tmp_ / "run";
  }
  testing::TempDir tmp_;
  DaemonOptions o_;
};

TEST_F(ValidatePaths, SeparateDirectoriesPass) {
  o_.cl = "1";
  o_.cl_dir = tmp_ / "cl";
  auto e = validate_paths(o_);
  EXPECT_FALSE(e) << e->message;
}

TEST_F(ValidatePaths, OverlappingOrNestedDirectoriesAreUsageErrors) {
  std::filesystem::create_directories(tmp_ / "upper/sub");
  struct Case {
    std::function<void(DaemonOptions&)> set;
    std::string a, b;
  };
  const std::string t = tmp_.path();
  for (const auto& c : std::vector<Case>{
           {[&](DaemonOptions& o) { o.cl = "1", o.cl_dir = t + "/upper"; }, "--upper", "--cl-dir"},
           {[&](DaemonOptions& o) { o.cache = t + "/upper"; }, "--upper", "--cache"},
           {[&](DaemonOptions& o) { o.cache = t + "/upper/sub"; }, "--upper", "--cache"},
           {[&](DaemonOptions& o) { o.upper = t + "/cache/../upper/sub", o.cache = t + "/upper"; }, "--upper", "--cache"},
           {[&](DaemonOptions& o) { o.run_dir = t + "/mnt/run"; }, "mountpoint", "--run-dir"},
           {[&](DaemonOptions& o) { o.run_dir = t + "/cache"; }, "--cache", "--run-dir"},
           {[&](DaemonOptions& o) { o.upper = t; }, "mountpoint", "--upper"},
       }) {
    DaemonOptions o = o_;
    c.set(o);
    auto e = validate_paths(o);
    ASSERT_TRUE(e) << c.a << " " << c.b;
    EXPECT_EQ(e->code, kExitUsage) << e->message;
    EXPECT_NE(e->message.find(c.a), std::string::npos) << e->message;
    EXPECT_NE(e->message.find(c.b), std::string::npos) << e->message;
  }
  // Nothing was created or removed.
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "mnt/run"));
  EXPECT_TRUE(std::filesystem::exists(tmp_ / "upper/sub"));
}

TEST_F(ValidatePaths, MountpointProblemsExitThree) {
  o_.mountpoint = tmp_ / "missing";
  EXPECT_EQ(validate_paths(o_)->code, kExitMountpoint);
  DaemonOptions o = o_;
  o.mountpoint = tmp_ / "upper";
  std::filesystem::create_directories(tmp_ / "upper/x");
  o.upper = tmp_ / "cl";
  auto e = validate_paths(o);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, kExitMountpoint);
  EXPECT_NE(e->message.find("not empty"), std::string::npos);
}

}  // namespace
}  // namespace antares::fs
