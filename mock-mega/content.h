// Deterministic file contents for the mock repository. A file's bytes are a
// pure function of its BlobSpec (class, key, size) and the repository's
// immutable GenContext, so a 1M-file repository stores 16 bytes per blob
// instead of its contents, and the same seed always yields the same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace antares::mock {

enum class FileClass : uint8_t { buckconfig = 0, buck = 1, package = 2, bzl = 3, source = 4 };
inline constexpr int kFileClassCount = 5;
const char* file_class_name(FileClass c);
bool parse_file_class(std::string_view s, FileClass* out);
// Class of a file by its name: ".buckconfig", "BUCK"/"BUCK.v2", "PACKAGE", "*.bzl", else source.
FileClass classify(std::string_view name);

struct BlobSpec {
  uint64_t key = 0;   // derived from (seed, path, content version)
  uint32_t size = 0;  // requested size for sources; the generated size for the rest
  FileClass cls = FileClass::source;
};

// What BUCK, PACKAGE and .bzl files refer to: fixed when the repository is
// generated and never changed by mutations, so regenerating old blobs stays exact.
struct GenContext {
  std::vector<std::string> bzl_labels;      // "//tools/build_defs:rust.bzl"
  std::vector<std::string> package_labels;  // "//apps/foo"
};

// The bytes of a blob. For sources, exactly spec.size bytes.
std::string generate_content(const BlobSpec& spec, const GenContext& ctx);

// A source size drawn from a skewed distribution (most files small, a few large),
// deterministic in key.
uint32_t source_size_for_key(uint64_t key);

}  // namespace antares::mock
