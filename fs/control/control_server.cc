#include "fs/control/control_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <list>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/unique_fd.h"

namespace antares::control {
namespace {

using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

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

const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

struct Request {
  std::string method, path, body, peer;
  std::map<std::string, std::string> headers;  // lower-cased names
  const std::string* header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? nullptr : &it->second;
  }
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  bool www_authenticate = false;
};

std::string render(const Response& r) {
  std::string s = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
  s += "Content-Type: " + r.content_type + "\r\n";
  s += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  if (r.www_authenticate) s += "WWW-Authenticate: Bearer\r\n";
  s += "Connection: close\r\n\r\n";
  s += r.body;
  return s;
}

Response error_response(int status, const std::string& msg) {
  Response r;
  r.status = status;
  r.body = dump(json{{"ok", false}, {"error", msg}});
  return r;
}

Response json_response(const json& j) {
  Response r;
  r.body = dump(j);
  return r;
}

// Parses a request body that must be a JSON object (an empty body counts as
// {} when allowed); otherwise *err is the 400 to send.
bool parse_object(const Request& req, bool allow_empty, json* out, Response* err) {
  if (req.body.empty() && allow_empty) {
    *out = json::object();
    return true;
  }
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded()) {
    *err = error_response(400, "malformed JSON body for " + req.path);
    return false;
  }
  if (!j.is_object()) {
    *err = error_response(400, "body for " + req.path + " must be a JSON object");
    return false;
  }
  *out = std::move(j);
  return true;
}

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return std::string(s);
}

// Best effort, never blocks: for answers to connections we are dropping.
void send_nowait(int fd, const std::string& bytes) { (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT); }

}  // namespace

// One connection that has not delivered its whole request yet.
struct PendingConn {
  UniqueFd fd;
  std::string peer;
  SteadyClock::time_point deadline;
  std::string buf;
  size_t head_end = 0;  // offset of the body once the head is parsed
  size_t content_length = 0;
  bool continued = false;  // "100 Continue" sent
  Request req;
};

struct ControlServer::Impl {
  ControlHandlers handlers;
  ControlServerLimits limits;
  std::string token;
  UniqueFd listen_fd;
  UniqueFd wake_r, wake_w;  // a pipe that wakes the dispatcher for stop()
  std::thread dispatcher;
  std::vector<std::thread> workers;

  std::mutex mu;  // guards ready and stopping
  std::condition_variable cv;
  std::deque<std::pair<UniqueFd, Request>> ready;  // whole requests waiting for a worker
  bool stopping = false;

  ~Impl() { stop(); }

  void stop() {
    {
      std::lock_guard l(mu);
      if (stopping) return;
      stopping = true;
    }
    if (wake_w.valid()) {
      char c = 1;
      (void)::write(wake_w.get(), &c, 1);
    }
    cv.notify_all();
    if (dispatcher.joinable()) dispatcher.join();
    for (auto& t : workers)
      if (t.joinable()) t.join();
    ready.clear();
  }

  void dispatch_loop();
  // Reads what is available; returns false when the connection is finished
  // (handed to a worker, answered with an error, or closed by the peer).
  bool read_some(PendingConn& c);
  // Parses as much as buf allows: 0 = need more, 1 = complete, else an error
  // status was sent.
  int parse(PendingConn& c);
  void worker_loop();
  Response handle(const Request& req);
};

