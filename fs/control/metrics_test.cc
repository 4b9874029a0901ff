#include "fs/control/metrics.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace antares::control {
namespace {

TEST(Metrics, RendersPrometheusTextSortedWithOneHelpAndTypePerFamily) {
  Metrics m;
  m.counter("zeta_total", "Last family.").inc(3);
  m.counter("estale_total", "ESTALE replies by op.", {{"op", "read"}}).inc(2);
  m.counter("estale_total", "ignored: help is kept from the first registration", {{"op", "getattr"}}).inc();
  m.gauge("alpha_inodes", "Live inodes.", [] { return 42.0; });
  m.gauge("beta_ratio", "A fraction.", [] { return 0.25; }, {{"layer", "lower"}});

  EXPECT_EQ(m.prometheus_text(),
            "# HELP alpha_inodes Live inodes.\n"
            "# TYPE alpha_inodes gauge\n"
            "alpha_inodes 42\n"
            "# HELP beta_ratio A fraction.\n"
            "# TYPE beta_ratio gauge\n"
            "beta_ratio{layer=\"lower\"} 0.25\n"
            "# HELP estale_total ESTALE replies by op.\n"
            "# TYPE estale_total counter\n"
            "estale_total{op=\"getattr\"} 1\n"
            "estale_total{op=\"read\"} 2\n"
            "# HELP zeta_total Last family.\n"
            "# TYPE zeta_total counter\n"
            "zeta_total 3\n");
}

TEST(Metrics, EscapesLabelValuesAndHelp) {
  Metrics m;
  m.counter("paths_total", "Help with \\ and\nnewline.", {{"path", "a\"b\\c\nd"}}).inc();
  EXPECT_EQ(m.prometheus_text(),
            "# HELP paths_total Help with \\\\ and\\nnewline.\n"
            "# TYPE paths_total counter\n"
            "paths_total{path=\"a\\\"b\\\\c\\nd\"} 1\n");
}

TEST(Metrics, SameNameAndLabelsInAnyOrderIsTheSameCounter) {
  Metrics m;
  Counter& a = m.counter("req_total", "h", {{"op", "read"}, {"code", "116"}});
  Counter& b = m.counter("req_total", "h", {{"code", "116"}, {"op", "read"}});
  Counter& c = m.counter("req_total", "h", {{"code", "0"}, {"op", "read"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  a.inc(5);
  EXPECT_EQ(m.value("req_total", {{"op", "read"}, {"code", "116"}}), 5u);
  EXPECT_EQ(m.value("req_total", {{"code", "0"}, {"op", "read"}}), 0u);
  EXPECT_EQ(m.value("missing_total"), 0u);
  EXPECT_NE(m.prometheus_text().find("req_total{code=\"116\",op=\"read\"} 5\n"), std::string::npos);
}

TEST(Metrics, ReferencesStayValidAsTheRegistryGrows) {
  Metrics m;
  Counter& first = m.counter("first_total", "h");
  for (int i = 0; i < 5000; ++i) m.counter("many_total", "h", {{"i", std::to_string(i)}}).inc();
  first.inc(7);
  EXPECT_EQ(m.value("first_total"), 7u);
  EXPECT_EQ(m.value("many_total", {{"i", "4999"}}), 1u);
}

TEST(Metrics, InvalidNamesAndTypeClashesAreNotExported) {
  Metrics m;
  m.counter("bad name", "h").inc();           // invalid metric name
  m.counter("ok_total", "h", {{"__x", "1"}}).inc();  // reserved label name
  m.gauge("g", "h", [] { return 1.0; });
  m.counter("g", "h").inc(9);                 // already a gauge: private counter
  m.counter("c_total", "h").inc(2);
  m.gauge("c_total", "h", [] { return 100.0; });  // already a counter: ignored
  EXPECT_EQ(m.prometheus_text(),
            "# HELP c_total h\n# TYPE c_total counter\nc_total 2\n"
            "# HELP g h\n# TYPE g gauge\ng 1\n");
  EXPECT_EQ(m.value("g"), 1u);
  EXPECT_EQ(m.value("c_total"), 2u);
}

TEST(Metrics, GaugeValuesAndCallbacksThatReadTheRegistry) {
  Metrics m;
  Counter& hits = m.counter("hits_total", "h");
  hits.inc(4);
  // A gauge derived from the registry itself must not deadlock.
  m.gauge("hits_doubled", "h", [&m] { return 2.0 * static_cast<double>(m.value("hits_total")); });
  m.gauge("negative", "h", [] { return -3.5; });
  m.gauge("throws", "h", []() -> double { throw std::runtime_error("boom"); });
  std::string text = m.prometheus_text();
  EXPECT_NE(text.find("hits_doubled 8\n"), std::string::npos) << text;
  EXPECT_NE(text.find("negative -3.5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("throws NaN\n"), std::string::npos) << text;
  EXPECT_EQ(m.value("hits_doubled"), 8u);
  EXPECT_EQ(m.value("negative"), 0u);
  // Re-registering a gauge replaces its function.
  m.gauge("negative", "h", [] { return 6.0; });
  EXPECT_EQ(m.value("negative"), 6u);
}

TEST(Metrics, CountersJson) {
  Metrics m;
  m.counter("a_total", "h").inc(1);
  m.counter("b_total", "h", {{"op", "read"}}).inc(2);
  m.gauge("c", "h", [] { return 3.0; });
  nlohmann::json want = {{"a_total", 1}, {"b_total{op=\"read\"}", 2}};
  EXPECT_EQ(m.counters_json(), want);
}

TEST(Metrics, ConcurrentIncrementsAndLookupsGiveTheExactTotal) {
  Metrics m;
  Counter& shared = m.counter("shared_total", "h");
  constexpr int kThreads = 8, kIters = 100000;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&m, &shared, t] {
      for (int i = 0; i < kIters; ++i) {
        shared.inc();
        // Looked up every time, with registration races between threads.
        m.counter("looked_up_total", "h", {{"parity", std::to_string(i % 2)}}).inc();
        if (i % 1000 == 0) {
          m.counter("per_thread_total", "h", {{"t", std::to_string(t)}}).inc(1000);
          (void)m.prometheus_text();
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(shared.value(), static_cast<uint64_t>(kThreads) * kIters);
  EXPECT_EQ(m.value("shared_total"), static_cast<uint64_t>(kThreads) * kIters);
  EXPECT_EQ(m.value("looked_up_total", {{"parity", "0"}}) + m.value("looked_up_total", {{"parity", "1"}}),
            static_cast<uint64_t>(kThreads) * kIters);
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(m.value("per_thread_total", {{"t", std::to_string(t)}}), static_cast<uint64_t>(kIters));
}

}  // namespace
}  // namespace antares::control
