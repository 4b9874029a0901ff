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

#include "common/mountinfo.h"
#include "testing/mount_fixture.h"
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
bool mounts_left(const TempDir& dir) { return antares::has_mount_below(antares::read_mountinfo(), dir.path()); }

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
                "--strategy", "none", "--json", dir / "report.json"},
               dir / "soak");
  // Wait until the mount is up and a walk has written its first buck-out
  // file through it (into the run's upper dir), so the interrupt lands mid-soak.
  ASSERT_TRUE(wait_until([&] { return mounts_left(dir) && walk_wrote_buck_out(dir); }, std::chrono::seconds(60)))
      << p.stderr_text();
  kill(p.pid(), SIGINT);
  EXPECT_EQ(p.wait(std::chrono::seconds(30)), 130) << p.stderr_text();
  EXPECT_FALSE(mounts_left(dir));
  // The report says "interrupted", never "setup failed".
  EXPECT_NE(p.stdout_text().find("Interrupted: "), std::string::npos) << p.stdout_text();
  EXPECT_EQ(p.stdout_text().find("setup failed"), std::string::npos) << p.stdout_text();
  json report = json::parse(read_file(dir / "report.json"), nullptr, false);
  ASSERT_FALSE(report.is_discarded());
  EXPECT_TRUE(report["interrupted"].get<bool>());
  ASSERT_EQ(report["table"].size(), 1u);
  EXPECT_EQ(report["table"][0]["verdict"], "interrupted");
  // Its children (own process groups) are gone too.
  std::string out;
  run({"/bin/sh", "-c", "pgrep -P " + std::to_string(p.pid()) + " | wc -l"}, &out);
  EXPECT_EQ(out, "0\n");
}

// A mount of its own that estale-repro attaches to: mock-mega plus
// antares-fs under strategy auto.
struct AttachedMount {
  TempDir dir;
  MegaProcess mega{dir, MegaOptions{.seed = 11, .files = 300, .cls = 2, .extra = {}}};
  Mount mount{dir, mega.url(), MountOptions{.strategy = "auto", .ttl = "300ms", .cl = "", .extra = {}}};
  std::vector<std::string> attach() const {
    return {"--mega", mega.url(), "--mountpoint", mount.mnt(), "--upper", mount.upper(), "--run-dir", mount.run_dir()};
  }
  std::string strategy() {
    std::string out;
    if (mount.ctl({"status"}, &out) != 0) return "(status failed)";
    json st = json::parse(out, nullptr, false);
    return st.is_object() && st.contains("strategy") ? st["strategy"].get<std::string>() : "(no strategy)";
  }
};

TEST(ReproE2E, AttachedWalkLeavesTheMountsStrategyAsItWas) {
  REQUIRE_FS();
  AttachedMount m;
  ASSERT_TRUE(m.mount.ok()) << m.mount.log();
  ASSERT_EQ(m.strategy(), "auto");
  // Without --strategy: walks under the mount's own strategy, switches nothing.
  json report;
  std::string log;
  auto args = m.attach();
  args.push_back("walk");
  EXPECT_EQ(repro(args, m.dir, &report, &log), 0) << log;
  ASSERT_FALSE(report.is_discarded()) << log;
  ASSERT_EQ(report["runs"].size(), 1u);
  EXPECT_EQ(report["runs"][0]["strategy"], "auto");
  EXPECT_EQ(m.strategy(), "auto");
  // With --strategy none: that strategy for the run only.
  args.insert(args.end(), {"--strategy", "none"});
  int code = repro(args, m.dir, &report, &log);
  EXPECT_TRUE(code == 0 || code == 1) << log;
  EXPECT_EQ(m.strategy(), "auto") << log;
  ASSERT_EQ(report["table"].size(), 1u);
  // The row agrees with itself: ESTALE runs and ESTALE both zero or both not.
  const json& row = report["table"][0];
  EXPECT_EQ(row["strategy"], "none");
  EXPECT_EQ(row["estale_runs"].get<int>() > 0, row["estale"].get<int>() > 0) << row.dump();
  EXPECT_NE(row["verdict"], "NOT reproduced") << row.dump();
  EXPECT_FALSE(m.strategy().empty());
}

