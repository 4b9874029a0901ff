// The antares-fs program around Daemon: options, logging sinks, and detaching
// with a readiness handshake (the parent waits on a pipe until the child says
// the mount answers and the control endpoint file exists, so `mount` and an
// `antares-ctl status` right after it never race the daemon).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/log.h"
#include "common/version.h"
#include "fs/control/endpoint.h"
#include "fs/fuse/daemon.h"

namespace antares::fs {
namespace {

int report(const StartupError& e) {
  std::fprintf(stderr, "antares-fs: %s\n", e.message.c_str());
  log::error("startup_failed", {{"error", e.message}, {"exit", std::to_string(e.code)}});
  return e.code;
}

std::string syslog_socket() {
  const char* s = std::getenv("ANTARES_SYSLOG_SOCKET");
  return s && *s ? s : "/dev/log";
}

// Detached: fork; the parent only relays the child's verdict.
int detach_and_serve(Daemon& d) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return report({kExitFailure, std::string("pipe: ") + std::strerror(errno)});
  pid_t pid = ::fork();
  if (pid < 0) return report({kExitFailure, std::string("fork: ") + std::strerror(errno)});
  if (pid > 0) {
    ::close(p[1]);
    char verdict = 1;
    ssize_t n;
    while ((n = ::read(p[0], &verdict, 1)) < 0 && errno == EINTR) {
    }
    // The parent leaves without running destructors: the prepared state is the child's now.
    std::fflush(nullptr);
    if (n == 1 && verdict == 0) ::_exit(kExitOk);  // mounted, answering, endpoint in place
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(st)) ::_exit(WEXITSTATUS(st) ? WEXITSTATUS(st) : kExitFailure);
    std::fprintf(stderr, "antares-fs: the daemon died during startup (signal %d)\n",
                 WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    ::_exit(kExitFailure);
  }
  ::close(p[0]);
  ::setsid();
  if (::chdir("/") != 0) {
  }
  int pipe_w = p[1];
  int code = d.serve([pipe_w](const std::optional<StartupError>& err) {
    if (err) {
      std::fprintf(stderr, "antares-fs: %s\n", err->message.c_str());
      return;  // the exit code reaches the parent through waitpid
    }
    // Ready: let go of the caller's terminal (or mount(8)'s pipes) first.
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, STDIN_FILENO);
      ::dup2(null, STDOUT_FILENO);
      ::dup2(null, STDERR_FILENO);
      ::close(null);
    }
    char ok = 0;
    while (::write(pipe_w, &ok, 1) < 0 && errno == EINTR) {
    }
    ::close(pipe_w);
  });
  return code;
}

}  // namespace

int daemon_main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  ParsedArgs parsed = parse_daemon_args(args, ::geteuid() == 0, control::default_run_dir());
  switch (parsed.kind) {
    case ParsedArgs::Kind::help: std::fputs(daemon_usage(), stdout); return kExitOk;
    case ParsedArgs::Kind::version: std::fputs(version_text("antares-fs").c_str(), stdout); return kExitOk;
    case ParsedArgs::Kind::error:
      std::fprintf(stderr, "antares-fs: %s\nTry 'antares-fs --help'.\n", parsed.error.c_str());
      return kExitUsage;
    case ParsedArgs::Kind::run: break;
  }
  DaemonOptions& o = parsed.options;
  if (o.log_level) log::set_level(*o.log_level);
  if (!o.log_file.empty()) {
    if (std::string e = log::to_file(o.log_file); !e.empty()) {
      std::fprintf(stderr, "antares-fs: --log-file: %s\n", e.c_str());
      return kExitUsage;
    }
  }
  bool syslog = !o.foreground && o.log_file.empty();
  if (syslog) {
    struct stat st;
    std::string sock = syslog_socket();
    if (::stat(sock.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode))
      std::fprintf(stderr,
                   "antares-fs: warning: no syslog socket at %s: once detached, log lines are lost "
                   "(use --log-file PATH, or --foreground)\n",
                   sock.c_str());
    log::to_syslog("antares-fs", sock);
  }
  if (auto e = validate_paths(o)) return report(*e);
  Daemon d(o);
  if (auto e = d.prepare()) return report(*e);
  if (o.foreground) return d.serve([](const std::optional<StartupError>&) {});
  return detach_and_serve(d);
}

}  // namespace antares::fs
