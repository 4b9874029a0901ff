#include "repro/summary.h"

#include <algorithm>
#include <cstdio>
#include <tuple>

namespace antares::repro {
namespace {

using nlohmann::json;

const std::vector<std::string>& strategy_order() {
  static const std::vector<std::string> k{"none", "A", "B", "C", "auto"};
  return k;
}

// When two correct strategies cost the same within measurement noise, the
// one whose mechanism covers more wins; this is the order, and the reason.
const std::vector<std::pair<std::string, std::string>>& preference() {
  static const std::vector<std::pair<std::string, std::string>> k{
      {"auto", "it is B's invalidation with A's recovery behind it, so a change nobody announced is recovered too"},
      {"C", "it holds no file handles at all, so none can go stale, with or without a watcher"},
      {"B", "it invalidates the kernel on every change it is told of"},
      {"A", "it recovers from any stale handle by re-resolving the path"}};
  return k;
}

std::string plural(uint64_t n, const std::string& what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

std::string fmt(const char* f, double v) {
  char b[64];
  snprintf(b, sizeof b, f, v);
  return b;
}

// Half the spread of the per-walk rates, relative to the median rate.
double noise(const StrategyVerdict& v) {
  return v.rate > 0 ? (v.rate_hi - v.rate_lo) / v.rate / 2 : 0;
}

std::string cost_text(const StrategyVerdict& v) {
  std::string s = "warm walk " + rate_str(v.rate) + " entries/s";
  if (v.ratio_to_none > 0 && v.strategy != "none") s += " (" + fmt("%.2f", v.ratio_to_none) + "x none)";
  s += ", p50 " + us_str(v.p50_us) + ", p99 " + us_str(v.p99_us);
  return s;
}

}  // namespace

std::string rate_str(double r) {
  if (r >= 1e6) return fmt("%.2fM", r / 1e6);
  if (r >= 1e4) return fmt("%.1fk", r / 1e3);
  if (r >= 1e3) return fmt("%.2fk", r / 1e3);
  return fmt("%.0f", r);
}

Summary summarize(const Report& report) {
  Summary s;
  std::vector<std::string> names;
  for (const auto& n : strategy_order())
    for (const auto& r : report.runs)
      if (r.strategy == n) {
        names.push_back(n);
        break;
      }
  for (const auto& c : report.cost)
    if (std::find(names.begin(), names.end(), c.strategy) == names.end() &&
        std::find(strategy_order().begin(), strategy_order().end(), c.strategy) != strategy_order().end())
      names.push_back(c.strategy);
  std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) {
    auto& o = strategy_order();
    return std::find(o.begin(), o.end(), a) < std::find(o.begin(), o.end(), b);
  });

