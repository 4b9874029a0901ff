// antares-fs's command line and lifecycle: the documented exit codes (2 bad
// usage, 3 unusable mountpoint, 4 Mega unreachable), the message for a
// mountpoint left over by a crashed daemon, and a clean unmount on SIGTERM.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

// Runs antares-fs to completion; its exit code, stderr in *err.
int run_fs(const std::vector<std::string>& args, std::string* err) {
  std::vector<std::string> argv = {testing::bin_dir() + "/antares-fs"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out;
  return testing::run(argv, &out, err, 60s);
}

std::vector<std::string> base_args(const TempDir& dir, const std::string& url, const std::string& mnt) {
  for (auto* d : {"upper", "cache"}) ::mkdir((dir / d).c_str(), 0755);
  return {"--mega", url, "--mountpoint", mnt, "--upper", dir / "upper", "--cache", dir / "cache",
          "--run-dir", dir / "run", "--foreground", "--ttl", "300ms"};
}

// A TCP port nothing listens on: bound, then closed.
int closed_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return 1;
  ::close(s);
  return ntohs(a.sin_port);
}

TEST(Cli, HelpExitsZero) {
  std::string out;
  EXPECT_EQ(testing::run({testing::bin_dir() + "/antares-fs", "--help"}, &out), 0);
  EXPECT_NE(out.find("Exit codes"), std::string::npos);
}

TEST(Cli, MissingMegaIsUsageError) {
  TempDir dir;
  ::mkdir((dir / "mnt").c_str(), 0755);
  auto args = base_args(dir, "x", dir / "mnt");
  args.erase(args.begin(), args.begin() + 2);  // drop --mega URL
  std::string err;
  EXPECT_EQ(run_fs(args, &err), 2) << err;
  EXPECT_NE(err.find("--mega"), std::string::npos) << err;
}

TEST(Cli, BadStrategyIsUsageError) {
  TempDir dir;
  MegaProcess mega(dir);
  ::mkdir((dir / "mnt").c_str(), 0755);
  auto args = base_args(dir, mega.url(), dir / "mnt");
  args.insert(args.end(), {"--strategy", "Z"});
  std::string err;
  EXPECT_EQ(run_fs(args, &err), 2) << err;
  EXPECT_NE(err.find("strategy"), std::string::npos) << err;
  EXPECT_FALSE(testing::mounted_fstype(dir / "mnt"));
}

TEST(Cli, BadMountpointsExitThree) {
  TempDir dir;
  MegaProcess mega(dir);
  std::string err;
  // Missing.
  EXPECT_EQ(run_fs(base_args(dir, mega.url(), dir / "no_such_dir"), &err), 3) << err;
  // Not empty.
  ::mkdir((dir / "full").c_str(), 0755);
  ASSERT_TRUE(write_file(dir / "full/x", "x"));
  EXPECT_EQ(run_fs(base_args(dir, mega.url(), dir / "full"), &err), 3) << err;
  EXPECT_NE(err.find("not empty"), std::string::npos) << err;
  EXPECT_FALSE(testing::mounted_fstype(dir / "full"));
  // Not a directory.
  EXPECT_EQ(run_fs(base_args(dir, mega.url(), dir / "full/x"), &err), 3) << err;
}

TEST(Cli, BusyMountpointExitsThree) {
  TempDir dir;
  MegaProcess mega(dir);
  Mount m(dir, mega.url());
  ASSERT_TRUE(m.ok()) << m.log();
  TempDir other;
  std::string err;
  EXPECT_EQ(run_fs(base_args(other, mega.url(), m.mnt()), &err), 3) << err;
  EXPECT_NE(err.find("busy"), std::string::npos) << err;
  // The first mount is unharmed.
  EXPECT_EQ(m.ctl({"status"}), 0);
  EXPECT_TRUE(list_dir(m.mnt()));
}

TEST(Cli, UnreachableServerExitsFour) {
  TempDir dir;
  ::mkdir((dir / "mnt").c_str(), 0755);
  std::string err;
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(run_fs(base_args(dir, "http://127.0.0.1:" + std::to_string(closed_port()), dir / "mnt"), &err), 4)
      << err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
  EXPECT_FALSE(testing::mounted_fstype(dir / "mnt"));
}

TEST(Cli, LeftoverDeadMountExitsThreeAndNamesFusermount) {
  TempDir dir;
  MegaProcess mega(dir);
  auto m = std::make_unique<Mount>(dir, mega.url());
  ASSERT_TRUE(m->ok()) << m->log();
  const std::string mnt = m->mnt();
  ASSERT_EQ(::kill(m->pid(), SIGKILL), 0);
  // The kernel mount stays behind, its connection dead.
  ASSERT_TRUE(testing::wait_until([&] { return testing::stat_errno(mnt) == ENOTCONN; }, 10s))
      << testing::stat_errno(mnt);
  ASSERT_TRUE(testing::mounted_fstype(mnt));
  TempDir other;
  std::string err;
  EXPECT_EQ(run_fs(base_args(other, mega.url(), mnt), &err), 3) << err;
  EXPECT_NE(err.find("fusermount3 -u"), std::string::npos) << err;
  testing::force_unmount(mnt);
  EXPECT_FALSE(testing::mounted_fstype(mnt));
  m.reset();
  // Once cleared, the mountpoint is usable again.
  Mount m2(dir, mega.url());
  EXPECT_TRUE(m2.ok()) << m2.log();
}

TEST(Cli, SigtermUnmountsCleanly) {
  TempDir dir;
  MegaProcess mega(dir);
  Mount m(dir, mega.url());
  ASSERT_TRUE(m.ok()) << m.log();
  ASSERT_TRUE(write_file(m.path("f"), "x"));
  ASSERT_EQ(::kill(m.pid(), SIGTERM), 0);
  EXPECT_TRUE(testing::wait_until([&] { return !testing::mounted_fstype(m.mnt()); }, 20s))
      << "still mounted after SIGTERM";
  // Wait for the exit itself (without reaping: the fixture does) so that
  // unmount() below sends no second SIGTERM into the daemon's teardown.
  EXPECT_TRUE(testing::wait_until(
      [&] {
        siginfo_t si{};
        return ::waitid(P_PID, id_t(m.pid()), &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == m.pid();
      },
      20s))
      << "daemon did not exit after SIGTERM";
  EXPECT_EQ(m.unmount(), 0) << m.log();
  EXPECT_NE(m.log().find("event=unmounted"), std::string::npos) << m.log();
  // The control endpoint file is gone with the daemon.
  auto left = list_dir(m.run_dir());
  EXPECT_TRUE(!left || left->empty()) << (left ? left->front() : "");
  // Upper keeps what was written.
  EXPECT_EQ(testing::read_file(m.upper() + "/f"), "x");
}

}  // namespace
}  // namespace antares::e2e
