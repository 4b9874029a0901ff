#include "repro/report.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <regex>

#include "repro/plan.h"
#include "repro/summary.h"

namespace antares::repro {
namespace {

Report sample_report() {
  History h;
  h.add_initial_file("/a/BUCK", git_blob_oid("v1"));
  LogEntry e;
  e.id = 1;
  e.time_us = 1'000'000;
  e.kind = "modify";
  e.path = "/a/BUCK";
  e.old_oid = git_blob_oid("v1");
  e.new_oid = git_blob_oid("v2");
  h.apply(e);
  std::vector<OpEvent> ev;
  ev.push_back({500'000, 500'100, Op::read, 0, 2, "a/BUCK", git_blob_oid("v1"), {}});
  ev.push_back({1'200'000, 1'200'300, Op::open, ESTALE, 0, "a/BUCK", std::nullopt, {}});
  ev.push_back({1'300'000, 1'300'050, Op::read, 0, 2, "a/BUCK", git_blob_oid("v1"), {}});   // stale within
  ev.push_back({9'000'000, 9'000'050, Op::read, 0, 2, "a/BUCK", git_blob_oid("v1"), {}});   // stale beyond
  ev.push_back({9'100'000, 9'100'050, Op::read, 0, 2, "a/BUCK", git_blob_oid("v2"), {}});   // fresh
  ev.push_back({9'200'000, 9'200'050, Op::stat, EIO, 0, "a/BUCK", std::nullopt, {}});
  RunRecord run;
  run.mode = "scenario";
  run.strategy = "none";
  run.scenario = "lower-refresh";
  run.start_us = 0;
  run.end_us = 10'000'000;
  run.markers.push_back({1'000'000, "mutation", "modify /a/BUCK"});
  run.markers.push_back({1'100'000, "refresh", "antares-ctl refresh"});
  FsEstale fe;
  fe.t_us = 1'200'100;
  fe.layer = "lower";
  fe.op = "open";
  fe.path = "a/BUCK";
  analyze(h, ev, 2'000'000, {fe}, &run);
  run.fs_estale = {fe};
  run.reproduced = true;
  run.ok = true;
  Report r;
  r.command = "estale-repro scenario lower-refresh <&>";
  r.config = {{"seed", 42}};
  r.runs.push_back(run);
  RunRecord fix = run;
  fix.strategy = "auto";
  fix.ok = false;
  r.runs.push_back(fix);
  r.failures.push_back("auto lower-refresh #0: 1 ESTALE");
  return r;
}

TEST(Report, AnalyzeCountsEveryVerdict) {
  auto r = sample_report();
  const auto& st = r.runs[0].stats;
  EXPECT_EQ(st.ops, 6u);
  EXPECT_EQ(st.reads, 4u);
  EXPECT_EQ(st.fresh, 2u);
  EXPECT_EQ(st.stale_within, 1u);
  EXPECT_EQ(st.stale_beyond, 1u);
  EXPECT_EQ(st.estale, 1u);
  EXPECT_EQ(st.other_errors, 1u);
  ASSERT_EQ(r.runs[0].notable.size(), 4u);
  EXPECT_EQ(r.runs[0].notable[0].kind, "estale");
  EXPECT_EQ(r.runs[0].notable[0].layer, "lower");
  ASSERT_TRUE(r.runs[0].notable[0].cause);
  EXPECT_EQ(r.runs[0].notable[0].cause->id, 1u);
  EXPECT_EQ(st.percentile_us(50), 50u);
  EXPECT_EQ(st.percentile_us(100), 300u);
}

TEST(Report, JsonParsesAndHasEveryFigure) {
  auto r = sample_report();
  std::string text = report_json(r).dump(2);
  auto j = nlohmann::json::parse(text, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_FALSE(j["ok"].get<bool>());
  ASSERT_EQ(j["table"].size(), 2u);
  EXPECT_EQ(j["table"][0]["strategy"], "none");
  EXPECT_EQ(j["table"][0]["estale"], 1);
  EXPECT_EQ(j["table"][0]["stale_beyond_window"], 1);
  EXPECT_EQ(j["runs"][0]["events"].size(), 4u);
  EXPECT_EQ(j["runs"][0]["events"][0]["error"], "ESTALE");
  EXPECT_EQ(j["runs"][0]["markers"].size(), 2u);
  EXPECT_EQ(j["runs"][0]["fs_estale"][0]["layer"], "lower");
}

TEST(Report, StaleAndWrongReadsCarryWhatWasReadAndWhatWasAllowed) {
  History h;
  h.add_initial_file("/a/BUCK", git_blob_oid("v1"));
  LogEntry e;
  e.id = 1;
  e.time_us = 1'000'000;
  e.kind = "modify";
  e.path = "/a/BUCK";
  e.old_oid = git_blob_oid("v1");
  e.new_oid = git_blob_oid("v2\n");
  h.apply(e);
  std::map<Oid, std::string> contents{{git_blob_oid("v1"), "v1"}, {git_blob_oid("torn\x01"), "torn\x01"}};
  std::vector<OpEvent> ev;
  ev.push_back({9'000'000, 9'000'050, Op::read, 0, 2, "a/BUCK", git_blob_oid("v1"), {}});         // stale beyond
  ev.push_back({9'100'000, 9'100'050, Op::read, 0, 5, "a/BUCK", git_blob_oid("torn\x01"), {}});  // wrong
  RunRecord run;
  analyze(h, ev, 2'000'000, {}, &run, {"buck-out/"}, &contents);
  ASSERT_EQ(run.notable.size(), 2u);
  const Notable& stale = run.notable[0];
  EXPECT_EQ(stale.kind, "stale_beyond_window");
  EXPECT_EQ(stale.read_oid, git_blob_oid("v1").hex());
  EXPECT_EQ(stale.read_size, 2u);
  EXPECT_EQ(stale.read_head, "v1");
  ASSERT_EQ(stale.allowed.size(), 1u);  // only v2 was the effective version within the window
  EXPECT_EQ(stale.allowed[0].oid, git_blob_oid("v2\n").hex());
  EXPECT_EQ(stale.allowed[0].layer, "lower");
  EXPECT_EQ(stale.allowed[0].from_us, 1'000'000);
  const Notable& wrong = run.notable[1];
  EXPECT_EQ(wrong.kind, "wrong");
  EXPECT_EQ(wrong.read_head, "torn\\x01");  // escaped
  // The same in the JSON, and back.
  auto j = wrong.to_json();
  EXPECT_EQ(j["read"]["oid"], git_blob_oid("torn\x01").hex());
  EXPECT_EQ(j["read"]["size"], 5);
  EXPECT_EQ(j["allowed"][0]["oid"], git_blob_oid("v2\n").hex());
  auto back = Notable::from_json(j);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->read_oid, wrong.read_oid);
  ASSERT_EQ(back->allowed.size(), 1u);
  EXPECT_EQ(back->allowed[0].from_us, 1'000'000);
  EXPECT_EQ(back->allowed[0].until_us, INT64_MAX);
}

TEST(Report, DiagnosisSaysWhichVersionEachPageCameFrom) {
  std::string v1(8192, 'a'), v2(8192, 'b');
  // A torn read: the first page of the new version, the second of the old.
  std::string torn = v2.substr(0, 4096) + v1.substr(4096);
  std::string d = diagnose_bytes(torn, {{"v1", v1}, {"v2", v2}});
  EXPECT_NE(d.find("bytes 0-4095 = v2"), std::string::npos) << d;
  EXPECT_NE(d.find("bytes 4096-8191 = v1"), std::string::npos) << d;
  EXPECT_NE(diagnose_bytes(v1, {{"v1", v1}}).find("identical to v1"), std::string::npos);
  std::string zeros = v2.substr(0, 4096) + std::string(4096, '\0');
  EXPECT_NE(diagnose_bytes(zeros, {{"v2", v2}}).find("bytes 4096-8191 = zeros"), std::string::npos);
  std::string other = "abc";
  EXPECT_NE(diagnose_bytes(other, {{"v1", v1}}).find("matches v1 up to byte 1"), std::string::npos)
      << diagnose_bytes(other, {{"v1", v1}});
}

TEST(Report, EstaleOnAReplacedDirectoryIsAttributedToTheAncestorsLayer) {
  History h;
  h.record_upper("/out/D/a.txt", git_blob_oid("1"), 0, "upper-write");
  std::vector<OpEvent> ev{{1'000'000, 1'000'100, Op::stat, ESTALE, 0, "out/D/a.txt", std::nullopt, {}}};
  FsEstale dir_line;
  dir_line.t_us = 1'000'050;
  dir_line.layer = "upper";
  dir_line.op = "lookup";
  dir_line.path = "out/D";
  RunRecord run;
  analyze(h, ev, 2'000'000, {dir_line}, &run);
  ASSERT_EQ(run.notable.size(), 1u);
  EXPECT_EQ(run.notable[0].layer, "upper");
  EXPECT_EQ(run.notable[0].layer_path, "out/D");
  // A line for the path itself wins over its ancestor's.
  FsEstale file_line = dir_line;
  file_line.path = "out/D/a.txt";
  file_line.layer = "cl";
  RunRecord run2;
  analyze(h, ev, 2'000'000, {dir_line, file_line}, &run2);
  EXPECT_EQ(run2.notable[0].layer, "cl");
  EXPECT_EQ(run2.notable[0].layer_path, "");
}

TEST(Report, LatencyHistogramPercentilesSurviveMergeAndJson) {
  LatencyHistogram a, b, all;
  for (uint32_t v : {5u, 50u, 300u, 1000u, 77777u}) a.add(v), all.add(v);
  for (uint32_t v : {7u, 4000000u, 123u}) b.add(v), all.add(v);
  LatencyHistogram merged = a;
  merged.merge(b);
  EXPECT_EQ(merged, all);
  EXPECT_EQ(LatencyHistogram::from_json(merged.to_json()), all);
  EXPECT_EQ(all.count(), 8u);
  EXPECT_EQ(all.percentile(0), 5u);
  EXPECT_EQ(all.percentile(50), 123u);  // exact below 256
  // Above 256, within 1% of the true value.
  EXPECT_NEAR(all.percentile(100), 4000000, 40000);
  EXPECT_NEAR(a.percentile(80), 1000, 10);
  EXPECT_EQ(LatencyHistogram().percentile(50), 0u);
}

TEST(Report, ShellCommandKeepsTheOrderTypedAndQuotes) {
  const char* argv[] = {"estale-repro", "--seed", "7", "matrix", "--json", "a b.json", "it's"};
  EXPECT_EQ(shell_command(7, const_cast<char**>(argv)), "estale-repro --seed 7 matrix --json 'a b.json' 'it'\\''s'");
}

TEST(Report, HtmlIsSelfContainedWithSvgCharts) {
  auto r = sample_report();
  std::string html = render_html(r);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("</html>"), std::string::npos);
  // One timeline per strategy plus the latency chart.
  size_t svgs = 0;
  for (size_t p = 0; (p = html.find("<svg", p)) != std::string::npos; ++p) ++svgs;
  EXPECT_EQ(svgs, 3u);
  EXPECT_NE(html.find("class=\"chart timeline\""), std::string::npos);
  EXPECT_NE(html.find("class=\"chart latency\""), std::string::npos);
  // No script, no external resource.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  // Text is escaped.
  EXPECT_NE(html.find("&lt;&amp;&gt;"), std::string::npos);
}

TEST(Report, TableHasARowPerStrategyAndScenario) {
  auto r = sample_report();
  std::string t = render_table(r);
  EXPECT_NE(t.find("strategy"), std::string::npos);
  EXPECT_NE(t.find("reproduced"), std::string::npos);
  EXPECT_NE(t.find("FAILED"), std::string::npos);
  auto rows = table_rows(r);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].strategy, "auto");
}

}  // namespace
}  // namespace antares::repro