  for (const auto& name : names) {
    StrategyVerdict v;
    v.strategy = name;
    v.is_fix = name != "none";
    uint64_t scenario_runs = 0, scenario_estale_runs = 0;
    for (const auto& r : report.runs) {
      if (r.strategy != name) continue;
      ++v.runs;
      if (r.interrupted) {
        ++v.interrupted;
        continue;
      }
      if (r.setup_failed) {
        ++v.not_run;
        continue;
      }
      ++v.completed;
      v.ok += r.ok;
      v.estale_runs += r.stats.estale > 0;
      v.estale += r.stats.estale;
      v.stale_within += r.stats.stale_within;
      v.stale_beyond += r.stats.stale_beyond;
      v.wrong += r.stats.wrong;
      v.other_errors += r.stats.enoent_exists + r.stats.other_errors;
      if (r.mode == "scenario") {
        ++scenario_runs;
        scenario_estale_runs += r.stats.estale > 0;
      }
    }
    std::string runs = plural(static_cast<uint64_t>(v.completed), "run");
    if (!v.is_fix) {
      v.correctness = v.completed == 0 ? "did not run"
                      : scenario_runs
                          ? "the bug: ESTALE in " + std::to_string(scenario_estale_runs) + " of " +
                                plural(scenario_runs, "scenario run") + " (" + std::to_string(v.estale) + " in all)"
                          : "the bug: " + std::to_string(v.estale) + " ESTALE in " + runs;
    } else if (v.completed == 0) {
      v.correctness = v.not_run ? "could not run" : "interrupted";
    } else {
      v.correct = v.ok == v.completed && v.not_run == 0 && v.estale == 0 && v.stale_beyond == 0 && v.wrong == 0;
      if (v.correct) {
        v.correctness = "clean in " + runs + ": 0 ESTALE, 0 stale beyond the window, 0 wrong";
      } else {
        std::string what;
        auto add = [&](uint64_t n, const std::string& w) {
          if (n) what += (what.empty() ? "" : ", ") + std::to_string(n) + " " + w;
        };
        add(v.estale, "ESTALE");
        add(v.stale_beyond, "stale beyond the window");
        add(v.wrong, "wrong");
        add(v.other_errors, "other errors");
        int failed = v.completed - v.ok;
        if (what.empty() && failed) what = "did not read the new content";
        v.correctness = "FAILED: " + (what.empty() ? std::string("see the failures") : what) + " (" +
                        std::to_string(failed) + " of " + runs + " failed)";
        if (v.not_run) v.correctness += "; " + std::to_string(v.not_run) + " could not run";
      }
    }
    if (v.interrupted) v.correctness += "; " + std::to_string(v.interrupted) + " interrupted";
    for (const auto& c : report.cost)
      if (c.strategy == name) {
        v.cost_note = c.note;
        v.cost_errors = c.errors;
        if (!c.walk_seconds.empty() && c.entries_per_walk) {
          v.measured = true;
          v.rate = c.entries_per_s();
          std::tie(v.rate_lo, v.rate_hi) = c.rate_range();
          v.p50_us = c.latency.percentile(50);
          v.p99_us = c.latency.percentile(99);
        }
      }
    s.rows.push_back(std::move(v));
  }
  double none_rate = 0;
  for (const auto& v : s.rows)
    if (v.strategy == "none" && v.measured) none_rate = v.rate;
  for (auto& v : s.rows) {
    if (v.measured && none_rate > 0) v.ratio_to_none = v.rate / none_rate;
    s.cost_measured |= v.measured;
  }

  // The recommendation: among the fixes that were correct, the cheapest;
  // among those equal within noise, the one whose mechanism covers most.
  std::vector<const StrategyVerdict*> correct;
  for (const auto& v : s.rows)
    if (v.is_fix && v.correct) correct.push_back(&v);
  if (correct.empty()) {
    std::string failed;
    for (const auto& v : s.rows)
      if (v.is_fix) failed += (failed.empty() ? "" : "; ") + v.strategy + ": " + v.correctness;
    s.headline = s.rows.empty() ? "Nothing ran." : failed.empty() ? "No fix strategy ran, so none can be recommended."
                                                                  : "No fix strategy was correct in this run (" + failed + ").";
    return s;
  }
  auto rank = [](const std::string& name) {
    auto& p = preference();
    for (size_t i = 0; i < p.size(); ++i)
      if (p[i].first == name) return i;
    return p.size();
  };
  const StrategyVerdict* pick = nullptr;
  std::string why;
  bool all_measured = std::all_of(correct.begin(), correct.end(), [](auto* v) { return v->measured; });
  if (all_measured) {
    const StrategyVerdict* fastest = *std::max_element(correct.begin(), correct.end(),
                                                       [](auto* a, auto* b) { return a->rate < b->rate; });
    std::vector<const StrategyVerdict*> ties;
    for (auto* v : correct) {
      double tol = std::max({0.05, noise(*v), noise(*fastest)});
      if (v->rate >= fastest->rate * (1 - tol)) ties.push_back(v);
    }
    pick = *std::min_element(ties.begin(), ties.end(), [&](auto* a, auto* b) { return rank(a->strategy) < rank(b->strategy); });
    why = pick == fastest ? "the fastest warm walk of the correct strategies"
                          : "within measurement noise of the fastest correct strategy (" + fastest->strategy + ", " +
                                rate_str(fastest->rate) + " entries/s)";
    std::string others;
    for (auto* v : ties)
      if (v != pick && v != fastest) others += (others.empty() ? "" : ", ") + v->strategy + " " + rate_str(v->rate);
    if (!others.empty()) why += "; also within noise: " + others;
    if (ties.size() > 1 && rank(pick->strategy) < preference().size())
      why += "; among those, " + pick->strategy + " because " + preference()[rank(pick->strategy)].second;
  } else {
    pick = *std::min_element(correct.begin(), correct.end(), [&](auto* a, auto* b) { return rank(a->strategy) < rank(b->strategy); });
    why = "cost was not measured in this run (estale-repro matrix measures it; --cost-rounds)";
    if (correct.size() > 1 && rank(pick->strategy) < preference().size())
      why += "; of the correct strategies, " + pick->strategy + " because " + preference()[rank(pick->strategy)].second;
  }
  s.recommended = pick->strategy;
  s.why = why;
  s.headline = "Recommended: " + pick->strategy + " - " + pick->correctness +
               (pick->measured ? "; " + cost_text(*pick) : std::string()) + ". Why: " + why + ".";
  return s;
}

