// Results of reproduction runs and their three renderings: the terminal table
// (strategy x scenario), the JSON file (every figure and every notable event)
// and the self-contained HTML file (inline SVG charts, no script, no network).
//
// A RunRecord is one scenario repetition, one soak or one switch run. analyze()
// turns the raw OpEvents of a run into figures with the oracle's verdicts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "repro/event.h"
#include "repro/fs_log.h"
#include "repro/oracle.h"

namespace antares::repro {

// An error or a stale/wrong read worth showing one by one.
struct Notable {
  int64_t t_us = 0;
  std::string kind;  // estale, enoent_exists, other_error, stale_within_window, stale_beyond_window, wrong
  std::string op, path;
  int err = 0;
  uint32_t latency_us = 0;
  int64_t age_us = 0;  // stale reads
  std::string layer;   // from antares-fs's event=estale line, if one matched
  std::optional<LogEntry> cause;
  nlohmann::json to_json() const;
};

// A moment worth marking on the charts.
struct Marker {
  int64_t t_us = 0;
  std::string kind;  // mutation, refresh, switch, upper
  std::string detail;
};

struct RunStats {
  uint64_t ops = 0, reads = 0, bytes = 0;
  uint64_t fresh = 0, stale_within = 0, stale_beyond = 0, wrong = 0, unknown = 0;
  uint64_t estale = 0, enoent_exists = 0, enoent_expected = 0, other_errors = 0;
  uint64_t op_counts[kOpCount] = {};
  std::vector<uint32_t> latencies_us;  // every operation's latency
  void merge(const RunStats& o);
  uint32_t percentile_us(double p) const;  // 0 if no operations; p in [0,100]
};

struct RunRecord {
  std::string mode;      // scenario, soak, switch
  std::string strategy;  // none, A, B, C, auto
  std::string scenario;  // lower-refresh, ..., soak, switch
  int rep = 0;
  int64_t start_us = 0, end_us = 0;
  bool setup_failed = false;  // could not set up (counts as neither reproduced nor clean)
  bool reproduced = false;    // an ESTALE reached the reproduction's syscalls
  bool persistent = false;    // ... and every probe after it failed too
  bool converged = false;     // fresh content was read after the trigger
  bool ok = false;            // the outcome the strategy promises (see docs/repro.md)
  std::string note;
  std::string target;  // the path a scenario exercised
  RunStats stats;
  std::vector<Notable> notable;
  std::vector<Marker> markers;
  std::vector<FsEstale> fs_estale;  // what antares-fs logged during the run
  nlohmann::json fs_status;         // antares-ctl status at the end, if available
  nlohmann::json to_json(bool with_events = true) const;
};

struct Report {
  std::string command;
  nlohmann::json config;  // seed, ttl, window, files, ...
  std::vector<RunRecord> runs;
  std::vector<std::string> failures;  // why the exit code is non-zero
  int64_t start_us = 0, end_us = 0;
};

// Classifies events with the oracle and adds them to run->stats/notable.
// Events whose path starts with one of `skip_prefixes` (e.g. "buck-out/") are
// counted as operations but not judged by the oracle unless they failed.
void analyze(const History& history, const std::vector<OpEvent>& events, int64_t window_us,
             const std::vector<FsEstale>& fs_estale, RunRecord* run,
             const std::vector<std::string>& skip_prefixes = {"buck-out/"});

// Rows of the final table: one per (strategy, scenario) in order of first appearance.
struct TableRow {
  std::string strategy, scenario;
  int runs = 0, reproduced = 0, ok = 0, setup_failed = 0;
  RunStats stats;
  double seconds = 0;
};
std::vector<TableRow> table_rows(const Report& report);
std::string render_table(const Report& report);
nlohmann::json report_json(const Report& report);
std::string render_html(const Report& report);

// Writes atomically (temp file + rename). Returns errno (0 on success).
int write_file_atomic(const std::string& path, const std::string& content);

}  // namespace antares::repro
