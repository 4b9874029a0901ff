#include "repro/report.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>

#include "repro/summary.h"

namespace antares::repro {
namespace {

using nlohmann::json;

constexpr size_t kMaxNotablePerRun = 5000;

std::string repo_path(const std::string& rel) { return "/" + rel; }

}  // namespace

std::string errno_name(int e) {
  switch (e) {
    case 0: return "";
    case ESTALE: return "ESTALE";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case ENOTCONN: return "ENOTCONN";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EEXIST: return "EEXIST";
    case ENOTEMPTY: return "ENOTEMPTY";
    case EROFS: return "EROFS";
    case EXDEV: return "EXDEV";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    default: return "errno " + std::to_string(e);
  }
}

namespace {

std::string fmt(const char* f, double v) {
  char b[64];
  snprintf(b, sizeof b, f, v);
  return b;
}

// Field readers that never throw: a report from another version of the tool
// (or a hand-edited one) gives defaults, not an exception.
template <class T>
T get_or(const json& j, const char* key, T def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    return def;
  }
}
int64_t ms_to_us(const json& j, const char* key) { return static_cast<int64_t>(std::llround(get_or(j, key, 0.0) * 1000)); }

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

}  // namespace

// ----------------------------------------------------------------- helpers

std::string us_str(uint32_t us) {
  if (us >= 1000000) return fmt("%.2fs", us / 1e6);
  if (us >= 1000) return fmt("%.1fms", us / 1e3);
  return std::to_string(us) + "us";
}

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string escape_bytes(const std::string& bytes, size_t max) {
  std::string o;
  for (size_t i = 0; i < bytes.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c == '\\') o += "\\\\";
    else if (c >= 0x20 && c < 0x7f) o += static_cast<char>(c);
    else {
      char b[8];
      snprintf(b, sizeof b, "\\x%02x", c);
      o += b;
    }
  }
  if (bytes.size() > max) o += "...";
  return o;
}

