#include "fs/control/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <mutex>

#include "common/log.h"

namespace antares::control {
namespace {

bool valid_metric_name(const std::string& n) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool valid_label_name(const std::string& n) {
  if (n.empty() || n.rfind("__", 0) == 0) return false;  // "__" is reserved by Prometheus
  for (size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// Sorts labels by name and checks them; false on an invalid or repeated name.
bool normalize(Labels& labels) {
  std::sort(labels.begin(), labels.end());
  for (size_t i = 0; i < labels.size(); ++i) {
    if (!valid_label_name(labels[i].first)) return false;
    if (i > 0 && labels[i].first == labels[i - 1].first) return false;
  }
  return true;
}

// "{a=\"1\",b=\"2\"}", or "" without labels; also the key of a series.
std::string render_labels(const Labels& labels) {
  if (labels.empty()) return {};
  std::string s = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i) s += ',';
    s += labels[i].first;
    s += "=\"";
    s += escape_label_value(labels[i].second);
    s += '"';
  }
  s += '}';
  return s;
}

std::string escape_help(const std::string& h) {
  std::string s;
  s.reserve(h.size());
  for (char c : h) {
    if (c == '\\') s += "\\\\";
    else if (c == '\n') s += "\\n";
    else s += c;
  }
  return s;
}

std::string format_double(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, p);
}

// Gauge callbacks are user code: keep a throwing one from escaping.
double call_gauge(const std::function<double()>& fn) {
  try {
    return fn ? fn() : 0.0;
  } catch (...) {
    return std::nan("");
  }
}

uint64_t call_read(const std::function<uint64_t()>& fn) {
  try {
    return fn ? fn() : 0;
  } catch (...) {
    return 0;
  }
}

}  // namespace

std::string escape_label_value(const std::string& v) {
  std::string s;
  s.reserve(v.size());
  for (char c : v) {
    if (c == '\\') s += "\\\\";
    else if (c == '"') s += "\\\"";
    else if (c == '\n') s += "\\n";
    else s += c;
  }
  return s;
}

Counter& Metrics::counter(std::string name, std::string help, Labels labels) {
  bool labels_ok = normalize(labels);
  std::string key = render_labels(labels);
  {
    std::shared_lock l(mu_);
    auto f = families_.find(name);
    if (f != families_.end() && f->second.is_counter) {
      auto s = f->second.series.find(key);
      if (s != f->second.series.end() && s->second.counter) return *s->second.counter;
    }
  }
  std::unique_lock l(mu_);
  auto orphan = [&](const char* why) -> Counter& {
    log::error("metrics_bad_counter", {{"name", name}, {"labels", key}, {"reason", why}});
    return orphans_.emplace_back();
  };
  if (!valid_metric_name(name)) return orphan("invalid metric name");
  if (!labels_ok) return orphan("invalid or repeated label name");
  auto [f, created] = families_.try_emplace(name);
  if (created) {
    f->second.help = std::move(help);
    f->second.is_counter = true;
  } else if (!f->second.is_counter) {
    return orphan("name already registered as a gauge");
  }
  auto [s, inserted] = f->second.series.try_emplace(key);
  if (inserted) {  // another thread may have won the race between the locks
    s->second.labels = std::move(labels);
    s->second.counter = &counters_.emplace_back();
  }
  if (!s->second.counter) return orphan("series already registered with counter_fn");
  return *s->second.counter;
}

void Metrics::gauge(std::string name, std::string help, std::function<double()> fn, Labels labels) {
  bool labels_ok = normalize(labels);
  std::string key = render_labels(labels);
  std::unique_lock l(mu_);
  auto reject = [&](const char* why) {
    log::error("metrics_bad_gauge", {{"name", name}, {"labels", key}, {"reason", why}});
  };
  if (!valid_metric_name(name)) return reject("invalid metric name");
  if (!labels_ok) return reject("invalid or repeated label name");
  auto [f, created] = families_.try_emplace(name);
  if (created) {
    f->second.help = std::move(help);
    f->second.is_counter = false;
  } else if (f->second.is_counter) {
    return reject("name already registered as a counter");
  }
  Series& s = f->second.series[key];
  s.labels = std::move(labels);
  s.gauge = std::move(fn);
}

