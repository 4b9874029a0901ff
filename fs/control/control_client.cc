#include "fs/control/control_client.h"

#include <signal.h>

#include <cerrno>

namespace antares::control {
namespace {

using json = nlohmann::json;

bool process_alive(pid_t pid) { return kill(pid, 0) == 0 || errno == EPERM; }

int errno_for_status(int status) {
  switch (status) {
    case 400: return EINVAL;
    case 401:
    case 403: return EACCES;
    case 404:
    case 405: return ENOENT;
    case 501: return ENOSYS;
    default: return EIO;
  }
}

}  // namespace

Result<ControlClient> ControlClient::for_mountpoint(const std::string& mountpoint, const std::string& run_dir,
                                                    std::shared_ptr<remote::HttpClient> http) {
  std::string file = endpoint_file_for(run_dir, mountpoint);
  auto ep = read_endpoint_file(file);
  if (!ep) {
    if (ep.err() == ENOENT)
      return Error::from_errno(ENOENT, "no antares-fs control endpoint for mountpoint " + mountpoint +
                                           " (looked for " + file + "): is it mounted?");
    return ep.error();
  }
  if (!process_alive(ep->pid))
    return Error::from_errno(ESRCH, "stale endpoint file " + file + ": daemon pid " + std::to_string(ep->pid) +
                                        " for mountpoint " + mountpoint + " is not running");
  if (!http) http = std::make_shared<remote::CurlHttpClient>();
  return ControlClient(std::move(*ep), std::move(file), std::move(http));
}

Result<remote::HttpResponse> ControlClient::call(const std::string& method, const std::string& path,
                                                 const std::string& body) {
  remote::HttpRequest req;
  req.method = method;
  req.url = "http://127.0.0.1:" + std::to_string(endpoint_.port) + path;
  req.headers.push_back({"Authorization", "Bearer " + endpoint_.token});
  if (method == "POST") req.headers.push_back({"Content-Type", "application/json"});
  req.body = body;
  req.timeout = timeout_;
  auto r = http_->perform(req);
  if (!r) {
    Error e = r.error();
    e.message = "cannot reach antares-fs control endpoint 127.0.0.1:" + std::to_string(endpoint_.port) + " (from " +
                file_ + "): " + e.message;
    return e;
  }
  if (r->status == 200) return r;
  // The server's error envelope {"ok":false,"error":"..."}, or the raw body.
  std::string msg;
  json j = json::parse(r->body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string())
    msg = j["error"].get<std::string>();
  else
    msg = r->body.substr(0, 200);
  Error e{errno_for_status(r->status), r->status, method + " " + path + " failed (HTTP " + std::to_string(r->status) +
                                                       "): " + msg};
  return e;
}

Result<nlohmann::json> ControlClient::status() {
  auto r = call("GET", "/status", "");
  if (!r) return r.error();
  json j = json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return Error::from_errno(EPROTO, "GET /status returned malformed JSON");
  return j;
}

Result<std::string> ControlClient::set_strategy(const std::string& strategy) {
  auto r = call("POST", "/strategy", json{{"strategy", strategy}}.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!r) return r.error();
  json j = json::parse(r->body, nullptr, false);
  if (j.is_object() && j.contains("strategy") && j["strategy"].is_string()) return j["strategy"].get<std::string>();
  return Error::from_errno(EPROTO, "POST /strategy: the answer names no strategy");
}

Status ControlClient::refresh(const std::string& path) {
  json body = json::object();
  if (!path.empty()) body["path"] = path;
  auto r = call("POST", "/refresh", body.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!r) return r.error();
  return {};
}

Result<std::string> ControlClient::metrics() {
  auto r = call("GET", "/metrics", "");
  if (!r) return r.error();
  return std::move(r->body);
}

}  // namespace antares::control
