// The Prometheus text reader walk_bench charges walks with: samples, labels
// (escapes included), sums and groupings, and lines it must skip.
#include "bench/walk/prom.h"

#include <gtest/gtest.h>

namespace antares::bench {
namespace {

constexpr const char* kText = R"(# HELP antares_requests_total FUSE requests by operation and result
# TYPE antares_requests_total counter
antares_requests_total{op="lookup",result="ok"} 120
antares_requests_total{op="lookup",result="ENOENT"} 3
antares_requests_total{op="readdir",result="ok"} 40
antares_http_requests_total 7
mock_mega_requests_total{endpoint="content-hash",status="200"} 5 1764043200123
mock_mega_requests_total{endpoint="admin",status="200"} 9
odd{path="a\"b,c\\d"} 1.5
broken{op="x" 4
nonumber{op="x"} abc

)";

TEST(Prom, ParsesSamplesAndLabels) {
  auto s = parse_prometheus(kText);
  ASSERT_EQ(s.size(), 7u);
  EXPECT_EQ(s[0].name, "antares_requests_total");
  EXPECT_EQ(s[0].labels.at("op"), "lookup");
  EXPECT_EQ(s[0].labels.at("result"), "ok");
  EXPECT_EQ(s[0].value, 120);
  EXPECT_EQ(s[3].name, "antares_http_requests_total");
  EXPECT_TRUE(s[3].labels.empty());
  EXPECT_EQ(s[4].value, 5);  // the timestamp is not the value
  EXPECT_EQ(s[6].labels.at("path"), "a\"b,c\\d");
  EXPECT_EQ(s[6].value, 1.5);
}

TEST(Prom, SumsAndGroups) {
  auto s = parse_prometheus(kText);
  EXPECT_EQ(prom_sum(s, "antares_requests_total"), 163);
  EXPECT_EQ(prom_sum(s, "antares_requests_total", "result", {"ok"}), 160);
  EXPECT_EQ(prom_sum(s, "mock_mega_requests_total", "endpoint", {"content-hash", "blob"}), 5);
  EXPECT_EQ(prom_sum(s, "missing"), 0);
  auto by_op = prom_by_label(s, "antares_requests_total", "op");
  ASSERT_EQ(by_op.size(), 2u);
  EXPECT_EQ(by_op["lookup"], 123);
  EXPECT_EQ(by_op["readdir"], 40);
}

}  // namespace
}  // namespace antares::bench
