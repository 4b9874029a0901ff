// The little of buck2's languages the walker needs: the buildfile names and
// ignored paths from `.buckconfig`, and the `load("//path:file.bzl", ...)`
// statements of BUCK, PACKAGE and .bzl files (mock-mega/content.cc writes one
// per line, as `load("//tools/build_defs:rust.bzl", "alpha_rule")`).
// Pure functions; no I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace antares::repro {

struct BuckConfig {
  std::vector<std::string> buildfile_names{"BUCK.v2", "BUCK"};  // in priority order
  std::vector<std::string> ignore{"buck-out", ".git"};          // paths relative to the root
};

// Parses the INI-like .buckconfig: `[buildfile] name = A,B` and
// `[project] ignore = a, b`. Missing keys keep the defaults.
BuckConfig parse_buckconfig(std::string_view text);

// The first argument of every load(...) call whose first argument is a string
// literal ("..." or '...'), in order of appearance. Calls inside comments
// (after '#') are skipped; `xload(` and `.load(` are not loads.
std::vector<std::string> parse_loads(std::string_view text);

// The file a load label names, relative to the repository root:
//   "//tools/build_defs:rust.bzl" -> "tools/build_defs/rust.bzl"
//   ":defs.bzl" (in package "apps/x") -> "apps/x/defs.bzl"
//   "//:root.bzl" -> "root.bzl"
// nullopt for labels in other cells ("prelude//..."), and for malformed or
// escaping labels (empty file, "..", absolute paths).
std::optional<std::string> label_to_path(std::string_view label, std::string_view package_dir);

}  // namespace antares::repro
