#include "mock-mega/content.h"

#include <cstdio>

#include "common/rng.h"

namespace antares::mock {
namespace {

constexpr const char* kWords[] = {"alpha", "beta",  "gamma", "delta", "cache", "index", "store",
                                  "fetch", "parse", "build", "graph", "node",  "edge",  "query",
                                  "layer", "merge", "union", "token", "blob",  "tree"};
constexpr size_t kWordCount = sizeof(kWords) / sizeof(kWords[0]);

std::string hex8(uint64_t v) {
  char b[17];
  snprintf(b, sizeof b, "%08x", static_cast<unsigned>(v & 0xffffffffu));
  return b;
}

const std::string& pick(Rng& r, const std::vector<std::string>& v) { return v[r.below(v.size())]; }

std::string gen_buckconfig(const BlobSpec& s) {
  std::string out = "# .buckconfig (content key " + hex8(s.key) + ")\n";
  out +=
      "[cells]\n  root = .\n  prelude = prelude\n\n"
      "[buildfile]\n  name = BUCK.v2,BUCK\n\n"
      "[project]\n  ignore = buck-out, .git\n\n"
      "[build]\n  execution_platforms = prelude//platforms:default\n";
  return out;
}

std::string gen_buck(const BlobSpec& s, const GenContext& ctx) {
  Rng r(s.key);
  std::string out = "# BUCK (content key " + hex8(s.key) + ")\n";
  if (!ctx.bzl_labels.empty()) {
    int loads = 1 + static_cast<int>(r.below(std::min<size_t>(3, ctx.bzl_labels.size())));
    for (int i = 0; i < loads; ++i)
      out += "load(\"" + pick(r, ctx.bzl_labels) + "\", \"" + kWords[r.below(kWordCount)] + "_rule\")\n";
  }
  static constexpr const char* kRules[] = {"rust_library", "cxx_library", "python_library",
                                           "java_library", "genrule", "export_file"};
  static constexpr const char* kGlobs[] = {"**/*.rs", "**/*.cpp", "**/*.py", "**/*.java", "**/*.go", "*"};
  int targets = 1 + static_cast<int>(r.below(4));
  for (int t = 0; t < targets; ++t) {
    size_t rule = r.below(6);
    out += "\n" + std::string(kRules[rule]) + "(\n";
    out += "    name = \"" + std::string(kWords[r.below(kWordCount)]) + "_" + hex8(r.next()).substr(0, 4) + "\",\n";
    out += "    srcs = glob([\"" + std::string(kGlobs[rule]) + "\"]),\n";
    if (!ctx.package_labels.empty()) {
      out += "    deps = [\n";
      int deps = static_cast<int>(r.below(4));
      for (int d = 0; d < deps; ++d) out += "        \"" + pick(r, ctx.package_labels) + ":lib\",\n";
      out += "    ],\n";
    }
    out += "    visibility = [\"PUBLIC\"],\n)\n";
  }
  return out;
}

std::string gen_package(const BlobSpec& s, const GenContext& ctx) {
  Rng r(s.key);
  std::string out = "# PACKAGE (content key " + hex8(s.key) + ")\n";
  if (!ctx.bzl_labels.empty())
    out += "load(\"" + pick(r, ctx.bzl_labels) + "\", \"package_defaults\")\n";
  out += "package(\n    visibility = [\"PUBLIC\"],\n)\n";
  out += "write_package_value(\"antares.owner\", \"team-" + std::string(kWords[r.below(kWordCount)]) + "\")\n";
  return out;
}

std::string gen_bzl(const BlobSpec& s, const GenContext& ctx) {
  Rng r(s.key);
  std::string out = "# Starlark rules (content key " + hex8(s.key) + ")\n";
  // Some .bzl files load the first one (the root rules file), like a real prelude chain.
  if (!ctx.bzl_labels.empty() && r.chance(0.5)) out += "load(\"" + ctx.bzl_labels.front() + "\", \"base_rule\")\n";
  int defs = 2 + static_cast<int>(r.below(6));
  for (int i = 0; i < defs; ++i) {
    std::string name = std::string(kWords[r.below(kWordCount)]) + "_rule";
    out += "\ndef " + name + "(name, srcs = [], deps = [], **kwargs):\n";
    out += "    native.genrule(name = name, srcs = srcs, out = name + \".out\", cmd = \"cat $SRCS > $OUT\", **kwargs)\n";
  }
  return out;
}

std::string gen_source(const BlobSpec& s) {
  Rng r(s.key);
  std::string out;
  out.reserve(s.size + 96);
  out += "// generated source, content key " + hex8(s.key) + "\n";
  char line[96];
  while (out.size() < s.size) {
    int n = snprintf(line, sizeof line, "fn %s_%s_%u() -> u64 { %llu }\n", kWords[r.below(kWordCount)],
                     kWords[r.below(kWordCount)], static_cast<unsigned>(r.below(1000)),
                     static_cast<unsigned long long>(r.next() >> 20));
    out.append(line, static_cast<size_t>(n));
  }
  out.resize(s.size);
  if (!out.empty()) out.back() = '\n';
  return out;
}

}  // namespace

const char* file_class_name(FileClass c) {
  switch (c) {
    case FileClass::buckconfig: return "buckconfig";
    case FileClass::buck: return "buck";
    case FileClass::package: return "package";
    case FileClass::bzl: return "bzl";
    case FileClass::source: return "source";
  }
  return "source";
}

bool parse_file_class(std::string_view s, FileClass* out) {
  for (int i = 0; i < kFileClassCount; ++i) {
    auto c = static_cast<FileClass>(i);
    if (s == file_class_name(c)) { *out = c; return true; }
  }
  return false;
}

FileClass classify(std::string_view name) {
  if (name == ".buckconfig") return FileClass::buckconfig;
  if (name == "BUCK" || name == "BUCK.v2") return FileClass::buck;
  if (name == "PACKAGE") return FileClass::package;
  if (name.size() > 4 && name.substr(name.size() - 4) == ".bzl") return FileClass::bzl;
  return FileClass::source;
}

uint32_t source_size_for_key(uint64_t key) {
  Rng r(mix64(key ^ 0x5157a11eULL));
  double u = r.unit();
  if (u < 0.75) return static_cast<uint32_t>(r.between(64, 2048));
  if (u < 0.97) return static_cast<uint32_t>(r.between(2049, 16384));
  return static_cast<uint32_t>(r.between(16385, 131072));
}

std::string generate_content(const BlobSpec& spec, const GenContext& ctx) {
  switch (spec.cls) {
    case FileClass::buckconfig: return gen_buckconfig(spec);
    case FileClass::buck: return gen_buck(spec, ctx);
    case FileClass::package: return gen_package(spec, ctx);
    case FileClass::bzl: return gen_bzl(spec, ctx);
    case FileClass::source: return gen_source(spec);
  }
  return {};
}

}  // namespace antares::mock
