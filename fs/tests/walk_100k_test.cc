// Scale: a full walk (recursive readdir + lstat of every entry) of a
// 100,000-file repository finds exactly the server's files, and the daemon's
// open file descriptors stay far below the machine's hard limit of 20,000
// (designs holding an fd per inode fail there). Sampled during and after the
// walk, under none and under auto.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

constexpr uint64_t kFiles = 100000;
constexpr size_t kFdLimit = 2000;

size_t open_fds(pid_t pid) {
  auto names = list_dir("/proc/" + std::to_string(pid) + "/fd");
  return names ? names->size() : 0;
}

struct WalkCount {
  uint64_t files = 0, dirs = 0, other = 0, errors = 0;
  std::string first_error;
};

void walk(const std::string& d, WalkCount& c, const std::function<void()>& every_1000) {
  int err = 0;
  std::vector<unsigned char> types;
  auto names = list_dir(d, &err, &types);
  if (!names) {
    if (c.errors++ == 0) c.first_error = "readdir " + d + ": " + strerror(err);
    return;
  }
  for (auto& n : *names) {
    std::string p = d + "/" + n;
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) {
      if (c.errors++ == 0) c.first_error = "lstat " + p + ": " + strerror(errno);
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      ++c.dirs;
      walk(p, c, every_1000);
    } else if (S_ISREG(st.st_mode)) {
      if (++c.files % 1000 == 0) every_1000();
    } else {
      ++c.other;
    }
  }
}

class Walk100k : public ::testing::TestWithParam<std::string> {};

TEST_P(Walk100k, CountsEveryFileWithBoundedFds) {
  TempDir dir;
  MegaOptions mo;
  mo.files = kFiles;
  mo.cls = 1;
  MegaProcess mega(dir, mo);
  auto state = get_json(mega, "/admin/state");
  ASSERT_EQ(state["files"].get<uint64_t>(), kFiles);
  MountOptions o;
  o.strategy = GetParam();
  o.ttl = "60s";  // one listing per directory: this measures the walk, not refreshes
  Mount m(dir, mega.url(), o);
  ASSERT_TRUE(m.ok()) << m.log();

  size_t max_fds = open_fds(m.pid());
  auto start = std::chrono::steady_clock::now();
  WalkCount c;
  walk(m.mnt(), c, [&] { max_fds = std::max(max_fds, open_fds(m.pid())); });
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  max_fds = std::max(max_fds, open_fds(m.pid()));
  EXPECT_EQ(c.errors, 0u) << c.first_error;
  EXPECT_EQ(c.files, kFiles);
  EXPECT_EQ(c.dirs + 1, state["dirs"].get<uint64_t>());  // the server counts the root
  EXPECT_EQ(c.other, 0u);
  EXPECT_LT(max_fds, kFdLimit) << "daemon fds grow with looked-up inodes";
  auto st = status(m);
  std::cerr << GetParam() << ": cold walk " << secs << " s, " << c.files << " files, " << c.dirs
            << " dirs, max daemon fds " << max_fds << "\ncounters " << st["counters"].dump() << "\n";
}

INSTANTIATE_TEST_SUITE_P(Strategies, Walk100k, ::testing::Values("none", "auto"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace antares::e2e
