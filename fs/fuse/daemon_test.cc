// The daemon's policy without FUSE: prepare() against an in-process mock-mega,
// strategy switches and the kernel timeouts they imply, refresh paths, status
// and metrics, the directories it refuses to wipe, and the startup deadline.
#include "fs/fuse/daemon.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "fs/lower/mirror_fs.h"
#include "mock-mega/admin_client.h"
#include "mock-mega/server.h"
#include "testing/subprocess.h"

namespace antares::fs {
namespace {

namespace stdfs = std::filesystem;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mock::ServerOptions so;
    so.repo = {.seed = 7, .files = 60, .cls = 2};
    server_ = std::make_unique<mock::MockMegaServer>(std::move(so));
    ASSERT_TRUE(server_->start().ok());
    for (auto d : {"mnt", "upper", "cache", "cl"}) stdfs::create_directories(tmp_ / d);
  }
  DaemonOptions options(bool with_cl = false) {
    DaemonOptions o;
    o.mega = server_->base_url();
    o.mountpoint = tmp_ / "mnt";
    o.upper = tmp_ / "upper";
    o.cache = tmp_ / "cache";
    o.run_dir = tmp_ / "run";
    o.ttl = std::chrono::milliseconds(300);
    if (with_cl) o.cl = "1", o.cl_dir = tmp_ / "cl";
    EXPECT_FALSE(validate_paths(o));
    return o;
  }
  testing::TempDir tmp_;
  std::unique_ptr<mock::MockMegaServer> server_;
};

TEST_F(DaemonTest, StrategySwitchesAnswerTheCanonicalNameAndSetKernelTimeouts) {
  DaemonOptions o = options();
  o.entry_timeout = 1;
  o.attr_timeout = 2;
  o.long_timeout = 60;
  o.ttl = std::chrono::seconds(5);
  o.strategy = "none";
  o.refresh = "per-dir";  // merkle: KernelTimeoutsFollowTheRefreshMode
  Daemon d(o);
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  EXPECT_DOUBLE_EQ(d.timeouts().entry.load(), 1);
  EXPECT_DOUBLE_EQ(d.timeouts().attr.load(), 2);
  EXPECT_FALSE(d.timeouts().keep_cache.load());

  auto b = d.set_strategy("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "B");
  // B invalidates: entries live as long as the listing, attributes long.
  EXPECT_DOUBLE_EQ(d.timeouts().entry.load(), 5);
  EXPECT_DOUBLE_EQ(d.timeouts().attr.load(), 60);
  EXPECT_TRUE(d.timeouts().keep_cache.load());
  EXPECT_EQ(*d.set_strategy("AUTO"), "auto");
  EXPECT_EQ(*d.set_strategy("a"), "A");
  EXPECT_DOUBLE_EQ(d.timeouts().entry.load(), 1);
  auto bad = d.set_strategy("Z");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err(), EINVAL);
  EXPECT_EQ(d.status_json()["strategy"], "A");
}

// Under merkle the daemon's own check finds every change, so an invalidating
// strategy keeps names long; under per-dir lookups drive the refresh, so
// names live a TTL. Attributes live long under both.
TEST_F(DaemonTest, KernelTimeoutsFollowTheRefreshMode) {
  for (const char* refresh : {"merkle", "per-dir"}) {
    DaemonOptions o = options();
    o.entry_timeout = 1;
    o.attr_timeout = 2;
    o.long_timeout = 60;
    o.ttl = std::chrono::seconds(5);
    o.refresh = refresh;
    o.prefetch = 0;
    o.strategy = "none";
    Daemon d(o);
    auto e = d.prepare();
    ASSERT_FALSE(e) << e->message;
    EXPECT_DOUBLE_EQ(d.timeouts().entry.load(), 1) << refresh;
    for (const char* s : {"B", "auto"}) {
      ASSERT_TRUE(d.set_strategy(s).ok());
      EXPECT_DOUBLE_EQ(d.timeouts().entry.load(), std::string(refresh) == "merkle" ? 60 : 5) << refresh << " " << s;
      EXPECT_DOUBLE_EQ(d.timeouts().attr.load(), 60) << refresh << " " << s;
    }
    ASSERT_TRUE(d.set_strategy("none").ok());
    EXPECT_DOUBLE_EQ(d.timeouts().entry.load(), 1) << refresh;
  }
}

