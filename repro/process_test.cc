#include "repro/process.h"

#include <gtest/gtest.h>

#include <thread>

namespace antares::repro {
namespace {

TEST(Process, RunCommandCapturesOutputAndStatus) {
  auto r = run_command({"/bin/sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  auto t = run_command({"/bin/sleep", "5"}, std::chrono::milliseconds(100));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->code, -1);
  EXPECT_FALSE(run_command({"/nonexistent/binary"}).ok());
}

TEST(Process, ChildIsTerminatedAndReaped) {
  auto c = Child::spawn({"/bin/sleep", "30"}, "", "");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE((*c)->running());
  EXPECT_EQ((*c)->terminate(std::chrono::seconds(5)), 128 + SIGTERM);
  EXPECT_FALSE((*c)->running());
  auto d = Child::spawn({"/bin/sh", "-c", "exit 7"}, "", "");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->wait(std::chrono::seconds(5)), 7);
}

TEST(Process, MountinfoParsing) {
  std::string info =
      "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
      "90 27 0:50 / /tmp/x/mnt rw,nosuid,nodev,relatime shared:1 - fuse.antares-fs antares rw,user_id=0\n"
      "91 27 0:51 / /tmp/with\\040space rw - fuse antares rw\n"
      "92 27 0:52 / /tmp/notfuse rw - ext4 /dev/vda rw\n";
  EXPECT_TRUE(mountinfo_has_fuse(info, "/tmp/x/mnt"));
  EXPECT_TRUE(mountinfo_has_fuse(info, "/tmp/with space"));
  EXPECT_FALSE(mountinfo_has_fuse(info, "/tmp/notfuse"));
  EXPECT_FALSE(mountinfo_has_fuse(info, "/tmp/x"));
  EXPECT_FALSE(is_fuse_mounted("/definitely/not/mounted"));
  EXPECT_TRUE(force_unmount("/definitely/not/mounted"));
}

TEST(Process, TempDirIsRemoved) {
  std::string path;
  {
    auto d = TempDir::create("repro-test");
    ASSERT_TRUE(d.ok());
    path = (*d)->path();
    EXPECT_EQ(access(path.c_str(), F_OK), 0);
  }
  EXPECT_NE(access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace antares::repro
