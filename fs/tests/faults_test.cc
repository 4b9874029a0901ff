// Server failures reach callers as EIO, never as a silently wrong answer, and
// do not hurt what is already cached: with mock-mega failing listings, a
// never-listed directory cannot be read (EIO, not an empty directory); with
// blobs failing, a never-fetched file cannot be read (EIO, not zeros); files
// and directories fetched before keep being served; the daemon keeps running;
// and once the faults are cleared the same operations succeed.
#include <gtest/gtest.h>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

class Faults : public ::testing::Test {
 protected:
  void SetUp() override {
    // Three lower-only files in three different top-level groups when possible.
    auto files = lower_only_files(mega_, 40);
    for (auto& f : files) {
      std::string top = f.substr(0, f.find('/', 1));
      if (cached_.empty()) {
        cached_ = f;
      } else if (fetch_later_.empty() && split_repo_path(f).first == split_repo_path(cached_).first) {
        fetch_later_ = f;
      } else if (unlisted_dir_.empty() && top != cached_.substr(0, cached_.find('/', 1))) {
        unlisted_dir_ = split_repo_path(f).first;
        unlisted_file_ = f;
      }
    }
    if (fetch_later_.empty()) {  // no second file in cached_'s directory: any listed sibling will do
      for (auto& e : listing(mega_, split_repo_path(cached_).first))
        if (e["content_type"] == "file" && split_repo_path(cached_).first + "/" + e["name"].get<std::string>() != cached_)
          fetch_later_ = split_repo_path(cached_).first + "/" + e["name"].get<std::string>();
    }
    ASSERT_FALSE(fetch_later_.empty());
    ASSERT_FALSE(unlisted_dir_.empty());
    MountOptions o;
    o.strategy = "auto";
    // Prefetch would list unlisted_dir_ ahead of the walk, before the faults
    // are set: these tests are about directories nobody has listed yet.
    o.extra = {"--prefetch", "0"};
    m_ = std::make_unique<Mount>(dir_, mega_.url(), o);
    ASSERT_TRUE(m_->ok()) << m_->log();
  }

  void set_faults(const json& faults) {
    auto r = post_json(mega_, "/admin/faults", faults);
    ASSERT_TRUE(r.is_array() || r.contains("faults")) << r.dump();
  }

  std::string mnt(const std::string& repo_path) const { return m_->path(rel(repo_path)); }

  TempDir dir_;
  MegaProcess mega_{dir_};
  std::unique_ptr<Mount> m_;
  std::string cached_, fetch_later_, unlisted_dir_, unlisted_file_;
};

TEST_F(Faults, ListingFailureOfNeverListedDirectoryIsEio) {
  // Warm: cached_'s directory listed and the file fetched.
  const std::string content = server_content(mega_, cached_);
  ASSERT_EQ(testing::read_whole(mnt(cached_)).value_or("<error>"), content);
  auto warm_names = list_dir(mnt(split_repo_path(cached_).first));
  ASSERT_TRUE(warm_names);
  const std::string top = unlisted_dir_.substr(0, unlisted_dir_.find('/', 1));  // "/services"
  const size_t top_entries = listing(mega_, top).size();
  const size_t dir_entries = listing(mega_, unlisted_dir_).size();
  const std::string file_content = server_content(mega_, unlisted_file_);

  set_faults(json::array({{{"endpoint", "content-hash"}, {"kind", "status"}, {"status", 500}}}));
  // A file below directories never listed: its existence is unknown, not "no".
  EXPECT_EQ(testing::stat_errno(mnt(unlisted_file_)), EIO)
      << "a file in a never-listed directory while listings fail";
  // The top-level directory itself is known (the root is listed), its content is not.
  int err = 0;
  auto names = list_dir(mnt(top), &err);
  EXPECT_FALSE(names) << "listing never-listed " << top << " while listings fail gave " << names->size()
                      << " names instead of EIO";
  if (!names) {
    EXPECT_EQ(err, EIO) << strerror(err);
  }
  // What is cached keeps being served, refreshes notwithstanding.
  refresh(*m_);
  EXPECT_EQ(testing::read_whole(mnt(cached_)).value_or("<error>"), content);
  auto again = list_dir(mnt(split_repo_path(cached_).first));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->size(), warm_names->size());
  EXPECT_EQ(m_->ctl({"status"}), 0) << "daemon gone\n" << m_->log();

  set_faults(json::array());
  refresh(*m_);
  EXPECT_TRUE(testing::wait_until([&] { return list_dir(mnt(top)).value_or(std::vector<std::string>{}).size() == top_entries; }, 10s))
      << top << " not listed after the faults were cleared";
  EXPECT_TRUE(testing::wait_until([&] { return list_dir(mnt(unlisted_dir_)).value_or(std::vector<std::string>{}).size() == dir_entries; }, 10s))
      << unlisted_dir_ << " not listed after the faults were cleared";
  EXPECT_TRUE(testing::wait_until([&] { return testing::stat_errno(mnt(unlisted_file_)) == 0; }, 10s))
      << "stat " << unlisted_file_ << ": " << testing::stat_errno(mnt(unlisted_file_));
  EXPECT_EQ(testing::read_whole(mnt(unlisted_file_)).value_or("<error>"), file_content);
}

