// The HTML rendering of a report: one self-contained file (inline SVG and
// CSS, no script, no network). Its first screen is the verdict (summary.h):
// the recommended strategy and, per strategy, correctness beside measured
// cost; then the table, the configuration, the charts and the events, with
// failures first and repeated rows folded.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <tuple>

#include "repro/report.h"
#include "repro/summary.h"

namespace antares::repro {
namespace {

using nlohmann::json;

std::string fmt(const char* f, double v) {
  char b[64];
  snprintf(b, sizeof b, f, v);
  return b;
}

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
  // The left margin fits the longest label (12px text: at most ~7.5px a
  // character), so "none->auto" is never clipped.
  size_t longest = 4;
  for (const auto& [name, st] : per_strategy) longest = std::max(longest, name.size());
  const int L = 16 + static_cast<int>(longest * 15 / 2);
  const int W = 900, R = 80, T = 20, row_h = 34, H = T + rows * row_h + 30;
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


std::string td(const std::string& text, const char* cls = "l") {
  return std::string("<td class=\"") + cls + "\">" + html_escape(text) + "</td>";
}

std::string config_value(const json& v) {
  if (v.is_string()) return v.get<std::string>().empty() ? "(none)" : v.get<std::string>();
  if (v.is_null()) return "(none)";
  return v.dump();
}

// What each configuration key means, for the config table.
const std::map<std::string, std::string>& config_help() {
  static const std::map<std::string, std::string> k{
      {"seed", "mock-mega seed (first of the seeds)"},
      {"seeds", "seeds run (consecutive from seed)"},
      {"files", "repository size of the scenario and soak runs"},
      {"cls", "open changelists"},
      {"ttl_ms", "antares-fs --ttl (listing freshness)"},
      {"entry_timeout_s", "antares-fs --entry-timeout (short-timeout strategies)"},
      {"attr_timeout_s", "antares-fs --attr-timeout (short-timeout strategies)"},
      {"slack_ms", "scheduling slack added to the window"},
      {"window_ms", "staleness window: ttl + max(entry, attr timeout) + slack"},
      {"hold_ms", "fixes keep probing this long after reading fresh content"},
      {"threads", "walker threads"},
      {"dirs_in_flight", "concurrent directory listings"},
      {"source_share", "share of sources stat'ed and read per walk"},
      {"mutate_every_ms", "soak: mutation period"},
      {"mutate_count", "soak: mutations per period"},
      {"repeat", "repetitions per scenario"},
      {"soak_ms", "soak length per strategy"},
      {"shard", "this report's slice of the plan"},
      {"attached_mega", "attached mock-mega URL"},
      {"attached_mountpoint", "attached mount"},
      {"bin_dir", "where the binaries were taken from"}};
  return k;
}

std::string config_table(const json& config) {
  std::string h = "<table class=\"config\">\n<tr><th class=\"l\">setting</th><th class=\"l\">value</th>"
                  "<th class=\"l\">meaning</th></tr>\n";
  if (config.is_object())
    for (const auto& [k, v] : config.items()) {
      auto help = config_help().find(k);
      h += "<tr>" + td(k) + td(config_value(v)) + td(help == config_help().end() ? "" : help->second) + "</tr>\n";
    }
  return h + "</table>\n";
}

// The first screen: the recommendation and per strategy correctness beside cost.
std::string verdict_section(const Report& report, const Summary& s) {
  std::string h = "<section id=\"verdict\">\n<h2>Verdict</h2>\n";
  h += std::string("<p class=\"headline ") + (s.recommended.empty() ? "bad" : "good") + "\">" + html_escape(s.headline) +
       "</p>\n";
  double max_rate = 0;
  for (const auto& v : s.rows) max_rate = std::max(max_rate, v.rate_hi);
  h += "<table class=\"verdict\">\n<tr><th class=\"l\">strategy</th><th>runs</th><th>ESTALE</th>"
       "<th>stale &gt; window</th><th>wrong</th><th>other errors</th><th class=\"l\">correctness</th>"
       "<th>warm walk entries/s</th><th>&times; none</th><th>p50</th><th>p99</th><th class=\"l bar\">walk rate "
       "(median; line: slowest-fastest walk)</th></tr>\n";
  for (const auto& v : s.rows) {
    bool bad = v.is_fix && !v.correct;
    std::string cls = v.strategy == s.recommended ? " class=\"rec\"" : "";
    h += "<tr" + cls + "><td class=\"l\"><b>" + html_escape(v.strategy) + "</b>" +
         (v.strategy == s.recommended ? " &#9733; recommended" : "") + "</td><td>" + std::to_string(v.completed) +
         "</td>";
    auto count = [&](uint64_t n, bool fail) {
      return std::string("<td") + (fail && n ? " class=\"bad\"" : "") + ">" + std::to_string(n) + "</td>";
    };
    h += count(v.estale, v.is_fix) + count(v.stale_beyond, true) + count(v.wrong, true) + count(v.other_errors, v.is_fix);
    // The counts are in their own columns: here only the judgement.
    std::string judged = v.correct ? "clean in all " + std::to_string(v.completed) + " runs" : v.correctness;
    h += std::string("<td class=\"l ") + (!v.is_fix ? "" : bad ? "bad" : "good") + "\">" + html_escape(judged) +
         "</td>";
    if (v.measured) {
      h += "<td>" + rate_str(v.rate) + "</td><td>" + (v.ratio_to_none > 0 ? fmt("%.2f", v.ratio_to_none) : "-") +
           "</td><td>" + us_str(v.p50_us) + "</td><td>" + us_str(v.p99_us) + "</td>";
      double w = max_rate > 0 ? 100.0 * v.rate / max_rate : 0;
      double lo = max_rate > 0 ? 100.0 * v.rate_lo / max_rate : 0, hi = max_rate > 0 ? 100.0 * v.rate_hi / max_rate : 0;
      h += "<td class=\"l bar\"><div class=\"barbox\"><div class=\"barfill\" style=\"width:" + fmt("%.1f", w) +
           "%\"></div><div class=\"range\" style=\"left:" + fmt("%.1f", lo) + "%;width:" +
           fmt("%.1f", std::max(0.5, hi - lo)) + "%\"></div></div></td>";
    } else {
      std::string why = v.cost_note.empty() ? "not measured" : "not measured: " + v.cost_note;
      h += "<td colspan=\"5\" class=\"l muted\">" + html_escape(why) + "</td>";
    }
    h += "</tr>\n";
  }
  h += "</table>\n";
  std::string how;
  if (s.cost_measured && report.cost_config.is_object()) {
    const json& c = report.cost_config;
    how = "Cost: " + std::to_string(c.value("rounds", 0)) + " warm walks per strategy of a " +
          std::to_string(c.value("files", 0)) + "-file repository with --ttl " + c.value("ttl", std::string("?")) +
          ", every strategy on its own mount of the same server, walked round-robin in this run (buck2-style walk: "
          "readdir, PACKAGE/BUCK/.bzl reads, a share of sources stat'ed and read; no writes); entries/s = directory "
          "entries listed per walk / median walk time. ";
  }
  how += "Correctness: over every scenario and soak run of the strategy; stale reads within the window (" +
         config_value(report.config.value("window_ms", json(nullptr))) +
         " ms) are allowed for every strategy and not counted here.";
  h += "<p class=\"muted\">" + html_escape(how) + "</p>\n</section>\n";
  return h;
}

struct FoldKey {
  int priority;
  std::string strategy, scenario, kind, op, path, error, layer, cause, read_oid;
  auto tie() const { return std::tie(priority, strategy, scenario, kind, op, path, error, layer, cause, read_oid); }
  bool operator<(const FoldKey& o) const { return tie() < o.tie(); }
};
struct Folded {
  const Notable* first = nullptr;
  uint64_t count = 0;
  std::set<int> reps;
  int64_t age_min = INT64_MAX, age_max = 0;
};

// Failures first: wrong reads, stale beyond the window, ESTALE under a fix,
// other errors under a fix; then what is expected of none; then stale reads
// within the window (allowed).
int priority(const Notable& n, const std::string& strategy) {
  bool fix = strategy != "none" && strategy != "none->auto";
  if (n.kind == "wrong") return 0;
  if (n.kind == "stale_beyond_window") return 1;
  if (n.kind == "estale" && fix) return 2;
  if (fix && n.kind != "stale_within_window") return 3;
  if (n.kind == "estale") return 4;
  if (n.kind != "stale_within_window") return 5;
  return 6;
}

std::string cause_text(const Notable& e) {
  if (!e.cause) return "no logged change touches this path";
  const auto& c = *e.cause;
  return c.kind + " " + c.path + (c.to.empty() ? "" : " -> " + c.to) + (c.id ? " (log #" + std::to_string(c.id) + ")" : " (by the reproduction)");
}

std::string short_oid(const std::string& hex) { return hex.size() > 10 ? hex.substr(0, 10) : hex; }

std::string time_range(int64_t from, int64_t until, int64_t t0) {
  auto rel = [&](int64_t t) { return fmt("%+.2fs", (t - t0) / 1e6); };
  std::string a = from == INT64_MIN ? "start" : rel(from);
  std::string b = until == INT64_MAX ? "now" : rel(until);
  return a + ".." + b;
}

std::string events_section(const Report& report) {
  std::map<FoldKey, Folded> folded;
  uint64_t total = 0;
  for (const auto& r : report.runs)
    for (const auto& e : r.notable) {
      ++total;
      FoldKey k{priority(e, r.strategy), r.strategy, r.scenario, e.kind, e.op, e.path,
                e.err ? std::string(strerror(e.err)) : "", e.layer, cause_text(e), e.read_oid};
      Folded& f = folded[k];
      if (!f.first) f.first = &e;
      ++f.count;
      f.reps.insert(r.rep);
      if (e.age_us) f.age_min = std::min(f.age_min, e.age_us), f.age_max = std::max(f.age_max, e.age_us);
    }
  std::vector<std::pair<const FoldKey*, const Folded*>> rows;
  for (const auto& [k, f] : folded) rows.emplace_back(&k, &f);
  std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    if (a.first->priority != b.first->priority) return a.first->priority < b.first->priority;
    return a.second->count > b.second->count;
  });
  constexpr size_t kMaxRows = 300;
  std::string h = "<h2 id=\"events\">Events</h2>\n<p>" + std::to_string(total) + " errors and stale reads in " +
                  std::to_string(rows.size()) +
                  " distinct rows: failures first (wrong reads, stale beyond the window, ESTALE under a fix), then "
                  "what strategy none is expected to show, then stale reads within the window (allowed). Repeated "
                  "events are folded into one row with their count." +
                  (rows.size() > kMaxRows ? " The first " + std::to_string(kMaxRows) + " rows are shown; the JSON report has every event." : std::string()) +
                  "</p>\n";
  h += "<table class=\"events\">\n<tr><th>count</th><th class=\"l\">strategy / run</th><th class=\"l\">kind</th>"
       "<th class=\"l\">op</th><th class=\"l\">path</th><th class=\"l\">error</th><th class=\"l\">layer</th>"
       "<th>age</th><th class=\"l\">read (oid, size, first bytes)</th><th class=\"l\">allowed versions</th>"
       "<th class=\"l\">cause (latest change)</th></tr>\n";
  size_t shown = 0;
  for (const auto& [k, f] : rows) {
    if (++shown > kMaxRows) break;
    const Notable& e = *f->first;
    bool read = !e.read_oid.empty();
    std::string reps;
    for (int rep : f->reps) reps += (reps.empty() ? "#" : ",") + std::to_string(rep);
    std::string run = k->strategy + " " + k->scenario + (k->scenario == "soak" || k->scenario == "walk" ? "" : " " + reps);
    std::string error = e.err ? errno_name(e.err) + " (" + std::to_string(e.err) + ")" : "none (read ok)";
    std::string layer;
    if (e.kind == "estale")
      layer = e.layer.empty() ? "not in antares-fs's log" : e.layer + (e.layer_path.empty() ? "" : " (at " + e.layer_path + ")");
    else if (read && e.kind != "wrong") {
      for (const auto& a : e.allowed)
        if (a.oid == e.read_oid) layer = a.layer + " (the version read)";
      if (layer.empty()) layer = "an older version (superseded before the window)";
    } else if (read) {
      layer = "no layer held these bytes";
    } else {
      layer = "n/a (" + e.kind + ")";
    }
    std::string age = f->age_min == INT64_MAX ? "n/a"
                      : f->age_min == f->age_max ? fmt("%.0fms", f->age_min / 1e3)
                                                 : fmt("%.0f", f->age_min / 1e3) + "-" + fmt("%.0fms", f->age_max / 1e3);
    std::string read_cell, allowed_cell;
    if (read) {
      read_cell = short_oid(e.read_oid) + ", " + std::to_string(e.read_size) + " B, \"" + e.read_head + "\"";
      for (const auto& a : e.allowed)
        allowed_cell += (allowed_cell.empty() ? "" : "; ") + short_oid(a.oid) + " (" + a.layer + ", " +
                        time_range(a.from_us, a.until_us, e.t_us) + ")";
      if (allowed_cell.empty()) allowed_cell = "none: the path had no version in the window";
      if (!e.diagnosis.empty()) read_cell += "; " + e.diagnosis;
    } else {
      read_cell = "n/a (failed)";
      allowed_cell = "n/a";
    }
    const char* cls = k->priority <= 3 ? " class=\"bad\"" : "";
    h += "<tr" + std::string(cls) + "><td>" + std::to_string(f->count) + "</td>" + td(run) + td(e.kind) + td(e.op) +
         td(e.path, "l wrap") + td(error) + td(layer, "l wrap") + "<td>" + html_escape(age) + "</td>" +
         td(read_cell, read ? "l mono" : "l") + td(allowed_cell, read ? "l mono" : "l") + td(cause_text(e), "l wrap") +
         "</tr>\n";
  }
  if (rows.empty()) h += "<tr><td colspan=\"11\" class=\"l\">no errors and no stale reads</td></tr>\n";
  h += "</table>\n";
  return h;
}

}  // namespace

