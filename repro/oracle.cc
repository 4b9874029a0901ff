#include "repro/oracle.h"

#include <algorithm>
#include <cerrno>
#include <climits>

namespace antares::repro {
namespace {

using nlohmann::json;

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}
std::string dir_prefix(const std::string& dir) { return dir == "/" ? dir : dir + "/"; }

std::optional<Oid> oid_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return Oid::from_hex(it->get<std::string>());
}
std::string str_field(const json& j, const char* name) {
  auto it = j.find(name);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

const char* read_class_name(ReadClass c) {
  switch (c) {
    case ReadClass::fresh: return "fresh";
    case ReadClass::stale_within: return "stale_within_window";
    case ReadClass::stale_beyond: return "stale_beyond_window";
    case ReadClass::wrong: return "wrong";
    case ReadClass::unknown: return "unknown";
  }
  return "unknown";
}

const char* err_class_name(ErrClass c) {
  switch (c) {
    case ErrClass::estale: return "estale";
    case ErrClass::enoent_expected: return "enoent_expected";
    case ErrClass::enoent_exists: return "enoent_exists";
    case ErrClass::other: return "other_error";
  }
  return "other_error";
}

std::optional<LogEntry> LogEntry::from_json(const json& j) {
  if (!j.is_object()) return std::nullopt;
  auto id = j.find("id");
  auto t = j.find("time_ms");
  if (id == j.end() || !id->is_number_unsigned() || t == j.end() || !t->is_number_integer()) return std::nullopt;
  LogEntry e;
  e.id = id->get<uint64_t>();
  e.time_us = t->get<int64_t>() * 1000;
  e.kind = str_field(j, "kind");
  e.path = str_field(j, "path");
  e.to = str_field(j, "to");
  e.action = str_field(j, "action");
  if (auto c = j.find("cl"); c != j.end() && c->is_number_unsigned()) e.cl = c->get<uint32_t>();
  e.old_oid = oid_field(j, "old_oid");
  e.new_oid = oid_field(j, "new_oid");
  if (e.kind.empty()) return std::nullopt;
  return e;
}

json LogEntry::to_json() const {
  json j{{"id", id}, {"time_ms", time_us / 1000}, {"kind", kind}, {"path", path}};
  if (!to.empty()) j["to"] = to;
  if (kind == "cl") {
    j["cl"] = cl;
    j["action"] = action;
  }
  j["old_oid"] = old_oid ? json(old_oid->hex()) : json(nullptr);
  j["new_oid"] = new_oid ? json(new_oid->hex()) : json(nullptr);
  return j;
}

void History::add_initial_file(const std::string& path, const Oid& oid) {
  lower_[path] = Timeline{{INT64_MIN, oid}};
}

void History::add_initial_cl(const std::string& path, std::optional<Oid> sha, bool deleted) {
  cl_files_[path] = {{INT64_MIN, deleted ? ClVersion::whiteout : ClVersion::present, deleted ? std::nullopt : sha}};
}

std::optional<Oid> History::state_at(const Timeline& tl, int64_t t) {
  std::optional<Oid> s;
  for (const auto& v : tl) {
    if (v.from_us > t) break;
    s = v.oid;
  }
  return s;
}

void History::set_lower(const std::string& path, int64_t t, std::optional<Oid> oid, const std::optional<Oid>& old_oid) {
  auto& tl = lower_[path];
  bool& touched = touched_[path];
  if (tl.empty()) {
    tl.push_back({INT64_MIN, old_oid});
  } else if (!touched && tl.size() == 1) {
    // The first change the log shows knows the true earlier state, even if the
    // snapshot raced with it.
    tl[0].oid = old_oid;
  }
  touched = true;
  tl.push_back({t, oid});
}

std::optional<Oid> History::latest(const Timeline& tl) { return tl.empty() ? std::nullopt : tl.back().oid; }

std::vector<std::string> History::present_now_under(const std::string& dir) const {
  std::vector<std::string> out;
  std::string prefix = dir_prefix(dir);
  for (auto it = lower_.lower_bound(prefix); it != lower_.end() && starts_with(it->first, prefix); ++it)
    if (latest(it->second)) out.push_back(it->first);
  return out;
}

void History::apply(const LogEntry& e) {
  if (e.id != 0) {
    if (e.id <= last_id_) return;
    last_id_ = e.id;
  }
  log_.push_back(e);
  const int64_t t = e.time_us;
  if (e.kind == "modify" || e.kind == "replace") {
    set_lower(e.path, t, e.new_oid, e.old_oid);
  } else if (e.kind == "add") {
    set_lower(e.path, t, e.new_oid, std::nullopt);
  } else if (e.kind == "delete") {
    // Entries apply in log order: "before this entry" is each timeline's last
    // point, not the state a microsecond earlier (a batch shares one time).
    auto it = lower_.find(e.path);
    bool is_file = it != lower_.end() && latest(it->second).has_value();
    if (is_file || present_now_under(e.path).empty()) {
      set_lower(e.path, t, std::nullopt, e.old_oid);
    } else {
      for (const auto& f : present_now_under(e.path)) set_lower(f, t, std::nullopt, latest(lower_[f]));
    }
  } else if (e.kind == "rename") {
    std::optional<Oid> oid = e.new_oid ? e.new_oid : e.old_oid;
    set_lower(e.path, t, std::nullopt, e.old_oid ? e.old_oid : oid);
    set_lower(e.to, t, oid, std::nullopt);
  } else if (e.kind == "rename_dir") {
    for (const auto& f : present_now_under(e.path)) {
      auto oid = latest(lower_[f]);
      set_lower(f, t, std::nullopt, oid);
      set_lower(e.to + f.substr(e.path.size()), t, oid, std::nullopt);
    }
  } else if (e.kind == "cl") {
    if (!cl_ || e.cl != *cl_ || e.path.empty()) return;
    auto& tl = cl_files_[e.path];
    if (tl.empty()) tl.push_back({INT64_MIN, ClVersion::none, std::nullopt});
    if (e.action == "new" || e.action == "modified") tl.push_back({t, ClVersion::present, e.new_oid});
    else if (e.action == "deleted") tl.push_back({t, ClVersion::whiteout, std::nullopt});
    else tl.push_back({t, ClVersion::none, std::nullopt});  // "remove": back to the lower layer
  }
}

void History::record_upper(const std::string& path, std::optional<Oid> oid, int64_t t_us, const std::string& kind) {
  auto& tl = upper_[path];
  if (tl.empty()) tl.push_back({INT64_MIN, std::nullopt});
  tl.push_back({t_us, oid});
  LogEntry e;
  e.time_us = t_us;
  e.kind = kind;
  e.path = path;
  e.new_oid = oid;
  log_.push_back(std::move(e));
}

bool History::knows(const std::string& path) const {
  return lower_.count(path) || cl_files_.count(path) || upper_.count(path);
}

std::optional<Oid> History::at(const std::string& path, int64_t t) const {
  if (auto it = upper_.find(path); it != upper_.end())
    if (auto s = state_at(it->second, t)) return s;
  if (auto it = cl_files_.find(path); it != cl_files_.end()) {
    const ClVersion* cur = nullptr;
    for (const auto& v : it->second) {
      if (v.from_us > t) break;
      cur = &v;
    }
    if (cur && cur->state == ClVersion::present) return cur->oid;
    if (cur && cur->state == ClVersion::whiteout) return std::nullopt;
  }
  if (auto it = lower_.find(path); it != lower_.end()) return state_at(it->second, t);
  return std::nullopt;
}

void History::change_times(const std::string& path, std::vector<int64_t>* out) const {
  if (auto it = upper_.find(path); it != upper_.end())
    for (const auto& v : it->second) out->push_back(v.from_us);
  if (auto it = cl_files_.find(path); it != cl_files_.end())
    for (const auto& v : it->second) out->push_back(v.from_us);
  if (auto it = lower_.find(path); it != lower_.end())
    for (const auto& v : it->second) out->push_back(v.from_us);
}

std::vector<std::pair<int64_t, std::optional<Oid>>> History::timeline(const std::string& path) const {
  std::vector<std::pair<int64_t, std::optional<Oid>>> out;
  if (!knows(path)) return out;
  std::vector<int64_t> times{INT64_MIN};
  change_times(path, &times);
  std::sort(times.begin(), times.end());
  times.erase(std::unique(times.begin(), times.end()), times.end());
  for (int64_t t : times) {
    auto v = at(path, t);
    if (!out.empty() && out.back().second == v) continue;
    out.emplace_back(t, v);
  }
  return out;
}

std::string History::layer_at(const std::string& path, int64_t t) const {
  if (auto it = upper_.find(path); it != upper_.end())
    if (state_at(it->second, t)) return "upper";
  if (auto it = cl_files_.find(path); it != cl_files_.end()) {
    const ClVersion* cur = nullptr;
    for (const auto& v : it->second) {
      if (v.from_us > t) break;
      cur = &v;
    }
    if (cur && cur->state == ClVersion::present) return "cl";
    if (cur && cur->state == ClVersion::whiteout) return "";
  }
  if (auto it = lower_.find(path); it != lower_.end())
    if (state_at(it->second, t)) return "lower";
  return "";
}

std::vector<History::Span> History::spans(const std::string& path) const {
  std::vector<Span> out;
  auto tl = timeline(path);
  for (size_t i = 0; i < tl.size(); ++i) {
    int64_t until = i + 1 < tl.size() ? tl[i + 1].first : INT64_MAX;
    out.push_back({tl[i].first, until, tl[i].second, tl[i].second ? layer_at(path, tl[i].first) : ""});
  }
  return out;
}

std::vector<History::Span> History::allowed(const std::string& path, int64_t t0, int64_t t1,
                                            int64_t window_us) const {
  std::vector<Span> out;
  const int64_t lo = t0 - window_us - kToleranceUs, hi = t1 + kToleranceUs;
  for (auto& s : spans(path))
    if (s.oid && s.from_us <= hi && s.until_us >= lo) out.push_back(std::move(s));
  return out;
}

bool History::present_at(const std::string& path, int64_t t) const {
  if (knows(path)) return at(path, t).has_value();
  std::string prefix = dir_prefix(path);
  for (const auto* m : {&lower_, &upper_})
    for (auto it = m->lower_bound(prefix); it != m->end() && starts_with(it->first, prefix); ++it)
      if (at(it->first, t)) return true;
  for (auto it = cl_files_.lower_bound(prefix); it != cl_files_.end() && starts_with(it->first, prefix); ++it)
    if (at(it->first, t)) return true;
  return false;
}

ReadVerdict History::classify_read(const std::string& path, const Oid& oid, int64_t t0, int64_t t1,
                                   int64_t window_us) const {
  ReadVerdict v;
  auto tl = timeline(path);
  if (tl.empty()) return v;  // unknown
  const int64_t lo = t0 - kToleranceUs, hi = t1 + kToleranceUs;
  for (size_t i = 0; i < tl.size(); ++i) {
    int64_t next = i + 1 < tl.size() ? tl[i + 1].first : INT64_MAX;
    if (tl[i].first <= hi && next >= lo && tl[i].second == oid) {
      v.cls = ReadClass::fresh;
      return v;
    }
  }
  for (size_t i = tl.size(); i-- > 0;) {
    if (i + 1 >= tl.size() || tl[i].second != oid) continue;
    int64_t superseded = tl[i + 1].first;
    v.age_us = std::max<int64_t>(0, t0 - superseded);
    v.cls = v.age_us <= window_us ? ReadClass::stale_within : ReadClass::stale_beyond;
    v.cause = cause(path, superseded);
    return v;
  }
  v.cls = ReadClass::wrong;
  v.cause = cause(path, t1);
  return v;
}

ErrClass History::classify_error(const std::string& path, int err, int64_t t0, int64_t t1, int64_t window_us) const {
  if (err == ESTALE) return ErrClass::estale;
  if (err != ENOENT) return ErrClass::other;
  std::vector<int64_t> samples{t0 - window_us, t0, t1};
  if (knows(path)) {
    change_times(path, &samples);
  } else {
    std::string prefix = dir_prefix(path);
    bool any = false;
    for (const auto* m : {&lower_, &upper_})
      for (auto it = m->lower_bound(prefix); it != m->end() && starts_with(it->first, prefix); ++it) {
        any = true;
        change_times(it->first, &samples);
      }
    for (auto it = cl_files_.lower_bound(prefix); it != cl_files_.end() && starts_with(it->first, prefix); ++it) {
      any = true;
      change_times(it->first, &samples);
    }
    if (!any) return ErrClass::other;  // a path the oracle never heard of
  }
  for (int64_t s : samples) {
    if (s != INT64_MIN && (s < t0 - window_us || s > t1 + kToleranceUs)) continue;
    if (!present_at(path, s == INT64_MIN ? t0 - window_us : s)) return ErrClass::enoent_expected;
    // Just before a change, too: a name that vanished and came back.
    if (s != INT64_MIN && s > t0 - window_us && !present_at(path, s - 1)) return ErrClass::enoent_expected;
  }
  return ErrClass::enoent_exists;
}

std::optional<LogEntry> History::cause(const std::string& path, int64_t t) const {
  auto touches = [&](const std::string& p) {
    return !p.empty() && (p == path || starts_with(path, dir_prefix(p)) || starts_with(p, dir_prefix(path)));
  };
  for (size_t i = log_.size(); i-- > 0;) {
    const auto& e = log_[i];
    if (e.time_us > t + kToleranceUs) continue;
    if (e.kind == "cl" && (!cl_ || e.cl != *cl_)) continue;
    if (touches(e.path) || touches(e.to)) return e;
  }
  return std::nullopt;
}

}  // namespace antares::repro
