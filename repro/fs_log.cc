#include "repro/fs_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <ctime>

namespace antares::repro {

std::string logfmt_field(std::string_view line, std::string_view key) {
  size_t pos = 0;
  while (pos < line.size()) {
    while (pos < line.size() && line[pos] == ' ') ++pos;
    size_t eq = line.find('=', pos);
    if (eq == std::string_view::npos) break;
    std::string_view k = line.substr(pos, eq - pos);
    size_t v = eq + 1;
    std::string value;
    if (v < line.size() && line[v] == '"') {
      size_t i = v + 1;
      for (; i < line.size() && line[i] != '"'; ++i) {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
      }
      pos = i + 1;
    } else {
      size_t end = line.find(' ', v);
      if (end == std::string_view::npos) end = line.size();
      value = std::string(line.substr(v, end - v));
      pos = end;
    }
    if (k == key) return value;
  }
  return {};
}

std::optional<int64_t> parse_log_ts(std::string_view ts) {
  // YYYY-MM-DDTHH:MM:SS(.fff)Z
  if (ts.size() < 20 || ts[4] != '-' || ts[7] != '-' || ts[10] != 'T' || ts[13] != ':' || ts[16] != ':')
    return std::nullopt;
  auto num = [&](size_t at, size_t len, int* out) {
    auto r = std::from_chars(ts.data() + at, ts.data() + at + len, *out);
    return r.ec == std::errc() && r.ptr == ts.data() + at + len;
  };
  struct tm tm {};
  int y, mo, d, h, mi, s;
  if (!num(0, 4, &y) || !num(5, 2, &mo) || !num(8, 2, &d) || !num(11, 2, &h) || !num(14, 2, &mi) || !num(17, 2, &s))
    return std::nullopt;
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  int64_t us = static_cast<int64_t>(timegm(&tm)) * 1000000;
  size_t i = 19;
  if (i < ts.size() && ts[i] == '.') {
    int64_t frac = 0, scale = 1000000;
    for (++i; i < ts.size() && ts[i] >= '0' && ts[i] <= '9'; ++i)
      if (scale > 1) {
        scale /= 10;
        frac += (ts[i] - '0') * scale;
      }
    us += frac;
  }
  return us;
}

std::optional<FsEstale> parse_estale_line(std::string_view line) {
  if (line.find("event=estale") == std::string_view::npos) return std::nullopt;
  if (logfmt_field(line, "event") != "estale") return std::nullopt;
  FsEstale e;
  auto t = parse_log_ts(logfmt_field(line, "ts"));
  e.t_us = t ? *t : 0;
  e.layer = logfmt_field(line, "layer");
  e.op = logfmt_field(line, "op");
  e.path = logfmt_field(line, "path");
  while (!e.path.empty() && e.path.front() == '/') e.path.erase(0, 1);
  std::string node = logfmt_field(line, "node");
  std::from_chars(node.data(), node.data() + node.size(), e.node);
  return e;
}

std::vector<FsEstale> FsLogTail::poll() {
  std::vector<FsEstale> out;
  if (path_.empty()) return out;
  int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[65536];
  while (true) {
    ssize_t n = pread(fd, buf, sizeof buf, static_cast<off_t>(offset_));
    if (n <= 0) break;
    offset_ += static_cast<uint64_t>(n);
    partial_.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  size_t start = 0;
  for (size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1)
    if (auto e = parse_estale_line(std::string_view(partial_).substr(start, nl - start))) out.push_back(*e);
  partial_.erase(0, start);
  all_.insert(all_.end(), out.begin(), out.end());
  return out;
}

}  // namespace antares::repro
