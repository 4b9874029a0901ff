// Results of reproduction runs and their three renderings: the terminal table
// (strategy x scenario), the JSON file (every figure and every notable event;
// it reads back, so shards of a matrix merge into one report) and the
// self-contained HTML file (report_html.cc: inline SVG charts, no script, no
// network).
//
// A RunRecord is one scenario repetition, one soak, one switch or one walk
// run. analyze() turns the raw OpEvents of a run into figures with the
// oracle's verdicts. The cost of each strategy (a warm walk through the mount,
// measured side by side) is a CostRow; summary.h turns both into the verdict.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "repro/event.h"
#include "repro/fs_log.h"
#include "repro/oracle.h"

namespace antares::repro {

// One version the oracle allowed a read to return: its oid, which layer held
// it, and when it was the path's effective version (until_us 0: still is).
struct AllowedVersion {
  std::string oid;  // hex
  std::string layer;
  int64_t from_us = 0, until_us = 0;
};

// An error or a stale/wrong read worth showing one by one.
struct Notable {
  int64_t t_us = 0;
  std::string kind;  // estale, enoent_exists, other_error, stale_within_window, stale_beyond_window, wrong
  std::string op, path;
  int err = 0;
  uint32_t latency_us = 0;
  int64_t age_us = 0;  // stale reads
  std::string layer;   // from antares-fs's event=estale line, if one matched
  std::string layer_path;  // the path that line named, when it is not `path` (an ancestor)
  std::optional<LogEntry> cause;
  // Stale and wrong reads: what was read, and what the oracle allowed (the
  // versions effective at some instant from window before the read to its end).
  std::string read_oid;
  uint64_t read_size = 0;
  std::string read_head;  // the first bytes, escaped (\n, \xNN)
  std::vector<AllowedVersion> allowed;
  std::string diagnosis;  // wrong reads: which known version each part of the bytes matches
  nlohmann::json to_json() const;
  static std::optional<Notable> from_json(const nlohmann::json& j);
};

// A moment worth marking on the charts.
struct Marker {
  int64_t t_us = 0;
  std::string kind;  // mutation, refresh, switch, upper
  std::string detail;
};

// Latencies in log-linear buckets: exact below 256 us, then 128 buckets per
// power of two (< 0.8% error). Sums exactly, so merged shards give the same
// percentiles as one run.
class LatencyHistogram {
 public:
  void add(uint32_t us);
  void merge(const LatencyHistogram& o);
  uint64_t count() const { return count_; }
  uint32_t percentile(double p) const;  // p in [0,100]; 0 when empty
  nlohmann::json to_json() const;      // {"bucket lower bound": count}
  static LatencyHistogram from_json(const nlohmann::json& j);
  bool operator==(const LatencyHistogram& o) const { return counts_ == o.counts_; }

