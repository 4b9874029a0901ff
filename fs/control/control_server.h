// ControlServer: the daemon's control endpoint. A small HTTP server on
// 127.0.0.1 (kernel-chosen port) that antares-ctl uses to read status and
// metrics, switch the stale-handle strategy and force a refresh at runtime.
// Every request must carry the per-process bearer token, which is published
// with the port in a 0600 endpoint file under the run directory; the file
// permissions are the access control, the token proves the caller read it.
//
// The HTTP side is deliberately small and strict rather than a general
// server: any local user can connect, so a connection costs no thread until
// its whole request has arrived, must deliver that request within a deadline,
// and only so many may be pending at once (the oldest is dropped). Idle or
// trickling connections therefore cannot starve the token holder.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "fs/control/endpoint.h"

namespace antares::control {

// What the daemon does for each route. Each is called on a server thread
// (up to ControlServerLimits::threads at once), so it must be thread-safe; an empty function makes its
// route answer 501. A handler that throws gets a 500, never a crash.
struct ControlHandlers {
  std::function<nlohmann::json()> status;                         // GET /status
  // POST /strategy: the canonical name of the strategy now in force; an error -> 400.
  std::function<Result<std::string>(const std::string& strategy)> set_strategy;
  std::function<Status(const std::string& path)> refresh;           // POST /refresh; "" = everything
  std::function<std::string()> metrics;                           // GET /metrics (Prometheus text)
};

// How much the endpoint gives any one connection. The defaults are what the
// daemon uses; tests shrink them.
struct ControlServerLimits {
  unsigned threads = 4;       // requests handled at once (a refresh may be slow)
  size_t max_pending = 256;   // connections still sending their request; the oldest is dropped
  std::chrono::milliseconds request_deadline{5000};  // accept -> whole request received
  std::chrono::milliseconds write_timeout{2000};     // per send of the response
  size_t max_head = 16 * 1024;  // request line + headers
  size_t max_body = 64 * 1024;
};

class ControlServer {
 public:
  // Binds 127.0.0.1:0, starts serving, generates the token (getrandom) and
  // publishes endpoint_file_for(run_dir, mountpoint), creating run_dir 0700
  // if missing. Errors: the bind, the random source, or writing the file
  // (nothing is left running and no file is left behind).
  static Result<std::unique_ptr<ControlServer>> start(const std::string& mountpoint, const std::string& run_dir,
                                                      ControlHandlers h, ControlServerLimits limits = {});
  // Stops serving (finishes the requests being handled, drops the rest) and
  // removes the endpoint file if it is still ours.
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  int port() const { return port_; }
  const std::string& endpoint_file() const { return endpoint_file_; }
  // The bearer token (for in-process tests; clients read the endpoint file).
  const std::string& token() const { return token_; }

 private:
  struct Impl;
  ControlServer() = default;

  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  std::string token_;
  std::string endpoint_file_;
};

}  // namespace antares::control