TEST(ReproE2E, AttachedSoakSwitchesBackWhenInterrupted) {
  REQUIRE_FS();
  AttachedMount m;
  ASSERT_TRUE(m.mount.ok()) << m.mount.log();
  std::vector<std::string> argv{"/usr/bin/env", "TMPDIR=" + m.dir.path(), bin_dir() + "/estale-repro", "--bin-dir",
                                bin_dir()};
  auto att = m.attach();
  argv.insert(argv.end(), att.begin(), att.end());
  argv.insert(argv.end(), {"soak", "--strategy", "none", "--duration", "60s"});
  Subprocess p(argv, m.dir / "soak");
  ASSERT_TRUE(wait_until([&] { return m.strategy() == "none" || !p.running(); }, std::chrono::seconds(60)))
      << p.stderr_text();
  ASSERT_TRUE(p.running()) << p.stdout_text() << p.stderr_text();
  kill(p.pid(), SIGTERM);
  EXPECT_EQ(p.wait(std::chrono::seconds(60)), 130) << p.stderr_text();
  EXPECT_EQ(m.strategy(), "auto") << p.stdout_text() << p.stderr_text();
  EXPECT_TRUE(mounted_fstype(m.mount.mnt())) << "the attached mount is not estale-repro's to unmount";
}