namespace antares::repro {
namespace {

using nlohmann::json;

RunRecord run_of(const std::string& strategy, const std::string& scenario, int rep, uint64_t estale, bool ok,
                 int unit = -1) {
  RunRecord r;
  r.mode = scenario == "soak" ? "soak" : scenario == "walk" ? "walk" : "scenario";
  r.strategy = strategy;
  r.scenario = scenario;
  r.rep = rep;
  r.unit = unit;
  r.start_us = 1'000'000 * (unit + 2);
  r.end_us = r.start_us + 500'000;
  r.stats.estale = estale;
  r.stats.ops = 10 + estale;
  for (int i = 0; i < 10; ++i) r.stats.latency.add(100 + i);
  r.reproduced = estale > 0;
  r.ok = ok;
  r.target = "/t/" + scenario + std::to_string(rep);
  return r;
}

CostRow cost_of(const std::string& strategy, std::vector<double> seconds) {
  CostRow c;
  c.strategy = strategy;
  c.walk_seconds = std::move(seconds);
  c.entries_per_walk = 1000;
  c.latency.add(40);
  c.latency.add(900);
  return c;
}

Report matrix_report() {
  Report r;
  r.command = "estale-repro matrix";
  r.config = {{"seed", 42}, {"window_ms", 2300}};
  int unit = 0;
  for (const char* st : {"none", "A", "B", "auto"})
    for (const char* sc : {"lower-refresh", "dir-replaced"})
      for (int rep = 0; rep < 2; ++rep)
        r.runs.push_back(run_of(st, sc, rep, std::string(st) == "none" ? 3 : 0, true, unit++));
  r.planned_units = unit;
  return r;
}

TEST(Summary, RecommendsTheCheapestCorrectFixWithItsNumbers) {
  Report r = matrix_report();
  // A fails; B and auto are equal within noise; none is the baseline.
  r.runs[5].stats.estale = 2;
  r.runs[5].ok = false;
  r.cost = {cost_of("none", {0.10, 0.10, 0.11}), cost_of("A", {0.05, 0.05, 0.05}), cost_of("B", {0.080, 0.081, 0.079}),
            cost_of("auto", {0.081, 0.080, 0.082})};
  Summary s = summarize(r);
  ASSERT_EQ(s.rows.size(), 4u);
  EXPECT_EQ(s.rows[0].strategy, "none");
  EXPECT_FALSE(s.rows[1].correct);  // A: fastest, but it failed
  EXPECT_NE(s.rows[1].correctness.find("FAILED: 2 ESTALE"), std::string::npos) << s.rows[1].correctness;
  EXPECT_EQ(s.recommended, "auto");
  EXPECT_NEAR(s.rows[3].ratio_to_none, 0.10 / 0.081, 0.01);
  EXPECT_NE(s.headline.find("Recommended: auto"), std::string::npos) << s.headline;
  EXPECT_NE(s.headline.find("entries/s"), std::string::npos) << s.headline;
  EXPECT_NE(s.headline.find("x none"), std::string::npos) << s.headline;
  EXPECT_NE(s.headline.find("0 ESTALE"), std::string::npos) << s.headline;
  EXPECT_NE(s.why.find("within measurement noise"), std::string::npos) << s.why;  // B was a hair faster
  // Clearly cheaper and correct wins, whatever the preference.
  r.cost[2] = cost_of("B", {0.040, 0.041, 0.040});
  EXPECT_EQ(summarize(r).recommended, "B");
  // Without a cost measurement: the correct fix that covers most, and it says so.
  r.cost.clear();
  Summary nocost = summarize(r);
  EXPECT_EQ(nocost.recommended, "auto");
  EXPECT_NE(nocost.why.find("not measured"), std::string::npos);
  // Nothing correct: no recommendation, and the headline says why.
  for (auto& run : r.runs)
    if (run.strategy != "none") run.stats.wrong = 1, run.ok = false;
  Summary none = summarize(r);
  EXPECT_EQ(none.recommended, "");
  EXPECT_NE(none.headline.find("No fix strategy was correct"), std::string::npos) << none.headline;
}

TEST(Report, TableNeverContradictsItself) {
  Report r;
  r.runs.push_back(run_of("none", "walk", 0, 1, true));  // a walk under none that met ESTALE
  r.runs.push_back(run_of("auto", "walk", 0, 0, true));
  r.runs.push_back(run_of("none", "lower-refresh", 0, 2, true));
  r.runs.push_back(run_of("none", "lower-refresh", 1, 0, false));
  auto rows = table_rows(r);
  ASSERT_EQ(rows.size(), 3u);
  for (const auto& row : rows) {
    SCOPED_TRACE(row.strategy + " " + row.scenario);
    EXPECT_EQ(row.estale_runs > 0, row.stats.estale > 0);
  }
  EXPECT_EQ(rows[0].estale_runs, 1);
  EXPECT_EQ(verdict(rows[0]), "reproduced");
  EXPECT_EQ(verdict(rows[1]), "clean");
  EXPECT_EQ(verdict(rows[2]), "NOT reproduced");
  // An interrupted run is called so, not "setup failed".
  Report ir;
  ir.runs.push_back(run_of("auto", "soak", 0, 0, false));
  ir.runs.back().interrupted = true;
  EXPECT_EQ(verdict(table_rows(ir)[0]), "interrupted");
}

TEST(Report, JsonReadsBackToTheSameReport) {
  Report r = sample_report();
  r.cost = {cost_of("none", {0.1, 0.2}), cost_of("auto", {0.05})};
  r.cost_config = {{"files", 3000}, {"rounds", 2}, {"ttl", "5000ms"}};
  r.planned_units = 2;
  r.shards = {"1/2"};
  json j = report_json(r);
  auto back = report_from_json(j);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(report_json(*back), j);
  EXPECT_FALSE(report_from_json(json{{"hello", 1}}).ok());
}

TEST(Report, MergedShardsGiveTheUnshardedTable) {
  Report whole = matrix_report();
  whole.cost = {cost_of("none", {0.1}), cost_of("auto", {0.08})};
  const int n = 3;
  std::vector<Report> parts;
  for (int k = 1; k <= n; ++k) {
    Report p;
    p.command = whole.command;
    p.config = whole.config;
    p.config["shard"] = std::to_string(k) + "/" + std::to_string(n);
    p.planned_units = whole.planned_units;
    p.shards = {std::to_string(k) + "/" + std::to_string(n)};
    for (const auto& run : whole.runs)
      if (run.unit % n == k - 1) p.runs.push_back(run);
    if (k == 2) p.cost = whole.cost;
    // Through JSON, as merge reads them.
    parts.push_back(*report_from_json(report_json(p)));
  }
  std::reverse(parts.begin(), parts.end());  // the order of the files does not matter
  auto merged = merge_reports(parts);
  ASSERT_TRUE(merged.ok()) << merged.error().message;
  EXPECT_EQ(report_json(*merged)["table"], report_json(whole)["table"]);
  EXPECT_EQ(report_json(*merged)["verdict"], report_json(whole)["verdict"]);
  EXPECT_TRUE(merged->failures.empty());
  // A missing shard is a failure of the merge; a shard twice or other settings are refused.
  auto two = merge_reports({parts[0], parts[1]});
  ASSERT_TRUE(two.ok());
  ASSERT_EQ(two->failures.size(), 1u);
  EXPECT_NE(two->failures[0].find("missing"), std::string::npos);
  EXPECT_FALSE(merge_reports({parts[0], parts[0]}).ok());
  Report other = parts[1];
  other.config["ttl_ms"] = 5000;
  auto bad = merge_reports({parts[0], other});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("ttl_ms"), std::string::npos) << bad.error().message;
}

TEST(Report, HtmlOpensWithTheVerdictAndFoldsEventsFailuresFirst) {
  Report r = matrix_report();
  r.cost = {cost_of("none", {0.1}), cost_of("A", {0.09}), cost_of("B", {0.08}), cost_of("auto", {0.08})};
  r.cost_config = {{"files", 3000}, {"rounds", 1}, {"ttl", "5000ms"}};
  // 40 identical ESTALE events under none, then one wrong read under auto.
  for (int i = 0; i < 40; ++i) {
    Notable n;
    n.t_us = 2'000'000 + i;
    n.kind = "estale";
    n.op = "stat";
    n.path = "a/BUCK";
    n.err = ESTALE;
    n.layer = "lower";
    r.runs[0].notable.push_back(n);
  }
  Notable w;
  w.t_us = 3'000'000;
  w.kind = "wrong";
  w.op = "read";
  w.path = "tools/rules.bzl";
  w.read_oid = std::string(40, 'a');
  w.read_size = 12;
  w.read_head = "garbage";
  w.allowed.push_back({std::string(40, 'b'), "lower", INT64_MIN, INT64_MAX});
  r.runs.back().notable.push_back(w);
  r.runs.push_back(run_of("none->auto", "switch", 0, 1, true, 99));
  std::string html = render_html(r);
  // The verdict comes first and names the recommendation with its numbers.
  size_t verdict = html.find("id=\"verdict\"");
  ASSERT_NE(verdict, std::string::npos);
  EXPECT_LT(verdict, html.find("Per strategy and scenario"));
  EXPECT_NE(html.find("Recommended: auto"), std::string::npos);
  EXPECT_LT(html.find("Recommended: auto"), html.find("<h2>Configuration"));
  // Config as a table, not a JSON dump.
  EXPECT_NE(html.find("<table class=\"config\">"), std::string::npos);
  EXPECT_EQ(html.find("<pre>"), std::string::npos);
  // Events: the wrong read first, the 40 ESTALE folded into one row with its count.
  size_t events = html.find("id=\"events\"");
  ASSERT_NE(events, std::string::npos);
  std::string ev = html.substr(events);
  EXPECT_LT(ev.find("tools/rules.bzl"), ev.find("a/BUCK"));
  EXPECT_NE(ev.find("<td>40</td>"), std::string::npos);
  EXPECT_NE(ev.find("garbage"), std::string::npos);
  EXPECT_NE(ev.find("bbbbbbbbbb (lower, start..now)"), std::string::npos);
  // Every cell filled.
  EXPECT_EQ(ev.find("<td class=\"l\"></td>"), std::string::npos);
  EXPECT_EQ(ev.find("<td></td>"), std::string::npos);
  // No label of the latency chart is clipped at the left edge: its right
  // end (text-anchor end) leaves room for the text at ~7.5 px a character.
  std::regex label("<text x=\"(\\d+)\" y=\"[\\d.]+\" font-size=\"12\" text-anchor=\"end\">([^<]+)</text>");
  int labels = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), label); it != std::sregex_iterator(); ++it) {
    ++labels;
    std::string text = (*it)[2];
    size_t chars = text.size() - 3 * (text.find("&gt;") != std::string::npos);  // -&gt; is one character
    EXPECT_GE(std::stoi((*it)[1]), static_cast<int>(chars * 15 / 2)) << text;
  }
  EXPECT_EQ(labels, 5);  // none, A, B, auto, none->auto
}

