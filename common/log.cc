#include "common/log.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstddef>
#include <cstring>
#include <ctime>
#include <string>

namespace antares::log {
namespace {
std::atomic<Level> g_level{Level::info};

// The sink: fd >= 0 is a file or stderr; a syslog socket when g_syslog.
std::atomic<int> g_fd{STDERR_FILENO};
std::atomic<bool> g_syslog{false};
sockaddr_un g_syslog_addr{};
socklen_t g_syslog_len = 0;
std::string g_ident;

void append_value(std::string& out, std::string_view v) {
  bool quote = v.empty() || v.find_first_of(" \"=\t\n") != std::string_view::npos;
  if (!quote) {
    out += v;
    return;
  }
  out += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') { out += "\\n"; continue; }
    out += c;
  }
  out += '"';
}
}  // namespace

void set_level(Level level) { g_level = level; }
Level level() { return g_level.load(std::memory_order_relaxed); }

bool parse_level(std::string_view t, Level* out) {
  static constexpr std::pair<std::string_view, Level> kNames[] = {
      {"debug", Level::debug}, {"info", Level::info}, {"warn", Level::warn},
      {"error", Level::error}, {"off", Level::off}};
  for (auto& [name, l] : kNames)
    if (t == name) { *out = l; return true; }
  return false;
}

void write(Level level, std::string_view event, std::initializer_list<Field> fields) {
  static constexpr const char* kNames[] = {"debug", "info", "warn", "error", "off"};
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  time_t secs = static_cast<time_t>(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char ts[64];
  snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  std::string line = "ts=";
  line += ts;
  line += " level=";
  line += kNames[static_cast<int>(level)];
  line += " event=";
  append_value(line, event);
  for (const auto& [k, v] : fields) {
    line += ' ';
    line += k;
    line += '=';
    append_value(line, v);
  }
  if (g_syslog.load(std::memory_order_acquire)) {
    static constexpr int kSeverity[] = {7, 6, 4, 3, 3};  // debug, info, warning, err
    static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                              "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm lt;
    localtime_r(&secs, &lt);
    char head[96];
    snprintf(head, sizeof head, "<%d>%s %2d %02d:%02d:%02d %s[%d]: ", 3 * 8 + kSeverity[static_cast<int>(level)],
             kMonths[lt.tm_mon], lt.tm_mday, lt.tm_hour, lt.tm_min, lt.tm_sec, g_ident.c_str(), int(getpid()));
    std::string msg = head + line;
    ssize_t n = ::sendto(g_fd.load(), msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                         reinterpret_cast<const sockaddr*>(&g_syslog_addr), g_syslog_len);
    (void)n;
    return;
  }
  line += '\n';
  ssize_t n = ::write(g_fd.load(std::memory_order_relaxed), line.data(), line.size());
  (void)n;
}

void to_stderr() {
  g_syslog = false;
  g_fd = STDERR_FILENO;
}

std::string to_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return "cannot open log file " + path + ": " + std::strerror(errno);
  g_syslog = false;
  g_fd = fd;
  return "";
}

void to_syslog(const std::string& ident, const std::string& socket_path) {
  g_ident = ident;
  g_syslog_addr = {};
  g_syslog_addr.sun_family = AF_UNIX;
  socket_path.copy(g_syslog_addr.sun_path, sizeof g_syslog_addr.sun_path - 1);
  g_syslog_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + std::strlen(g_syslog_addr.sun_path) + 1);
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;  // nowhere to log: lines are dropped like unsent datagrams
  g_fd = fd;
  g_syslog.store(true, std::memory_order_release);
}

}  // namespace antares::log