void Metrics::counter_fn(std::string name, std::string help, std::function<uint64_t()> fn, Labels labels) {
  bool labels_ok = normalize(labels);
  std::string key = render_labels(labels);
  std::unique_lock l(mu_);
  auto reject = [&](const char* why) {
    log::error("metrics_bad_counter", {{"name", name}, {"labels", key}, {"reason", why}});
  };
  if (!valid_metric_name(name)) return reject("invalid metric name");
  if (!labels_ok) return reject("invalid or repeated label name");
  auto [f, created] = families_.try_emplace(name);
  if (created) {
    f->second.help = std::move(help);
    f->second.is_counter = true;
  } else if (!f->second.is_counter) {
    return reject("name already registered as a gauge");
  }
  Series& s = f->second.series[key];
  if (s.counter) return reject("series already registered as an owned counter");
  s.labels = std::move(labels);
  s.read = std::move(fn);
}

std::string Metrics::prometheus_text() const {
  // Snapshot under the lock, evaluate gauges after releasing it: a gauge
  // callback may take its own locks or read this registry.
  struct Row {
    std::string labels;
    const Counter* counter;
    std::function<double()> gauge;
    std::function<uint64_t()> read;
  };
  struct Fam {
    std::string name, help;
    bool is_counter;
    std::vector<Row> rows;
  };
  std::vector<Fam> fams;
  {
    std::shared_lock l(mu_);
    fams.reserve(families_.size());
    for (const auto& [name, f] : families_) {
      Fam out{name, f.help, f.is_counter, {}};
      out.rows.reserve(f.series.size());
      for (const auto& [key, s] : f.series) out.rows.push_back(Row{key, s.counter, s.gauge, s.read});
      fams.push_back(std::move(out));
    }
  }
  std::string text;
  for (const auto& f : fams) {
    text += "# HELP " + f.name + " " + escape_help(f.help) + "\n";
    text += "# TYPE " + f.name + (f.is_counter ? " counter\n" : " gauge\n");
    for (const auto& r : f.rows) {
      text += f.name + r.labels + " ";
      if (r.counter) text += std::to_string(r.counter->value());
      else if (r.read) text += std::to_string(call_read(r.read));
      else text += format_double(call_gauge(r.gauge));
      text += "\n";
    }
  }
  return text;
}

uint64_t Metrics::value(const std::string& name, const Labels& labels) const {
  Labels sorted = labels;
  if (!normalize(sorted)) return 0;
  std::string key = render_labels(sorted);
  std::function<double()> fn;
  std::function<uint64_t()> read;
  {
    std::shared_lock l(mu_);
    auto f = families_.find(name);
    if (f == families_.end()) return 0;
    auto s = f->second.series.find(key);
    if (s == f->second.series.end()) return 0;
    if (s->second.counter) return s->second.counter->value();
    if (s->second.read) read = s->second.read;
    fn = s->second.gauge;
  }
  if (read) return call_read(read);
  double v = call_gauge(fn);
  if (!(v > 0)) return 0;  // negative and NaN
  if (v >= 18446744073709551615.0) return UINT64_MAX;
  return static_cast<uint64_t>(v);
}

nlohmann::json Metrics::counters_json() const {
  std::vector<std::pair<std::string, std::function<uint64_t()>>> reads;
  nlohmann::json j = nlohmann::json::object();
  {
    std::shared_lock l(mu_);
    for (const auto& [name, f] : families_) {
      if (!f.is_counter) continue;
      for (const auto& [key, s] : f.series) {
        if (s.counter) j[name + key] = s.counter->value();
        else reads.emplace_back(name + key, s.read);
      }
    }
  }
  for (const auto& [k, fn] : reads) j[k] = call_read(fn);  // outside the lock, like gauges
  return j;
}

}  // namespace antares::control
