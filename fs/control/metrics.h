// Metrics: a small thread-safe registry of Prometheus counters and gauges.
// The daemon registers its counters once (ESTALE seen, retries, refreshes...)
// and hot paths keep the returned Counter&, so an increment is one relaxed
// atomic add; the registry lock is only taken to register, look up or render.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace antares::control {

// Label name/value pairs. Order does not matter: {a,b} and {b,a} name the
// same series (they are sorted by label name when registered).
using Labels = std::vector<std::pair<std::string, std::string>>;

// A monotonically increasing counter. Thread-safe; never moves once created.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

class Metrics {
 public:
  Metrics() = default;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Returns the counter `name{labels}`, creating it (at 0) on first use; the
  // same name and labels always return the same Counter. The reference stays
  // valid for the registry's lifetime. `help` is kept from the first
  // registration of the family. Programming errors (an invalid metric or
  // label name, or a name already registered as a gauge) are logged and get
  // a private counter that works but is never exported. Thread-safe.
  Counter& counter(std::string name, std::string help, Labels labels = {});

  // Registers (or replaces) the gauge `name{labels}`, whose value is fn()
  // when rendered. fn is called without the registry lock held, from the
  // rendering thread, so it may itself use this registry; it must be
  // thread-safe and must not throw. Invalid names or a clash with a counter
  // are logged and ignored. Thread-safe.
  void gauge(std::string name, std::string help, std::function<double()> fn, Labels labels = {});

  // Registers (or replaces) the counter `name{labels}` whose value is read
  // from fn: for monotonic counts another component already keeps in its
  // own atomics. fn follows the gauge rules above. Clashes with a gauge name
  // are logged and ignored. Thread-safe.
  void counter_fn(std::string name, std::string help, std::function<uint64_t()> fn, Labels labels = {});

  // Prometheus text exposition format 0.0.4: families sorted by name, each
  // with one "# HELP" and "# TYPE" line, series sorted by labels. Thread-safe.
  std::string prometheus_text() const;

  // The current value of a counter, or of a gauge (truncated toward zero,
  // negative and NaN as 0); 0 if no such series. Thread-safe.
  uint64_t value(const std::string& name, const Labels& labels = {}) const;

  // Every exported counter as {"name{k=\"v\",...}": value} (plain "name"
  // when unlabelled), for the status command. Thread-safe.
  nlohmann::json counters_json() const;

 private:
  struct Series {
    Labels labels;                       // sorted by label name
    Counter* counter = nullptr;          // counter series: owned by counters_
    std::function<uint64_t()> read;      // counter series read from elsewhere (counter_fn)
    std::function<double()> gauge;       // gauge series
  };
  struct Family {
    std::string help;
    bool is_counter = true;
    std::map<std::string, Series> series;  // by rendered label set "{a=\"1\"}"
  };

  mutable std::shared_mutex mu_;
  std::map<std::string, Family> families_;  // guarded by mu_; sorted by name
  std::deque<Counter> counters_;            // guarded by mu_; stable addresses
  std::deque<Counter> orphans_;             // guarded by mu_; counters never exported
};

// Prometheus escaping of a label value: backslash, double quote and newline.
std::string escape_label_value(const std::string& v);

}  // namespace antares::control