std::string render_html(const Report& report) {
  Summary sum = summarize(report);
  std::string h =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<title>antares ESTALE reproduction report</title>\n<style>\n"
      "body{font-family:system-ui,-apple-system,sans-serif;margin:20px 24px;color:#222}\n"
      "h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:18px 0 6px}\n"
      "table{border-collapse:collapse;font-size:13px;margin:6px 0 18px}\n"
      "th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}\n"
      "th{background:#f0f0f0}td.l,th.l{text-align:left}\n"
      ".bad{color:#b00;font-weight:bold}.good{color:#070;font-weight:bold}.muted{color:#666;font-size:12px}\n"
      "tr.rec td{background:#eef8ee}\n"
      "p.headline{font-size:16px;padding:8px 12px;border-radius:4px;margin:6px 0 10px}\n"
      "p.headline.good{background:#eef8ee;border:1px solid #8c8}p.headline.bad{background:#fbeeee;border:1px solid #c88}\n"
      "td.bar,th.bar{width:220px}.barbox{position:relative;height:14px;background:#f4f4f4;width:210px}\n"
      ".barfill{position:absolute;left:0;top:2px;height:10px;background:#37a}\n"
      ".range{position:absolute;top:6px;height:2px;background:#000}\n"
      "code,pre,td.mono{font-family:ui-monospace,monospace;font-size:12px}\n"
      "td.mono{min-width:200px;max-width:420px;overflow-wrap:anywhere}td.wrap{max-width:280px;overflow-wrap:anywhere}\n"
      "svg.chart{display:block;margin:8px 0 20px;background:#fff}\n"
      "</style>\n</head>\n<body>\n<h1>antares ESTALE reproduction</h1>\n";
  h += "<p>Command: <code>" + html_escape(report.command) + "</code>. Result: ";
  if (report.interrupted) h += "<span class=\"bad\">interrupted</span> (the runs below are those that finished or were cut short)";
  else h += report.failures.empty() ? "<span class=\"good\">as expected</span>" : "<span class=\"bad\">FAILED</span>";
  h += "</p>\n";
  h += verdict_section(report, sum);
  if (!report.failures.empty()) {
    h += "<h2>Unexpected outcomes</h2>\n<ul>\n";
    for (const auto& f : report.failures) h += "<li class=\"bad\">" + html_escape(f) + "</li>\n";
    h += "</ul>\n";
  }

  h += "<h2>Per strategy and scenario</h2>\n<table>\n<tr><th class=\"l\">strategy</th><th class=\"l\">scenario</th>"
       "<th>runs</th><th>ESTALE runs</th><th>ESTALE</th><th>stale &le; window</th><th>stale &gt; window</th>"
       "<th>wrong</th><th>other errors</th><th>ops</th><th>p50</th><th>p99</th><th class=\"l\">verdict</th></tr>\n";
  for (const auto& r : table_rows(report)) {
    std::string v = verdict(r);
    int completed = r.runs - r.setup_failed - r.interrupted;
    h += "<tr>" + td(r.strategy) + td(r.scenario) + "<td>" + std::to_string(r.runs) + "</td><td>" +
         std::to_string(r.estale_runs) + "/" + std::to_string(std::max(0, completed)) + "</td><td>" +
         std::to_string(r.stats.estale) + "</td><td>" + std::to_string(r.stats.stale_within) + "</td><td>" +
         std::to_string(r.stats.stale_beyond) + "</td><td>" + std::to_string(r.stats.wrong) + "</td><td>" +
         std::to_string(r.stats.enoent_exists + r.stats.other_errors) + "</td><td>" + std::to_string(r.stats.ops) +
         "</td><td>" + us_str(r.stats.percentile_us(50)) + "</td><td>" + us_str(r.stats.percentile_us(99)) +
         "</td><td class=\"l " + (verdict_good(v) ? "good" : "bad") + "\">" + html_escape(v) + "</td></tr>\n";
  }
  h += "</table>\n<p class=\"muted\">ops and latency here include the scenarios' probes and waits; the cost of a "
       "strategy is the warm walk in the verdict above.</p>\n";

  h += "<h2>Configuration</h2>\n" + config_table(report.config);
  std::vector<std::string> kept;
  for (const auto& r : report.runs)
    if (!r.kept_dir.empty()) kept.push_back(r.strategy + " " + r.scenario + " #" + std::to_string(r.rep) + ": " + r.kept_dir);
  if (!kept.empty()) {
    h += "<p>Kept (--keep): logs, cache and upper directory of each run:</p>\n<ul>\n";
    for (const auto& k : kept) h += "<li><code>" + html_escape(k) + "</code></li>\n";
    h += "</ul>\n";
  }

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
  h += "<h2>Latency per strategy (every operation of the runs)</h2>\n" + latency_svg(lat);
  h += events_section(report);
  h += "</body>\n</html>\n";
  return h;
}

}  // namespace antares::repro
