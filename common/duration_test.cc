#include "common/duration.h"

#include <gtest/gtest.h>

namespace antares {
namespace {
using std::chrono::milliseconds;

TEST(Duration, ParsesUnits) {
  EXPECT_EQ(parse_duration("5s"), milliseconds(5000));
  EXPECT_EQ(parse_duration("500ms"), milliseconds(500));
  EXPECT_EQ(parse_duration("2m"), milliseconds(120000));
  EXPECT_EQ(parse_duration("1h"), milliseconds(3600000));
  EXPECT_EQ(parse_duration("1.5s"), milliseconds(1500));
  EXPECT_EQ(parse_duration("3"), milliseconds(3000));
  EXPECT_EQ(parse_duration("0ms"), milliseconds(0));
}

TEST(Duration, RejectsGarbage) {
  for (const char* bad : {"", "s", "-1s", "5x", "5 s", "ms5", "1e3s", "."})
    EXPECT_FALSE(parse_duration(bad)) << bad;
}

}  // namespace
}  // namespace antares