ControlServer::~ControlServer() {
  // Remove the file first so no client finds a dead port; only if it is still
  // ours (a newer daemon on the same mountpoint may have replaced it).
  if (!endpoint_file_.empty()) {
    auto cur = read_endpoint_file(endpoint_file_);
    if (cur && cur->token == token_) unlink(endpoint_file_.c_str());
  }
  impl_.reset();
}

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::string& mountpoint, const std::string& run_dir,
                                                            ControlHandlers h, ControlServerLimits limits) {
  auto token = random_token();
  if (!token) return token.error();
  if (auto st = make_run_dir(run_dir); !st) return st.error();

  std::unique_ptr<ControlServer> s(new ControlServer());
  s->token_ = *token;
  s->impl_ = std::make_unique<Impl>();
  Impl& impl = *s->impl_;
  impl.handlers = std::move(h);
  impl.limits = limits;
  impl.limits.threads = std::max(1u, limits.threads);
  impl.limits.max_pending = std::max<size_t>(1, limits.max_pending);
  impl.token = std::move(*token);

  impl.listen_fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!impl.listen_fd.valid()) return Error::from_errno(errno, std::string("control endpoint socket: ") + std::strerror(errno));
  int yes = 1;
  setsockopt(impl.listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(impl.listen_fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(impl.listen_fd.get(), 128) != 0 ||
      ::getsockname(impl.listen_fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int e = errno;
    return Error::from_errno(e, std::string("cannot bind control endpoint on 127.0.0.1: ") + std::strerror(e));
  }
  s->port_ = ntohs(addr.sin_port);
  int p[2];
  if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return Error::from_errno(errno, "control endpoint pipe");
  impl.wake_r.reset(p[0]);
  impl.wake_w.reset(p[1]);
  impl.dispatcher = std::thread([&impl] { impl.dispatch_loop(); });
  for (unsigned i = 0; i < impl.limits.threads; ++i) impl.workers.emplace_back([&impl] { impl.worker_loop(); });

  // The socket listens already, so a client that reads the file can connect.
  Endpoint e{s->port_, s->token_, getpid(), canonical_mountpoint(mountpoint)};
  std::string file = endpoint_file_for(run_dir, mountpoint);
  if (auto st = write_endpoint_file(file, e); !st) return st.error();  // the destructor stops the threads
  s->endpoint_file_ = std::move(file);
  log::info("control_endpoint_started",
            {{"port", std::to_string(s->port_)}, {"file", s->endpoint_file_}, {"mountpoint", e.mountpoint}});
  return s;
}

void ControlServer::Impl::dispatch_loop() {
  std::list<PendingConn> pending;  // accept order = deadline order
  std::vector<pollfd> fds;
  std::vector<std::list<PendingConn>::iterator> owners;
  // Out of descriptors with nothing to drop, the listening socket stays
  // readable: it is left out of poll until then, or the loop would spin.
  SteadyClock::time_point accept_paused_until{};
  for (;;) {
    {
      std::lock_guard l(mu);
      if (stopping) return;
    }
    auto now = SteadyClock::now();
    // Requests that missed their deadline get a 408 and are dropped.
    while (!pending.empty() && pending.front().deadline <= now) {
      send_nowait(pending.front().fd.get(), render(error_response(408, "request not received in time")));
      pending.pop_front();
    }
    fds.clear();
    owners.clear();
    fds.push_back({wake_r.get(), POLLIN, 0});
    const bool accept_paused = now < accept_paused_until;
    fds.push_back({listen_fd.get(), short(accept_paused ? 0 : POLLIN), 0});
    for (auto it = pending.begin(); it != pending.end(); ++it) {
      fds.push_back({it->fd.get(), POLLIN, 0});
      owners.push_back(it);
    }
    int timeout_ms = -1;
    if (!pending.empty()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(pending.front().deadline - now).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(left + 1, 0, 60'000));
    }
    if (accept_paused) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(accept_paused_until - now).count() + 1;
      timeout_ms = timeout_ms < 0 ? static_cast<int>(left) : std::min<int>(timeout_ms, static_cast<int>(left));
    }
    int n = ::poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      log::error("control_poll_failed", {{"error", std::strerror(errno)}});
      return;
    }
    if (n <= 0) continue;
    if (fds[0].revents) return;  // stop()
    // Connections that sent something first, so a new flood cannot evict them.
    for (size_t i = 2; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      auto it = owners[i - 2];
      if (!read_some(*it)) pending.erase(it);
    }
    if (fds[1].revents & POLLIN) {
      for (;;) {
        sockaddr_in peer{};
        socklen_t plen = sizeof peer;
        int fd = ::accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno == EMFILE || errno == ENFILE) {
            // Out of descriptors: make room by dropping the oldest pending connection.
            if (!pending.empty()) pending.pop_front();
            else accept_paused_until = SteadyClock::now() + std::chrono::milliseconds(100);
          }
          break;
        }
        if (pending.size() >= limits.max_pending) {
          send_nowait(pending.front().fd.get(), render(error_response(503, "too many pending connections")));
          pending.pop_front();
        }
        char ip[INET_ADDRSTRLEN] = "";
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
        PendingConn c;
        c.fd.reset(fd);
        c.peer = ip;
        c.deadline = SteadyClock::now() + limits.request_deadline;
        pending.push_back(std::move(c));
        // The request is often there already.
        if (!read_some(pending.back())) pending.pop_back();
      }
    }
  }
}