std::string shell_command(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    bool plain = !a.empty();
    for (char c : a)
      if (!(isalnum(static_cast<unsigned char>(c)) || strchr("-_./=:,+%@", c))) plain = false;
    if (i) out += ' ';
    if (plain) {
      out += a;
    } else {
      out += '\'';
      for (char c : a) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

// ----------------------------------------------------------------- Notable

json Notable::to_json() const {
  json j{{"time_ms", t_us / 1000.0}, {"kind", kind}, {"op", op}, {"path", path}, {"latency_us", latency_us}};
  if (err) {
    j["errno"] = err;
    j["error"] = errno_name(err);
  }
  if (age_us) j["age_ms"] = age_us / 1000.0;
  if (!layer.empty()) j["layer"] = layer;
  if (!layer_path.empty()) j["layer_path"] = layer_path;
  j["cause"] = cause ? cause->to_json() : json(nullptr);
  if (!read_oid.empty()) {
    j["read"] = {{"oid", read_oid}, {"size", read_size}, {"head", read_head}};
    json al = json::array();
    for (const auto& a : allowed)
      al.push_back({{"oid", a.oid},
                    {"layer", a.layer},
                    {"from_ms", a.from_us == INT64_MIN ? json(nullptr) : json(a.from_us / 1000.0)},
                    {"until_ms", a.until_us == INT64_MAX ? json(nullptr) : json(a.until_us / 1000.0)}});
    j["allowed"] = std::move(al);
    if (!diagnosis.empty()) j["diagnosis"] = diagnosis;
  }
  return j;
}

std::optional<Notable> Notable::from_json(const json& j) {
  if (!j.is_object()) return std::nullopt;
  Notable n;
  n.t_us = ms_to_us(j, "time_ms");
  n.kind = get_or<std::string>(j, "kind", "");
  n.op = get_or<std::string>(j, "op", "");
  n.path = get_or<std::string>(j, "path", "");
  n.err = get_or(j, "errno", 0);
  n.latency_us = get_or<uint32_t>(j, "latency_us", 0);
  n.age_us = ms_to_us(j, "age_ms");
  n.layer = get_or<std::string>(j, "layer", "");
  n.layer_path = get_or<std::string>(j, "layer_path", "");
  if (auto c = j.find("cause"); c != j.end() && c->is_object()) n.cause = LogEntry::from_json(*c);
  if (auto r = j.find("read"); r != j.end() && r->is_object()) {
    n.read_oid = get_or<std::string>(*r, "oid", "");
    n.read_size = get_or<uint64_t>(*r, "size", 0);
    n.read_head = get_or<std::string>(*r, "head", "");
  }
  if (auto al = j.find("allowed"); al != j.end() && al->is_array())
    for (const auto& a : *al) {
      AllowedVersion v;
      v.oid = get_or<std::string>(a, "oid", "");
      v.layer = get_or<std::string>(a, "layer", "");
      v.from_us = a.contains("from_ms") && !a["from_ms"].is_null() ? ms_to_us(a, "from_ms") : INT64_MIN;
      v.until_us = a.contains("until_ms") && !a["until_ms"].is_null() ? ms_to_us(a, "until_ms") : INT64_MAX;
      n.allowed.push_back(std::move(v));
    }
  n.diagnosis = get_or<std::string>(j, "diagnosis", "");
  if (n.kind.empty()) return std::nullopt;
  return n;
}

// ----------------------------------------------------------------- latency

size_t LatencyHistogram::bucket(uint32_t us) {
  if (us < 256) return us;
  int e = 31 - __builtin_clz(us);  // >= 8
  size_t sub = (us >> (e - 7)) & 127;
  return 256 + static_cast<size_t>(e - 8) * 128 + sub;
}

uint32_t LatencyHistogram::lower_bound(size_t b) {
  if (b < 256) return static_cast<uint32_t>(b);
  size_t e = (b - 256) / 128 + 8, sub = (b - 256) % 128;
  return static_cast<uint32_t>((128 + sub) << (e - 7));
}

void LatencyHistogram::add(uint32_t us) {
  size_t b = bucket(us);
  if (counts_.size() <= b) counts_.resize(b + 1);
  ++counts_[b];
  ++count_;
}

void LatencyHistogram::merge(const LatencyHistogram& o) {
  if (counts_.size() < o.counts_.size()) counts_.resize(o.counts_.size());
  for (size_t i = 0; i < o.counts_.size(); ++i) counts_[i] += o.counts_[i];
  count_ += o.count_;
}

uint32_t LatencyHistogram::percentile(double p) const {
  if (!count_) return 0;
  // The k-th smallest value, k = ceil(p% of n) (at least 1), as in nearest-rank.
  uint64_t k = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count_))));
  uint64_t seen = 0;
  for (size_t b = 0; b < counts_.size(); ++b) {
    seen += counts_[b];
    if (seen >= k) return lower_bound(b);
  }
  return lower_bound(counts_.size() - 1);
}

json LatencyHistogram::to_json() const {
  json j = json::object();
  for (size_t b = 0; b < counts_.size(); ++b)
    if (counts_[b]) j[std::to_string(lower_bound(b))] = counts_[b];
  return j;
}

LatencyHistogram LatencyHistogram::from_json(const json& j) {
  LatencyHistogram h;
  if (!j.is_object()) return h;
  for (const auto& [k, v] : j.items()) {
    char* end = nullptr;
    unsigned long us = strtoul(k.c_str(), &end, 10);
    if (!end || *end || !v.is_number_unsigned() || us > UINT32_MAX) continue;
    size_t b = bucket(static_cast<uint32_t>(us));
    if (h.counts_.size() <= b) h.counts_.resize(b + 1);
    h.counts_[b] += v.get<uint64_t>();
    h.count_ += v.get<uint64_t>();
  }
  return h;
}

void RunStats::merge(const RunStats& o) {
  ops += o.ops, reads += o.reads, bytes += o.bytes;
  fresh += o.fresh, stale_within += o.stale_within, stale_beyond += o.stale_beyond, wrong += o.wrong,
      unknown += o.unknown;
  estale += o.estale, enoent_exists += o.enoent_exists, enoent_expected += o.enoent_expected,
      other_errors += o.other_errors;
  for (int i = 0; i < kOpCount; ++i) op_counts[i] += o.op_counts[i];
  latency.merge(o.latency);
}

