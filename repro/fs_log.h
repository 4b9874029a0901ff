// antares-fs's own account of the ESTALEs it returned: it logs each one on
// stderr as `ts=2025-11-22T16:14:00.123Z level=warn event=estale layer=lower
// op=getattr path=a/b/BUCK node=123`. FsLogTail reads the log file
// incrementally and keeps those events, so each ESTALE the walker saw can be
// attributed to a layer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace antares::repro {

struct FsEstale {
  int64_t t_us = 0;
  std::string layer, op, path;  // path relative to the mount root
  uint64_t node = 0;
};

// Parses one log line; nullopt unless it is an event=estale line.
std::optional<FsEstale> parse_estale_line(std::string_view line);
// Parses "2025-11-22T16:14:00.123Z" to wall-clock microseconds.
std::optional<int64_t> parse_log_ts(std::string_view ts);
// The value of key=value in a logfmt line ("" if absent); unquotes "..." values.
std::string logfmt_field(std::string_view line, std::string_view key);

// Not thread-safe; one owner.
class FsLogTail {
 public:
  explicit FsLogTail(std::string path = {}) : path_(std::move(path)) {}
  void set_path(std::string path) { path_ = std::move(path), offset_ = 0, partial_.clear(); }
  // Reads what was appended since the last poll; returns the new estale events.
  std::vector<FsEstale> poll();
  const std::vector<FsEstale>& all() const { return all_; }

 private:
  std::string path_;
  uint64_t offset_ = 0;
  std::string partial_;
  std::vector<FsEstale> all_;
};

}  // namespace antares::repro
