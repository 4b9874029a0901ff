// What a command will run, as a list of units (one scenario repetition, one
// soak, the cost measurement), so a matrix can be sliced deterministically
// into shards (`--shard K/N`) that separate machines run and `merge` joins,
// and so progress can say "run k of N" with an ETA.
//
// Sharding assigns units by estimated duration (longest first, each to the
// least loaded shard; ties to the lowest shard), which depends only on the
// command line: every shard computes the same assignment.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "common/result.h"

namespace antares::repro {

struct Unit {
  enum class Kind { scenario, soak, cost };
  Kind kind = Kind::scenario;
  std::string strategy, scenario;  // cost: strategy "all", scenario "cost"
  uint64_t seed = 0;
  int rep = 0;
  int index = 0;            // position in the whole plan
  double estimate_s = 0;    // expected duration, for sharding and the ETA
  std::string label() const;  // "[auto] lower-refresh #1 (seed 42)"
};

struct Shard {
  int k = 1, n = 1;  // this is shard k of n (1-based)
  std::string text() const { return std::to_string(k) + "/" + std::to_string(n); }
};
// "K/N" with 1 <= K <= N <= 1000.
Result<Shard> parse_shard(const std::string& text);

// The units of shard `s` of `plan`, in plan order.
std::vector<Unit> select_shard(const std::vector<Unit>& plan, Shard s);

// "1:05", "12s".
std::string clock_str(double seconds);

// Elapsed time and ETA over the units of a plan: the estimates, scaled by how
// long the finished units really took. Thread-safe: progress tickers read it
// while the main thread advances it.
class Eta {
 public:
  explicit Eta(std::vector<Unit> units);
  void begin(size_t i);  // unit i (position in units) starts
  void end();            // the current unit finished
  size_t total() const { return units_.size(); }
  // "run 3 of 27, 0:42 elapsed, ETA 2:10"
  std::string text() const;

 private:
  const std::vector<Unit> units_;
  const std::chrono::steady_clock::time_point start_;
  mutable std::mutex mu_;
  std::chrono::steady_clock::time_point unit_start_;  // guarded by mu_
  size_t current_ = 0;                                // guarded by mu_
  double done_estimate_ = 0, done_actual_ = 0;        // guarded by mu_
};

}  // namespace antares::repro