// ----------------------------------------------------------------- RunRecord

json RunRecord::to_json(bool with_events) const {
  json ops = json::object();
  for (int i = 0; i < kOpCount; ++i)
    if (stats.op_counts[i]) ops[op_name(static_cast<Op>(i))] = stats.op_counts[i];
  double secs = std::max(1e-6, (end_us - start_us) / 1e6);
  json j{{"mode", mode},
         {"strategy", strategy},
         {"scenario", scenario},
         {"rep", rep},
         {"seed", seed},
         {"unit", unit},
         {"start_ms", start_us / 1000.0},
         {"end_ms", end_us / 1000.0},
         {"seconds", secs},
         {"setup_failed", setup_failed},
         {"interrupted", interrupted},
         {"reproduced", reproduced},
         {"persistent", persistent},
         {"converged", converged},
         {"ok", ok},
         {"note", note},
         {"target", target},
         {"ops", stats.ops},
         {"op_counts", ops},
         {"reads", stats.reads},
         {"bytes", stats.bytes},
         {"fresh", stats.fresh},
         {"stale_within_window", stats.stale_within},
         {"stale_beyond_window", stats.stale_beyond},
         {"wrong", stats.wrong},
         {"unknown", stats.unknown},
         {"estale", stats.estale},
         {"enoent_exists", stats.enoent_exists},
         {"enoent_expected", stats.enoent_expected},
         {"other_errors", stats.other_errors},
         {"throughput_ops_per_s", stats.ops / secs},
         {"latency_p50_us", stats.percentile_us(50)},
         {"latency_p99_us", stats.percentile_us(99)},
         {"latency_histogram_us", stats.latency.to_json()},
         {"fs_estale_logged", fs_estale.size()},
         {"fs_status", fs_status}};
  if (!kept_dir.empty()) j["kept_dir"] = kept_dir;
  if (with_events) {
    json ev = json::array();
    for (const auto& n : notable) ev.push_back(n.to_json());
    j["events"] = std::move(ev);
    json mk = json::array();
    for (const auto& m : markers) mk.push_back({{"time_ms", m.t_us / 1000.0}, {"kind", m.kind}, {"detail", m.detail}});
    j["markers"] = std::move(mk);
    json fe = json::array();
    for (const auto& e : fs_estale)
      fe.push_back({{"time_ms", e.t_us / 1000.0}, {"layer", e.layer}, {"op", e.op}, {"path", e.path}, {"node", e.node}});
    j["fs_estale"] = std::move(fe);
  }
  return j;
}

