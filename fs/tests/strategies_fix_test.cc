// Each fix (A, B, C, auto) against each trigger of ESTALE (a lower refresh of
// a modified file, a CL re-sync, a file in upper replaced by another writer, a
// directory in upper swapped for a new one): no caller ever sees ESTALE, and
// once the change is visible (after the refresh that saw it; under B after the
// inotify-driven invalidation) every read returns the current content.
#include <gtest/gtest.h>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

enum class Trigger { lower_refresh, cl_resync, upper_replaced, dir_replaced };

const char* trigger_name(Trigger t) {
  switch (t) {
    case Trigger::lower_refresh: return "LowerRefresh";
    case Trigger::cl_resync: return "ClResync";
    case Trigger::upper_replaced: return "UpperReplaced";
    case Trigger::dir_replaced: return "DirReplaced";
  }
  return "?";
}

struct Param {
  std::string strategy;
  Trigger trigger;
};

void PrintTo(const Param& p, std::ostream* os) { *os << p.strategy << "/" << trigger_name(p.trigger); }

class StrategiesFix : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    cl_path_ = cl1_file(mega_);
    lower_path_ = lower_only_files(mega_, 1)[0];
    MountOptions o;
    o.strategy = GetParam().strategy;
    o.cl = "1";
    m_ = std::make_unique<Mount>(dir_, mega_.url(), o);
    ASSERT_TRUE(m_->ok()) << m_->log();
  }

  std::string mnt(const std::string& repo_path) const { return m_->path(rel(repo_path)); }

  // Under B the upper layer's changes reach the filesystem through inotify:
  // wait until the invalidations they cause have been sent to the kernel.
  void await_invalidations_after(uint64_t before) {
    if (GetParam().strategy != "B" && GetParam().strategy != "auto") return;
    bool grew = testing::wait_until([&] { return counter(*m_, "invalidations_sent") > before; }, 5s);
    if (GetParam().strategy == "B") {
      EXPECT_TRUE(grew) << "no invalidation after an upper change\n" << m_->log();
    }
  }

  // Polls until every (path, content) pair reads back (bounded), failing on any
  // ESTALE on the way; then checks the content stays current over > 2 TTLs.
  void expect_current(const std::vector<std::pair<std::string, std::string>>& want) {
    int estale = 0;
    std::string last_error;
    auto all_current = [&] {
      bool ok = true;
      for (auto& [path, content] : want) {
        int se = testing::stat_errno(path);
        int err = 0;
        auto got = testing::read_whole(path, &err);
        if (se == ESTALE || err == ESTALE) {
          ++estale;
          last_error = path + ": ESTALE (stat " + std::to_string(se) + ", read " + std::to_string(err) + ")";
        } else if (se != 0 || !got) {
          last_error = path + ": stat errno " + std::to_string(se) + ", read errno " + std::to_string(err);
        }
        ok &= se == 0 && got && *got == content;
      }
      return ok;
    };
    bool reached = testing::wait_until(all_current, 10s);
    EXPECT_TRUE(reached) << "content never became current; last error: " << last_error << "\n" << m_->log();
    EXPECT_EQ(estale, 0) << "ESTALE reached a caller: " << last_error;
    if (!reached) return;
    for (int i = 0; i < 5; ++i) {
      std::this_thread::sleep_for(150ms);
      for (auto& [path, content] : want) {
        int err = 0;
        auto got = testing::read_whole(path, &err);
        EXPECT_EQ(testing::stat_errno(path), 0) << path;
        ASSERT_TRUE(got) << path << ": " << strerror(err);
        EXPECT_EQ(*got, content) << path << " regressed on attempt " << i;
      }
    }
    EXPECT_EQ(estale_log_lines(m_->log(), ""), 0) << m_->log();
  }

  TempDir dir_;
  MegaProcess mega_{dir_};
  std::unique_ptr<Mount> m_;
  std::string cl_path_, lower_path_;
};

