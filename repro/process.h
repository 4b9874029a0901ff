// estale-repro's child processes, temp dirs and mount helpers: the
// repository's one implementation lives in common/process.h; these names keep
// estale-repro's code as it was.
#pragma once

#include <string>
#include <string_view>

#include "common/process.h"

namespace antares::repro {

using antares::Child;
using antares::CommandResult;
using antares::force_unmount;
using antares::is_fuse_mounted;
using antares::run_command;
using antares::self_dir;
using antares::TempDir;

// Whether `mountinfo_text` (the content of /proc/self/mountinfo) shows a FUSE
// filesystem mounted at `dir` (an absolute path).
bool mountinfo_has_fuse(std::string_view mountinfo_text, const std::string& dir);

}  // namespace antares::repro