// The background check: a change upstream is found and applied once the TTL
// has passed although nothing asks the store for a directory. Only under the
// strategies that tell the kernel what changed (B, auto): under none, A and C
// the mirror must not change behind kernel caches nobody invalidates.
TEST_F(DaemonTest, MerkleBackgroundCheckFindsChangesWithoutRequests) {
  DaemonOptions o = options();
  o.prefetch = 0;
  o.strategy = "none";
  o.ttl = std::chrono::milliseconds(100);
  Daemon d(o);
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  // A file the first listing mirrored: its inode is replaced by the check.
  std::string file;
  for (const auto& de : stdfs::directory_iterator(tmp_ / "cache/lower"))
    if (de.is_regular_file() && de.path().filename().string().rfind(".antares-tmp", 0) != 0) file = de.path();
  ASSERT_FALSE(file.empty());
  struct stat before;
  ASSERT_EQ(::stat(file.c_str(), &before), 0);
  mock::AdminClient admin(server_->base_url());
  const std::string rel = "/" + stdfs::path(file).filename().string();
  ASSERT_TRUE(admin.mutate({{"mutations", nlohmann::json::array({{{"kind", "modify"}, {"path", rel}}})}}).ok());
  EXPECT_TRUE(d.start_lower_checks());
  EXPECT_FALSE(d.start_lower_checks()) << "one thread";
  // Under none the ticker wakes (every 25 ms here) but never checks.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(d.status_json()["lower"]["background_checks"].get<uint64_t>(), 0u);
  struct stat still;
  ASSERT_EQ(::stat(file.c_str(), &still), 0);
  EXPECT_EQ(still.st_ino, before.st_ino) << "nothing changed the mirror under none";
  // B: no kernel session here, so its invalidations queue unsent.
  ASSERT_TRUE(d.set_strategy("B").ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  struct stat now = before;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::stat(file.c_str(), &now) == 0 && now.st_ino != before.st_ino) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(now.st_ino, before.st_ino) << "the check replaced the changed file";
  auto s = d.status_json();
  EXPECT_GE(s["lower"]["background_checks"].get<uint64_t>(), 1u) << s.dump();
  EXPECT_GE(s["lower"]["listings_changed"].get<uint64_t>(), 1u) << s.dump();
  EXPECT_GE(s["counters"]["layer_changes"].get<uint64_t>(), 1u) << s.dump();
  d.stop_lower_checks();
  d.stop_lower_checks();  // idempotent
}

TEST_F(DaemonTest, PerDirRunsNoBackgroundCheck) {
  DaemonOptions o = options();
  o.refresh = "per-dir";
  o.prefetch = 0;
  Daemon d(o);
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  EXPECT_FALSE(d.start_lower_checks()) << "requests drive per-dir: no thread";
  EXPECT_EQ(d.status_json()["lower"]["background_checks"].get<uint64_t>(), 0u);
}

TEST_F(DaemonTest, RefreshRefusesPathsOutsideTheMount) {
  Daemon d(options(true));
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  for (const char* bad : {"../../etc", "a/../../b", ".."}) {
    auto st = d.refresh(bad);
    EXPECT_EQ(st.err(), EINVAL) << bad;
  }
  EXPECT_TRUE(d.refresh("").ok());
  EXPECT_TRUE(d.refresh("/").ok());
  EXPECT_TRUE(d.refresh("./a//b/").ok());
}

TEST_F(DaemonTest, StatusAndMetricsComeFromTheRegistry) {
  Daemon d(options());
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  auto s = d.status_json();
  EXPECT_EQ(s["strategy"], "auto");
  EXPECT_TRUE(s["version"].is_string());
  EXPECT_GE(s["counters"]["listings_fetched"].get<uint64_t>(), 1u);
  std::string m = d.metrics_text();
  for (const char* want : {"# TYPE antares_lower_listings_total counter", "antares_strategy{name=\"auto\"} 1",
                           "antares_strategy{name=\"none\"} 0", "# TYPE antares_http_requests_total counter",
                           "antares_handle_cache_entries{layer=\"lower\"}", "antares_build_info{"})
    EXPECT_NE(m.find(want), std::string::npos) << want << "\n" << m;
  // One HELP/TYPE per family even with several series.
  size_t first = m.find("# TYPE antares_strategy gauge");
  ASSERT_NE(first, std::string::npos);
  EXPECT_EQ(m.find("# TYPE antares_strategy gauge", first + 1), std::string::npos);
}

TEST_F(DaemonTest, RefusesAnUnmarkedLowerMirrorWithData) {
  stdfs::create_directories(tmp_ / "cache/lower");
  std::ofstream(tmp_ / "cache/lower/precious") << "mine";
  Daemon d(options());
  auto e = d.prepare();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, kExitLayerDir);
  EXPECT_NE(e->message.find("not created by antares-fs"), std::string::npos) << e->message;
  EXPECT_EQ(testing::read_file(tmp_ / "cache/lower/precious"), "mine");
}

TEST_F(DaemonTest, RefusesANonEmptyUnmarkedClDir) {
  std::ofstream(tmp_ / "cl/precious") << "mine";
  Daemon d(options(true));
  auto e = d.prepare();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, kExitLayerDir);
  EXPECT_NE(e->message.find("--cl-dir"), std::string::npos) << e->message;
  EXPECT_EQ(testing::read_file(tmp_ / "cl/precious"), "mine");
}