Result<RunRecord> RunRecord::from_json(const json& j) {
  if (!j.is_object() || !j.contains("mode") || !j.contains("strategy"))
    return Error::from_errno(EINVAL, "a run needs \"mode\" and \"strategy\"");
  RunRecord r;
  r.mode = get_or<std::string>(j, "mode", "");
  r.strategy = get_or<std::string>(j, "strategy", "");
  r.scenario = get_or<std::string>(j, "scenario", "");
  r.rep = get_or(j, "rep", 0);
  r.seed = get_or<uint64_t>(j, "seed", 0);
  r.unit = get_or(j, "unit", -1);
  r.start_us = ms_to_us(j, "start_ms");
  r.end_us = ms_to_us(j, "end_ms");
  r.setup_failed = get_or(j, "setup_failed", false);
  r.interrupted = get_or(j, "interrupted", false);
  r.reproduced = get_or(j, "reproduced", false);
  r.persistent = get_or(j, "persistent", false);
  r.converged = get_or(j, "converged", false);
  r.ok = get_or(j, "ok", false);
  r.note = get_or<std::string>(j, "note", "");
  r.target = get_or<std::string>(j, "target", "");
  r.kept_dir = get_or<std::string>(j, "kept_dir", "");
  RunStats& s = r.stats;
  s.ops = get_or<uint64_t>(j, "ops", 0);
  s.reads = get_or<uint64_t>(j, "reads", 0);
  s.bytes = get_or<uint64_t>(j, "bytes", 0);
  s.fresh = get_or<uint64_t>(j, "fresh", 0);
  s.stale_within = get_or<uint64_t>(j, "stale_within_window", 0);
  s.stale_beyond = get_or<uint64_t>(j, "stale_beyond_window", 0);
  s.wrong = get_or<uint64_t>(j, "wrong", 0);
  s.unknown = get_or<uint64_t>(j, "unknown", 0);
  s.estale = get_or<uint64_t>(j, "estale", 0);
  s.enoent_exists = get_or<uint64_t>(j, "enoent_exists", 0);
  s.enoent_expected = get_or<uint64_t>(j, "enoent_expected", 0);
  s.other_errors = get_or<uint64_t>(j, "other_errors", 0);
  if (auto oc = j.find("op_counts"); oc != j.end() && oc->is_object())
    for (const auto& [k, v] : oc->items()) {
      Op op;
      if (parse_op(k, &op) && v.is_number_unsigned()) s.op_counts[static_cast<int>(op)] = v.get<uint64_t>();
    }
  if (auto h = j.find("latency_histogram_us"); h != j.end()) s.latency = LatencyHistogram::from_json(*h);
  if (auto ev = j.find("events"); ev != j.end() && ev->is_array())
    for (const auto& e : *ev)
      if (auto n = Notable::from_json(e)) r.notable.push_back(std::move(*n));
  if (auto mk = j.find("markers"); mk != j.end() && mk->is_array())
    for (const auto& m : *mk)
      r.markers.push_back({ms_to_us(m, "time_ms"), get_or<std::string>(m, "kind", ""), get_or<std::string>(m, "detail", "")});
  if (auto fe = j.find("fs_estale"); fe != j.end() && fe->is_array())
    for (const auto& e : *fe) {
      FsEstale f;
      f.t_us = ms_to_us(e, "time_ms");
      f.layer = get_or<std::string>(e, "layer", "");
      f.op = get_or<std::string>(e, "op", "");
      f.path = get_or<std::string>(e, "path", "");
      f.node = get_or<uint64_t>(e, "node", 0);
      r.fs_estale.push_back(std::move(f));
    }
  if (auto st = j.find("fs_status"); st != j.end()) r.fs_status = *st;
  return r;
}

// ----------------------------------------------------------------- cost

