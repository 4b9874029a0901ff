#include "fs/control/control_server.h"

#include <httplib.h>
#include <openssl/crypto.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>

#include "common/log.h"

namespace antares::control {
namespace {

using json = nlohmann::json;

constexpr unsigned kThreads = 4;
constexpr size_t kMaxBody = 64 * 1024;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, int status, const std::string& msg) {
  res.status = status;
  res.set_content(dump(json{{"ok", false}, {"error", msg}}), "application/json");
}

void send_json(httplib::Response& res, const json& j) {
  res.status = 200;
  res.set_content(dump(j), "application/json");
}

Result<std::string> random_token() {
  unsigned char buf[32];
  size_t got = 0;
  while (got < sizeof buf) {
    ssize_t n = getrandom(buf + got, sizeof buf - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno(errno, std::string("getrandom failed: ") + std::strerror(errno));
    got += static_cast<size_t>(n);
  }
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (unsigned char c : buf) {
    s += digits[c >> 4];
    s += digits[c & 0xf];
  }
  return s;
}

// Constant-time in the token's content; its length (always 64) is public.
bool token_matches(const std::string& given, const std::string& expected) {
  return given.size() == expected.size() && CRYPTO_memcmp(given.data(), expected.data(), given.size()) == 0;
}

// Parses a request body that must be a JSON object (an empty body counts as
// {} when allowed). Sends the 400 and returns false if it is not.
bool parse_object(const httplib::Request& req, httplib::Response& res, bool allow_empty, json* out) {
  if (req.body.empty() && allow_empty) {
    *out = json::object();
    return true;
  }
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded()) {
    send_error(res, 400, "malformed JSON body for " + req.path);
    return false;
  }
  if (!j.is_object()) {
    send_error(res, 400, "body for " + req.path + " must be a JSON object");
    return false;
  }
  *out = std::move(j);
  return true;
}

bool known_path(const std::string& p) {
  return p == "/status" || p == "/strategy" || p == "/refresh" || p == "/metrics";
}

}  // namespace