TEST_P(StrategiesFix, NoEstaleAndCurrentContent) {
  switch (GetParam().trigger) {
    case Trigger::lower_refresh: {
      const std::string p = lower_path_;
      const std::string before = server_content(mega_, p);
      ASSERT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), before);
      auto applied = mutate(mega_, json::array({{{"kind", "modify"}, {"path", p}}}));
      const std::string now = blob(mega_, applied[0]["new_oid"]);
      ASSERT_NE(now, before);
      refresh(*m_);
      touch_dir(mnt(split_repo_path(p).first));
      expect_current({{mnt(p), now}});
      break;
    }
    case Trigger::cl_resync: {
      const std::string p = cl_path_;
      int err = 0;
      ASSERT_TRUE(testing::read_whole(mnt(p), &err)) << strerror(err);
      mutate(mega_, json::array({{{"kind", "cl"}, {"cl", 1}, {"path", p}, {"action", "modified"}}}));
      std::string now;
      for (auto& e : cl_files(mega_, "1"))
        if (e["path"] == p) now = blob(mega_, e["sha"]);
      ASSERT_FALSE(now.empty());
      refresh(*m_);
      touch_dir(mnt(split_repo_path(p).first));
      expect_current({{mnt(p), now}});
      break;
    }
    case Trigger::upper_replaced: {
      const std::string p = "/upper_file.txt";
      ASSERT_TRUE(write_file(mnt(p), "version 1\n"));
      ASSERT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), "version 1\n");
      uint64_t before = counter(*m_, "invalidations_sent");
      replace_behind(m_->upper() + p, "version 2, longer\n");
      await_invalidations_after(before);
      expect_current({{mnt(p), "version 2, longer\n"}});
      break;
    }
    case Trigger::dir_replaced: {
      const std::string d = "/swapped_dir";
      ASSERT_EQ(::mkdir(mnt(d).c_str(), 0755), 0);
      ASSERT_TRUE(write_file(mnt(d + "/f1"), "old f1\n"));
      ASSERT_TRUE(write_file(mnt(d + "/gone"), "old gone\n"));
      ASSERT_EQ(testing::read_whole(mnt(d + "/f1")).value_or("<error>"), "old f1\n");
      ASSERT_TRUE(list_dir(mnt(d)));
      uint64_t before = counter(*m_, "invalidations_sent");
      const std::string ud = m_->upper() + d;
      ASSERT_EQ(::rename(ud.c_str(), (ud + ".old").c_str()), 0);
      ASSERT_EQ(::mkdir(ud.c_str(), 0755), 0);
      ASSERT_TRUE(write_file(ud + "/f1", "new f1, in the new dir\n"));
      ASSERT_TRUE(write_file(ud + "/f2", "new f2\n"));
      await_invalidations_after(before);
      expect_current({{mnt(d + "/f1"), "new f1, in the new dir\n"}, {mnt(d + "/f2"), "new f2\n"}});
      EXPECT_TRUE(testing::wait_until([&] { return testing::stat_errno(mnt(d + "/gone")) == ENOENT; }, 5s))
          << "a name of the replaced directory is still visible";
      auto names = list_dir(mnt(d));
      ASSERT_TRUE(names);
      EXPECT_EQ(std::set<std::string>(names->begin(), names->end()), (std::set<std::string>{"f1", "f2"}));
      break;
    }
  }
}

std::vector<Param> all_params() {
  std::vector<Param> out;
  for (const char* s : {"A", "B", "C", "auto"})
    for (Trigger t : {Trigger::lower_refresh, Trigger::cl_resync, Trigger::upper_replaced, Trigger::dir_replaced})
      out.push_back({s, t});
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, StrategiesFix, ::testing::ValuesIn(all_params()),
                         [](const ::testing::TestParamInfo<Param>& i) {
                           return i.param.strategy + "_" + trigger_name(i.param.trigger);
                         });

}  // namespace
}  // namespace antares::e2e