bool ControlServer::Impl::read_some(PendingConn& c) {
  char buf[8192];
  for (;;) {
    ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
    if (n == 0) return false;  // the peer gave up
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return false;
    }
    c.buf.append(buf, static_cast<size_t>(n));
    if (c.buf.size() > limits.max_head + limits.max_body) break;  // parse() rejects it
  }
  int r = parse(c);
  if (r == 0) return true;
  if (r == 1) {
    c.req.peer = c.peer;
    c.req.body = c.buf.substr(c.head_end, c.content_length);
    {
      std::lock_guard l(mu);
      ready.emplace_back(std::move(c.fd), std::move(c.req));
    }
    cv.notify_one();
  }
  return false;
}

int ControlServer::Impl::parse(PendingConn& c) {
  auto fail = [&](int status, const std::string& msg) {
    send_nowait(c.fd.get(), render(error_response(status, msg)));
    return status;
  };
  if (c.head_end == 0) {
    size_t end = c.buf.find("\r\n\r\n");
    if (end == std::string::npos) return c.buf.size() > limits.max_head ? fail(431, "request head too large") : 0;
    if (end + 4 > limits.max_head) return fail(431, "request head too large");
    std::string_view head(c.buf.data(), end);
    size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) return fail(400, "malformed request line");
    std::string_view version = line.substr(sp2 + 1);
    if (version != "HTTP/1.1" && version != "HTTP/1.0") return fail(400, "unsupported HTTP version");
    c.req.method = std::string(line.substr(0, sp1));
    std::string target(line.substr(sp1 + 1, sp2 - sp1 - 1));
    c.req.path = target.substr(0, target.find('?'));
    if (c.req.method.empty() || c.req.path.empty() || c.req.path[0] != '/') return fail(400, "malformed request line");
    size_t pos = eol == std::string_view::npos ? head.size() : eol + 2;
    while (pos < head.size()) {
      size_t next = head.find("\r\n", pos);
      std::string_view h = head.substr(pos, next == std::string_view::npos ? std::string_view::npos : next - pos);
      pos = next == std::string_view::npos ? head.size() : next + 2;
      size_t colon = h.find(':');
      if (colon == std::string_view::npos || colon == 0) return fail(400, "malformed header line");
      std::string name(h.substr(0, colon));
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
      c.req.headers[name] = trim(h.substr(colon + 1));
    }
    if (c.req.header("transfer-encoding"))
      return fail(400, "Transfer-Encoding is not supported: send a Content-Length body");
    if (const std::string* cl = c.req.header("content-length")) {
      if (cl->empty() || cl->size() > 12 || cl->find_first_not_of("0123456789") != std::string::npos)
        return fail(400, "malformed Content-Length");
      c.content_length = std::stoull(*cl);
      if (c.content_length > limits.max_body) return fail(413, "request body larger than " + std::to_string(limits.max_body) + " bytes");
    }
    c.head_end = end + 4;
  }
  if (c.buf.size() - c.head_end >= c.content_length) return 1;
  if (!c.continued) {
    const std::string* expect = c.req.header("expect");
    if (expect && strcasecmp(expect->c_str(), "100-continue") == 0) send_nowait(c.fd.get(), "HTTP/1.1 100 Continue\r\n\r\n");
    c.continued = true;
  }
  return 0;
}

