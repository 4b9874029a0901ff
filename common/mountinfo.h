// The one parser of /proc/self/mountinfo in the repository: the daemon (is
// its mountpoint busy?), the tests and estale-repro (is a FUSE mount still
// there?) all ask it. Mount points are unescaped (\040 -> ' ').
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace antares {

struct MountEntry {
  std::string mount_point;  // absolute, unescaped
  std::string fstype;       // "fuse.antares-fs", "ext4", ...
  std::string source;       // the fsname: "http://127.0.0.1:8000"
  std::string options;      // per-mount options: "rw,nosuid,nodev,relatime"
};

// Every well-formed line of a mountinfo text; malformed lines are skipped.
std::vector<MountEntry> parse_mountinfo(std::string_view text);
// The current process's mounts ("" if /proc is unreadable).
std::vector<MountEntry> read_mountinfo();

// The topmost mount at `path` (compared as given: pass a realpath), if any.
std::optional<MountEntry> find_mount(const std::vector<MountEntry>& mounts, const std::string& path);
std::optional<MountEntry> mount_at(const std::string& path);
// Whether a FUSE filesystem (fstype "fuse" or "fuse.*") is mounted at path.
bool is_fuse_mount(const MountEntry& e);
// Whether some mount's point lies strictly beneath `dir`.
bool has_mount_below(const std::vector<MountEntry>& mounts, const std::string& dir);

}  // namespace antares
