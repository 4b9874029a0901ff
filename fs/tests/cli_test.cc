// antares-fs's command line and lifecycle: the documented exit codes (2 bad
// usage, 3 unusable mountpoint, 4 Mega unreachable or silent, 5 a directory
// that is not ours to wipe), the message for a mountpoint left over by a
// crashed daemon, a clean unmount on SIGTERM, and the detached daemon: the
// first process exits only once the mount and its control endpoint answer,
// and its log lines go to --log-file or syslog.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include "common/mountinfo.h"
#include "common/process.h"
#include "fs/control/endpoint.h"
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

// ------------------------------------------------- directories that are not ours

TEST(Cli, OverlappingDirectoriesAreRefusedAndNothingIsDeleted) {
  TempDir dir;
  MegaProcess mega(dir);
  ::mkdir((dir / "mnt").c_str(), 0755);
  auto args = base_args(dir, mega.url(), dir / "mnt");
  ASSERT_TRUE(write_file(dir / "upper/precious", "mine"));
  ::mkdir((dir / "upper/lower").c_str(), 0755);
  ASSERT_TRUE(write_file(dir / "upper/lower/also", "mine"));
  std::string err;
  // --cl-dir = --upper: the CL build would wipe the upper layer.
  auto cl = args;
  cl.insert(cl.end(), {"--cl", "1", "--cl-dir", dir / "upper"});
  EXPECT_EQ(run_fs(cl, &err), 2) << err;
  EXPECT_NE(err.find("--cl-dir"), std::string::npos) << err;
  // --cache = --upper: DIR/lower would be wiped.
  auto cache = args;
  cache.insert(cache.end(), {"--cache", dir / "upper"});
  EXPECT_EQ(run_fs(cache, &err), 2) << err;
  EXPECT_NE(err.find("same directory"), std::string::npos) << err;
  // Nested: the run directory inside the mountpoint.
  auto run = args;
  run.insert(run.end(), {"--run-dir", dir / "mnt/run"});
  EXPECT_EQ(run_fs(run, &err), 2) << err;
  EXPECT_FALSE(testing::mounted_fstype(dir / "mnt"));
  EXPECT_EQ(testing::read_file(dir / "upper/precious"), "mine");
  EXPECT_EQ(testing::read_file(dir / "upper/lower/also"), "mine");
}

TEST(Cli, ExistingLowerMirrorWithoutMarkerIsRefusedNotWiped) {
  TempDir dir;
  MegaProcess mega(dir);
  ::mkdir((dir / "mnt").c_str(), 0755);
  auto args = base_args(dir, mega.url(), dir / "mnt");
  ::mkdir((dir / "cache/lower").c_str(), 0755);
  ASSERT_TRUE(write_file(dir / "cache/lower/precious", "mine"));
  std::string err;
  EXPECT_EQ(run_fs(args, &err), 5) << err;
  EXPECT_NE(err.find("not created by antares-fs"), std::string::npos) << err;
  EXPECT_EQ(testing::read_file(dir / "cache/lower/precious"), "mine");
  EXPECT_FALSE(testing::mounted_fstype(dir / "mnt"));
}

// --------------------------------------------------------- a silent server

// Listens (the kernel accepts from the backlog) and never answers.
struct SilentServer {
  SilentServer() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd, 128) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
      url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  }
  ~SilentServer() { ::close(fd); }
  int fd = -1;
  std::string url;
};

TEST(Cli, SilentServerFailsWithinTheDefaultStartupTimeout) {
  TempDir dir;
  SilentServer silent;
  ASSERT_FALSE(silent.url.empty());
  ::mkdir((dir / "mnt").c_str(), 0755);
  std::string err;
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(run_fs(base_args(dir, silent.url, dir / "mnt"), &err), 4) << err;
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, 25s) << "the documented default is 10 s";
  EXPECT_NE(err.find("did not answer"), std::string::npos) << err;
  EXPECT_FALSE(testing::mounted_fstype(dir / "mnt"));
}

// ------------------------------------------------------- the detached daemon

