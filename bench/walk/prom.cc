#include "bench/walk/prom.h"

#include <algorithm>
#include <cstdlib>

namespace antares::bench {
namespace {

// Parses `{a="x",b="y\"z"}` starting at s[i] == '{'; returns the index after '}' or npos.
size_t parse_labels(std::string_view s, size_t i, std::map<std::string, std::string>* out) {
  ++i;
  while (i < s.size() && s[i] != '}') {
    size_t eq = s.find('=', i);
    if (eq == std::string_view::npos || eq + 1 >= s.size() || s[eq + 1] != '"') return std::string_view::npos;
    std::string key(s.substr(i, eq - i));
    std::string val;
    size_t j = eq + 2;
    for (; j < s.size() && s[j] != '"'; ++j) {
      if (s[j] == '\\' && j + 1 < s.size()) {
        ++j;
        val += s[j] == 'n' ? '\n' : s[j];
      } else {
        val += s[j];
      }
    }
    if (j >= s.size()) return std::string_view::npos;
    (*out)[key] = val;
    i = j + 1;
    if (i < s.size() && s[i] == ',') ++i;
  }
  return i < s.size() ? i + 1 : std::string_view::npos;
}

}  // namespace

std::vector<PromSample> parse_prometheus(std::string_view text) {
  std::vector<PromSample> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (line.empty() || line[0] == '#') continue;
    PromSample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = std::string(line.substr(0, i));
    if (s.name.empty()) continue;
    if (i < line.size() && line[i] == '{') {
      i = parse_labels(line, i, &s.labels);
      if (i == std::string_view::npos) continue;
    }
    while (i < line.size() && line[i] == ' ') ++i;
    std::string num(line.substr(i, line.find(' ', i) - i));  // a timestamp may follow
    char* end = nullptr;
    s.value = std::strtod(num.c_str(), &end);
    if (num.empty() || *end) continue;
    out.push_back(std::move(s));
  }
  return out;
}

double prom_sum(const std::vector<PromSample>& samples, std::string_view name, std::string_view label,
                const std::vector<std::string>& values) {
  double sum = 0;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    if (!label.empty() && !values.empty()) {
      auto it = s.labels.find(std::string(label));
      if (it == s.labels.end() || std::find(values.begin(), values.end(), it->second) == values.end()) continue;
    }
    sum += s.value;
  }
  return sum;
}

std::map<std::string, double> prom_by_label(const std::vector<PromSample>& samples, std::string_view name,
                                            std::string_view label) {
  std::map<std::string, double> out;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    auto it = s.labels.find(std::string(label));
    out[it == s.labels.end() ? std::string() : it->second] += s.value;
  }
  return out;
}

}  // namespace antares::bench