// The CL directory is rebuilt at every mount; the lower mirror is kept, but
// anything in it without the store's state (here a stray file) is removed.
TEST_F(DaemonTest, DirectoriesItCreatedAreMarkedAndLeftoversRemovedNextTime) {
  {
    Daemon d(options(true));
    auto e = d.prepare();
    ASSERT_FALSE(e) << e->message;
  }
  const std::string marker(mirror::kOwnerMarker);
  EXPECT_TRUE(stdfs::exists(tmp_ / ("cache/lower/" + marker)));
  EXPECT_TRUE(stdfs::exists(tmp_ / ("cl/" + marker)));
  std::ofstream(tmp_ / "cache/lower/leftover") << "old";
  std::ofstream(tmp_ / "cl/leftover") << "old";
  Daemon d(options(true));
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  EXPECT_FALSE(stdfs::exists(tmp_ / "cache/lower/leftover"));
  EXPECT_FALSE(stdfs::exists(tmp_ / "cl/leftover"));
  EXPECT_TRUE(stdfs::exists(tmp_ / ("cache/lower/" + marker)));
  EXPECT_TRUE(stdfs::exists(tmp_ / ("cl/" + marker)));
}

// A restart over a populated --cache: one dir-hash, no listing, no blob, the
// mirror's files kept (same inodes).
TEST_F(DaemonTest, RestartKeepsTheMirrorAndRevalidatesItWithOneRequest) {
  DaemonOptions o = options();
  o.prefetch = 0;                       // counted requests are the restart's own
  o.ttl = std::chrono::seconds(600);    // and no TTL runs out on a slow machine
  std::string probe_file;
  ino_t ino = 0;
  {
    Daemon d(o);
    auto e = d.prepare();
    ASSERT_FALSE(e) << e->message;
    EXPECT_EQ(d.status_json()["lower"]["mirror_restored"], 0u);
    for (const auto& de : stdfs::directory_iterator(tmp_ / "cache/lower"))
      if (de.is_regular_file() && de.path().filename().string().rfind(".antares-tmp", 0) != 0) probe_file = de.path();
    ASSERT_FALSE(probe_file.empty());
    struct stat st;
    ASSERT_EQ(::stat(probe_file.c_str(), &st), 0);
    ino = st.st_ino;
  }
  EXPECT_TRUE(stdfs::exists(tmp_ / "cache/blobs"));
  Daemon d(o);
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  auto s = d.status_json();
  EXPECT_EQ(s["lower"]["mirror_restored"], 1u);
  EXPECT_EQ(s["counters"]["http_requests"], 1u) << s.dump();
  EXPECT_EQ(s["counters"]["listings_fetched"], 0u);
  EXPECT_EQ(s["refresh"], "merkle");
  struct stat st;
  ASSERT_EQ(::stat(probe_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_ino, ino);
  std::string m = d.metrics_text();
  for (const char* want : {"antares_lower_listings_total{reason=\"first\"}", "antares_lower_dir_hash_checks_total",
                           "antares_blob_cache_lookups_total{result=\"hit\"}", "antares_blob_cache_bytes",
                           "antares_lower_prefetch_total{result=\"dropped\"}", "antares_lower_mirror_restored 1"})
    EXPECT_NE(m.find(want), std::string::npos) << want << "\n" << m;
}

TEST_F(DaemonTest, PerDirRefreshAndNoBlobCacheAreOptions) {
  DaemonOptions o = options();
  o.refresh = "per-dir";
  o.cache_size = 0;
  o.prefetch = 0;
  Daemon d(o);
  auto e = d.prepare();
  ASSERT_FALSE(e) << e->message;
  EXPECT_EQ(d.status_json()["refresh"], "per-dir");
  EXPECT_TRUE(d.status_json()["blob_cache"].is_null());
  EXPECT_FALSE(stdfs::exists(tmp_ / "cache/blobs"));
}

TEST_F(DaemonTest, RefusesAnUnmarkedBlobCacheWithData) {
  stdfs::create_directories(tmp_ / "cache/blobs");
  std::ofstream(tmp_ / "cache/blobs/precious") << "mine";
  Daemon d(options());
  auto e = d.prepare();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, kExitLayerDir);
  EXPECT_NE(e->message.find("blob cache"), std::string::npos) << e->message;
  EXPECT_EQ(testing::read_file(tmp_ / "cache/blobs/precious"), "mine");
}

// A server that accepts connections (the kernel does, from the backlog) and
// never answers.
TEST_F(DaemonTest, SilentServerFailsWithinTheStartupTimeout) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 64), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  DaemonOptions o = options();
  o.mega = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  o.startup_timeout = std::chrono::milliseconds(700);
  Daemon d(o);
  auto t0 = std::chrono::steady_clock::now();
  auto e = d.prepare();
  auto took = std::chrono::steady_clock::now() - t0;
  close(fd);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, kExitUnreachable);
  EXPECT_NE(e->message.find("did not answer"), std::string::npos) << e->message;
  EXPECT_LT(took, std::chrono::seconds(5)) << "not bounded by --startup-timeout";
}

}  // namespace
}  // namespace antares::fs
