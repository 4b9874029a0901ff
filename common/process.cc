#include "common/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/mountinfo.h"

extern "C" char** environ;

namespace antares {
namespace {

int decode_status(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

// Prepares everything before fork: the child may only call async-signal-safe functions.
struct SpawnPlan {
  std::vector<std::string> argv, env;  // env: NAME=value added to ours
  std::vector<char*> args, envp;
  void build() {
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (env.empty()) return;
    for (auto& e : env) envp.push_back(e.data());
    for (char** e = environ; *e; ++e) {
      std::string_view kv(*e);
      std::string_view name = kv.substr(0, kv.find('='));
      bool overridden = false;
      for (const auto& x : env) overridden |= x.compare(0, name.size() + 1, std::string(name) + "=") == 0;
      if (!overridden) envp.push_back(*e);
    }
    envp.push_back(nullptr);
  }
};

[[noreturn]] void child_exec(SpawnPlan& plan, int out_fd, int err_fd, pid_t parent) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(127);  // the parent died before prctl took effect
  int devnull = open("/dev/null", O_RDWR);
  if (devnull >= 0) dup2(devnull, STDIN_FILENO);
  dup2(out_fd >= 0 ? out_fd : devnull, STDOUT_FILENO);
  dup2(err_fd >= 0 ? err_fd : devnull, STDERR_FILENO);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGPIPE, SIG_DFL);
  if (plan.envp.empty()) execv(plan.args[0], plan.args.data());
  else execve(plan.args[0], plan.args.data(), plan.envp.data());
  _exit(127);
}

}  // namespace

Result<std::unique_ptr<Child>> Child::spawn(const std::vector<std::string>& argv, const std::string& stdout_path,
                                            const std::string& stderr_path, const std::vector<std::string>& env) {
  if (argv.empty()) return Error::from_errno(EINVAL, "empty command");
  if (access(argv[0].c_str(), X_OK) != 0) return Error::from_errno(errno, "cannot execute " + argv[0]);
  int out_fd = -1, err_fd = -1;
  if (!stdout_path.empty()) {
    out_fd = open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) return Error::from_errno(errno, "cannot open " + stdout_path);
  }
  if (!stderr_path.empty()) {
    err_fd = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (err_fd < 0) {
      int e = errno;
      if (out_fd >= 0) close(out_fd);
      return Error::from_errno(e, "cannot open " + stderr_path);
    }
  }
  SpawnPlan plan;
  plan.argv = argv;
  plan.env = env;
  plan.build();
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) child_exec(plan, out_fd, err_fd, parent);
  int fork_errno = errno;
  if (out_fd >= 0) close(out_fd);
  if (err_fd >= 0) close(err_fd);
  if (pid < 0) return Error::from_errno(fork_errno, "fork failed");
  setpgid(pid, pid);  // also from the parent, so the group exists before we signal it
  std::unique_ptr<Child> c(new Child());
  c->pid_ = pid;
  return c;
}

Child::~Child() { terminate(); }

bool Child::running() {
  if (pid_ <= 0 || code_ >= 0) return false;
  int st;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    code_ = decode_status(st);
    return false;
  }
  if (r < 0 && errno == ECHILD) {
    code_ = 255;
    return false;
  }
  return true;
}

int Child::wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return code_;
}

void Child::signal(int sig) {
  if (running()) kill(pid_, sig);
}

int Child::terminate(std::chrono::milliseconds timeout) {
  if (!running()) return code_;
  kill(pid_, SIGTERM);
  if (wait(timeout) >= 0) return code_;
  kill(pid_, SIGKILL);
  wait(std::chrono::seconds(10));
  return code_;
}

Result<CommandResult> run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                                  const std::vector<std::string>& env) {
  if (argv.empty()) return Error::from_errno(EINVAL, "empty command");
  if (access(argv[0].c_str(), X_OK) != 0) return Error::from_errno(errno, "cannot execute " + argv[0]);
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return Error::from_errno(errno, "pipe");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    close(out_pipe[0]);
    close(out_pipe[1]);
    return Error::from_errno(e, "pipe");
  }
  SpawnPlan plan;
  plan.argv = argv;
  plan.env = env;
  plan.build();
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) child_exec(plan, out_pipe[1], err_pipe[1], parent);
  int fork_errno = errno;
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (pid < 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return Error::from_errno(fork_errno, "fork failed");
  }
  CommandResult r;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  bool timed_out = false;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    int n = poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[8192];
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);
  if (timed_out) kill(pid, SIGKILL);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  r.code = timed_out ? -1 : decode_status(st);
  return r;
}

bool is_fuse_mounted(const std::string& dir) {
  auto m = mount_at(dir);
  return m && is_fuse_mount(*m);
}

bool force_unmount(const std::string& dir) {
  if (!is_fuse_mounted(dir)) return true;
  for (const char* bin : {"/usr/bin/fusermount3", "/bin/fusermount3"}) {
    if (access(bin, X_OK) != 0) continue;
    auto r = run_command({bin, "-u", "-z", dir}, std::chrono::seconds(10));
    (void)r;
    break;
  }
  if (is_fuse_mounted(dir)) umount2(dir.c_str(), MNT_DETACH);
  return !is_fuse_mounted(dir);
}

Result<std::unique_ptr<TempDir>> TempDir::create(const std::string& prefix) {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  if (!mkdtemp(tmpl.data())) return Error::from_errno(errno, "mkdtemp " + tmpl);
  std::unique_ptr<TempDir> d(new TempDir());
  d->path_ = tmpl;
  return d;
}

TempDir::~TempDir() {
  if (keep_ || path_.empty()) return;
  // Never recurse into a live mount: a lazily detached one is gone from the tree.
  if (has_mount_below(read_mountinfo(), path_)) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string self_dir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  size_t s = p.rfind('/');
  return s == std::string::npos ? "." : p.substr(0, s);
}

}  // namespace antares
