// The version every tool prints for --version: the project version from
// CMakeLists.txt and `git describe` of the checkout, taken at build time
// (cmake/version.cmake), so a binary names the commit it was built from.
#pragma once

#include <string>

namespace antares {

const char* project_version();  // "0.2.0"
const char* git_describe();     // "5ba117d-dirty", or "unknown" outside a git checkout

// "TOOL 0.2.0 (git 5ba117d)\n": the first line is what help2man reads.
std::string version_text(const std::string& tool);

}  // namespace antares
