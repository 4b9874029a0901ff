// Switching the strategy at runtime heals a path that went stale under none,
// without a remount, while other readers keep working: mount with none, make
// a lower file and an upper file go stale (ESTALE observed), then
// `antares-ctl strategy X` and both paths read their current content. Four
// reader threads stat and read other files throughout and must see no error.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

class SwitchHeals : public ::testing::TestWithParam<std::string> {};

TEST_P(SwitchHeals, StalePathHealsWithoutRemount) {
  TempDir dir;
  MegaProcess mega(dir);
  auto files = lower_only_files(mega, 9);
  const std::string stale_lower = files[0];
  std::vector<std::pair<std::string, std::string>> others;  // mount path, content
  MountOptions o;
  o.strategy = "none";
  Mount m(dir, mega.url(), o);
  ASSERT_TRUE(m.ok()) << m.log();
  for (size_t i = 1; i < files.size(); ++i) others.emplace_back(m.path(rel(files[i])), server_content(mega, files[i]));

  // Two stale paths: a lower file refreshed after a modify, an upper file replaced.
  const std::string lower_mnt = m.path(rel(stale_lower));
  ASSERT_EQ(testing::read_whole(lower_mnt).value_or("<error>"), server_content(mega, stale_lower));
  const std::string upper_mnt = m.path("replaced.txt");
  ASSERT_TRUE(write_file(upper_mnt, "first\n"));
  ASSERT_EQ(testing::read_whole(upper_mnt).value_or("<error>"), "first\n");

  std::atomic<bool> stop{false};
  std::atomic<int> finished{0};
  std::atomic<uint64_t> reads{0};
  std::mutex err_mu;
  std::vector<std::string> errors;
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t)
    readers.emplace_back([&, t] {
      for (size_t i = size_t(t); !stop; i = (i + 1) % others.size()) {
        auto& [path, content] = others[i];
        int se = testing::stat_errno(path);
        int err = 0;
        auto got = testing::read_whole(path, &err);
        if (se != 0 || !got || *got != content) {
          std::lock_guard lk(err_mu);
          if (errors.size() < 20)
            errors.push_back(path + ": stat " + std::to_string(se) + " read " + std::to_string(err) +
                             (got && *got != content ? " (wrong content)" : ""));
        }
        ++reads;
      }
      ++finished;
    });

  auto applied = mutate(mega, json::array({{{"kind", "modify"}, {"path", stale_lower}}}));
  const std::string lower_now = blob(mega, applied[0]["new_oid"]);
  refresh(m);
  touch_dir(m.path(rel(split_repo_path(stale_lower).first)));
  replace_behind(m.upper() + "/replaced.txt", "second, longer\n");
  EXPECT_TRUE(testing::wait_until([&] { return testing::stat_errno(lower_mnt) == ESTALE; }, 10s))
      << "the lower path never went stale under none: " << testing::stat_errno(lower_mnt);
  EXPECT_TRUE(testing::wait_until([&] { return testing::stat_errno(upper_mnt) == ESTALE; }, 10s))
      << "the upper path never went stale under none: " << testing::stat_errno(upper_mnt);
  EXPECT_EQ(open_errno(lower_mnt), ESTALE);
  EXPECT_EQ(open_errno(upper_mnt), ESTALE);

  set_strategy(m, GetParam());
  EXPECT_EQ(status(m)["strategy"], GetParam());
  for (auto& [path, want] : {std::pair{lower_mnt, lower_now}, std::pair{upper_mnt, std::string("second, longer\n")}}) {
    std::string last;
    bool healed = testing::wait_until(
        [&] {
          int err = 0;
          auto got = testing::read_whole(path, &err);
          last = got ? *got : "errno " + std::to_string(err);
          return testing::stat_errno(path) == 0 && got && *got == want;
        },
        10s);
    EXPECT_TRUE(healed) << path << " not healed under " << GetParam() << ": " << last << "\n" << m.log();
    // And it stays healed.
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(150ms);
      EXPECT_EQ(testing::stat_errno(path), 0);
      EXPECT_EQ(testing::read_whole(path).value_or("<error>"), want);
    }
  }
  uint64_t reads_at_switch = reads;
  EXPECT_TRUE(testing::wait_until([&] { return reads > reads_at_switch + 20; }, 10s)) << "readers stalled";
  stop = true;
  bool done = testing::wait_until([&] { return finished == 4; }, 30s);
  EXPECT_TRUE(done) << "reader threads hung";
  if (!done) ::kill(m.pid(), SIGKILL);  // unblocks them: the kernel aborts the requests
  for (auto& r : readers) r.join();
  EXPECT_TRUE(errors.empty()) << errors.size() << " reader errors, first: " << errors.front();
  EXPECT_EQ(m.ctl({"status"}), 0) << "daemon gone\n" << m.log();
}

INSTANTIATE_TEST_SUITE_P(Fixes, SwitchHeals, ::testing::Values("A", "B", "C", "auto"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace antares::e2e
