#include "mock-mega/faults.h"

#include <algorithm>

namespace antares::mock {

const char* fault_kind_name(FaultKind k) {
  switch (k) {
    case FaultKind::latency: return "latency";
    case FaultKind::status: return "status";
    case FaultKind::reset: return "reset";
    case FaultKind::truncate: return "truncate";
    case FaultKind::malformed: return "malformed";
  }
  return "status";
}

Result<std::vector<Fault>> parse_faults(const nlohmann::json& j) {
  const nlohmann::json* list = &j;
  if (j.is_object()) {
    if (!j.contains("faults")) return Error::from_errno(EINVAL, "expected a list of faults or {\"faults\":[...]}");
    list = &j.at("faults");
  }
  if (!list->is_array()) return Error::from_errno(EINVAL, "faults must be a JSON array");
  std::vector<Fault> out;
  for (size_t i = 0; i < list->size(); ++i) {
    const auto& f = (*list)[i];
    auto bad = [&](const std::string& what) {
      return Error::from_errno(EINVAL, "fault " + std::to_string(i) + ": " + what);
    };
    if (!f.is_object()) return bad("must be an object");
    Fault x;
    if (f.contains("endpoint")) {
      if (!f["endpoint"].is_string()) return bad("endpoint must be a string");
      x.endpoint = f["endpoint"].get<std::string>();
      if (x.endpoint != "*" && std::none_of(std::begin(kEndpoints), std::end(kEndpoints),
                                            [&](const char* e) { return x.endpoint == e; }))
        return bad("unknown endpoint '" + x.endpoint + "' (content-hash, dir-hash, blob, files-list, *)");
    }
    if (!f.contains("kind") || !f["kind"].is_string()) return bad("kind is required (latency, status, reset, truncate, malformed)");
    std::string kind = f["kind"].get<std::string>();
    if (kind == "latency") x.kind = FaultKind::latency;
    else if (kind == "status" || kind == "error") x.kind = FaultKind::status;
    else if (kind == "reset") x.kind = FaultKind::reset;
    else if (kind == "truncate") x.kind = FaultKind::truncate;
    else if (kind == "malformed") x.kind = FaultKind::malformed;
    else return bad("unknown kind '" + kind + "'");
    if (f.contains("status")) {
      if (!f["status"].is_number_integer()) return bad("status must be an integer");
      x.status = f["status"].get<int>();
      if (x.status < 400 || x.status > 599) return bad("status must be 4xx or 5xx");
    }
    if (f.contains("latency_ms")) {
      if (!f["latency_ms"].is_number_unsigned() || f["latency_ms"].get<uint64_t>() > 600000)
        return bad("latency_ms must be an integer in [0, 600000]");
      x.latency_ms = f["latency_ms"].get<uint32_t>();
    }
    if (x.kind == FaultKind::latency && !f.contains("latency_ms")) return bad("latency needs latency_ms");
    if (f.contains("probability")) {
      if (!f["probability"].is_number()) return bad("probability must be a number");
      x.probability = f["probability"].get<double>();
      if (!(x.probability >= 0 && x.probability <= 1)) return bad("probability must be in [0, 1]");
    }
    if (f.contains("count")) {
      if (!f["count"].is_number_unsigned()) return bad("count must be a non-negative integer");
      x.count = f["count"].get<uint64_t>();
    }
    out.push_back(x);
  }
  return out;
}

nlohmann::json faults_to_json(const std::vector<Fault>& faults) {
  auto arr = nlohmann::json::array();
  for (const auto& f : faults) {
    nlohmann::json j = {{"endpoint", f.endpoint}, {"kind", fault_kind_name(f.kind)}, {"probability", f.probability}};
    if (f.kind == FaultKind::status) j["status"] = f.status;
    if (f.kind == FaultKind::latency) j["latency_ms"] = f.latency_ms;
    if (f.count) j["count"] = *f.count;
    arr.push_back(j);
  }
  return arr;
}

void FaultTable::set(std::vector<Fault> faults, std::optional<uint64_t> seed) {
  std::lock_guard lock(mu_);
  faults_ = std::move(faults);
  if (seed) rng_.reseed(*seed);
}

std::vector<Fault> FaultTable::get() const {
  std::lock_guard lock(mu_);
  return faults_;
}

FaultDecision FaultTable::decide(const std::string& endpoint) {
  std::lock_guard lock(mu_);
  FaultDecision d;
  for (auto& f : faults_) {
    if (f.endpoint != "*" && f.endpoint != endpoint) continue;
    if (f.count && *f.count == 0) continue;
    if (f.kind != FaultKind::latency && d.failure) continue;  // one failure per request
    if (f.probability < 1.0 && !rng_.chance(f.probability)) continue;
    if (f.count) --*f.count;
    if (f.kind == FaultKind::latency) d.latency_ms += f.latency_ms;
    else d.failure = f;
  }
  std::erase_if(faults_, [](const Fault& f) { return f.count && *f.count == 0; });
  return d;
}

}  // namespace antares::mock