TEST(ReproE2E, LocalWalkNamesItsErrorsAndWritesJson) {
  TempDir dir;
  std::filesystem::create_directories(dir / "tree/apps/web");
  std::ofstream(dir / "tree/.buckconfig") << "[buildfile]\n  name = BUCK\n";
  // A BUCK file that loads a .bzl file the tree does not have.
  std::ofstream(dir / "tree/apps/web/BUCK") << "load(\"//tools:missing.bzl\", \"x\")\nrust_library(name = \"w\")\n";
  std::string out, err;
  int code = run({bin_dir() + "/estale-repro", "walk", "--root", dir / "tree", "--json", dir / "walk.json"}, &out, &err);
  EXPECT_EQ(code, 1) << out << err;
  EXPECT_NE(out.find("1 errors"), std::string::npos) << out;
  EXPECT_NE(out.find("open tools/missing.bzl: No such file or directory (errno 2)"), std::string::npos) << out;
  json j = json::parse(read_file(dir / "walk.json"), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << read_file(dir / "walk.json");
  ASSERT_EQ(j["errors"].size(), 1u);
  EXPECT_EQ(j["errors"][0]["path"], "tools/missing.bzl");
  EXPECT_EQ(j["errors"][0]["errno"], ENOENT);
  EXPECT_GT(j["buildfiles"].get<int>(), 0);
}

// Outcome columns of a table row: what a run of the same seed repeats (the
// ESTALE count and the latencies depend on timing; which runs reproduce,
// which targets, and the verdicts do not).
std::vector<std::string> outcomes_of(const json& table) {
  std::vector<std::string> v;
  for (const auto& r : table) {
    std::string targets;
    for (const auto& t : r["targets"]) targets += t.get<std::string>() + ",";
    v.push_back(r["strategy"].get<std::string>() + " " + r["scenario"].get<std::string>() + " runs=" +
                r["runs"].dump() + " estale_runs=" + r["estale_runs"].dump() + " ok=" + r["ok"].dump() +
                " stale>win=" + r["stale_beyond_window"].dump() + " wrong=" + r["wrong"].dump() + " verdict=" +
                r["verdict"].get<std::string>() + " targets=" + targets);
  }
  return v;
}

TEST(ReproE2E, ShardsMergeToTheUnshardedTable) {
  REQUIRE_FS();
  TempDir dir;
  const std::vector<std::string> matrix{"--seed", "5", "matrix", "--strategy", "none,auto", "--repeat", "1",
                                        "--soak", "0", "--cost-rounds", "0"};
  json whole;
  std::string log;
  ASSERT_EQ(repro(matrix, dir, &whole, &log), 0) << log;
  std::vector<std::string> parts;
  for (int k = 1; k <= 3; ++k) {
    auto args = matrix;
    args.insert(args.end(), {"--shard", std::to_string(k) + "/3"});
    json part;
    ASSERT_EQ(repro(args, dir, &part, &log), 0) << log;
    EXPECT_NE(log.find("shard " + std::to_string(k) + "/3: "), std::string::npos) << log;
    parts.push_back(dir / ("shard-" + std::to_string(k) + ".json"));
    std::ofstream(parts.back()) << part.dump();
  }
  std::vector<std::string> merge{bin_dir() + "/estale-repro", "merge"};
  merge.insert(merge.end(), parts.begin(), parts.end());
  merge.insert(merge.end(), {"--json", dir / "merged.json", "--html", dir / "merged.html"});
  std::string out, err;
  ASSERT_EQ(run(merge, &out, &err), 0) << out << err;
  json merged = json::parse(read_file(dir / "merged.json"), nullptr, false);
  ASSERT_FALSE(merged.is_discarded());
  EXPECT_EQ(outcomes_of(merged["table"]), outcomes_of(whole["table"]));
  EXPECT_EQ(outcomes_of(merged["table"]).size(), 10u);
  EXPECT_EQ(merged["verdict"]["recommended"], whole["verdict"]["recommended"]);
  EXPECT_NE(read_file(dir / "merged.html").find("id=\"verdict\""), std::string::npos);
  // Two shards of three: the merge says what is missing and fails.
  EXPECT_EQ(run({bin_dir() + "/estale-repro", "merge", parts[0], parts[1], "--json", dir / "two.json"}, &out, &err), 1);
  EXPECT_NE(out.find("shard(s) 3/3 missing"), std::string::npos) << out;
}

TEST(ReproE2E, KeepPrintsWhereItKeptTheRun) {
  REQUIRE_FS();
  TempDir dir;
  std::string log;
  json report;
  ASSERT_EQ(repro({"scenario", "lower-refresh", "--keep"}, dir, &report, &log), 0) << log;
  ASSERT_EQ(report["runs"].size(), 1u);
  std::string kept = report["runs"][0]["kept_dir"].get<std::string>();
  ASSERT_FALSE(kept.empty());
  EXPECT_NE(log.find("kept: " + kept), std::string::npos) << log;
  EXPECT_TRUE(std::filesystem::exists(kept + "/antares-fs.log"));
  EXPECT_FALSE(mounts_left(dir));
}

TEST(ReproE2E, MatrixShowsRunKOfNAndEtaOnATty) {
  REQUIRE_FS();
  if (access("/usr/bin/script", X_OK) != 0) GTEST_SKIP() << "script(1) is not installed (util-linux)";
  TempDir dir;
  // script(1) gives estale-repro a terminal; its typescript records what it drew.
  std::string cmd = "TMPDIR=" + dir.path() + " " + bin_dir() + "/estale-repro --bin-dir " + bin_dir() +
                    " --files 300 matrix --strategy none --repeat 1 --soak 0 --cost-rounds 0";
  std::string out, err;
  ASSERT_EQ(run({"/usr/bin/script", "-q", "-e", "-c", cmd, dir / "typescript"}, &out, &err, std::chrono::seconds(200)), 0)
      << out << err;
  std::string ts = read_file(dir / "typescript");
  EXPECT_NE(ts.find("[run 1 of 5, "), std::string::npos) << ts.substr(0, 3000);
  EXPECT_NE(ts.find("[run 5 of 5, "), std::string::npos);
  EXPECT_NE(ts.find(" elapsed, ETA "), std::string::npos);
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
  // The first thing on the page is the verdict: the recommended strategy with
  // its measured cost (the matrix measured it) and correctness.
  size_t rec = dom.find("Recommended: ");
  ASSERT_NE(rec, std::string::npos);
  EXPECT_LT(rec, dom.find("Per strategy and scenario"));
  EXPECT_NE(dom.find("entries/s", rec), std::string::npos);
  EXPECT_NE(dom.find("0 ESTALE", rec), std::string::npos);
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
