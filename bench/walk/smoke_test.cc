// walk_bench end to end at a tiny size: it prints a row per configuration and
// condition, writes its JSON, and leaves no mount and no process behind, also
// when interrupted with Ctrl-C in the middle of a run. No timing assertions:
// figures live in docs/benchmarks.md.
#include <dirent.h>
#include <signal.h>
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "testing/subprocess.h"

namespace antares::testing {
namespace {

using namespace std::chrono_literals;

// Mount points at or beneath dir.
std::vector<std::string> mounts_under(const std::string& dir) {
  std::istringstream in(read_file("/proc/self/mountinfo"));
  std::string line;
  std::vector<std::string> out;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, dev, root, point;
    ls >> id >> parent >> dev >> root >> point;
    if (point == dir || point.rfind(dir + "/", 0) == 0) out.push_back(point);
  }
  return out;
}

// Processes whose command line mentions dir (mock-mega, antares-fs, fuse-overlayfs, passthrough_ll).
std::vector<std::string> processes_using(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (struct dirent* de = readdir(d)) {
    if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
    std::string cmd = read_file(std::string("/proc/") + de->d_name + "/cmdline");
    for (auto& c : cmd)
      if (c == '\0') c = ' ';
    if (cmd.find(dir) != std::string::npos && cmd.find("walk_bench") == std::string::npos)
      out.push_back(std::string(de->d_name) + ": " + cmd);
  }
  closedir(d);
  return out;
}

std::string canonical(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : p;
}

bool has_row(const std::string& out, const std::string& config, const std::string& condition) {
  // config, condition, n walks, a time in seconds: "antares-auto   TTL expired   1   0.0123 ..."
  std::regex re("(^|\n)" + config + " +" + condition + " +[0-9]+ +[0-9]+\\.[0-9]+ ");
  return std::regex_search(out, re);
}

TEST(WalkBenchSmoke, PrintsRowsWritesJsonAndLeavesNoMount) {
  TempDir dir;
  std::string work = canonical(dir.path());
  std::string out, err;
  int code = run({bin_dir() + "/walk_bench", "--files", "300", "--reps", "1", "--configs",
                  "native,overlay,fuse-overlayfs,antares-auto", "--conditions", "hot,ttl,restart", "--ttl", "300ms",
                  "--workdir", work, "--json", dir / "walk.json"},
                 &out, &err, 240s);
  ASSERT_EQ(code, 0) << out << err;
  EXPECT_TRUE(has_row(out, "native", "hot")) << out;
  for (const char* cond : {"hot", "TTL expired", "restart"}) EXPECT_TRUE(has_row(out, "antares-auto", cond)) << out;
  // The references that cannot run here say why instead of a time.
  for (const char* ref : {"overlay", "fuse-overlayfs"})
    EXPECT_TRUE(has_row(out, ref, "hot") || std::regex_search(out, std::regex(std::string(ref) + " +hot +skipped: ")))
        << out;
  EXPECT_NE(out.find("load average at start"), std::string::npos) << out;

  auto j = nlohmann::json::parse(read_file(dir / "walk.json"), nullptr, false);
  ASSERT_TRUE(j.is_object()) << read_file(dir / "walk.json");
  EXPECT_TRUE(j["completed"].get<bool>());
  ASSERT_EQ(j["sizes"].size(), 1u);
  EXPECT_EQ(j["sizes"][0]["files"].get<uint64_t>(), 300u);
  bool saw_antares = false;
  for (const auto& row : j["sizes"][0]["rows"]) {
    if (row["config"] != "antares-auto") continue;
    saw_antares = true;
    ASSERT_EQ(row["samples"].size(), 1u) << row.dump();
    const auto& s = row["samples"][0];
    EXPECT_EQ(s["walk"]["errors"].get<uint64_t>(), 0u);
    EXPECT_GT(s["walk"]["dirs"].get<uint64_t>(), 1u);
    EXPECT_GT(s["fuse_requests"].get<double>(), 0) << row.dump();  // every walk reaches the daemon
    EXPECT_GT(s["rss_bytes"].get<double>(), 0);
    if (row["condition"] == "restart") {
      // The mirror is kept: the walk fetches nothing but, at most, the Merkle check.
      EXPECT_LE(s["http_requests"].get<double>(), 1) << row.dump();
    }
  }
  EXPECT_TRUE(saw_antares);

  EXPECT_TRUE(mounts_under(work).empty());
  EXPECT_TRUE(processes_using(work).empty());
  EXPECT_TRUE(read_file(dir / "walk.json").size() > 0);
  // Its work directory (walk-bench-XXXXXX) is removed.
  DIR* d = opendir(work.c_str());
  ASSERT_NE(d, nullptr);
  while (struct dirent* de = readdir(d)) EXPECT_NE(std::string(de->d_name).rfind("walk-bench-", 0), 0u) << de->d_name;
  closedir(d);
}

TEST(WalkBenchSmoke, CtrlCUnmountsAndStopsEverything) {
  TempDir dir;
  std::string work = canonical(dir.path());
  Subprocess p({bin_dir() + "/walk_bench", "--files", "2000", "--reps", "100", "--configs",
                "native,overlay,fuse-overlayfs,antares-auto", "--ttl", "300ms", "--workdir", work},
               dir / "walk_bench");
  // Interrupt while antares-fs and the references are all mounted.
  auto antares_mounted = [&] {
    for (const auto& m : mounts_under(work))
      if (m.find("/antares-auto/mnt") != std::string::npos) return true;
    return false;
  };
  ASSERT_TRUE(wait_until(antares_mounted, 120s)) << p.stdout_text() << p.stderr_text();
  EXPECT_GE(mounts_under(work).size(), 2u);  // antares-fs and at least fuse-overlayfs or overlay
  ASSERT_EQ(kill(p.pid(), SIGINT), 0);
  EXPECT_EQ(p.wait(60s), 130) << p.stderr_text();
  EXPECT_TRUE(mounts_under(work).empty());
  EXPECT_TRUE(processes_using(work).empty());
  EXPECT_NE(p.stderr_text().find("interrupted"), std::string::npos) << p.stderr_text();
}

}  // namespace
}  // namespace antares::testing
