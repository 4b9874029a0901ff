// Injectable HTTP faults for mock-mega, seeded so every run can be replayed.
// A fault targets one endpoint (or "*"), fires with a probability and/or for
// the next N matching requests, and does one thing: add latency, answer with
// an error status, reset the connection, truncate the body, or corrupt it
// (malformed JSON on listings, flipped bytes on blobs).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "common/rng.h"

namespace antares::mock {

enum class FaultKind { latency, status, reset, truncate, malformed };
const char* fault_kind_name(FaultKind k);

struct Fault {
  std::string endpoint = "*";  // content-hash, dir-hash, blob, files-list, or *
  FaultKind kind = FaultKind::status;
  int status = 503;          // kind status
  uint32_t latency_ms = 0;   // kind latency
  double probability = 1.0;  // chance that a matching request is hit
  std::optional<uint64_t> count;  // fires at most this many times, then expires
};

// What to do to one request: total added latency and at most one failure.
struct FaultDecision {
  uint32_t latency_ms = 0;
  std::optional<Fault> failure;
};

inline constexpr const char* kEndpoints[] = {"content-hash", "dir-hash", "blob", "files-list"};

// Parses a fault list: either [{...}, ...] or {"faults":[...], "seed":S}.
// Error (EINVAL) names the bad field and its index.
Result<std::vector<Fault>> parse_faults(const nlohmann::json& j);
nlohmann::json faults_to_json(const std::vector<Fault>& faults);

// Thread-safe.
class FaultTable {
 public:
  explicit FaultTable(uint64_t seed) : rng_(seed) {}
  void set(std::vector<Fault> faults, std::optional<uint64_t> seed = std::nullopt);
  std::vector<Fault> get() const;
  FaultDecision decide(const std::string& endpoint);

 private:
  mutable std::mutex mu_;
  std::vector<Fault> faults_;  // guarded by mu_
  Rng rng_;                    // guarded by mu_
};

}  // namespace antares::mock