double CostRow::median_seconds() const {
  if (walk_seconds.empty()) return 0;
  std::vector<double> v = walk_seconds;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double CostRow::entries_per_s() const {
  double m = median_seconds();
  return m > 0 ? static_cast<double>(entries_per_walk) / m : 0;
}

std::pair<double, double> CostRow::rate_range() const {
  if (walk_seconds.empty()) return {0, 0};
  auto [lo, hi] = std::minmax_element(walk_seconds.begin(), walk_seconds.end());
  double e = static_cast<double>(entries_per_walk);
  return {*hi > 0 ? e / *hi : 0, *lo > 0 ? e / *lo : 0};
}

json CostRow::to_json() const {
  return json{{"strategy", strategy},
              {"walk_seconds", walk_seconds},
              {"median_walk_seconds", median_seconds()},
              {"entries_per_walk", entries_per_walk},
              {"ops_per_walk", ops_per_walk},
              {"entries_per_s", entries_per_s()},
              {"entries_per_s_min", rate_range().first},
              {"entries_per_s_max", rate_range().second},
              {"errors", errors},
              {"latency_p50_us", latency.percentile(50)},
              {"latency_p99_us", latency.percentile(99)},
              {"latency_histogram_us", latency.to_json()},
              {"note", note}};
}

CostRow CostRow::from_json(const json& j) {
  CostRow c;
  c.strategy = get_or<std::string>(j, "strategy", "");
  c.walk_seconds = get_or<std::vector<double>>(j, "walk_seconds", {});
  c.entries_per_walk = get_or<uint64_t>(j, "entries_per_walk", 0);
  c.ops_per_walk = get_or<uint64_t>(j, "ops_per_walk", 0);
  c.errors = get_or<uint64_t>(j, "errors", 0);
  if (auto h = j.find("latency_histogram_us"); h != j.end()) c.latency = LatencyHistogram::from_json(*h);
  c.note = get_or<std::string>(j, "note", "");
  return c;
}

// ----------------------------------------------------------------- analysis

std::string diagnose_bytes(const std::string& read, const std::vector<std::pair<std::string, std::string>>& versions) {
  constexpr size_t kPage = 4096;
  std::string out = std::to_string(read.size()) + " B read";
  for (const auto& [label, bytes] : versions) {
    if (bytes == read) return out + "; identical to " + label;
  }
  // Which version each page of the read equals at the same offset.
  struct Run {
    size_t from, to;
    std::string what;
  };
  std::vector<Run> runs;
  for (size_t off = 0; off < read.size(); off += kPage) {
    size_t len = std::min(kPage, read.size() - off);
    std::string_view page(read.data() + off, len);
    std::string what;
    for (const auto& [label, bytes] : versions)
      if (bytes.size() >= off + len && std::string_view(bytes).substr(off, len) == page) {
        what = label;
        break;
      }
    if (what.empty()) {
      if (page.find_first_not_of('\0') == std::string_view::npos) {
        what = "zeros";
      } else {
        // The closest version: the longest matching prefix of this page.
        size_t best = 0;
        std::string best_label;
        for (const auto& [label, bytes] : versions) {
          size_t k = 0;
          while (k < len && off + k < bytes.size() && bytes[off + k] == page[k]) ++k;
          if (k > best || best_label.empty()) best = k, best_label = label;
        }
        what = best_label.empty() ? "no known version"
                                  : "no known version (matches " + best_label + " up to byte " +
                                        std::to_string(off + best) + ")";
      }
    }
    if (!runs.empty() && runs.back().what == what) runs.back().to = off + len;
    else runs.push_back({off, off + len, what});
  }
  for (const auto& r : runs)
    out += "; bytes " + std::to_string(r.from) + "-" + std::to_string(r.to ? r.to - 1 : 0) + " = " + r.what;
  std::string sizes;
  for (const auto& [label, bytes] : versions) sizes += (sizes.empty() ? "" : ", ") + label + " " + std::to_string(bytes.size()) + " B";
  if (!sizes.empty()) out += "; sizes: " + sizes;
  return out;
}

void analyze(const History& history, const std::vector<OpEvent>& events, int64_t window_us,
             const std::vector<FsEstale>& fs_estale, RunRecord* run, const std::vector<std::string>& skip_prefixes,
             const std::map<Oid, std::string>* contents) {
  auto skipped = [&](const std::string& p) {
    for (const auto& s : skip_prefixes)
      if (p.compare(0, s.size(), s) == 0) return true;
    return false;
  };
  auto add_notable = [&](Notable n) {
    if (run->notable.size() < kMaxNotablePerRun) run->notable.push_back(std::move(n));
  };
  RunStats& st = run->stats;
  for (const auto& e : events) {
    ++st.ops;
    ++st.op_counts[static_cast<int>(e.op)];
    st.latency.add(e.latency_us());
    const std::string path = repo_path(e.path);
    if (e.err) {
      ErrClass c = history.classify_error(path, e.err, e.t_us, e.end_us, window_us);
      Notable n;
      n.t_us = e.t_us;
      n.op = op_name(e.op);
      n.path = e.path;
      n.err = e.err;
      n.latency_us = e.latency_us();
      n.kind = err_class_name(c);
      switch (c) {
        case ErrClass::estale: {
          // antares-fs logs the layer (ts has ms resolution). The node that
          // failed may be an ancestor of the path the syscall named (a
          // replaced directory fails the lookup beneath it): the line for the
          // path itself wins, else the nearest ancestor's.
          const FsEstale* best = nullptr;
          for (const auto& f : fs_estale) {
            if (f.t_us < e.t_us - 2000 || f.t_us > e.end_us + 2000) continue;
            bool same = f.path == e.path;
            bool ancestor = f.path.empty() || f.path == "/" || starts_with(e.path, f.path + "/");
            if (!same && !ancestor) continue;
            if (!best || same || (best->path != e.path && f.path.size() > best->path.size())) best = &f;
            if (same) break;
          }
          if (best) {
            n.layer = best->layer;
            if (best->path != e.path) n.layer_path = best->path.empty() ? "/" : best->path;
          }
          ++st.estale;
          break;
        }
        case ErrClass::enoent_expected: ++st.enoent_expected; continue;
        case ErrClass::enoent_exists: ++st.enoent_exists; break;
        case ErrClass::other: ++st.other_errors; break;
      }
      n.cause = history.cause(path, e.end_us);
      add_notable(std::move(n));
      continue;
    }
    if (e.op != Op::read || !e.oid) continue;
    ++st.reads;
    st.bytes += e.bytes;
    if (skipped(e.path)) continue;
    ReadVerdict v = history.classify_read(path, *e.oid, e.t_us, e.end_us, window_us);
    switch (v.cls) {
      case ReadClass::fresh: ++st.fresh; continue;
      case ReadClass::unknown: ++st.unknown; continue;
      case ReadClass::stale_within: ++st.stale_within; break;
      case ReadClass::stale_beyond: ++st.stale_beyond; break;
      case ReadClass::wrong: ++st.wrong; break;
    }
    Notable n;
    n.t_us = e.t_us;
    n.kind = read_class_name(v.cls);
    n.op = op_name(e.op);
    n.path = e.path;
    n.latency_us = e.latency_us();
    n.age_us = v.age_us;
    n.cause = v.cause;
    n.read_oid = e.oid->hex();
    n.read_size = e.bytes;
    std::string head = e.head;
    if (contents)
      if (auto it = contents->find(*e.oid); it != contents->end()) head = it->second.substr(0, kHeadBytes);
    n.read_head = escape_bytes(head, kHeadBytes);
    for (const auto& s : history.allowed(path, e.t_us, e.end_us, window_us))
      n.allowed.push_back({s.oid->hex(), s.layer, s.from_us, s.until_us});
    add_notable(std::move(n));
  }
}

// ----------------------------------------------------------------- table

std::vector<TableRow> table_rows(const Report& report) {
  std::vector<TableRow> rows;
  std::map<std::pair<std::string, std::string>, size_t> index;
  for (const auto& r : report.runs) {
    auto key = std::make_pair(r.strategy, r.scenario);
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, rows.size()).first;
      TableRow row;
      row.strategy = r.strategy;
      row.scenario = r.scenario;
      rows.push_back(std::move(row));
    }
    TableRow& row = rows[it->second];
    ++row.runs;
    row.estale_runs += r.stats.estale > 0;
    row.reproduced += r.reproduced;
    row.ok += r.ok;
    row.setup_failed += r.setup_failed && !r.interrupted;
    row.interrupted += r.interrupted;
    row.stats.merge(r.stats);
    row.seconds += std::max<int64_t>(0, r.end_us - r.start_us) / 1e6;
    if (!r.target.empty()) row.targets.push_back(r.target);
  }
  return rows;
}