TEST_F(Faults, BlobFailureOfNeverFetchedFileIsEio) {
  const std::string content = server_content(mega_, cached_);
  ASSERT_EQ(testing::read_whole(mnt(cached_)).value_or("<error>"), content);
  ASSERT_EQ(testing::stat_errno(mnt(fetch_later_)), 0);  // listed, not fetched

  for (int status : {500, 404}) {
    set_faults(json::array({{{"endpoint", "blob"}, {"kind", "status"}, {"status", status}}}));
    int err = 0;
    auto got = testing::read_whole(mnt(fetch_later_), &err);
    EXPECT_FALSE(got) << "status " << status << ": read " << (got ? got->size() : 0) << " bytes instead of EIO";
    EXPECT_EQ(err, EIO) << "status " << status << ": " << strerror(err);
    EXPECT_EQ(testing::read_whole(mnt(cached_)).value_or("<error>"), content);
  }
  // A corrupted blob (one byte flipped) is detected by its oid.
  set_faults(json::array({{{"endpoint", "blob"}, {"kind", "malformed"}}}));
  int err = 0;
  auto got = testing::read_whole(mnt(fetch_later_), &err);
  EXPECT_FALSE(got) << "a corrupted blob was served";
  EXPECT_EQ(err, EIO);
  EXPECT_EQ(m_->ctl({"status"}), 0) << "daemon gone\n" << m_->log();

  set_faults(json::array());
  EXPECT_EQ(testing::read_whole(mnt(fetch_later_)).value_or("<error>"), server_content(mega_, fetch_later_));
  EXPECT_EQ(testing::read_whole(mnt(cached_)).value_or("<error>"), content);
}

TEST_F(Faults, TransientFailuresAreRetried) {
  // Expected answers first: the faults below apply to every client.
  const std::string want = server_content(mega_, fetch_later_);
  const size_t entries = listing(mega_, unlisted_dir_).size();
  ASSERT_EQ(testing::stat_errno(mnt(fetch_later_)), 0);  // listed, not fetched
  // Two failures then success: within the client's 3 retries, invisible to callers.
  set_faults(json::array({{{"endpoint", "blob"}, {"kind", "status"}, {"status", 503}, {"count", 2}}}));
  EXPECT_EQ(testing::read_whole(mnt(fetch_later_)).value_or("<error>"), want);
  set_faults(json::array({{{"endpoint", "content-hash"}, {"kind", "reset"}, {"count", 2}}}));
  auto names = list_dir(mnt(unlisted_dir_));
  ASSERT_TRUE(names);
  EXPECT_EQ(names->size(), entries);
  set_faults(json::array());
  std::string metrics = mega_.admin("GET", "/metrics");
  EXPECT_NE(metrics.find("mock_mega_faults_injected_total{endpoint=\"blob\",kind=\"status\"} 2"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("mock_mega_faults_injected_total{endpoint=\"content-hash\",kind=\"reset\"} 2"),
            std::string::npos)
      << metrics;
}

}  // namespace
}  // namespace antares::e2e
