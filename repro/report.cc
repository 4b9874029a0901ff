#include "repro/report.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

namespace antares::repro {
namespace {

using nlohmann::json;

constexpr size_t kMaxNotablePerRun = 5000;

std::string repo_path(const std::string& rel) { return "/" + rel; }

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

std::string fmt(const char* f, double v) {
  char b[64];
  snprintf(b, sizeof b, f, v);
  return b;
}

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

bool is_fix(const std::string& strategy) { return strategy != "none"; }

std::string verdict(const TableRow& r) {
  if (r.runs == r.setup_failed) return "setup failed";
  if (r.scenario == "switch") return r.ok == r.runs ? "errors stopped" : "FAILED";
  if (!is_fix(r.strategy)) {
    if (r.scenario == "soak") return r.stats.estale ? "reproduced" : "no ESTALE";
    return r.reproduced == r.runs - r.setup_failed ? "reproduced" : "NOT reproduced";
  }
  bool clean = r.stats.estale == 0 && r.stats.stale_beyond == 0 && r.stats.wrong == 0;
  return clean && r.ok == r.runs - r.setup_failed ? "clean" : "FAILED";
}

}  // namespace

json Notable::to_json() const {
  json j{{"time_ms", t_us / 1000.0}, {"kind", kind}, {"op", op}, {"path", path}, {"latency_us", latency_us}};
  if (err) {
    j["errno"] = err;
    j["error"] = errno_name(err);
  }
  if (age_us) j["age_ms"] = age_us / 1000.0;
  if (!layer.empty()) j["layer"] = layer;
  j["cause"] = cause ? cause->to_json() : json(nullptr);
  return j;
}

void RunStats::merge(const RunStats& o) {
  ops += o.ops, reads += o.reads, bytes += o.bytes;
  fresh += o.fresh, stale_within += o.stale_within, stale_beyond += o.stale_beyond, wrong += o.wrong,
      unknown += o.unknown;
  estale += o.estale, enoent_exists += o.enoent_exists, enoent_expected += o.enoent_expected,
      other_errors += o.other_errors;
  for (int i = 0; i < kOpCount; ++i) op_counts[i] += o.op_counts[i];
  latencies_us.insert(latencies_us.end(), o.latencies_us.begin(), o.latencies_us.end());
}

uint32_t RunStats::percentile_us(double p) const {
  if (latencies_us.empty()) return 0;
  std::vector<uint32_t> v = latencies_us;
  size_t k = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size()))) -
                                        (p > 0 ? 1 : 0));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

json RunRecord::to_json(bool with_events) const {
  json ops = json::object();
  for (int i = 0; i < kOpCount; ++i)
    if (stats.op_counts[i]) ops[op_name(static_cast<Op>(i))] = stats.op_counts[i];
  double secs = std::max(1e-6, (end_us - start_us) / 1e6);
  json j{{"mode", mode},
         {"strategy", strategy},
         {"scenario", scenario},
         {"rep", rep},
         {"start_ms", start_us / 1000.0},
         {"end_ms", end_us / 1000.0},
         {"seconds", secs},
         {"setup_failed", setup_failed},
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
         {"fs_estale_logged", fs_estale.size()},
         {"fs_status", fs_status}};
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

void analyze(const History& history, const std::vector<OpEvent>& events, int64_t window_us,
             const std::vector<FsEstale>& fs_estale, RunRecord* run, const std::vector<std::string>& skip_prefixes) {
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
    st.latencies_us.push_back(e.latency_us());
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
        case ErrClass::estale:
          ++st.estale;
          // antares-fs logs the layer; its ts has ms resolution.
          for (const auto& f : fs_estale)
            if (f.path == e.path && f.t_us >= e.t_us - 2000 && f.t_us <= e.end_us + 2000) {
              n.layer = f.layer;
              break;
            }
          break;
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
    add_notable(std::move(n));
  }
}

std::vector<TableRow> table_rows(const Report& report) {
  std::vector<TableRow> rows;
  std::map<std::pair<std::string, std::string>, size_t> index;
  for (const auto& r : report.runs) {
    auto key = std::make_pair(r.strategy, r.scenario);
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, rows.size()).first;
      rows.push_back(TableRow{r.strategy, r.scenario, 0, 0, 0, 0, {}, 0});
    }
    TableRow& row = rows[it->second];
    ++row.runs;
    row.reproduced += r.reproduced;
    row.ok += r.ok;
    row.setup_failed += r.setup_failed;
    row.stats.merge(r.stats);
    row.seconds += std::max<int64_t>(0, r.end_us - r.start_us) / 1e6;
  }
  return rows;
}

