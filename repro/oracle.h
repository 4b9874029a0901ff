// The oracle: what each path of the union held over time, and the verdict on
// every operation the reproduction performed.
//
// History keeps three timelines per repository path ("/a/b/BUCK"), matching
// the union's layers top to bottom: upper (changes the reproduction itself
// made in --upper, recorded with record_upper), CL (the mounted changelist's
// file list: initial files-list plus `cl` log entries for that CL; a
// `deleted` entry is a whiteout), and lower (a snapshot of the tree at start
// plus mock-mega's mutation log). The effective version of a path at time t is
// the topmost layer that has an opinion. A read is
//   fresh         its oid is the effective version at some instant of the read,
//   stale_within  it is an older version superseded less than `window` before
//                 the read began (the TTL window: ttl + kernel entry/attr
//                 timeouts + slack; the filesystem is allowed to lag that much),
//   stale_beyond  an older version superseded longer ago (a fix serving old data),
//   wrong         no version the path ever had,
//   unknown       a path the oracle knows nothing about (not counted).
// Not thread-safe; one owner.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/oid.h"

namespace antares::repro {

// A mock-mega mutation log entry, or a change the reproduction made itself
// (kind "upper-replace", "upper-write", "upper-dir-replace"; id 0).
struct LogEntry {
  uint64_t id = 0;
  int64_t time_us = 0;
  std::string kind;  // modify, replace, delete, add, rename, rename_dir, cl, upper-*
  std::string path;  // "/a/b"
  std::string to;    // renames
  uint32_t cl = 0;
  std::string action;  // cl: new, modified, deleted, remove
  std::optional<Oid> old_oid, new_oid;

  // nullopt if the JSON is not a log entry (never throws).
  static std::optional<LogEntry> from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

enum class ReadClass { fresh, stale_within, stale_beyond, wrong, unknown };
const char* read_class_name(ReadClass c);

struct ReadVerdict {
  ReadClass cls = ReadClass::unknown;
  int64_t age_us = 0;                 // stale: how long before the read the served version was superseded
  std::optional<LogEntry> cause;      // stale/wrong: the change that superseded it / latest change
};

enum class ErrClass {
  estale,           // ESTALE: always a failure of the filesystem
  enoent_expected,  // ENOENT while the path was absent within the window (deleted, or not yet there)
  enoent_exists,    // ENOENT for a path that existed throughout
  other,            // any other errno (EIO, ENOTCONN, ...) or ENOENT on an unknown path
};
const char* err_class_name(ErrClass c);

class History {
 public:
  // cl: the changelist the mount shows (--cl), nullopt if none.
  explicit History(std::optional<uint32_t> cl = std::nullopt) : cl_(cl) {}

  // The initial state: a file of the lower tree, and an entry of the mounted
  // CL's files-list (deleted=true: a whiteout). Call before apply().
  void add_initial_file(const std::string& path, const Oid& oid);
  void add_initial_cl(const std::string& path, std::optional<Oid> sha, bool deleted);
  // Log entries with id <= base_id are already in the initial state.
  void set_base(uint64_t base_id) { last_id_ = base_id; }

  // Applies one log entry; entries at or below the last applied id are ignored,
  // so overlapping /admin/log fetches are harmless. Upper-layer entries (id 0)
  // are never ignored.
  void apply(const LogEntry& e);
  // A change the reproduction made in --upper (nullopt: removed), at t_us.
  void record_upper(const std::string& path, std::optional<Oid> oid, int64_t t_us, const std::string& kind);

  uint64_t last_id() const { return last_id_; }
  const std::vector<LogEntry>& entries() const { return log_; }
  bool knows(const std::string& path) const;
  // The effective versions of a file path: (from_us, oid or absent), oldest first.
  std::vector<std::pair<int64_t, std::optional<Oid>>> timeline(const std::string& path) const;
  // The effective oid at t (nullopt: absent or unknown).
  std::optional<Oid> at(const std::string& path, int64_t t_us) const;
  // Whether a file or a directory (any file beneath it) exists at t.
  bool present_at(const std::string& path, int64_t t_us) const;

  // One effective version of a path: when it began and ended (INT64_MAX: it
  // still is), its oid (nullopt: absent), and the layer that held it.
  struct Span {
    int64_t from_us, until_us;
    std::optional<Oid> oid;
    std::string layer;  // upper, cl, lower, or "" when absent
  };
  // Every version of the path, oldest first.
  std::vector<Span> spans(const std::string& path) const;
  // The versions a read over [t0, t1] may return: effective at some instant
  // from window before t0 to t1 (present ones only).
  std::vector<Span> allowed(const std::string& path, int64_t t0_us, int64_t t1_us, int64_t window_us) const;
  // Which layer holds the effective version at t ("" if absent).
  std::string layer_at(const std::string& path, int64_t t_us) const;

  ReadVerdict classify_read(const std::string& path, const Oid& oid, int64_t t0_us, int64_t t1_us,
                            int64_t window_us) const;
  ErrClass classify_error(const std::string& path, int err, int64_t t0_us, int64_t t1_us, int64_t window_us) const;
  // The latest change at or before t touching path, an ancestor or a descendant.
  std::optional<LogEntry> cause(const std::string& path, int64_t t_us) const;

  // Clock tolerance between the server's log (ms resolution) and our reads.
  static constexpr int64_t kToleranceUs = 2000;

 private:
  struct Version {
    int64_t from_us;
    std::optional<Oid> oid;  // absent if nullopt
  };
  struct ClVersion {
    int64_t from_us;
    enum State { none, present, whiteout } state;
    std::optional<Oid> oid;
  };
  using Timeline = std::vector<Version>;

  static std::optional<Oid> state_at(const Timeline& tl, int64_t t);
  void set_lower(const std::string& path, int64_t t, std::optional<Oid> oid, const std::optional<Oid>& old_oid);
  // The timeline's last point: the state before the entry being applied.
  static std::optional<Oid> latest(const Timeline& tl);
  // Files under dir that exist as of the last applied entry.
  std::vector<std::string> present_now_under(const std::string& dir) const;
  void change_times(const std::string& path, std::vector<int64_t>* out) const;

  std::optional<uint32_t> cl_;
  std::map<std::string, Timeline> lower_;
  std::map<std::string, std::vector<ClVersion>> cl_files_;
  std::map<std::string, Timeline> upper_;
  std::map<std::string, bool> touched_;  // lower paths some applied entry changed
  std::vector<LogEntry> log_;            // applied entries and upper changes, in order
  uint64_t last_id_ = 0;
};

}  // namespace antares::repro
