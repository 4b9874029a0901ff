// Pins the bug this project reproduces: under strategy none (upstream's
// behaviour) a path whose backing file was replaced behind the mount's back
// gives ESTALE to stat and open, persistently (across TTLs and refreshes),
// for each real trigger: a lower refresh after a server-side modify, a CL
// re-sync after the CL changed, and a file in upper replaced by another
// writer. The daemon must say so in its log (event=estale, layer=...) and in
// its metrics (antares_estale_returned_total).
#include <gtest/gtest.h>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

class EstaleNone : public ::testing::Test {
 protected:
  void SetUp() override {
    cl_path_ = cl1_file(mega_);
    lower_path_ = lower_only_files(mega_, 1)[0];
    MountOptions o;
    o.strategy = "none";
    o.cl = "1";
    m_ = std::make_unique<Mount>(dir_, mega_.url(), o);
    ASSERT_TRUE(m_->ok()) << m_->log();
  }

  std::string mnt(const std::string& repo_path) const { return m_->path(rel(repo_path)); }

  // ESTALE shows up (the kernel's attribute cache may hide it for up to the
  // attr timeout, 1 s) and then stays: stat and open both fail with it over
  // more than two TTLs, across refreshes and listings of the parent.
  void expect_persistent_estale(const std::string& path) {
    ASSERT_TRUE(testing::wait_until([&] { return testing::stat_errno(path) == ESTALE; }, 10s))
        << path << ": stat errno " << testing::stat_errno(path) << "\n" << m_->log();
    const std::string parent = path.substr(0, path.rfind('/'));
    for (int i = 0; i < 6; ++i) {
      EXPECT_EQ(testing::stat_errno(path), ESTALE) << "attempt " << i;
      EXPECT_EQ(open_errno(path), ESTALE) << "attempt " << i;
      int err = 0;
      EXPECT_FALSE(testing::read_whole(path, &err));
      EXPECT_EQ(err, ESTALE) << "attempt " << i << "\n" << m_->log();
      if (i == 2) {
        refresh(*m_);
        touch_dir(parent);
      }
      std::this_thread::sleep_for(150ms);  // 6 x 150 ms spans > 2 TTLs of 300 ms
    }
  }

  void expect_estale_reported(const std::string& layer) {
    EXPECT_GT(estale_log_lines(m_->log(), "layer=" + layer), 0) << m_->log();
    std::string metrics;
    ASSERT_EQ(m_->ctl({"metrics"}, &metrics), 0);
    EXPECT_NE(metrics.find("antares_estale_returned_total{layer=\"" + layer + "\""), std::string::npos) << metrics;
    EXPECT_GT(counter(*m_, "estale_returned"), 0u);
  }

  TempDir dir_;
  MegaProcess mega_{dir_};
  std::unique_ptr<Mount> m_;
  std::string cl_path_, lower_path_;
};

TEST_F(EstaleNone, AfterLowerRefreshOfModifiedFile) {
  const std::string p = lower_path_;
  ASSERT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), server_content(mega_, p));
  auto applied = mutate(mega_, json::array({{{"kind", "modify"}, {"path", p}}}));
  ASSERT_EQ(applied.size(), 1u);
  refresh(*m_);
  touch_dir(mnt(split_repo_path(p).first));  // the lower refresh replaces the mirror file
  expect_persistent_estale(mnt(p));
  expect_estale_reported("lower");
}

TEST_F(EstaleNone, AfterClResync) {
  const std::string p = cl_path_;
  int err = 0;
  ASSERT_TRUE(testing::read_whole(mnt(p), &err)) << strerror(err);
  mutate(mega_, json::array({{{"kind", "cl"}, {"cl", 1}, {"path", p}, {"action", "modified"}}}));
  refresh(*m_);  // re-syncs the CL: the changed file is replaced in the CL dir
  expect_persistent_estale(mnt(p));
  expect_estale_reported("cl");
}

TEST_F(EstaleNone, AfterUpperFileReplacedBehindTheMount) {
  const std::string p = "/written_then_replaced.txt";
  ASSERT_TRUE(write_file(mnt(p), "version 1\n"));
  ASSERT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), "version 1\n");
  replace_behind(m_->upper() + p, "version 2\n");
  expect_persistent_estale(mnt(p));
  expect_estale_reported("upper");
}

}  // namespace
}  // namespace antares::e2e