 private:
  static size_t bucket(uint32_t us);
  static uint32_t lower_bound(size_t bucket);
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
};

struct RunStats {
  uint64_t ops = 0, reads = 0, bytes = 0;
  uint64_t fresh = 0, stale_within = 0, stale_beyond = 0, wrong = 0, unknown = 0;
  uint64_t estale = 0, enoent_exists = 0, enoent_expected = 0, other_errors = 0;
  uint64_t op_counts[kOpCount] = {};
  LatencyHistogram latency;  // every operation's latency
  void merge(const RunStats& o);
  uint32_t percentile_us(double p) const { return latency.percentile(p); }
};

struct RunRecord {
  std::string mode;      // scenario, soak, switch, walk
  std::string strategy;  // none, A, B, C, auto (switch: none->auto)
  std::string scenario;  // lower-refresh, ..., soak, switch, walk
  int rep = 0;
  uint64_t seed = 0;
  int unit = -1;  // index in the command's plan (plan.h); orders merged shards
  int64_t start_us = 0, end_us = 0;
  bool setup_failed = false;  // could not set up (counts as neither reproduced nor clean)
  bool interrupted = false;   // stopped by SIGINT/SIGTERM before it finished
  bool reproduced = false;    // an ESTALE reached the reproduction's syscalls
  bool persistent = false;    // ... and every probe after it failed too
  bool converged = false;     // fresh content was read after the trigger
  bool ok = false;            // the outcome the strategy promises (see docs/repro.md)
  std::string note;
  std::string target;  // the path a scenario exercised
  std::string kept_dir;  // --keep: where its logs, cache and upper dir are
  RunStats stats;
  std::vector<Notable> notable;
  std::vector<Marker> markers;
  std::vector<FsEstale> fs_estale;  // what antares-fs logged during the run
  nlohmann::json fs_status;         // antares-ctl status at the end, if available
  nlohmann::json to_json(bool with_events = true) const;
  static Result<RunRecord> from_json(const nlohmann::json& j);
};

// The cost of one strategy: warm buck2-style walks through its own mount,
// measured round-robin with the other strategies' mounts of the same
// repository in the same run (cost.cc).
struct CostRow {
  std::string strategy;
  std::vector<double> walk_seconds;  // one per warm walk
  uint64_t entries_per_walk = 0;     // directory entries listed by one walk
  uint64_t ops_per_walk = 0;
  uint64_t errors = 0;               // failed operations over all warm walks
  LatencyHistogram latency;          // every operation of the warm walks
  std::string note;                  // why it could not be measured, if so
  double median_seconds() const;
  double entries_per_s() const;  // entries_per_walk / median walk time; 0 if unmeasured
  // The spread of the per-walk rates (min, max entries/s).
  std::pair<double, double> rate_range() const;
  nlohmann::json to_json() const;
  static CostRow from_json(const nlohmann::json& j);
};

struct Report {
  std::string command;    // as typed, shell-quoted
  nlohmann::json config;  // seed, ttl, window, files, ... (flat: name -> value)
  std::vector<RunRecord> runs;
  std::vector<CostRow> cost;  // empty if not measured
  nlohmann::json cost_config;  // files, ttl, rounds of the cost measurement
  std::vector<std::string> failures;  // why the exit code is non-zero
  int64_t start_us = 0, end_us = 0;
  bool interrupted = false;
  int planned_units = 0;  // units in the command's plan (all shards)
  std::vector<std::string> shards;  // "K/N" of each shard this report holds ("" = unsharded)
};

// Classifies events with the oracle and adds them to run->stats/notable.
// Events whose path starts with one of `skip_prefixes` (e.g. "buck-out/") are
// counted as operations but not judged by the oracle unless they failed.
// `contents` (optional) holds the bytes read, by oid, for the read columns.
void analyze(const History& history, const std::vector<OpEvent>& events, int64_t window_us,
             const std::vector<FsEstale>& fs_estale, RunRecord* run,
             const std::vector<std::string>& skip_prefixes = {"buck-out/"},
             const std::map<Oid, std::string>* contents = nullptr);

// Which known version each part of `read` matches, page by page (4 KiB, the
// kernel's cache granularity), e.g. "4096 B: bytes 0-4095 = v2 (old,
// 5230 B); bytes 4096-4099 = no version". versions: (label, bytes).
std::string diagnose_bytes(const std::string& read,
                           const std::vector<std::pair<std::string, std::string>>& versions);
// "ESTALE", "ENOENT", ... ("errno N" for the rare ones).
std::string errno_name(int e);
// Printable form of bytes: ASCII as is, \n \t \\ and \xNN otherwise.
std::string escape_bytes(const std::string& bytes, size_t max);

// Rows of the final table: one per (strategy, scenario) in order of first appearance.
struct TableRow {
  std::string strategy, scenario;
  int runs = 0, estale_runs = 0, reproduced = 0, ok = 0, setup_failed = 0, interrupted = 0;
  RunStats stats;
  double seconds = 0;
  std::vector<std::string> targets;
};
std::vector<TableRow> table_rows(const Report& report);
// reproduced, clean, FAILED, NOT reproduced, no ESTALE, errors stopped,
// setup failed, interrupted.
std::string verdict(const TableRow& row);
bool verdict_good(const std::string& verdict);
std::string render_table(const Report& report);
nlohmann::json report_json(const Report& report);
// Reads a report_json() back (merge). Error: not a report of this tool.
Result<Report> report_from_json(const nlohmann::json& j);
// Combines shard reports of one command: the runs in plan order, the cost of
// whichever shard measured it. Error: different configurations, or a shard twice.
Result<Report> merge_reports(std::vector<Report> parts);

std::string html_escape(const std::string& s);
std::string render_html(const Report& report);

// Shell-quotes argv as one command line, in the order typed.
std::string shell_command(int argc, char** argv);
// 1.5ms, 230us, 2.10s.
std::string us_str(uint32_t us);

// Writes atomically (temp file + rename). Returns errno (0 on success).
int write_file_atomic(const std::string& path, const std::string& content);

}  // namespace antares::repro
