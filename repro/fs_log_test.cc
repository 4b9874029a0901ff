#include "repro/fs_log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

namespace antares::repro {
namespace {

TEST(FsLog, ParsesEstaleLines) {
  auto e = parse_estale_line(
      "ts=2025-11-22T16:14:00.123Z level=warn event=estale layer=lower op=getattr path=a/b/BUCK node=123");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->layer, "lower");
  EXPECT_EQ(e->op, "getattr");
  EXPECT_EQ(e->path, "a/b/BUCK");
  EXPECT_EQ(e->node, 123u);
  EXPECT_EQ(e->t_us, 1763828040123000);
  auto q = parse_estale_line("ts=2025-11-22T16:14:00Z level=warn event=estale layer=upper op=open path=\"a b/c\"");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->path, "a b/c");
  EXPECT_FALSE(parse_estale_line("ts=2025-11-22T16:14:00Z level=info event=mounted path=x"));
  EXPECT_FALSE(parse_estale_line("ts=2025-11-22T16:14:00Z level=info event=estale_summary"));
  EXPECT_FALSE(parse_log_ts("yesterday"));
}

TEST(FsLog, TailReadsIncrementally) {
  const char* base = getenv("TMPDIR");
  std::string path = std::string(base && *base ? base : "/tmp") + "/repro-fslog-" + std::to_string(getpid());
  {
    std::ofstream f(path);
    f << "ts=2025-11-22T16:14:00.000Z level=warn event=estale layer=cl op=open path=x node=1\n"
      << "ts=2025-11-22T16:14:00.001Z level=info event=other\nts=2025-11-22T16:14:00.002Z level=warn event=es";
  }
  FsLogTail tail(path);
  EXPECT_EQ(tail.poll().size(), 1u);
  {
    std::ofstream f(path, std::ios::app);
    f << "tale layer=upper op=getattr path=y node=2\n";
  }
  auto more = tail.poll();
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].layer, "upper");
  EXPECT_EQ(tail.all().size(), 2u);
  unlink(path.c_str());
}

}  // namespace
}  // namespace antares::repro