void ControlServer::Impl::worker_loop() {
  for (;;) {
    std::pair<UniqueFd, Request> job;
    {
      std::unique_lock l(mu);
      cv.wait(l, [&] { return stopping || !ready.empty(); });
      if (stopping) return;
      job = std::move(ready.front());
      ready.pop_front();
    }
    Response res;
    try {
      res = handle(job.second);
    } catch (...) {
      res = error_response(500, exception_message(std::current_exception()));
    }
    log::debug("control_request",
               {{"method", job.second.method}, {"path", job.second.path}, {"status", std::to_string(res.status)}});
    // The answer goes out blocking, but never longer than the write timeout.
    int fd = job.first.get();
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(limits.write_timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((limits.write_timeout.count() % 1000) * 1000);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    std::string out = render(res);
    for (size_t off = 0; off < out.size();) {
      ssize_t n = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::shutdown(fd, SHUT_WR);
  }
}

Response ControlServer::Impl::handle(const Request& req) {
  // Every request, routed or not, is checked here first, so an
  // unauthenticated caller learns nothing about routes.
  if (req.peer != "127.0.0.1") return error_response(403, "control endpoint accepts only 127.0.0.1");
  const std::string* auth = req.header("authorization");
  if (!auth) {
    Response r = error_response(401, "missing 'Authorization: Bearer <token>' (the token is in the endpoint file)");
    r.www_authenticate = true;
    return r;
  }
  static constexpr std::string_view kPrefix = "Bearer ";
  if (auth->size() < kPrefix.size() || auth->compare(0, kPrefix.size(), kPrefix) != 0 ||
      !token_matches(auth->substr(kPrefix.size()), token))
    return error_response(403, "invalid token");

  const std::string& m = req.method;
  if (req.path == "/status" && m == "GET") {
    if (!handlers.status) return error_response(501, "status is not supported");
    return json_response(handlers.status());
  }
  if (req.path == "/strategy" && m == "POST") {
    json b;
    Response err;
    if (!parse_object(req, false, &b, &err)) return err;
    auto it = b.find("strategy");
    if (it == b.end() || !it->is_string() || it->get<std::string>().empty())
      return error_response(400, "body needs {\"strategy\": \"<name>\"}");
    if (!handlers.set_strategy) return error_response(501, "switching strategy is not supported");
    std::string name = it->get<std::string>();
    auto st = handlers.set_strategy(name);
    if (!st) return error_response(400, st.error().message.empty() ? st.error().describe() : st.error().message);
    log::info("control_strategy_set", {{"strategy", *st}});
    return json_response(json{{"ok", true}, {"strategy", *st}});
  }
  if (req.path == "/refresh" && m == "POST") {
    json b;
    Response err;
    if (!parse_object(req, true, &b, &err)) return err;
    std::string path;
    if (auto it = b.find("path"); it != b.end() && !it->is_null()) {
      if (!it->is_string()) return error_response(400, "'path' must be a string");
      path = it->get<std::string>();
    }
    if (!handlers.refresh) return error_response(501, "refresh is not supported");
    Status st = handlers.refresh(path);
    if (!st) return error_response(400, st.error().message.empty() ? st.error().describe() : st.error().message);
    log::info("control_refresh", {{"path", path}});
    return json_response(json{{"ok", true}, {"path", path}});
  }
  if (req.path == "/metrics" && m == "GET") {
    if (!handlers.metrics) return error_response(501, "metrics are not supported");
    Response r;
    r.content_type = "text/plain; version=0.0.4";
    r.body = handlers.metrics();
    return r;
  }
  if (req.path == "/status" || req.path == "/strategy" || req.path == "/refresh" || req.path == "/metrics")
    return error_response(405, "method " + m + " not allowed for " + req.path);
  return error_response(404, "no such endpoint: " + m + " " + req.path);
}

}  // namespace antares::control