std::string verdict(const TableRow& r) {
  const int completed = r.runs - r.setup_failed - r.interrupted;
  if (completed <= 0) return r.interrupted ? "interrupted" : "setup failed";
  std::string v;
  if (r.scenario == "switch") {
    v = r.ok == completed ? "errors stopped" : "FAILED";
  } else if (r.strategy == "none") {
    if (r.scenario == "soak" || r.scenario == "walk") v = r.stats.estale ? "reproduced" : "no ESTALE";
    else v = r.estale_runs == completed ? "reproduced" : "NOT reproduced";
  } else {
    bool clean = r.stats.estale == 0 && r.stats.stale_beyond == 0 && r.stats.wrong == 0;
    v = clean && r.ok == completed ? "clean" : "FAILED";
  }
  if (r.setup_failed) v += ", " + std::to_string(r.setup_failed) + " could not run";
  if (r.interrupted) v += ", " + std::to_string(r.interrupted) + " interrupted";
  return v;
}

bool verdict_good(const std::string& v) {
  return v == "reproduced" || v == "clean" || v == "errors stopped";
}

std::string render_table(const Report& report) {
  auto rows = table_rows(report);
  std::vector<std::vector<std::string>> cells;
  cells.push_back({"strategy", "scenario", "runs", "ESTALE runs", "ESTALE", "stale<=win", "stale>win", "wrong",
                   "other err", "ops", "p50", "p99", "verdict"});
  for (const auto& r : rows) {
    int completed = r.runs - r.setup_failed - r.interrupted;
    cells.push_back({r.strategy, r.scenario, std::to_string(r.runs),
                     std::to_string(r.estale_runs) + "/" + std::to_string(std::max(0, completed)),
                     std::to_string(r.stats.estale), std::to_string(r.stats.stale_within),
                     std::to_string(r.stats.stale_beyond), std::to_string(r.stats.wrong),
                     std::to_string(r.stats.enoent_exists + r.stats.other_errors), std::to_string(r.stats.ops),
                     us_str(r.stats.percentile_us(50)), us_str(r.stats.percentile_us(99)), verdict(r)});
  }
  std::vector<size_t> w(cells[0].size(), 0);
  for (const auto& row : cells)
    for (size_t i = 0; i < row.size(); ++i) w[i] = std::max(w[i], row[i].size());
  std::string out;
  for (size_t r = 0; r < cells.size(); ++r) {
    for (size_t i = 0; i < cells[r].size(); ++i) {
      std::string c = cells[r][i];
      bool left = i < 2 || i + 1 == cells[r].size();
      std::string pad(w[i] - c.size(), ' ');
      out += left ? c + pad : pad + c;
      out += i + 1 < cells[r].size() ? "  " : "\n";
    }
    if (r == 0) {
      size_t total = 0;
      for (size_t x : w) total += x + 2;
      out += std::string(total - 2, '-') + "\n";
    }
  }
  return out;
}

