// End-to-end: the estale-repro CLI against real mock-mega servers and real
// antares-fs mounts (each run in a private temporary directory, always
// unmounted). Pins the reproduction's promises: under strategy none every
// scenario reproduces ESTALE on every run; under A, B, C and auto none does
// and no read is stale beyond the window; the same seed gives the same
// outcomes; a runtime switch stops the errors without a remount; Ctrl-C
// cleans up; and the HTML report renders in headless chromium.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "testing/subprocess.h"

namespace antares::testing {
namespace {

using nlohmann::json;

constexpr int kRepeat = 10;

bool have_fs() {
  return access((bin_dir() + "/antares-fs").c_str(), X_OK) == 0 &&
         access((bin_dir() + "/antares-ctl").c_str(), X_OK) == 0;
}

#define REQUIRE_FS()                                                       \
  if (!have_fs()) GTEST_SKIP() << "antares-fs/antares-ctl not built in " << bin_dir()

// Runs estale-repro with a small repository and a short TTL; returns the exit code.
int repro(std::vector<std::string> args, const TempDir& dir, json* report, std::string* err = nullptr,
          std::chrono::seconds timeout = std::chrono::seconds(280)) {
  // TMPDIR: the run's private directories (and mounts) live under this test's dir,
  // so tests running in parallel never see each other's mounts.
  std::vector<std::string> argv{"/usr/bin/env", "TMPDIR=" + dir.path(), bin_dir() + "/estale-repro", "--bin-dir", bin_dir(), "--files", "300",
                                "--ttl", "300ms", "--json", dir / "report.json"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out, e;
  int code = run(argv, &out, &e, timeout);
  if (err) *err = out + e;
  if (report) *report = json::parse(read_file(dir / "report.json"), nullptr, false);
  return code;
}

// Whether a mount of a run under `dir` is left behind.
bool mounts_left(const TempDir& dir) {
  return read_file("/proc/self/mountinfo").find(dir.path() + "/") != std::string::npos;
}

// Whether a run under `dir` has written buck-out through its mount: the
// walker's outputs land in the run's private upper dir
// (TMPDIR/estale-repro-XXXXXX/upper), which is read here without entering the mount.
bool walk_wrote_buck_out(const TempDir& dir) {
  std::error_code ec;
  for (const auto& run : std::filesystem::directory_iterator(dir.path(), ec))
    if (run.path().filename().string().rfind("estale-repro-", 0) == 0 &&
        std::filesystem::is_directory(run.path() / "upper" / "buck-out" / "v2" / "gen", ec))
      return true;
  return false;
}

class PerStrategy : public ::testing::TestWithParam<std::string> {};

TEST_P(PerStrategy, EveryScenarioTenTimes) {
  REQUIRE_FS();
  const std::string strategy = GetParam();
  TempDir dir;
  json report;
  std::string log;
  int code = repro({"scenario", "all", "--strategy", strategy, "--repeat", std::to_string(kRepeat)}, dir, &report, &log);
  ASSERT_FALSE(report.is_discarded()) << log;
  EXPECT_EQ(code, 0) << log;
  ASSERT_EQ(report["table"].size(), 5u) << log;
  for (const auto& row : report["table"]) {
    SCOPED_TRACE(row.dump());
    EXPECT_EQ(row["runs"], kRepeat);
    EXPECT_EQ(row["setup_failed"], 0);
    if (strategy == "none") {
      EXPECT_EQ(row["reproduced"], kRepeat);  // ESTALE 10/10
      EXPECT_GT(row["estale"].get<int>(), 0);
    } else {
      EXPECT_EQ(row["reproduced"], 0);
      EXPECT_EQ(row["estale"], 0);
      EXPECT_EQ(row["stale_beyond_window"], 0);
      EXPECT_EQ(row["wrong"], 0);
      EXPECT_EQ(row["ok"], kRepeat);
    }
  }
  // Every ESTALE the reproduction saw under none, antares-fs logged with a layer.
  if (strategy == "none")
    for (const auto& run : report["runs"]) {
      EXPECT_GT(run["fs_estale_logged"].get<int>(), 0) << run["scenario"];
      bool layer = false;
      for (const auto& e : run["events"]) layer |= e["kind"] == "estale" && e.contains("layer");
      EXPECT_TRUE(layer) << run["scenario"];
    }
  EXPECT_FALSE(mounts_left(dir));
}

INSTANTIATE_TEST_SUITE_P(Strategies, PerStrategy, ::testing::Values("none", "A", "B", "C", "auto"),
                         [](const auto& info) { return info.param; });

TEST(ReproE2E, SameSeedSameOutcomes) {
  REQUIRE_FS();
  auto outcomes = [](const json& r) {
    std::vector<std::string> v;
    for (const auto& run : r["runs"])
      v.push_back(run["strategy"].get<std::string>() + " " + run["scenario"].get<std::string>() + " " +
                  run["target"].get<std::string>() + " " + (run["reproduced"].get<bool>() ? "ESTALE" : "clean"));
    return v;
  };
  TempDir a, b;
  json ra, rb;
  ASSERT_EQ(repro({"--seed", "7", "scenario", "all", "--strategy", "none,auto", "--repeat", "2"}, a, &ra), 0);
  ASSERT_EQ(repro({"--seed", "7", "scenario", "all", "--strategy", "none,auto", "--repeat", "2"}, b, &rb), 0);
  EXPECT_EQ(outcomes(ra), outcomes(rb));
  EXPECT_EQ(outcomes(ra).size(), 20u);
}

TEST(ReproE2E, SwitchToAutoStopsErrorsWithoutRemount) {
  REQUIRE_FS();
  TempDir dir;
  json report;
  std::string log;
  EXPECT_EQ(repro({"switch", "--duration", "5s"}, dir, &report, &log), 0) << log;
  ASSERT_FALSE(report.is_discarded()) << log;
  ASSERT_EQ(report["runs"].size(), 1u);
  const auto& run = report["runs"][0];
  EXPECT_TRUE(run["reproduced"].get<bool>()) << run["note"];
  EXPECT_TRUE(run["ok"].get<bool>()) << run["note"];
  bool switched = false;
  for (const auto& m : run["markers"]) switched |= m["kind"] == "switch";
  EXPECT_TRUE(switched);
  EXPECT_EQ(run["fs_status"]["strategy"], "auto");
}

TEST(ReproE2E, SoakUnderFixesHasNoEstale) {
  REQUIRE_FS();
  TempDir dir;
  json report;
  std::string log;
  EXPECT_EQ(repro({"soak", "--duration", "4s", "--strategy", "none,auto", "--mutate-every", "200ms"}, dir, &report,
                  &log),
            0)
      << log;
  ASSERT_EQ(report["table"].size(), 2u) << log;
  EXPECT_GT(report["table"][0]["estale"].get<int>(), 0) << "none soak reproduced nothing";
  EXPECT_EQ(report["table"][1]["estale"], 0);
  EXPECT_EQ(report["table"][1]["stale_beyond_window"], 0);
  EXPECT_GT(report["table"][1]["ops"].get<int>(), 1000);
}

TEST(ReproE2E, InterruptStopsAndUnmounts) {
  REQUIRE_FS();
  TempDir dir;
  Subprocess p({"/usr/bin/env", "TMPDIR=" + dir.path(), bin_dir() + "/estale-repro", "--bin-dir", bin_dir(), "--files", "300", "soak", "--duration", "60s",
                "--strategy", "none"},
               dir / "soak");
  // Wait until the mount is up and a walk has written its first buck-out
  // file through it (into the run's upper dir), so the interrupt lands mid-soak.
  ASSERT_TRUE(wait_until([&] { return mounts_left(dir) && walk_wrote_buck_out(dir); }, std::chrono::seconds(60)))
      << p.stderr_text();
  kill(p.pid(), SIGINT);
  EXPECT_EQ(p.wait(std::chrono::seconds(30)), 130) << p.stderr_text();
  EXPECT_FALSE(mounts_left(dir));
  // Its children (own process groups) are gone too.
  std::string out;
  run({"/bin/sh", "-c", "pgrep -P " + std::to_string(p.pid()) + " | wc -l"}, &out);
  EXPECT_EQ(out, "0\n");
}

std::string find_chromium() {
  for (const char* c : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (access(c, X_OK) == 0) return c;
  return {};
}

TEST(ReproE2E, HtmlReportRendersInHeadlessChromium) {
  REQUIRE_FS();
  std::string chromium = find_chromium();
  if (chromium.empty()) GTEST_SKIP() << "chromium is not installed (apt-get install chromium)";
  TempDir dir;
  std::string log;
  int code = repro({"--html", dir / "report.html", "matrix", "--repeat", "1", "--soak", "2s"}, dir, nullptr, &log);
  EXPECT_EQ(code, 0) << log;
  std::string html = read_file(dir / "report.html");
  ASSERT_NE(html.find("<svg"), std::string::npos);
  std::vector<std::string> common{chromium,           "--headless",          "--disable-gpu",
                                  "--no-sandbox",     "--no-first-run",      "--user-data-dir=" + (dir / "profile"),
                                  "--enable-logging=stderr", "--v=0",       "--window-size=1200,2400"};
  // The DOM after rendering: the charts are there.
  auto dom_argv = common;
  dom_argv.insert(dom_argv.end(), {"--dump-dom", "file://" + (dir / "report.html")});
  std::string dom, err;
  ASSERT_EQ(run(dom_argv, &dom, &err, std::chrono::seconds(120)), 0) << err;
  size_t svgs = 0;
  for (size_t p = 0; (p = dom.find("<svg", p)) != std::string::npos; ++p) ++svgs;
  EXPECT_EQ(svgs, 6u) << "5 timelines + 1 latency chart";
  EXPECT_NE(dom.find("chart latency"), std::string::npos);
  // No script errors or console messages.
  EXPECT_EQ(err.find("Uncaught"), std::string::npos) << err;
  EXPECT_EQ(err.find("CONSOLE"), std::string::npos) << err;
  // A screenshot renders.
  auto shot_argv = common;
  shot_argv.insert(shot_argv.end(), {"--screenshot=" + (dir / "report.png"), "file://" + (dir / "report.html")});
  ASSERT_EQ(run(shot_argv, nullptr, &err, std::chrono::seconds(120)), 0) << err;
  std::string png = read_file(dir / "report.png");
  ASSERT_GT(png.size(), 10000u);
  EXPECT_EQ(png.substr(1, 3), "PNG");
  EXPECT_EQ(err.find("Uncaught"), std::string::npos) << err;
  if (const char* keep = getenv("ANTARES_REPORT_SCREENSHOT")) {
    std::ofstream(keep, std::ios::binary) << png;
  }
}

}  // namespace
}  // namespace antares::testing
