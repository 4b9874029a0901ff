#include "common/version.h"

namespace antares {

std::string version_text(const std::string& tool) {
  return tool + " " + project_version() + " (git " + git_describe() + ")\n";
}

}  // namespace antares
