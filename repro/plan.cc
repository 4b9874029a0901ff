#include "repro/plan.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace antares::repro {

std::string Unit::label() const {
  if (kind == Kind::cost) return "[all] cost: warm walks side by side";
  std::string s = "[" + strategy + "] " + scenario;
  if (kind == Kind::scenario) s += " #" + std::to_string(rep);
  return s + " (seed " + std::to_string(seed) + ")";
}

Result<Shard> parse_shard(const std::string& text) {
  auto bad = [&] { return Error::from_errno(EINVAL, "--shard wants K/N with 1 <= K <= N <= 1000, not '" + text + "'"); };
  size_t slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 >= text.size()) return bad();
  auto num = [](const std::string& s, int* out) {
    if (s.empty() || s.size() > 4 || s.find_first_not_of("0123456789") != std::string::npos) return false;
    *out = atoi(s.c_str());
    return true;
  };
  Shard s;
  if (!num(text.substr(0, slash), &s.k) || !num(text.substr(slash + 1), &s.n)) return bad();
  if (s.n < 1 || s.n > 1000 || s.k < 1 || s.k > s.n) return bad();
  return s;
}

std::vector<Unit> select_shard(const std::vector<Unit>& plan, Shard s) {
  if (s.n <= 1) return plan;
  std::vector<size_t> order(plan.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return plan[a].estimate_s > plan[b].estimate_s; });
  std::vector<double> load(static_cast<size_t>(s.n), 0);
  std::vector<bool> mine(plan.size(), false);
  for (size_t i : order) {
    size_t best = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    load[best] += plan[i].estimate_s;
    mine[i] = static_cast<int>(best) == s.k - 1;
  }
  std::vector<Unit> out;
  for (size_t i = 0; i < plan.size(); ++i)
    if (mine[i]) out.push_back(plan[i]);
  return out;
}

std::string clock_str(double seconds) {
  long s = static_cast<long>(seconds + 0.5);
  char b[32];
  if (s >= 3600) snprintf(b, sizeof b, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else if (s >= 60) snprintf(b, sizeof b, "%ld:%02ld", s / 60, s % 60);
  else snprintf(b, sizeof b, "%lds", s);
  return b;
}

Eta::Eta(std::vector<Unit> units)
    : units_(std::move(units)), start_(std::chrono::steady_clock::now()), unit_start_(start_) {}

void Eta::begin(size_t i) {
  std::lock_guard lock(mu_);
  current_ = i;
  unit_start_ = std::chrono::steady_clock::now();
}

void Eta::end() {
  std::lock_guard lock(mu_);
  if (current_ >= units_.size()) return;
  done_estimate_ += units_[current_].estimate_s;
  done_actual_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - unit_start_).count();
}

std::string Eta::text() const {
  std::lock_guard lock(mu_);
  auto now = std::chrono::steady_clock::now();
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double in_unit = std::chrono::duration<double>(now - unit_start_).count();
  double scale = done_estimate_ > 0 ? done_actual_ / done_estimate_ : 1.0;
  double left = 0;
  for (size_t i = current_; i < units_.size(); ++i) left += units_[i].estimate_s * scale;
  left = std::max(0.0, left - in_unit);
  return "run " + std::to_string(std::min(current_ + 1, units_.size())) + " of " + std::to_string(units_.size()) +
         ", " + clock_str(elapsed) + " elapsed, ETA " + clock_str(left);
}

}  // namespace antares::repro
