// Reading counters out of Prometheus text (antares-ctl metrics, mock-mega's
// /metrics): the walk benchmark takes the difference of two scrapes around a
// walk, so it only needs the samples, summed by family and grouped by label.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace antares::bench {

struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Every sample line of a text exposition; comments, blank and malformed lines are skipped.
std::vector<PromSample> parse_prometheus(std::string_view text);

// Sum of the samples of one family whose label `label` (if non-empty) has a
// value in `values` (if non-empty).
double prom_sum(const std::vector<PromSample>& samples, std::string_view name, std::string_view label = {},
                const std::vector<std::string>& values = {});

// The samples of one family summed per value of `label`.
std::map<std::string, double> prom_by_label(const std::vector<PromSample>& samples, std::string_view name,
                                            std::string_view label);

}  // namespace antares::bench