// A detached antares-fs: not our child, so this guard unmounts it and waits
// for its process (found through its endpoint file) on every path.
class Detached {
 public:
  Detached(const TempDir& dir, std::string mega_url, std::vector<std::string> extra = {},
           std::vector<std::string> env = {})
      : mnt_(dir / "mnt"), run_(dir / "run") {
    ::mkdir(mnt_.c_str(), 0755);
    for (auto* d : {"upper", "cache"}) ::mkdir((dir / d).c_str(), 0755);
    argv_ = {testing::bin_dir() + "/antares-fs", mega_url, mnt_, "-o",
             "upper=" + dir / "upper" + ",cache=" + dir / "cache" + ",run_dir=" + run_ + ",ttl=300ms"};
    argv_.insert(argv_.end(), extra.begin(), extra.end());
    env_ = std::move(env);
  }
  // Runs the first process to its exit; its code.
  int start(std::string* err) {
    auto r = antares::run_command(argv_, std::chrono::seconds(60), env_);
    if (!r) {
      *err = r.error().describe();
      return -1;
    }
    *err = r->err;
    if (auto ep = control::read_endpoint_file(control::endpoint_file_for(run_, mnt_))) pid_ = ep->pid;
    return r->code;
  }
  ~Detached() { stop(); }
  pid_t pid() const { return pid_; }
  const std::string& mnt() const { return mnt_; }
  // umount; the daemon exits by itself. Returns whether it did within 20 s.
  bool stop() {
    if (testing::mounted_fstype(mnt_)) testing::run({"/bin/fusermount3", "-u", mnt_});
    bool gone = pid_ <= 0 || testing::wait_until([&] { return ::kill(pid_, 0) != 0; }, 20s);
    if (!gone) ::kill(pid_, SIGKILL);
    testing::force_unmount(mnt_);
    pid_ = -1;
    return gone;
  }
  int ctl(const std::vector<std::string>& args, std::string* out) {
    std::vector<std::string> argv = {testing::bin_dir() + "/antares-ctl", "--run-dir", run_, "--mountpoint", mnt_};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string err;
    int code = testing::run(argv, out, &err);
    if (code != 0 && out) *out += err;
    return code;
  }

 private:
  std::string mnt_, run_;
  std::vector<std::string> argv_, env_;
  pid_t pid_ = -1;
};

TEST(Detached, ControlAnswersAsSoonAsTheFirstProcessExits) {
  TempDir dir;
  MegaProcess mega(dir);
  for (int i = 0; i < 20; ++i) {
    Detached d(dir, mega.url(), {"-o", "log_file=" + dir / "fs.log"});
    std::string err, out;
    ASSERT_EQ(d.start(&err), 0) << "try " << i << ": " << err;
    ASSERT_GT(d.pid(), 0);
    EXPECT_EQ(d.ctl({"status"}, &out), 0) << "try " << i << ": " << out;
    EXPECT_TRUE(testing::mounted_fstype(d.mnt()));
    ASSERT_TRUE(d.stop()) << "try " << i;
  }
  std::string log = testing::read_file(dir / "fs.log");
  EXPECT_NE(log.find("event=mounted"), std::string::npos) << log;
  EXPECT_NE(log.find("event=unmounted"), std::string::npos) << log;
}

TEST(Detached, StartupFailureIsTheFirstProcessesExitCode) {
  TempDir dir;
  SilentServer silent;
  Detached d(dir, silent.url, {"-o", "startup_timeout=1s,log_file=" + dir / "fs.log"});
  std::string err;
  EXPECT_EQ(d.start(&err), 4) << err;
  EXPECT_NE(err.find("did not answer"), std::string::npos) << err;
  EXPECT_FALSE(testing::mounted_fstype(d.mnt()));
}

TEST(Detached, MountTypeAndSourceAreWhatFstabSays) {
  TempDir dir;
  MegaProcess mega(dir);
  Detached d(dir, mega.url());
  std::string err;
  ASSERT_EQ(d.start(&err), 0) << err;
  auto m = mount_at(d.mnt());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->fstype, "fuse.antares-fs");
  EXPECT_EQ(m->source, mega.url());
}

// Without --log-file, a detached daemon logs to syslog: RFC 3164 datagrams
// on the socket (ANTARES_SYSLOG_SOCKET here, /dev/log normally).
TEST(Detached, LogsToSyslogWithoutALogFile) {
  TempDir dir;
  MegaProcess mega(dir);
  std::string sock = dir / "log.sock";
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  sock.copy(a.sun_path, sizeof a.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);
  std::string lines;
  auto drain = [&] {
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) lines.append(buf, size_t(n)) += '\n';
  };
  {
    Detached d(dir, mega.url(), {}, {"ANTARES_SYSLOG_SOCKET=" + sock});
    std::string err;
    ASSERT_EQ(d.start(&err), 0) << err;
    EXPECT_TRUE(testing::wait_until([&] { return drain(), lines.find("event=mounted") != std::string::npos; }, 20s))
        << lines;
    EXPECT_NE(lines.find("<30>"), std::string::npos) << lines;  // daemon.info
    EXPECT_NE(lines.find("antares-fs[" + std::to_string(d.pid()) + "]: ts="), std::string::npos) << lines;
    ASSERT_TRUE(d.stop());
  }
  EXPECT_TRUE(testing::wait_until([&] { return drain(), lines.find("event=unmounted") != std::string::npos; }, 20s))
      << lines;
  ::close(fd);
}

TEST(Cli, VersionAndHelp) {
  std::string out;
  ASSERT_EQ(testing::run({testing::bin_dir() + "/antares-fs", "--version"}, &out), 0);
  EXPECT_EQ(out.rfind("antares-fs ", 0), 0u) << out;
  EXPECT_NE(out.find("(git "), std::string::npos) << out;
  ASSERT_EQ(testing::run({testing::bin_dir() + "/antares-fs", "-h"}, &out), 0);
  EXPECT_NE(out.find("-o upper=DIR"), std::string::npos) << out;
}

}  // namespace
}  // namespace antares::e2e
