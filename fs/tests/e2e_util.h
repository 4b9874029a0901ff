// Helpers shared by the antares-fs end-to-end tests: reading the mock-mega
// API (listings, blobs, CL file lists, admin mutations), reading the daemon's
// status counters through antares-ctl, and errno-returning wrappers of the
// syscalls the tests make through the mount. Header-only so each test binary
// stays one source file plus this.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "testing/mount_fixture.h"
#include "testing/subprocess.h"

namespace antares::e2e {

using nlohmann::json;
using namespace std::chrono_literals;
using testing::MegaProcess;
using testing::Mount;
using testing::MegaOptions;
using testing::MountOptions;
using testing::TempDir;

// ---------------------------------------------------------------- mock-mega

inline json get_json(MegaProcess& mega, const std::string& path) {
  std::string body = mega.admin("GET", path);
  auto j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw std::runtime_error("GET " + path + ": not JSON: " + body.substr(0, 200));
  return j;
}

inline json post_json(MegaProcess& mega, const std::string& path, const json& body) {
  std::string out = mega.admin("POST", path, body.dump());
  auto j = json::parse(out, nullptr, false);
  if (j.is_discarded()) throw std::runtime_error("POST " + path + ": not JSON: " + out.substr(0, 200));
  return j;
}

// "/a/b/c" -> {"/a/b", "c"}; "/x" -> {"/", "x"}.
inline std::pair<std::string, std::string> split_repo_path(const std::string& p) {
  auto slash = p.rfind('/');
  std::string dir = slash == 0 ? "/" : p.substr(0, slash);
  return {dir, p.substr(slash + 1)};
}

// The content-hash listing of a repository directory ("/" or "/a/b").
inline json listing(MegaProcess& mega, const std::string& dir) {
  auto j = get_json(mega, "/api/v1/tree/content-hash?path=" + dir);
  if (!j.value("req_result", false)) throw std::runtime_error("listing " + dir + " failed: " + j.dump());
  return j["data"];
}

// The blob oid of repository file `path`, from its parent's listing.
inline std::string oid_of(MegaProcess& mega, const std::string& path) {
  auto [dir, name] = split_repo_path(path);
  for (auto& e : listing(mega, dir))
    if (e["name"] == name) return e["oid"];
  throw std::runtime_error("no such file on the server: " + path);
}

inline std::string blob(MegaProcess& mega, const std::string& oid) {
  // curl writes the raw bytes to stdout; admin() returns them unchanged.
  return mega.admin("GET", "/api/v1/file/blob/" + oid);
}

inline std::string server_content(MegaProcess& mega, const std::string& path) {
  return blob(mega, oid_of(mega, path));
}

// Every live file of a class ("source", "buck", ...), sorted.
inline std::vector<std::string> paths_of_class(MegaProcess& mega, const std::string& cls) {
  return get_json(mega, "/admin/paths?class=" + cls)["paths"].get<std::vector<std::string>>();
}

inline json cl_files(MegaProcess& mega, const std::string& cl) {
  auto j = get_json(mega, "/api/v1/cl/" + cl + "/files-list");
  return j["data"];
}

// Every path any CL of the server mentions (so a test can pick lower-only files).
inline std::set<std::string> cl_paths(MegaProcess& mega) {
  std::set<std::string> out;
  int cls = get_json(mega, "/admin/state")["cls"];
  for (int c = 1; c <= cls; ++c)
    for (auto& e : cl_files(mega, std::to_string(c))) out.insert(e["path"].get<std::string>());
  return out;
}

// Source files that no CL touches, `n` of them, from distinct directories when possible.
inline std::vector<std::string> lower_only_files(MegaProcess& mega, size_t n) {
  auto in_cl = cl_paths(mega);
  std::vector<std::string> out;
  std::set<std::string> dirs;
  auto all = paths_of_class(mega, "source");
  for (int pass = 0; pass < 2 && out.size() < n; ++pass)
    for (auto& p : all) {
      if (out.size() >= n) break;
      if (in_cl.count(p) || std::find(out.begin(), out.end(), p) != out.end()) continue;
      auto dir = split_repo_path(p).first;
      if (pass == 0 && dirs.count(dir)) continue;
      // Avoid directories a CL touches: their listings merge with the CL layer.
      bool cl_dir = false;
      for (auto& c : in_cl) cl_dir |= split_repo_path(c).first == dir;
      if (cl_dir) continue;
      dirs.insert(dir);
      out.push_back(p);
    }
  if (out.size() < n) throw std::runtime_error("not enough lower-only files");
  return out;
}

// Applies explicit mutations; returns the "applied" log entries (throws on refusal).
inline json mutate(MegaProcess& mega, const json& mutations) {
  auto r = post_json(mega, "/admin/mutate", {{"mutations", mutations}});
  if (!r.contains("applied")) throw std::runtime_error("mutation refused: " + r.dump());
  return r["applied"];
}

// A file CL 1 adds or modifies (put into CL 1 if it has none).
inline std::string cl1_file(MegaProcess& mega) {
  for (auto& e : cl_files(mega, "1"))
    if (e["action"] == "modified" || e["action"] == "new") return e["path"];
  std::string path = lower_only_files(mega, 1)[0];
  mutate(mega, json::array({{{"kind", "cl"}, {"cl", 1}, {"path", path}, {"action", "modified"}}}));
  return path;
}

// "/a/b" -> "a/b" (the path relative to the mount).
inline std::string rel(const std::string& repo_path) { return repo_path.substr(1); }

// ---------------------------------------------------------------- the daemon

// The mount of one parameter of the per-strategy suites: a strategy name, or
// "auto_kernel_opens" (auto, files and directories opened by the kernel).
inline MountOptions strategy_mount(const std::string& param) {
  MountOptions o;
  o.strategy = param;
  if (param == "auto_kernel_opens") {
    o.strategy = "auto";
    o.extra = {"--dir-open", "kernel", "--file-open", "kernel"};
  }
  return o;
}

inline json status(Mount& m) {
  std::string out, err;
  int rc = m.ctl({"status"}, &out, &err);
  if (rc != 0) throw std::runtime_error("antares-ctl status failed: " + err);
  return json::parse(out);
}

inline uint64_t counter(Mount& m, const std::string& name) { return status(m)["counters"][name].get<uint64_t>(); }

// FUSE requests of operation `op` the daemon has answered, whatever the
// result (antares_requests_total{op=...} summed over results).
inline uint64_t fuse_requests(Mount& m, const std::string& op) {
  std::string out, err;
  if (m.ctl({"metrics"}, &out, &err) != 0) throw std::runtime_error("antares-ctl metrics failed: " + err);
  const std::string key = "antares_requests_total{op=\"" + op + "\",";
  uint64_t n = 0;
  size_t pos = 0;
  while ((pos = out.find(key, pos)) != std::string::npos) {
    size_t sp = out.find("} ", pos);
    if (sp == std::string::npos) break;
    n += std::stoull(out.substr(sp + 2));
    pos = sp;
  }
  return n;
}

// antares-ctl refresh [path]: expires lower listings and re-syncs the CL now.
inline void refresh(Mount& m, const std::string& path = "") {
  std::vector<std::string> args = {"refresh"};
  if (!path.empty()) args.push_back(path);
  std::string err;
  if (m.ctl(args, nullptr, &err) != 0) throw std::runtime_error("antares-ctl refresh failed: " + err);
}

inline void set_strategy(Mount& m, const std::string& name) {
  std::string err;
  if (m.ctl({"strategy", name}, nullptr, &err) != 0)
    throw std::runtime_error("antares-ctl strategy " + name + " failed: " + err);
}

// Number of log lines with `event=estale` that mention `needle` (e.g. "layer=lower").
inline int estale_log_lines(const std::string& log, const std::string& needle) {
  int n = 0;
  size_t pos = 0;
  while (pos < log.size()) {
    size_t end = log.find('\n', pos);
    if (end == std::string::npos) end = log.size();
    std::string line = log.substr(pos, end - pos);
    if (line.find("event=estale") != std::string::npos && line.find(needle) != std::string::npos) ++n;
    pos = end + 1;
  }
  return n;
}

// ---------------------------------------------------------------- syscalls

inline int open_errno(const std::string& path, int flags = O_RDONLY) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return errno;
  ::close(fd);
  return 0;
}

// Names in a directory (without "." and ".."), or nullopt with *err set.
inline std::optional<std::vector<std::string>> list_dir(const std::string& path, int* err = nullptr,
                                                        std::vector<unsigned char>* types = nullptr) {
  DIR* d = ::opendir(path.c_str());
  if (!d) {
    if (err) *err = errno;
    return std::nullopt;
  }
  std::vector<std::string> out;
  errno = 0;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    out.push_back(n);
    if (types) types->push_back(e->d_type);
  }
  int e = errno;
  ::closedir(d);
  if (e) {
    if (err) *err = e;
    return std::nullopt;
  }
  if (err) *err = 0;
  return out;
}

inline bool write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  f.close();
  return bool(f);
}

// What another process does to a file behind the mount's back: a new inode
// renamed over the old name.
inline void replace_behind(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp-behind";
  if (!write_file(tmp, data) || ::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error("replace_behind " + path + " failed");
}

// Lists the parent directory through the mount: a readdir runs the lower
// layer's refresh of that directory (after `antares-ctl refresh` expired it).
inline void touch_dir(const std::string& dir) { (void)list_dir(dir); }

}  // namespace antares::e2e