TEST(Plan, ShardsPartitionThePlanDeterministically) {
  std::vector<Unit> plan;
  for (int i = 0; i < 23; ++i) {
    Unit u;
    u.index = i;
    u.estimate_s = i % 6 == 5 ? 19 : 4;  // a soak every sixth unit
    plan.push_back(u);
  }
  std::vector<int> owner(plan.size(), 0);
  double max_load = 0, min_load = 1e9;
  for (int k = 1; k <= 3; ++k) {
    auto mine = select_shard(plan, Shard{k, 3});
    EXPECT_EQ(mine.size(), select_shard(plan, Shard{k, 3}).size());
    double load = 0;
    int last = -1;
    for (const auto& u : mine) {
      ++owner[u.index];
      load += u.estimate_s;
      EXPECT_GT(u.index, last);  // plan order
      last = u.index;
    }
    max_load = std::max(max_load, load), min_load = std::min(min_load, load);
  }
  for (int o : owner) EXPECT_EQ(o, 1);
  EXPECT_LE(max_load - min_load, 19);  // balanced to within one unit
  EXPECT_EQ(select_shard(plan, Shard{1, 1}).size(), plan.size());
  EXPECT_TRUE(parse_shard("2/3").ok());
  EXPECT_EQ(parse_shard("2/3")->k, 2);
  for (const char* bad : {"0/3", "4/3", "3", "/3", "1/", "a/b", "1/0", "-1/3", "1/1001"})
    EXPECT_FALSE(parse_shard(bad).ok()) << bad;
}

}  // namespace
}  // namespace antares::repro
