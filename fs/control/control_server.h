// ControlServer: the daemon's control endpoint. A small HTTP server on
// 127.0.0.1 (kernel-chosen port) that antares-ctl uses to read status and
// metrics, switch the stale-handle strategy and force a refresh at runtime.
// Every request must carry the per-process bearer token, which is published
// with the port in a 0600 endpoint file under the run directory; the file
// permissions are the access control, the token proves the caller read it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "fs/control/endpoint.h"

namespace httplib {
class Server;
}

namespace antares::control {

// What the daemon does for each route. Each is called on a server thread
// (up to 4 at once), so it must be thread-safe; an empty function makes its
// route answer 501. A handler that throws gets a 500, never a crash.
struct ControlHandlers {
  std::function<nlohmann::json()> status;                         // GET /status
  std::function<Status(const std::string& strategy)> set_strategy;  // POST /strategy; an error -> 400
  std::function<Status(const std::string& path)> refresh;           // POST /refresh; "" = everything
  std::function<std::string()> metrics;                           // GET /metrics (Prometheus text)
};

class ControlServer {
 public:
  // Binds 127.0.0.1:0, starts serving, generates the token (getrandom) and
  // publishes endpoint_file_for(run_dir, mountpoint), creating run_dir 0700
  // if missing. Errors: the bind, the random source, or writing the file
  // (nothing is left running and no file is left behind).
  static Result<std::unique_ptr<ControlServer>> start(const std::string& mountpoint, const std::string& run_dir,
                                                      ControlHandlers h);
  // Stops serving (waits for requests in flight) and removes the endpoint
  // file if it is still ours.
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  int port() const { return port_; }
  const std::string& endpoint_file() const { return endpoint_file_; }
  // The bearer token (for in-process tests; clients read the endpoint file).
  const std::string& token() const { return token_; }

 private:
  explicit ControlServer(ControlHandlers h);
  void install_routes();

  ControlHandlers handlers_;
  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
  int port_ = 0;
  std::string token_;
  std::string endpoint_file_;
};

}  // namespace antares::control
