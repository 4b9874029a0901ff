#include "fs/control/endpoint.h"

#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/log.h"

namespace antares::control {
namespace {

std::string hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 0xf];
  }
  return s;
}

std::string sha1_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha1(), nullptr) != 1) return std::string(40, '0');
  return hex(md, len);
}

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Error sys_error(int e, const std::string& what) { return Error::from_errno(e, what + ": " + std::strerror(e)); }

}  // namespace

std::string default_run_dir() {
  const char* d = getenv("ANTARES_RUN_DIR");
  return d && *d ? std::string(d) : std::string("/run/antares");
}

std::string canonical_mountpoint(const std::string& mountpoint) {
  char buf[PATH_MAX];
  if (realpath(mountpoint.c_str(), buf)) return buf;
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(mountpoint, ec);
  if (ec) abs = mountpoint;
  std::string s = abs.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string endpoint_file_for(const std::string& run_dir, const std::string& mountpoint) {
  return run_dir + "/" + sha1_hex(canonical_mountpoint(mountpoint)) + ".json";
}

Result<Endpoint> read_endpoint_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error(errno, "cannot open " + path);
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return sys_error(e, "cannot read " + path);
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > 65536) break;  // an endpoint file is ~200 bytes
  }
  close(fd);
  auto bad = [&](const std::string& why) {
    return Error::from_errno(EPROTO, "malformed endpoint file " + path + ": " + why);
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  Endpoint e;
  if (!j.contains("port") || !j["port"].is_number_unsigned() || j["port"].get<uint64_t>() == 0 ||
      j["port"].get<uint64_t>() > 65535)
    return bad("'port' must be an integer in [1, 65535]");
  e.port = static_cast<int>(j["port"].get<uint64_t>());
  if (!j.contains("token") || !j["token"].is_string() || !is_hex64(j["token"].get<std::string>()))
    return bad("'token' must be 64 lower-case hex digits");
  e.token = j["token"].get<std::string>();
  if (!j.contains("pid") || !j["pid"].is_number_unsigned() || j["pid"].get<uint64_t>() == 0 ||
      j["pid"].get<uint64_t>() > static_cast<uint64_t>(INT_MAX))
    return bad("'pid' must be a positive integer");
  e.pid = static_cast<pid_t>(j["pid"].get<uint64_t>());
  if (j.contains("mountpoint") && j["mountpoint"].is_string()) e.mountpoint = j["mountpoint"].get<std::string>();
  return e;
}

Status write_endpoint_file(const std::string& path, const Endpoint& e) {
  nlohmann::json j = {{"port", e.port}, {"token", e.token}, {"pid", e.pid}, {"mountpoint", e.mountpoint}};
  std::string text = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";

  unsigned char rnd[8] = {};
  if (getrandom(rnd, sizeof rnd, 0) != static_cast<ssize_t>(sizeof rnd)) {
    // Only uniqueness matters here; O_EXCL catches a collision.
    uint64_t fallback = static_cast<uint64_t>(getpid()) ^ reinterpret_cast<uintptr_t>(&text);
    std::memcpy(rnd, &fallback, sizeof rnd);
  }
  std::string tmp = path + ".tmp." + std::to_string(getpid()) + "." + hex(rnd, sizeof rnd);
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return sys_error(errno, "cannot create " + tmp);
  auto fail = [&](const std::string& what) {
    int err = errno;
    close(fd);
    unlink(tmp.c_str());
    return Status(sys_error(err, what));
  };
  // The umask can only clear bits, but be explicit: the file holds a secret.
  if (fchmod(fd, 0600) != 0) return fail("cannot chmod " + tmp);
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("cannot write " + tmp);
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail("cannot fsync " + tmp);
  if (close(fd) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return sys_error(err, "cannot close " + tmp);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return sys_error(err, "cannot rename " + tmp + " to " + path);
  }
  // Make the rename durable; failure here does not undo a visible file.
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return {};
}

Status make_run_dir(const std::string& dir) {
  if (dir.empty()) return Error::from_errno(EINVAL, "empty run directory");
  // Walk down from the root, creating each missing component 0700.
  std::string cur;
  size_t pos = 0;
  while (pos <= dir.size()) {
    size_t next = dir.find('/', pos);
    if (next == std::string::npos) next = dir.size();
    cur = dir.substr(0, next);
    pos = next + 1;
    if (cur.empty() || cur == "." || cur == "..") continue;
    if (mkdir(cur.c_str(), 0700) != 0 && errno != EEXIST) return sys_error(errno, "cannot create directory " + cur);
  }
  struct stat st{};
  if (stat(dir.c_str(), &st) != 0) return sys_error(errno, "cannot stat " + dir);
  if (!S_ISDIR(st.st_mode)) return Error::from_errno(ENOTDIR, dir + " is not a directory");
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    log::warn("control_run_dir_writable_by_others", {{"dir", dir}});
  return {};
}

Result<std::string> normalize_refresh_path(std::string_view path) {
  if (path.find('\0') != std::string_view::npos) return Error::from_errno(EINVAL, "refresh path contains a NUL byte");
  std::string out;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    std::string_view part = path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    if (part == "..")
      return Error::from_errno(EINVAL, "refresh path '" + std::string(path) +
                                           "' leaves the mount: use a path relative to the mount root without '..'");
    if (!part.empty() && part != ".") {
      if (!out.empty()) out += '/';
      out += part;
    }
    if (slash == std::string_view::npos) break;
    pos = slash + 1;
  }
  return out;
}

}  // namespace antares::control
