// The cost of each strategy, measured side by side in one run: one mock-mega
// (seeded, no mutations) and one antares-fs mount per strategy, all mounted at
// once; after a cold walk of each, warm buck2-style walks (the reproduction's
// walker, without buck-out writes) go round-robin over the mounts, the order
// rotating every round, so machine load drifts over all strategies alike.
// Per strategy: the walk times, entries per walk, and every operation's
// latency. See docs/repro.md ("Cost").
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "repro/report.h"
#include "repro/scenarios.h"

namespace antares::repro {

// Measures `strategies` with s.cost_rounds warm walks each of an
// s.cost_files repository at s.cost_ttl_ms. A strategy that cannot be
// mounted gets a row with a note and no walks. *config receives what was
// measured (files, ttl, rounds) for the report.
std::vector<CostRow> run_cost(const Settings& s, const std::vector<std::string>& strategies, Progress* progress,
                              nlohmann::json* config);

}  // namespace antares::repro
