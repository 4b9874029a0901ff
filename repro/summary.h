// The verdict of a report, per strategy: correctness (ESTALE, stale reads
// beyond the window, wrong reads, other errors, over every run of the
// strategy) beside cost (the warm walk measured side by side: entries/s,
// ratio to `none`, p50/p99 latency), and the strategy to recommend with the
// reason, derived only from the report's own numbers. Shown first in the
// terminal output, the JSON ("verdict") and the HTML report.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "repro/report.h"

namespace antares::repro {

struct StrategyVerdict {
  std::string strategy;
  bool is_fix = false;  // every strategy but none
  int runs = 0, completed = 0, not_run = 0, interrupted = 0, ok = 0, estale_runs = 0;
  uint64_t estale = 0, stale_within = 0, stale_beyond = 0, wrong = 0, other_errors = 0;
  bool correct = false;     // fix: every run completed and kept its promise
  std::string correctness;  // one line: "clean in 16 runs", "FAILED: 2 ESTALE in 1 of 16 runs", ...
  // Cost (measured = a CostRow with walks).
  bool measured = false;
  double rate = 0, rate_lo = 0, rate_hi = 0;  // entries/s: median walk, slowest and fastest walk
  double ratio_to_none = 0;                   // 0 if none was not measured
  uint32_t p50_us = 0, p99_us = 0;
  uint64_t cost_errors = 0;
  std::string cost_note;
};

struct Summary {
  std::vector<StrategyVerdict> rows;  // none, A, B, C, auto order; only strategies that ran
  bool cost_measured = false;
  std::string recommended;  // "" when no fix was correct in this run
  std::string why;          // the reason, with the run's numbers
  std::string headline;     // "Recommended: auto - ..." or why nothing can be recommended
  nlohmann::json to_json() const;
};

Summary summarize(const Report& report);
// The verdict block of the terminal output (a small table and the headline).
std::string render_summary(const Summary& s);
// 41.2k, 950, 1.35M.
std::string rate_str(double per_s);

}  // namespace antares::repro
