#include "repro/report.h"

#include <gtest/gtest.h>

#include <cerrno>

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
  ev.push_back({500'000, 500'100, Op::read, 0, 2, "a/BUCK", git_blob_oid("v1")});
  ev.push_back({1'200'000, 1'200'300, Op::open, ESTALE, 0, "a/BUCK", std::nullopt});
  ev.push_back({1'300'000, 1'300'050, Op::read, 0, 2, "a/BUCK", git_blob_oid("v1")});   // stale within
  ev.push_back({9'000'000, 9'000'050, Op::read, 0, 2, "a/BUCK", git_blob_oid("v1")});   // stale beyond
  ev.push_back({9'100'000, 9'100'050, Op::read, 0, 2, "a/BUCK", git_blob_oid("v2")});   // fresh
  ev.push_back({9'200'000, 9'200'050, Op::stat, EIO, 0, "a/BUCK", std::nullopt});
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