// ----------------------------------------------------------------- JSON

json report_json(const Report& report) {
  json rows = json::array();
  for (const auto& r : table_rows(report)) {
    double secs = std::max(1e-6, r.seconds);
    rows.push_back({{"strategy", r.strategy},
                    {"scenario", r.scenario},
                    {"runs", r.runs},
                    {"estale_runs", r.estale_runs},
                    {"reproduced", r.reproduced},
                    {"ok", r.ok},
                    {"setup_failed", r.setup_failed},
                    {"interrupted", r.interrupted},
                    {"estale", r.stats.estale},
                    {"stale_within_window", r.stats.stale_within},
                    {"stale_beyond_window", r.stats.stale_beyond},
                    {"wrong", r.stats.wrong},
                    {"enoent_exists", r.stats.enoent_exists},
                    {"other_errors", r.stats.other_errors},
                    {"ops", r.stats.ops},
                    {"reads", r.stats.reads},
                    {"seconds", r.seconds},
                    {"throughput_ops_per_s", r.stats.ops / secs},
                    {"latency_p50_us", r.stats.percentile_us(50)},
                    {"latency_p99_us", r.stats.percentile_us(99)},
                    {"targets", r.targets},
                    {"verdict", verdict(r)}});
  }
  json runs = json::array();
  for (const auto& r : report.runs) runs.push_back(r.to_json(true));
  json cost = json::array();
  for (const auto& c : report.cost) cost.push_back(c.to_json());
  Summary sum = summarize(report);
  return json{{"command", report.command},
              {"config", report.config},
              {"start_ms", report.start_us / 1000.0},
              {"end_ms", report.end_us / 1000.0},
              {"ok", report.failures.empty() && !report.interrupted},
              {"interrupted", report.interrupted},
              {"planned_units", report.planned_units},
              {"shards", report.shards},
              {"failures", report.failures},
              {"verdict", sum.to_json()},
              {"cost", std::move(cost)},
              {"cost_config", report.cost_config},
              {"table", std::move(rows)},
              {"runs", std::move(runs)}};
}

Result<Report> report_from_json(const json& j) {
  if (!j.is_object() || !j.contains("runs") || !j["runs"].is_array() || !j.contains("config"))
    return Error::from_errno(EINVAL, "not an estale-repro report (no \"runs\" list or \"config\")");
  Report r;
  r.command = get_or<std::string>(j, "command", "");
  r.config = j["config"];
  r.start_us = ms_to_us(j, "start_ms");
  r.end_us = ms_to_us(j, "end_ms");
  r.interrupted = get_or(j, "interrupted", false);
  r.planned_units = get_or(j, "planned_units", 0);
  r.shards = get_or<std::vector<std::string>>(j, "shards", {});
  r.failures = get_or<std::vector<std::string>>(j, "failures", {});
  for (const auto& run : j["runs"]) {
    auto rr = RunRecord::from_json(run);
    if (!rr) return Error::from_errno(EINVAL, "run " + std::to_string(r.runs.size()) + ": " + rr.error().message);
    r.runs.push_back(std::move(*rr));
  }
  if (auto c = j.find("cost"); c != j.end() && c->is_array())
    for (const auto& row : *c) r.cost.push_back(CostRow::from_json(row));
  if (auto c = j.find("cost_config"); c != j.end()) r.cost_config = *c;
  return r;
}