std::string render_table(const Report& report) {
  auto rows = table_rows(report);
  std::vector<std::vector<std::string>> cells;
  cells.push_back({"strategy", "scenario", "runs", "ESTALE runs", "ESTALE", "stale<=win", "stale>win", "wrong",
                   "other err", "ops", "ops/s", "p50", "p99", "verdict"});
  for (const auto& r : rows) {
    double secs = std::max(1e-6, r.seconds);
    cells.push_back({r.strategy, r.scenario, std::to_string(r.runs),
                     std::to_string(r.reproduced) + "/" + std::to_string(r.runs - r.setup_failed),
                     std::to_string(r.stats.estale), std::to_string(r.stats.stale_within),
                     std::to_string(r.stats.stale_beyond), std::to_string(r.stats.wrong),
                     std::to_string(r.stats.enoent_exists + r.stats.other_errors), std::to_string(r.stats.ops),
                     fmt("%.0f", r.stats.ops / secs), us_str(r.stats.percentile_us(50)),
                     us_str(r.stats.percentile_us(99)), verdict(r)});
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

json report_json(const Report& report) {
  json rows = json::array();
  for (const auto& r : table_rows(report)) {
    double secs = std::max(1e-6, r.seconds);
    rows.push_back({{"strategy", r.strategy},
                    {"scenario", r.scenario},
                    {"runs", r.runs},
                    {"reproduced", r.reproduced},
                    {"ok", r.ok},
                    {"setup_failed", r.setup_failed},
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
                    {"verdict", verdict(r)}});
  }
  json runs = json::array();
  for (const auto& r : report.runs) runs.push_back(r.to_json(true));
  return json{{"command", report.command},
              {"config", report.config},
              {"start_ms", report.start_us / 1000.0},
              {"end_ms", report.end_us / 1000.0},
              {"ok", report.failures.empty()},
              {"failures", report.failures},
              {"table", std::move(rows)},
              {"runs", std::move(runs)}};
}

namespace {

// One timeline chart: the runs of one strategy laid end to end on their own
// time axis (seconds since the strategy's first run), errors and stale reads
// per bin as stacked bars, mutations as ticks, refreshes and switches as lines.
std::string timeline_svg(const std::string& strategy, const std::vector<const RunRecord*>& runs) {
  constexpr int W = 900, H = 220, L = 50, R = 10, T = 20, B = 40, kBins = 120;
  int64_t t0 = INT64_MAX, t1 = INT64_MIN;
  for (const auto* r : runs) t0 = std::min(t0, r->start_us), t1 = std::max(t1, r->end_us);
  if (t1 <= t0) t1 = t0 + 1;
  const double span = static_cast<double>(t1 - t0);
  struct Bin {
    int estale = 0, other = 0, within = 0, beyond = 0;
  };
  std::vector<Bin> bins(kBins);
  auto bin_of = [&](int64_t t) {
    return std::clamp(static_cast<int>((t - t0) / span * kBins), 0, kBins - 1);
  };
  for (const auto* r : runs)
    for (const auto& n : r->notable) {
      Bin& b = bins[bin_of(n.t_us)];
      if (n.kind == "estale") ++b.estale;
      else if (n.kind == "stale_within_window") ++b.within;
      else if (n.kind == "stale_beyond_window" || n.kind == "wrong") ++b.beyond;
      else ++b.other;
    }
  int maxv = 1;
  for (const auto& b : bins) maxv = std::max(maxv, b.estale + b.other + b.within + b.beyond);
  const double pw = W - L - R, ph = H - T - B;
  auto x_of = [&](int64_t t) { return L + (t - t0) / span * pw; };
  std::string s = "<svg class=\"chart timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(W) +
                  "\" height=\"" + std::to_string(H) + "\" viewBox=\"0 0 " + std::to_string(W) + " " +
                  std::to_string(H) + "\" role=\"img\" aria-label=\"errors and stale reads over time, strategy " +
                  html_escape(strategy) + "\">\n";
  s += "<title>Errors and stale reads over time: strategy " + html_escape(strategy) + "</title>\n";
  s += "<rect x=\"" + std::to_string(L) + "\" y=\"" + std::to_string(T) + "\" width=\"" + fmt("%.0f", pw) +
       "\" height=\"" + fmt("%.0f", ph) + "\" fill=\"#fafafa\" stroke=\"#ccc\"/>\n";
  // Axes labels.
  const int ticks = std::min(4, maxv);
  for (int i = 0; i <= ticks; ++i) {
    double v = static_cast<double>(maxv) * i / ticks;
    double y = T + ph - ph * i / ticks;
    s += "<text x=\"" + std::to_string(L - 4) + "\" y=\"" + fmt("%.1f", y + 4) +
         "\" font-size=\"10\" text-anchor=\"end\">" + fmt("%.0f", v) + "</text>\n";
  }
  for (int i = 0; i <= 5; ++i) {
    double x = L + pw * i / 5.0;
    s += "<text x=\"" + fmt("%.1f", x) + "\" y=\"" + std::to_string(H - B + 14) +
         "\" font-size=\"10\" text-anchor=\"middle\">" + fmt("%.1fs", span / 1e6 * i / 5.0) + "</text>\n";
  }
  // Markers below the bars.
  size_t drawn = 0;
  for (const auto* r : runs)
    for (const auto& m : r->markers) {
      if (++drawn > 3000) break;
      double x = x_of(m.t_us);
      if (m.kind == "mutation" || m.kind == "upper") {
        s += "<line x1=\"" + fmt("%.1f", x) + "\" x2=\"" + fmt("%.1f", x) + "\" y1=\"" + fmt("%.1f", T + ph) +
             "\" y2=\"" + fmt("%.1f", T + ph + 8) + "\" stroke=\"#555\" stroke-width=\"1\"><title>" +
             html_escape(m.kind + ": " + m.detail) + "</title></line>\n";
      } else {
        const char* color = m.kind == "switch" ? "#2a2" : "#36c";
        s += "<line x1=\"" + fmt("%.1f", x) + "\" x2=\"" + fmt("%.1f", x) + "\" y1=\"" + std::to_string(T) +
             "\" y2=\"" + fmt("%.1f", T + ph) + "\" stroke=\"" + color +
             "\" stroke-width=\"1\" stroke-dasharray=\"3,3\" opacity=\"0.6\"><title>" +
             html_escape(m.kind + ": " + m.detail) + "</title></line>\n";
      }
    }
  const double bw = pw / kBins;
  for (int i = 0; i < kBins; ++i) {
    const Bin& b = bins[i];
    double y = T + ph;
    struct Part {
      int n;
      const char* color;
      const char* label;
    } parts[] = {{b.estale, "#d33", "ESTALE"},
                 {b.other, "#f90", "other errors"},
                 {b.beyond, "#80c", "stale beyond window / wrong"},
                 {b.within, "#cc3", "stale within window"}};
    for (const auto& p : parts) {
      if (!p.n) continue;
      double h = ph * p.n / maxv;
      y -= h;
      s += "<rect x=\"" + fmt("%.1f", L + i * bw) + "\" y=\"" + fmt("%.1f", y) + "\" width=\"" +
           fmt("%.1f", std::max(1.0, bw - 1)) + "\" height=\"" + fmt("%.1f", h) + "\" fill=\"" + p.color +
           "\"><title>" + std::to_string(p.n) + " " + p.label + "</title></rect>\n";
    }
  }
  // Legend.
  int lx = L;
  for (auto [color, label] : {std::pair{"#d33", "ESTALE"}, {"#f90", "other errors"},
                              {"#80c", "stale beyond window / wrong"}, {"#cc3", "stale within window"},
                              {"#555", "mutation (tick)"}, {"#36c", "refresh"}, {"#2a2", "strategy switch"}}) {
    s += "<rect x=\"" + std::to_string(lx) + "\" y=\"" + std::to_string(H - 16) +
         "\" width=\"10\" height=\"10\" fill=\"" + color + "\"/><text x=\"" + std::to_string(lx + 14) + "\" y=\"" +
         std::to_string(H - 7) + "\" font-size=\"10\">" + label + "</text>\n";
    lx += 20 + static_cast<int>(strlen(label)) * 6;
  }
  s += "</svg>\n";
  return s;
}

std::string latency_svg(const std::vector<std::pair<std::string, RunStats>>& per_strategy) {
  const int rows = static_cast<int>(per_strategy.size());
  const int W = 900, L = 70, R = 80, T = 20, row_h = 34, H = T + rows * row_h + 30;
  double maxv = 1;
  for (const auto& [name, st] : per_strategy) maxv = std::max<double>(maxv, st.percentile_us(99));
  const double pw = W - L - R;
  std::string s = "<svg class=\"chart latency\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(W) +
                  "\" height=\"" + std::to_string(H) + "\" viewBox=\"0 0 " + std::to_string(W) + " " +
                  std::to_string(H) + "\" role=\"img\" aria-label=\"latency per strategy\">\n";
  s += "<title>Operation latency per strategy (p50 and p99)</title>\n";
  int i = 0;
  for (const auto& [name, st] : per_strategy) {
    double y = T + i * row_h;
    uint32_t p50 = st.percentile_us(50), p99 = st.percentile_us(99);
    s += "<text x=\"" + std::to_string(L - 6) + "\" y=\"" + fmt("%.1f", y + 18) +
         "\" font-size=\"12\" text-anchor=\"end\">" + html_escape(name) + "</text>\n";
    s += "<rect x=\"" + std::to_string(L) + "\" y=\"" + fmt("%.1f", y + 2) + "\" width=\"" +
         fmt("%.1f", std::max(1.0, pw * p99 / maxv)) + "\" height=\"12\" fill=\"#9bd\"><title>p99 " + us_str(p99) +
         "</title></rect>\n";
    s += "<rect x=\"" + std::to_string(L) + "\" y=\"" + fmt("%.1f", y + 16) + "\" width=\"" +
         fmt("%.1f", std::max(1.0, pw * p50 / maxv)) + "\" height=\"12\" fill=\"#37a\"><title>p50 " + us_str(p50) +
         "</title></rect>\n";
    s += "<text x=\"" + fmt("%.1f", L + pw * p99 / maxv + 4) + "\" y=\"" + fmt("%.1f", y + 12) +
         "\" font-size=\"10\">p99 " + us_str(p99) + "</text>\n";
    s += "<text x=\"" + fmt("%.1f", L + pw * p50 / maxv + 4) + "\" y=\"" + fmt("%.1f", y + 26) +
         "\" font-size=\"10\">p50 " + us_str(p50) + "</text>\n";
    ++i;
  }
  s += "</svg>\n";
  return s;
}

}  // namespace

std::string render_html(const Report& report) {
  std::string h =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<title>antares ESTALE reproduction report</title>\n<style>\n"
      "body{font-family:system-ui,-apple-system,sans-serif;margin:24px;color:#222}\n"
      "table{border-collapse:collapse;font-size:13px;margin:8px 0 24px}\n"
      "th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}\n"
      "th{background:#f0f0f0}td.l,th.l{text-align:left}\n"
      ".bad{color:#b00;font-weight:bold}.good{color:#070;font-weight:bold}\n"
      "code,pre{font-family:ui-monospace,monospace;font-size:12px}\n"
      "svg.chart{display:block;margin:8px 0 20px;background:#fff}\n"
      "</style>\n</head>\n<body>\n<h1>antares ESTALE reproduction</h1>\n";
  h += "<p>Command: <code>" + html_escape(report.command) + "</code>. Result: ";
  h += report.failures.empty() ? "<span class=\"good\">as expected</span>" : "<span class=\"bad\">FAILED</span>";
  h += "</p>\n";
  if (!report.failures.empty()) {
    h += "<ul>\n";
    for (const auto& f : report.failures) h += "<li class=\"bad\">" + html_escape(f) + "</li>\n";
    h += "</ul>\n";
  }
  h += "<pre>" + html_escape(report.config.dump(2, ' ', false, json::error_handler_t::replace)) + "</pre>\n";

  h += "<h2>Summary</h2>\n<table>\n<tr><th class=\"l\">strategy</th><th class=\"l\">scenario</th><th>runs</th>"
       "<th>ESTALE runs</th><th>ESTALE</th><th>stale &le; window</th><th>stale &gt; window</th><th>wrong</th>"
       "<th>other errors</th><th>ops</th><th>ops/s</th><th>p50</th><th>p99</th><th class=\"l\">verdict</th></tr>\n";
  for (const auto& r : table_rows(report)) {
    double secs = std::max(1e-6, r.seconds);
    std::string v = verdict(r);
    bool good = v == "reproduced" || v == "clean" || v == "errors stopped";
    h += "<tr><td class=\"l\">" + html_escape(r.strategy) + "</td><td class=\"l\">" + html_escape(r.scenario) +
         "</td><td>" + std::to_string(r.runs) + "</td><td>" + std::to_string(r.reproduced) + "/" +
         std::to_string(r.runs - r.setup_failed) + "</td><td>" + std::to_string(r.stats.estale) + "</td><td>" +
         std::to_string(r.stats.stale_within) + "</td><td>" + std::to_string(r.stats.stale_beyond) + "</td><td>" +
         std::to_string(r.stats.wrong) + "</td><td>" + std::to_string(r.stats.enoent_exists + r.stats.other_errors) +
         "</td><td>" + std::to_string(r.stats.ops) + "</td><td>" + fmt("%.0f", r.stats.ops / secs) + "</td><td>" +
         us_str(r.stats.percentile_us(50)) + "</td><td>" + us_str(r.stats.percentile_us(99)) + "</td><td class=\"l " +
         (good ? "good" : "bad") + "\">" + html_escape(v) + "</td></tr>\n";
  }
  h += "</table>\n";

  // Per strategy, in order of first appearance.
  std::vector<std::string> strategies;
  for (const auto& r : report.runs)
    if (std::find(strategies.begin(), strategies.end(), r.strategy) == strategies.end())
      strategies.push_back(r.strategy);
  h += "<h2>Errors and stale reads over time</h2>\n<p>Each chart lays one strategy's runs end to end. Bars: "
       "operations per time bin that failed or read old data; ticks under the axis: mutations (server or "
       "upper layer); dashed lines: <code>antares-ctl refresh</code> (blue) and strategy switches (green).</p>\n";
  std::vector<std::pair<std::string, RunStats>> lat;
  for (const auto& s : strategies) {
    std::vector<const RunRecord*> runs;
    RunStats st;
    for (const auto& r : report.runs)
      if (r.strategy == s) {
        runs.push_back(&r);
        st.merge(r.stats);
      }
    h += "<h3>strategy " + html_escape(s) + "</h3>\n" + timeline_svg(s, runs);
    lat.emplace_back(s, std::move(st));
  }
  h += "<h2>Latency per strategy</h2>\n" + latency_svg(lat);

  h += "<h2>Events</h2>\n<p>Errors and stale reads, at most 50 per run; the JSON report has them all.</p>\n";
  h += "<table>\n<tr><th class=\"l\">run</th><th class=\"l\">kind</th><th class=\"l\">op</th>"
       "<th class=\"l\">path</th><th class=\"l\">error</th><th class=\"l\">layer</th><th>age</th>"
       "<th class=\"l\">cause (latest change)</th></tr>\n";
  for (const auto& r : report.runs) {
    size_t n = 0;
    for (const auto& e : r.notable) {
      if (++n > 50) break;
      std::string cause = e.cause ? e.cause->kind + " " + e.cause->path + (e.cause->to.empty() ? "" : " -> " + e.cause->to) +
                                        (e.cause->id ? " (log #" + std::to_string(e.cause->id) + ")" : "")
                                  : "";
      h += "<tr><td class=\"l\">" + html_escape(r.strategy + " " + r.scenario + " #" + std::to_string(r.rep)) +
           "</td><td class=\"l\">" + html_escape(e.kind) + "</td><td class=\"l\">" + html_escape(e.op) +
           "</td><td class=\"l\">" + html_escape(e.path) + "</td><td class=\"l\">" +
           html_escape(e.err ? std::string(strerror(e.err)) : std::string()) + "</td><td class=\"l\">" +
           html_escape(e.layer) + "</td><td>" + (e.age_us ? fmt("%.0fms", e.age_us / 1e3) : std::string()) +
           "</td><td class=\"l\">" + html_escape(cause) + "</td></tr>\n";
    }
  }
  h += "</table>\n</body>\n</html>\n";
  return h;
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
