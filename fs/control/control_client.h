// ControlClient: talks to a running antares-fs's control endpoint (see
// control_server.h), found through the endpoint file for a mountpoint. Used by
// antares-ctl and by tests. Errors are values with a message fit for a user.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "fs/control/endpoint.h"
#include "fs/remote/http_client.h"

namespace antares::control {

class ControlClient {
 public:
  // Reads endpoint_file_for(run_dir, mountpoint). Errors: ENOENT "no
  // antares-fs control endpoint for mountpoint M (looked for FILE): is it
  // mounted?"; ESRCH "stale endpoint file FILE: daemon pid P is not running";
  // EPROTO for a malformed file; EACCES if it is not readable. Does not
  // connect yet. `http` defaults to a CurlHttpClient.
  static Result<ControlClient> for_mountpoint(const std::string& mountpoint, const std::string& run_dir,
                                              std::shared_ptr<remote::HttpClient> http = nullptr);

  // Each call is one request. Transport errors keep their errno
  // (ECONNREFUSED, ETIMEDOUT, ...) with a message naming the endpoint; an
  // HTTP error keeps its status in http_status and the server's message:
  // 400 -> EINVAL, 401/403 -> EACCES, 404/405 -> ENOENT, 501 -> ENOSYS,
  // other -> EIO. Not thread-safe against set_timeout; otherwise thread-safe.
  Result<nlohmann::json> status();
  // The canonical name the daemon switched to ("a" -> "A").
  Result<std::string> set_strategy(const std::string& strategy);
  Status refresh(const std::string& path);  // "" = everything
  Result<std::string> metrics();

  // Whole-request timeout (default 30 s: a full refresh may take a while).
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }
  const Endpoint& endpoint() const { return endpoint_; }
  const std::string& endpoint_file() const { return file_; }

 private:
  ControlClient(Endpoint e, std::string file, std::shared_ptr<remote::HttpClient> http)
      : endpoint_(std::move(e)), file_(std::move(file)), http_(std::move(http)) {}
  Result<remote::HttpResponse> call(const std::string& method, const std::string& path, const std::string& body);

  Endpoint endpoint_;
  std::string file_;
  std::shared_ptr<remote::HttpClient> http_;
  std::chrono::milliseconds timeout_{30000};
};

}  // namespace antares::control