json Summary::to_json() const {
  json rows_j = json::array();
  for (const auto& v : rows) {
    json j{{"strategy", v.strategy},
           {"runs", v.runs},
           {"completed", v.completed},
           {"not_run", v.not_run},
           {"interrupted", v.interrupted},
           {"ok", v.ok},
           {"estale_runs", v.estale_runs},
           {"estale", v.estale},
           {"stale_within_window", v.stale_within},
           {"stale_beyond_window", v.stale_beyond},
           {"wrong", v.wrong},
           {"other_errors", v.other_errors},
           {"correct", v.correct},
           {"correctness", v.correctness},
           {"cost_measured", v.measured}};
    if (v.measured) {
      j["entries_per_s"] = v.rate;
      j["entries_per_s_min"] = v.rate_lo;
      j["entries_per_s_max"] = v.rate_hi;
      j["ratio_to_none"] = v.ratio_to_none;
      j["latency_p50_us"] = v.p50_us;
      j["latency_p99_us"] = v.p99_us;
      j["cost_errors"] = v.cost_errors;
    }
    if (!v.cost_note.empty()) j["cost_note"] = v.cost_note;
    rows_j.push_back(std::move(j));
  }
  return json{{"recommended", recommended.empty() ? json(nullptr) : json(recommended)},
              {"why", why},
              {"headline", headline},
              {"cost_measured", cost_measured},
              {"strategies", std::move(rows_j)}};
}

std::string render_summary(const Summary& s) {
  std::vector<std::vector<std::string>> cells;
  cells.push_back({"strategy", "runs", "ESTALE", "stale>win", "wrong", "other err", "warm walk", "x none", "p50", "p99",
                   "correctness"});
  for (const auto& v : s.rows) {
    cells.push_back({v.strategy, std::to_string(v.completed), std::to_string(v.estale), std::to_string(v.stale_beyond),
                     std::to_string(v.wrong), std::to_string(v.other_errors),
                     v.measured ? rate_str(v.rate) + "/s" : "not measured",
                     v.measured && v.ratio_to_none > 0 ? fmt("%.2f", v.ratio_to_none) : "-",
                     v.measured ? us_str(v.p50_us) : "-", v.measured ? us_str(v.p99_us) : "-", v.correctness});
  }
  std::vector<size_t> w(cells[0].size(), 0);
  for (const auto& row : cells)
    for (size_t i = 0; i < row.size(); ++i) w[i] = std::max(w[i], row[i].size());
  std::string out = "Verdict per strategy (correctness over every run; cost: warm walk through the mount, side by side):\n";
  for (const auto& row : cells) {
    for (size_t i = 0; i < row.size(); ++i) {
      bool left = i == 0 || i + 1 == row.size();
      std::string pad(w[i] - row[i].size(), ' ');
      out += left ? row[i] + pad : pad + row[i];
      out += i + 1 < row.size() ? "  " : "\n";
    }
  }
  out += s.headline + "\n";
  return out;
}

}  // namespace antares::repro
