#include "repro/buck_parse.h"

#include <gtest/gtest.h>

namespace antares::repro {
namespace {

TEST(BuckParse, LoadsInTheGeneratorsFormat) {
  // As mock-mega/content.cc writes a BUCK file.
  std::string buck =
      "# BUCK (content key 1234abcd)\n"
      "load(\"//tools/build_defs:rust.bzl\", \"alpha_rule\")\n"
      "load(\"//tools/build_defs:cxx.bzl\", \"beta_rule\")\n"
      "\nrust_library(\n    name = \"gamma_1a2b\",\n    srcs = glob([\"**/*.rs\"]),\n"
      "    deps = [\n        \"//apps/foo:lib\",\n    ],\n    visibility = [\"PUBLIC\"],\n)\n";
  EXPECT_EQ(parse_loads(buck),
            (std::vector<std::string>{"//tools/build_defs:rust.bzl", "//tools/build_defs:cxx.bzl"}));
}

TEST(BuckParse, LoadEdgeCases) {
  EXPECT_EQ(parse_loads("load( ':defs.bzl', 'x')\n"), std::vector<std::string>{":defs.bzl"});
  EXPECT_TRUE(parse_loads("# load(\"//a:b.bzl\", \"x\")\n").empty());          // a comment
  EXPECT_TRUE(parse_loads("x = \"load(\\\"//a:b.bzl\\\")\"\n").empty());       // inside a string
  EXPECT_TRUE(parse_loads("native.load(\"//a:b.bzl\")\nxload(\"//c:d.bzl\")\n").empty());
  EXPECT_TRUE(parse_loads("load(name)\n").empty());                            // not a literal
  EXPECT_EQ(parse_loads("load(\"//a:b.bzl\", \"x\"); load(\"//c:d.bzl\", \"y\")"),
            (std::vector<std::string>{"//a:b.bzl", "//c:d.bzl"}));
  EXPECT_TRUE(parse_loads("load(\"//a:b.bzl").empty());                        // unterminated
}

TEST(BuckParse, LabelToPath) {
  EXPECT_EQ(label_to_path("//tools/build_defs:rust.bzl", "apps/x"), "tools/build_defs/rust.bzl");
  EXPECT_EQ(label_to_path(":defs.bzl", "apps/x"), "apps/x/defs.bzl");
  EXPECT_EQ(label_to_path(":defs.bzl", ""), "defs.bzl");
  EXPECT_EQ(label_to_path("//:root.bzl", "a"), "root.bzl");
  EXPECT_EQ(label_to_path("//a/b:c/d.bzl", ""), "a/b/c/d.bzl");
  EXPECT_FALSE(label_to_path("prelude//rules:x.bzl", ""));
  EXPECT_FALSE(label_to_path("//a/b", ""));
  EXPECT_FALSE(label_to_path("//a:", ""));
  EXPECT_FALSE(label_to_path("//../x:y.bzl", ""));
  EXPECT_FALSE(label_to_path("//a:../../etc/passwd", ""));
  EXPECT_FALSE(label_to_path("///a:b.bzl", ""));
}

TEST(BuckParse, Buckconfig) {
  // As mock-mega/content.cc writes .buckconfig.
  auto cfg = parse_buckconfig(
      "# .buckconfig (content key 01)\n[cells]\n  root = .\n  prelude = prelude\n\n"
      "[buildfile]\n  name = BUCK.v2,BUCK\n\n[project]\n  ignore = buck-out, .git\n\n"
      "[build]\n  execution_platforms = prelude//platforms:default\n");
  EXPECT_EQ(cfg.buildfile_names, (std::vector<std::string>{"BUCK.v2", "BUCK"}));
  EXPECT_EQ(cfg.ignore, (std::vector<std::string>{"buck-out", ".git"}));
  auto defaults = parse_buckconfig("");
  EXPECT_EQ(defaults.buildfile_names, (std::vector<std::string>{"BUCK.v2", "BUCK"}));
  auto custom = parse_buckconfig("[buildfile]\nname=TARGETS\n[project]\nignore=\n");
  EXPECT_EQ(custom.buildfile_names, std::vector<std::string>{"TARGETS"});
  EXPECT_TRUE(custom.ignore.empty());
}

}  // namespace
}  // namespace antares::repro
