#include "common/mountinfo.h"

#include <fstream>
#include <sstream>

namespace antares {
namespace {

std::string unescape(std::string_view s) {
  std::string o;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' &&
        s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
      o += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      o += s[i];
    }
  }
  return o;
}

std::vector<std::string_view> split_spaces(std::string_view line) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos < line.size()) {
    size_t sp = line.find(' ', pos);
    if (sp == std::string_view::npos) sp = line.size();
    if (sp > pos) out.push_back(line.substr(pos, sp - pos));
    pos = sp + 1;
  }
  return out;
}

}  // namespace

std::vector<MountEntry> parse_mountinfo(std::string_view text) {
  std::vector<MountEntry> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    // id parent major:minor root mount_point options [optional fields...] - fstype source super_options
    auto f = split_spaces(line);
    size_t dash = 6;
    while (dash < f.size() && f[dash] != "-") ++dash;
    if (f.size() < 6 || dash >= f.size()) continue;
    MountEntry e;
    e.mount_point = unescape(f[4]);
    e.options = std::string(f[5]);
    if (dash + 1 < f.size()) e.fstype = unescape(f[dash + 1]);
    if (dash + 2 < f.size()) e.source = unescape(f[dash + 2]);
    if (e.fstype.empty()) continue;
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<MountEntry> read_mountinfo() {
  std::ifstream in("/proc/self/mountinfo");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_mountinfo(ss.str());
}

std::optional<MountEntry> find_mount(const std::vector<MountEntry>& mounts, const std::string& path) {
  std::optional<MountEntry> found;
  for (const auto& e : mounts)  // later lines are mounted on top of earlier ones
    if (e.mount_point == path) found = e;
  return found;
}

std::optional<MountEntry> mount_at(const std::string& path) { return find_mount(read_mountinfo(), path); }

bool is_fuse_mount(const MountEntry& e) { return e.fstype == "fuse" || e.fstype.rfind("fuse.", 0) == 0; }

bool has_mount_below(const std::vector<MountEntry>& mounts, const std::string& dir) {
  std::string prefix = dir == "/" ? "/" : dir + "/";
  for (const auto& e : mounts)
    if (e.mount_point.size() > prefix.size() && e.mount_point.compare(0, prefix.size(), prefix) == 0) return true;
  return false;
}

}  // namespace antares
