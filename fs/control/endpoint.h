// Where a mounted antares-fs publishes its control endpoint, shared by the
// server (which writes the file) and the client (which reads it). One file per
// mountpoint, named by the SHA-1 of the mountpoint's canonical path, so any
// spelling of the same mountpoint finds the same daemon.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "common/result.h"

namespace antares::control {

// $ANTARES_RUN_DIR if set and non-empty, else "/run/antares".
std::string default_run_dir();

// The mountpoint's canonical path: realpath(3) when it resolves, else the
// lexically normalized absolute path (so a vanished or disconnected mount
// still maps to the name its daemon used).
std::string canonical_mountpoint(const std::string& mountpoint);

// "<run_dir>/<sha1hex(canonical_mountpoint(mountpoint))>.json".
std::string endpoint_file_for(const std::string& run_dir, const std::string& mountpoint);

// The content of an endpoint file:
// {"port":P,"token":"<64 hex>","pid":PID,"mountpoint":"/abs/path"}.
struct Endpoint {
  int port = 0;
  std::string token;
  pid_t pid = 0;
  std::string mountpoint;
};

// Reads and validates an endpoint file. Errors: ENOENT if missing, EACCES if
// unreadable, EPROTO if it is not a well-formed endpoint file.
Result<Endpoint> read_endpoint_file(const std::string& path);

// Writes an endpoint file atomically with mode 0600: a temporary file created
// O_EXCL 0600 in the same directory, fsync'ed, then renamed over `path`.
Status write_endpoint_file(const std::string& path, const Endpoint& e);

// The path argument of a refresh, relative to the mount root: leading,
// trailing and repeated '/' and "." components are dropped ("/a//b/." ->
// "a/b"; "" or "/" = everything). EINVAL for a ".." component (a refresh never
// names anything outside the mount) or a NUL byte.
Result<std::string> normalize_refresh_path(std::string_view path);

// mkdir -p with mode 0700 for every directory it creates. An existing
// directory is accepted as is (a warning is logged if others may write to it).
Status make_run_dir(const std::string& dir);

}  // namespace antares::control