Result<Report> merge_reports(std::vector<Report> parts) {
  if (parts.empty()) return Error::from_errno(EINVAL, "nothing to merge");
  // What must agree between shards: every setting but the slice itself and
  // where each machine keeps its binaries.
  auto settings = [](const Report& r) {
    json c = r.config;
    if (c.is_object()) c.erase("shard"), c.erase("bin_dir");
    return c;
  };
  Report out;
  out.config = parts[0].config;
  if (out.config.is_object()) out.config.erase("shard");
  out.planned_units = parts[0].planned_units;
  out.start_us = INT64_MAX;
  out.end_us = INT64_MIN;
  std::set<std::string> seen_shards;
  int shard_count = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    Report& p = parts[i];
    if (settings(p) != settings(parts[0])) {
      std::string diff;
      json a = settings(parts[0]), b = settings(p);
      if (a.is_object() && b.is_object()) {
        std::set<std::string> keys;
        for (const auto& [k, v] : a.items()) keys.insert(k);
        for (const auto& [k, v] : b.items()) keys.insert(k);
        for (const auto& k : keys)
          if (!a.contains(k) || !b.contains(k) || a[k] != b[k])
            diff += (diff.empty() ? "" : ", ") + k + " " + (a.contains(k) ? a[k].dump() : "absent") + " vs " +
                    (b.contains(k) ? b[k].dump() : "absent");
      }
      return Error::from_errno(EINVAL, "report " + std::to_string(i + 1) + " was made with other settings than report 1" +
                                           (diff.empty() ? std::string() : ": " + diff));
    }
    if (p.planned_units != out.planned_units)
      return Error::from_errno(EINVAL, "report " + std::to_string(i + 1) + " plans " + std::to_string(p.planned_units) +
                                           " runs, report 1 plans " + std::to_string(out.planned_units));
    for (const auto& s : p.shards) {
      if (!s.empty() && !seen_shards.insert(s).second)
        return Error::from_errno(EINVAL, "shard " + s + " appears twice");
      if (auto slash = s.find('/'); slash != std::string::npos) shard_count = atoi(s.c_str() + slash + 1);
      out.shards.push_back(s);
    }
    if (out.command.empty()) out.command = p.command;
    for (auto& r : p.runs) out.runs.push_back(std::move(r));
    if (!p.cost.empty()) {
      if (!out.cost.empty()) return Error::from_errno(EINVAL, "two reports both measured the cost");
      out.cost = std::move(p.cost);
      out.cost_config = p.cost_config;
    }
    for (auto& f : p.failures) out.failures.push_back(std::move(f));
    out.interrupted |= p.interrupted;
    out.start_us = std::min(out.start_us, p.start_us);
    out.end_us = std::max(out.end_us, p.end_us);
  }
  if (shard_count > 0) {
    std::string missing;
    for (int k = 1; k <= shard_count; ++k) {
      std::string s = std::to_string(k) + "/" + std::to_string(shard_count);
      if (!seen_shards.count(s)) missing += (missing.empty() ? "" : ", ") + s;
    }
    if (!missing.empty()) out.failures.push_back("incomplete merge: shard(s) " + missing + " missing");
  }
  std::stable_sort(out.runs.begin(), out.runs.end(), [](const RunRecord& a, const RunRecord& b) {
    return a.unit != b.unit ? a.unit < b.unit : a.start_us < b.start_us;
  });
  return out;
}

int write_file_atomic(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      unlink(tmp.c_str());
      return e;
    }
    off += static_cast<size_t>(n);
  }
  if (close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    unlink(tmp.c_str());
    return e;
  }
  return 0;
}

}  // namespace antares::repro
