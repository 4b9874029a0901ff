#include "repro/process.h"

#include "common/mountinfo.h"

namespace antares::repro {

bool mountinfo_has_fuse(std::string_view text, const std::string& dir) {
  auto m = find_mount(parse_mountinfo(text), dir);
  return m && is_fuse_mount(*m);
}

}  // namespace antares::repro