ControlServer::ControlServer(ControlHandlers h) : handlers_(std::move(h)) {}

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::string& mountpoint, const std::string& run_dir,
                                                            ControlHandlers h) {
  auto token = random_token();
  if (!token) return token.error();
  if (auto st = make_run_dir(run_dir); !st) return st.error();

  std::unique_ptr<ControlServer> s(new ControlServer(std::move(h)));
  s->token_ = std::move(*token);
  s->endpoint_file_ = endpoint_file_for(run_dir, mountpoint);
  s->http_ = std::make_unique<httplib::Server>();
  auto& http = *s->http_;
  http.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  // One request per connection: an idle keep-alive connection would pin one
  // of the few threads and delay shutdown.
  http.set_keep_alive_max_count(1);
  http.set_read_timeout(2, 0);
  http.set_write_timeout(2, 0);
  http.set_payload_max_length(kMaxBody);
  // httplib's default also sets SO_REUSEPORT; keep only SO_REUSEADDR.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  s->install_routes();

  errno = 0;
  int port = http.bind_to_any_port("127.0.0.1");
  if (port <= 0) {
    int e = errno ? errno : EADDRNOTAVAIL;
    return Error::from_errno(e, std::string("cannot bind control endpoint on 127.0.0.1: ") + std::strerror(e));
  }
  s->port_ = port;
  s->listener_ = std::thread([srv = s.get()] { srv->http_->listen_after_bind(); });
  // stop() only works once the accept loop runs, so wait for it (bounded).
  for (int i = 0; i < 5000 && !http.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  Endpoint e{port, s->token_, getpid(), canonical_mountpoint(mountpoint)};
  if (auto st = write_endpoint_file(s->endpoint_file_, e); !st) {
    s->endpoint_file_.clear();  // not ours: the destructor must not remove it
    return st.error();          // the destructor stops the server
  }
  log::info("control_endpoint_started",
            {{"port", std::to_string(port)}, {"file", s->endpoint_file_}, {"mountpoint", e.mountpoint}});
  return s;
}

ControlServer::~ControlServer() {
  // Remove the file first so no client finds a dead port; only if it is still
  // ours (a newer daemon on the same mountpoint may have replaced it).
  if (!endpoint_file_.empty()) {
    auto cur = read_endpoint_file(endpoint_file_);
    if (cur && cur->token == token_) unlink(endpoint_file_.c_str());
  }
  if (http_) http_->stop();
  if (listener_.joinable()) listener_.join();
}

void ControlServer::install_routes() {
  auto& s = *http_;
  s.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    log::debug("control_request", {{"method", req.method}, {"path", req.path}, {"status", std::to_string(res.status)}});
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    send_error(res, 500, exception_message(ep));
  });
  s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 404 && known_path(req.path)) {
      send_error(res, 405, "method " + req.method + " not allowed for " + req.path);
    } else if (res.status == 404) {
      send_error(res, 404, "no such endpoint: " + req.method + " " + req.path);
    } else {
      send_error(res, res.status, "request failed with status " + std::to_string(res.status));
    }
    return httplib::Server::HandlerResponse::Handled;
  }));

  // Every request, routed or not, is checked here first.
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    using R = httplib::Server::HandlerResponse;
    if (req.remote_addr != "127.0.0.1") {
      send_error(res, 403, "control endpoint accepts only 127.0.0.1");
      return R::Handled;
    }
    if (!req.has_header("Authorization")) {
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401, "missing 'Authorization: Bearer <token>' (the token is in the endpoint file)");
      return R::Handled;
    }
    const std::string auth = req.get_header_value("Authorization");
    static constexpr std::string_view kPrefix = "Bearer ";
    if (auth.size() < kPrefix.size() || auth.compare(0, kPrefix.size(), kPrefix) != 0 ||
        !token_matches(auth.substr(kPrefix.size()), token_)) {
      send_error(res, 403, "invalid token");
      return R::Handled;
    }
    return R::Unhandled;
  });

  s.Get("/status", [this](const httplib::Request&, httplib::Response& res) {
    if (!handlers_.status) return send_error(res, 501, "status is not supported");
    send_json(res, handlers_.status());
  });

  s.Post("/strategy", [this](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (!parse_object(req, res, false, &b)) return;
    auto it = b.find("strategy");
    if (it == b.end() || !it->is_string() || it->get<std::string>().empty())
      return send_error(res, 400, "body needs {\"strategy\": \"<name>\"}");
    if (!handlers_.set_strategy) return send_error(res, 501, "switching strategy is not supported");
    std::string name = it->get<std::string>();
    Status st = handlers_.set_strategy(name);
    if (!st) return send_error(res, 400, st.error().message.empty() ? st.error().describe() : st.error().message);
    log::info("control_strategy_set", {{"strategy", name}});
    send_json(res, json{{"ok", true}, {"strategy", name}});
  });

  s.Post("/refresh", [this](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (!parse_object(req, res, true, &b)) return;
    std::string path;
    if (auto it = b.find("path"); it != b.end() && !it->is_null()) {
      if (!it->is_string()) return send_error(res, 400, "'path' must be a string");
      path = it->get<std::string>();
    }
    if (!handlers_.refresh) return send_error(res, 501, "refresh is not supported");
    Status st = handlers_.refresh(path);
    if (!st) return send_error(res, 400, st.error().message.empty() ? st.error().describe() : st.error().message);
    log::info("control_refresh", {{"path", path}});
    send_json(res, json{{"ok", true}, {"path", path}});
  });

  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (!handlers_.metrics) return send_error(res, 501, "metrics are not supported");
    res.status = 200;
    res.set_content(handlers_.metrics(), "text/plain; version=0.0.4");
  });
}

}  // namespace antares::control
