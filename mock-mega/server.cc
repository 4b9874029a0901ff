#include "mock-mega/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cinttypes>
#include <charconv>
#include <cstdio>
#include <cstring>

#include "common/clock.h"
#include "common/log.h"

namespace antares::mock {
namespace {

using json = nlohmann::json;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string envelope_ok(json data) {
  return dump(json{{"req_result", true}, {"data", std::move(data)}, {"err_message", ""}});
}

void send_error(httplib::Response& res, int status, const std::string& msg) {
  res.status = status;
  res.set_content(dump(json{{"req_result", false}, {"data", nullptr}, {"err_message", msg}}), "application/json");
}

int status_for_errno(int e) {
  switch (e) {
    case ENOENT: return 404;
    case EEXIST: return 409;
    default: return 400;
  }
}

std::string endpoint_of(const std::string& path) {
  if (path.rfind("/api/v1/tree/content-hash", 0) == 0) return "content-hash";
  if (path.rfind("/api/v1/tree/dir-hash", 0) == 0) return "dir-hash";
  if (path.rfind("/api/v1/file/blob/", 0) == 0) return "blob";
  if (path.rfind("/api/v1/cl/", 0) == 0) return "files-list";
  if (path.rfind("/admin/", 0) == 0) return "admin";
  if (path == "/metrics") return "metrics";
  return "other";
}

json oid_or_null(const std::optional<Oid>& o) { return o ? json(o->hex()) : json(nullptr); }

json log_entry_json(const LogEntry& e) {
  json j = {{"id", e.id},          {"version", e.version},
            {"time_ms", e.time_ms}, {"kind", mutation_kind_name(e.kind)},
            {"path", e.path},      {"old_oid", oid_or_null(e.old_oid)},
            {"new_oid", oid_or_null(e.new_oid)}};
  if (!e.to.empty()) j["to"] = e.to;
  if (e.kind == MutationKind::cl) {
    j["cl"] = e.cl;
    j["action"] = e.cl_action;
  }
  return j;
}

json log_json(const std::vector<LogEntry>& entries) {
  json arr = json::array();
  for (const auto& e : entries) arr.push_back(log_entry_json(e));
  return arr;
}

json entry_json(const Entry& e, bool include_size) {
  json j = {{"name", e.name}, {"content_type", e.is_dir ? "directory" : "file"}, {"oid", e.oid.hex()}};
  if (!e.is_dir && include_size) j["size"] = e.size;
  return j;
}

// Parses a required, non-empty `path` query parameter.
bool path_param(const httplib::Request& req, httplib::Response& res, std::string* out) {
  if (!req.has_param("path") || req.get_param_value("path").empty()) {
    send_error(res, 400, "missing or empty 'path' query parameter");
    return false;
  }
  *out = req.get_param_value("path");
  return true;
}

template <class T>
bool parse_uint(std::string_view s, T* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

int port_of(const sockaddr_storage& s) {
  if (s.ss_family == AF_INET) return static_cast<int>(ntohs(reinterpret_cast<const sockaddr_in&>(s).sin_port));
  if (s.ss_family == AF_INET6) return static_cast<int>(ntohs(reinterpret_cast<const sockaddr_in6&>(s).sin6_port));
  return -1;
}

// Calls f(fd) for each connected socket of this process whose local port is
// local_port (and, if remote_port >= 0, whose peer port is remote_port).
// httplib does not expose its connections, so they are found among our fds;
// f must not close the fd (its owner thread does), only act on the connection.
template <class F>
void for_each_connection(int local_port, int remote_port, F f) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return;
  while (dirent* ent = readdir(d)) {
    int fd;
    if (!parse_uint(std::string_view(ent->d_name), &fd)) continue;
    sockaddr_storage peer{}, local{};
    socklen_t pl = sizeof peer, ll = sizeof local;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (port_of(local) != local_port || (remote_port >= 0 && port_of(peer) != remote_port)) continue;
    if (!f(fd)) break;
  }
  closedir(d);
}

// Disconnects this request's connection with connect(AF_UNSPEC), which makes
// Linux send a RST.
bool reset_connection(const httplib::Request& req) {
  bool done = false;
  for_each_connection(req.local_port, req.remote_port, [&](int fd) {
    sockaddr unspec{};
    unspec.sa_family = AF_UNSPEC;
    done = connect(fd, &unspec, sizeof unspec) == 0;
    return false;
  });
  return done;
}

// Linux's MemAvailable in bytes (0 if unknown).
uint64_t mem_available_bytes() {
  FILE* f = fopen("/proc/meminfo", "re");
  if (!f) return 0;
  char line[256];
  uint64_t kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1) break;
  fclose(f);
  return kb * 1024;
}

}  // namespace

std::optional<std::string> files_refusal(uint64_t files, uint64_t max_files, uint64_t mem_available) {
  if (files > max_files)
    return "files " + std::to_string(files) + " exceeds this server's limit of " + std::to_string(max_files) +
           " (--max-files; a repository costs about " + std::to_string(kPeakBytesPerFile) +
           " bytes per file while it is generated)";
  // Both repositories are alive while the new one is built.
  const uint64_t need = files * kPeakBytesPerFile;
  if (mem_available && need > mem_available / 2)
    return "files " + std::to_string(files) + " needs about " + std::to_string(need >> 20) +
           " MiB while it is generated; only " + std::to_string(mem_available >> 20) +
           " MiB are available (MemAvailable), and the current repository stays alive until it is replaced";
  return std::nullopt;
}

std::optional<std::pair<uint64_t, uint64_t>> resolve_range(std::pair<int64_t, int64_t> r, uint64_t length) {
  // httplib's parse: (-1, -1) none, (a, -1) "a-", (-1, n) "-n", (a, b) "a-b".
  if (r.first < 0 && r.second < 0) return std::make_pair(uint64_t{0}, length);
  if (r.first < 0) {  // suffix: the last n bytes
    uint64_t n = std::min<uint64_t>(static_cast<uint64_t>(r.second), length);
    if (n == 0) return std::nullopt;
    return std::make_pair(length - n, n);
  }
  uint64_t first = static_cast<uint64_t>(r.first);
  if (first >= length) return std::nullopt;
  uint64_t last = r.second < 0 ? length - 1 : std::min<uint64_t>(static_cast<uint64_t>(r.second), length - 1);
  if (last < first) return std::nullopt;
  return std::make_pair(first, last - first + 1);
}

struct MockMegaServer::Metrics {
  std::mutex mu;
  std::map<std::pair<std::string, int>, uint64_t> requests;      // guarded by mu
  std::map<std::string, uint64_t> mutations;                      // guarded by mu
  std::map<std::pair<std::string, std::string>, uint64_t> faults;  // guarded by mu

  void count_mutations(const std::vector<LogEntry>& entries) {
    std::lock_guard l(mu);
    for (const auto& e : entries) ++mutations[mutation_kind_name(e.kind)];
  }
};

MockMegaServer::MockMegaServer(ServerOptions opts)
    : opts_(std::move(opts)),
      repo_(std::make_shared<Repository>(opts_.repo, opts_.weights)),
      every_(opts_.mutate_every),
      count_(opts_.mutate_count),
      paused_(opts_.schedule_paused),
      faults_(mix64(opts_.repo.seed ^ 0x6661756c74ULL)),
      metrics_(std::make_unique<Metrics>()) {
  faults_.set(opts_.faults);
}

MockMegaServer::~MockMegaServer() { stop(); }

std::string MockMegaServer::base_url() const {
  std::string host = opts_.host == "0.0.0.0" ? "127.0.0.1" : opts_.host;
  return "http://" + host + ":" + std::to_string(port_);
}

Result<int> MockMegaServer::start() {
  http_ = std::make_unique<httplib::Server>();
  const unsigned threads = opts_.http_threads;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_keep_alive_max_count(1000000);
  http_->set_tcp_nodelay(true);
  // httplib's default also sets SO_REUSEPORT, which would let a second server
  // silently share a busy port; keep only SO_REUSEADDR.
  http_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  install_routes();
  errno = 0;
  if (opts_.port == 0) {
    port_ = http_->bind_to_any_port(opts_.host);
    if (port_ <= 0) return Error::from_errno(errno ? errno : EADDRNOTAVAIL, "cannot bind " + opts_.host + ":0");
  } else {
    if (!http_->bind_to_port(opts_.host, opts_.port))
      return Error::from_errno(errno ? errno : EADDRINUSE,
                               "cannot bind " + opts_.host + ":" + std::to_string(opts_.port) + ": " +
                                   std::strerror(errno ? errno : EADDRINUSE));
    port_ = opts_.port;
  }
  listener_ = std::thread([this] { http_->listen_after_bind(); });
  // stop() only works once the accept loop runs, so wait for it (bounded).
  for (int i = 0; i < 5000 && !http_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  scheduler_ = std::thread([this] { scheduler_loop(); });
  return port_;
}

void MockMegaServer::stop() {
  std::call_once(stop_once_, [this] {
    {
      std::lock_guard l(sched_mu_);
      stopping_ = true;
    }
    sched_cv_.notify_all();
    if (http_) {
      http_->stop();
      // A worker waiting on an idle keep-alive connection would hold the
      // shutdown for httplib's whole keep-alive timeout (5 s); end those
      // waits now. shutdown() leaves the fd to its worker to close.
      if (port_ > 0)
        for_each_connection(port_, -1, [](int fd) {
          ::shutdown(fd, SHUT_RDWR);
          return true;
        });
    }
    if (listener_.joinable()) listener_.join();
    if (scheduler_.joinable()) scheduler_.join();
  });
}

bool MockMegaServer::sleep_interruptible(std::chrono::milliseconds d) {
  std::unique_lock l(sched_mu_);
  return !sched_cv_.wait_for(l, d, [this] { return stopping_; });
}

void MockMegaServer::scheduler_loop() {
  std::unique_lock l(sched_mu_);
  while (!stopping_) {
    if (every_.count() <= 0 || paused_ || count_ == 0) {
      sched_cv_.wait(l);
      continue;
    }
    auto every = every_;
    auto deadline = std::chrono::steady_clock::now() + every;
    // Wakes early on stop or on a schedule change, which restarts the period.
    if (sched_cv_.wait_until(l, deadline, [&] { return stopping_ || every_ != every || paused_; })) continue;
    uint32_t k = count_;
    l.unlock();
    {
      std::lock_guard rl(repo_mu_);
      auto applied = repo_->apply_random(k, SystemClock::instance().wall_ms());
      metrics_->count_mutations(applied);
    }
    l.lock();
  }
}

bool MockMegaServer::authorized(const httplib::Request& req, httplib::Response& res) {
  if (opts_.admin_token.empty()) return true;
  if (req.get_header_value("Authorization") == "Bearer " + opts_.admin_token ||
      req.get_header_value("X-Admin-Token") == opts_.admin_token)
    return true;
  send_error(res, 401, "admin API needs 'Authorization: Bearer <token>'");
  return false;
}

bool MockMegaServer::inject(const std::string& endpoint, const httplib::Request& req, httplib::Response& res,
                            FaultDecision& d) {
  d = faults_.decide(endpoint);
  if (d.latency_ms) {
    {
      std::lock_guard l(metrics_->mu);
      ++metrics_->faults[{endpoint, "latency"}];
    }
    if (!sleep_interruptible(std::chrono::milliseconds(d.latency_ms))) {
      send_error(res, 503, "server stopping");
      return true;
    }
  }
  if (!d.failure) return false;
  {
    std::lock_guard l(metrics_->mu);
    ++metrics_->faults[{endpoint, fault_kind_name(d.failure->kind)}];
  }
  switch (d.failure->kind) {
    case FaultKind::status:
      if (endpoint == "blob" && d.failure->status == 404) res.status = 404;  // Mega's blob 404 has no body
      else send_error(res, d.failure->status, "injected fault: status " + std::to_string(d.failure->status));
      return true;
    case FaultKind::reset:
      if (!reset_connection(req)) {  // fall back to closing before the body
        res.set_content_provider(1, "application/octet-stream", [](size_t, size_t, httplib::DataSink&) { return false; });
      }
      return true;
    default:
      return false;  // truncate and malformed act on the body
  }
}

// Sends body, applying a body fault if one was decided.
void MockMegaServer::send_json(const httplib::Request&, httplib::Response& res, const std::string& body,
                               const FaultDecision& d) {
  if (d.failure && d.failure->kind == FaultKind::malformed) {
    res.set_content(body.substr(0, body.size() / 2) + "<<malformed", "application/json");
    return;
  }
  if (d.failure && d.failure->kind == FaultKind::truncate) {
    auto shared = std::make_shared<std::string>(body);
    res.set_content_provider(shared->size(), "application/json",
                             [shared](size_t offset, size_t, httplib::DataSink& sink) {
                               if (offset == 0 && shared->size() > 1) sink.write(shared->data(), shared->size() / 2);
                               return false;  // abort: the client sees a short body
                             });
    return;
  }
  res.set_content(body, "application/json");
}

void MockMegaServer::install_routes() {
  auto& s = *http_;
  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    std::lock_guard l(metrics_->mu);
    ++metrics_->requests[{endpoint_of(req.path), res.status}];
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    send_error(res, 500, exception_message(ep));
  });
  s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || endpoint_of(req.path) == "blob") return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, res.status, res.status == 404 ? "no such endpoint: " + req.method + " " + req.path
                                                  : "request failed with status " + std::to_string(res.status));
    return httplib::Server::HandlerResponse::Handled;
  }));

  // ------------------------------------------------------------ Mega API
  s.Get("/api/v1/tree/content-hash", [this](const httplib::Request& req, httplib::Response& res) {
    FaultDecision d;
    if (inject("content-hash", req, res, d)) return;
    std::string path;
    if (!path_param(req, res, &path)) return;
    json items = json::array();
    {
      std::lock_guard l(repo_mu_);
      auto entries = repo_->list(path);
      if (!entries) return send_error(res, status_for_errno(entries.err()), entries.error().message);
      for (const auto& e : *entries) items.push_back(entry_json(e, opts_.include_size));
    }
    send_json(req, res, envelope_ok(std::move(items)), d);
  });

  s.Get("/api/v1/tree/dir-hash", [this](const httplib::Request& req, httplib::Response& res) {
    FaultDecision d;
    if (inject("dir-hash", req, res, d)) return;
    std::string path;
    if (!path_param(req, res, &path)) return;
    json items = json::array();
    {
      std::lock_guard l(repo_mu_);
      auto e = repo_->stat(path);
      if (!e) return send_error(res, status_for_errno(e.err()), e.error().message);
      if (*e) items.push_back(entry_json(**e, opts_.include_size));
    }
    send_json(req, res, envelope_ok(std::move(items)), d);
  });

  s.Get(R"(/api/v1/file/blob/([^/]*))", [this](const httplib::Request& req, httplib::Response& res) {
    FaultDecision d;
    if (inject("blob", req, res, d)) return;
    auto oid = Oid::from_hex(req.matches[1].str());
    if (!oid) return send_error(res, 400, "invalid oid '" + req.matches[1].str() + "': want 40 hex digits");
    std::shared_ptr<Repository> r;  // kept alive past a concurrent reset
    std::optional<BlobSpec> spec;
    {
      std::lock_guard l(repo_mu_);
      r = repo_;
      spec = r->find_blob(*oid);
    }
    if (!spec) {
      res.status = 404;  // as Mega: unknown blob, empty body
      return;
    }
    std::string content = r->content(*spec);  // outside the lock: the expensive part
    if (d.failure && d.failure->kind == FaultKind::malformed && !content.empty())
      content[content.size() / 2] ^= 0x20;  // same length, wrong bytes: only the oid tells
    if (d.failure && d.failure->kind == FaultKind::truncate) {
      auto shared = std::make_shared<std::string>(std::move(content));
      res.set_content_provider(shared->size(), "application/octet-stream",
                               [shared](size_t offset, size_t, httplib::DataSink& sink) {
                                 if (offset == 0 && shared->size() > 1) sink.write(shared->data(), shared->size() / 2);
                                 return false;
                               });
      return;
    }
    res.set_header("Accept-Ranges", "bytes");
    // One range is answered here, so the headers follow RFC 9110 (httplib
    // would clamp neither the end nor the 416's Content-Range); several
    // ranges are left to httplib's multipart/byteranges.
    if (req.ranges.size() == 1) {
      auto range = resolve_range(req.ranges[0], content.size());
      // Handled: httplib must not apply the range a second time.
      const_cast<httplib::Request&>(req).ranges.clear();
      if (!range) {
        res.status = 416;
        res.set_header("Content-Range", "bytes */" + std::to_string(content.size()));
        return;
      }
      res.status = 206;
      res.set_header("Content-Range", "bytes " + std::to_string(range->first) + "-" +
                                          std::to_string(range->first + range->second - 1) + "/" +
                                          std::to_string(content.size()));
      content = content.substr(range->first, range->second);
    }
    res.set_content(std::move(content), "application/octet-stream");
  });

  s.Get(R"(/api/v1/cl/([^/]*)/files-list)", [this](const httplib::Request& req, httplib::Response& res) {
    FaultDecision d;
    if (inject("files-list", req, res, d)) return;
    uint32_t cl;
    if (!parse_uint(req.matches[1].str(), &cl)) return send_error(res, 400, "invalid cl id '" + req.matches[1].str() + "'");
    json items = json::array();
    {
      std::lock_guard l(repo_mu_);
      auto files = repo_->cl_files(cl);
      if (!files) return send_error(res, 404, files.error().message);
      for (const auto& f : *files)
        items.push_back({{"path", f.path}, {"sha", f.sha ? f.sha->hex() : ""}, {"action", cl_action_name(f.action)}});
    }
    send_json(req, res, envelope_ok(std::move(items)), d);
  });

  // ------------------------------------------------------------ admin API
  s.Get("/admin/state", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json j;
    {
      std::lock_guard l(repo_mu_);
      j = {{"version", repo_->version()}, {"seed", repo_->seed()}, {"files", repo_->file_count()},
           {"dirs", repo_->dir_count()}, {"cls", repo_->cl_count()}};
    }
    {
      std::lock_guard l(sched_mu_);
      j["schedule"] = {{"every_ms", every_.count()}, {"count", count_}, {"paused", paused_}};
    }
    res.set_content(dump(j), "application/json");
  });

  s.Post("/admin/mutate", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) return send_error(res, 400, "body must be a JSON object");
    std::vector<LogEntry> applied;
    if (body.contains("count")) {
      uint32_t n;
      if (!body["count"].is_number_unsigned() || (n = body["count"].get<uint32_t>()) == 0 || n > 100000)
        return send_error(res, 400, "count must be an integer in [1, 100000]");
      std::lock_guard l(repo_mu_);
      applied = repo_->apply_random(n, SystemClock::instance().wall_ms());
    } else if (body.contains("mutations") && body["mutations"].is_array()) {
      std::vector<MutationRequest> muts;
      const auto& arr = body["mutations"];
      for (size_t i = 0; i < arr.size(); ++i) {
        const auto& m = arr[i];
        auto bad = [&](const std::string& what) { send_error(res, 400, "mutation " + std::to_string(i) + ": " + what); };
        if (!m.is_object()) return bad("must be an object");
        MutationRequest r;
        if (!m.contains("kind") || !m["kind"].is_string() || !parse_mutation_kind(m["kind"].get<std::string>(), &r.kind))
          return bad("kind must be one of modify, replace, delete, add, rename, rename_dir, cl");
        if (m.contains("path")) {
          if (!m["path"].is_string()) return bad("path must be a string");
          r.path = m["path"].get<std::string>();
        }
        if (r.kind != MutationKind::cl && r.path.empty()) return bad("path is required");
        if (r.kind == MutationKind::rename || r.kind == MutationKind::rename_dir) {
          if (!m.contains("to") || !m["to"].is_string() || m["to"].get<std::string>().empty())
            return bad("'to' is required for " + std::string(mutation_kind_name(r.kind)));
          r.to = m["to"].get<std::string>();
        }
        if (r.kind == MutationKind::cl) {
          if (!m.contains("cl") || !m["cl"].is_number_unsigned()) return bad("'cl' (a CL id) is required for cl");
          r.cl = m["cl"].get<uint32_t>();
          if (m.contains("action")) {
            if (!m["action"].is_string()) return bad("action must be a string");
            r.cl_action = m["action"].get<std::string>();
          }
        }
        muts.push_back(std::move(r));
      }
      std::lock_guard l(repo_mu_);
      auto r = repo_->apply(muts, SystemClock::instance().wall_ms());
      if (!r) return send_error(res, status_for_errno(r.err()), r.error().message);
      applied = std::move(*r);
    } else {
      return send_error(res, 400, "body needs \"count\" or a \"mutations\" list");
    }
    metrics_->count_mutations(applied);
    res.set_content(dump(json{{"applied", log_json(applied)}}), "application/json");
  });

  s.Get("/admin/log", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    uint64_t since = 0;
    if (req.has_param("since") && !parse_uint(req.get_param_value("since"), &since))
      return send_error(res, 400, "since must be a non-negative integer");
    std::vector<LogEntry> entries;
    {
      std::lock_guard l(repo_mu_);
      entries = repo_->log_since(since);
    }
    res.set_content(dump(json{{"entries", log_json(entries)}}), "application/json");
  });

  s.Get("/admin/paths", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    FileClass cls = FileClass::source;
    if (!req.has_param("class") || !parse_file_class(req.get_param_value("class"), &cls))
      return send_error(res, 400, "class must be one of buckconfig, buck, package, bzl, source");
    std::vector<std::string> paths;
    {
      std::lock_guard l(repo_mu_);
      paths = repo_->paths_of(cls);
    }
    res.set_content(dump(json{{"paths", paths}}), "application/json");
  });

  auto schedule_json = [this] {
    std::lock_guard l(sched_mu_);
    return json{{"every_ms", every_.count()}, {"count", count_}, {"paused", paused_}};
  };
  s.Get("/admin/schedule", [this, schedule_json](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    res.set_content(dump(schedule_json()), "application/json");
  });
  s.Post("/admin/schedule", [this, schedule_json](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json b = json::parse(req.body, nullptr, false);
    if (b.is_discarded() || !b.is_object()) return send_error(res, 400, "body must be a JSON object");
    if (b.contains("every_ms") && (!b["every_ms"].is_number_unsigned() || b["every_ms"].get<uint64_t>() > 86400000))
      return send_error(res, 400, "every_ms must be an integer in [0, 86400000]");
    if (b.contains("count") && (!b["count"].is_number_unsigned() || b["count"].get<uint64_t>() > 100000))
      return send_error(res, 400, "count must be an integer in [0, 100000]");
    if (b.contains("paused") && !b["paused"].is_boolean()) return send_error(res, 400, "paused must be a boolean");
    {
      std::lock_guard l(sched_mu_);
      if (b.contains("every_ms")) every_ = std::chrono::milliseconds(b["every_ms"].get<uint64_t>());
      if (b.contains("count")) count_ = b["count"].get<uint32_t>();
      if (b.contains("paused")) paused_ = b["paused"].get<bool>();
    }
    sched_cv_.notify_all();
    res.set_content(dump(schedule_json()), "application/json");
  });

  s.Get("/admin/faults", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    res.set_content(dump(json{{"faults", faults_to_json(faults_.get())}}), "application/json");
  });
  s.Post("/admin/faults", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json b = json::parse(req.body, nullptr, false);
    if (b.is_discarded()) return send_error(res, 400, "body must be JSON: a fault list or {\"faults\":[...]}");
    auto faults = parse_faults(b);
    if (!faults) return send_error(res, 400, faults.error().message);
    std::optional<uint64_t> seed;
    if (b.is_object() && b.contains("seed")) {
      if (!b["seed"].is_number_unsigned()) return send_error(res, 400, "seed must be a non-negative integer");
      seed = b["seed"].get<uint64_t>();
    }
    faults_.set(std::move(*faults), seed);
    res.set_content(dump(json{{"faults", faults_to_json(faults_.get())}}), "application/json");
  });

  s.Post("/admin/reset", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json b = req.body.empty() ? json::object() : json::parse(req.body, nullptr, false);
    if (b.is_discarded() || !b.is_object()) return send_error(res, 400, "body must be a JSON object");
    RepoOptions ro = opts_.repo;
    {
      std::lock_guard l(repo_mu_);
      ro.seed = repo_->seed();
    }
    if (b.contains("seed")) {
      if (!b["seed"].is_number_unsigned()) return send_error(res, 400, "seed must be a non-negative integer");
      ro.seed = b["seed"].get<uint64_t>();
    }
    if (b.contains("files")) {
      if (!b["files"].is_number_unsigned()) return send_error(res, 400, "files must be a non-negative integer");
      ro.files = b["files"].get<uint64_t>();
      if (auto why = files_refusal(ro.files, opts_.max_files, mem_available_bytes()))
        return send_error(res, 422, *why);
    }
    if (b.contains("cls")) {
      if (!b["cls"].is_number_unsigned() || b["cls"].get<uint64_t>() > 10000)
        return send_error(res, 400, "cls must be an integer in [0, 10000]");
      ro.cls = b["cls"].get<uint32_t>();
    }
    std::shared_ptr<Repository> fresh;
    try {
      fresh = std::make_shared<Repository>(ro, opts_.weights);  // built outside the lock
    } catch (const std::bad_alloc&) {
      return send_error(res, 422, "not enough memory for a repository of " + std::to_string(ro.files) +
                                      " files; the current one is kept");
    }
    json j;
    {
      std::lock_guard l(repo_mu_);
      repo_ = fresh;
      j = {{"version", repo_->version()}, {"seed", repo_->seed()}, {"files", repo_->file_count()},
           {"dirs", repo_->dir_count()}, {"cls", repo_->cl_count()}};
    }
    faults_.set(faults_.get(), mix64(ro.seed ^ 0x6661756c74ULL));
    res.set_content(dump(j), "application/json");
  });

  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    std::string out;
    {
      std::lock_guard l(metrics_->mu);
      out += "# HELP mock_mega_requests_total HTTP requests by endpoint and status.\n";
      out += "# TYPE mock_mega_requests_total counter\n";
      for (const auto& [k, v] : metrics_->requests)
        out += "mock_mega_requests_total{endpoint=\"" + k.first + "\",status=\"" + std::to_string(k.second) +
               "\"} " + std::to_string(v) + "\n";
      out += "# HELP mock_mega_mutations_total Applied mutations by kind.\n";
      out += "# TYPE mock_mega_mutations_total counter\n";
      for (int i = 0; i < kMutationKindCount; ++i) {
        const char* k = mutation_kind_name(static_cast<MutationKind>(i));
        auto it = metrics_->mutations.find(k);
        out += "mock_mega_mutations_total{kind=\"" + std::string(k) + "\"} " +
               std::to_string(it == metrics_->mutations.end() ? 0 : it->second) + "\n";
      }
      out += "# HELP mock_mega_faults_injected_total Injected faults by endpoint and kind.\n";
      out += "# TYPE mock_mega_faults_injected_total counter\n";
      for (const auto& [k, v] : metrics_->faults)
        out += "mock_mega_faults_injected_total{endpoint=\"" + k.first + "\",kind=\"" + k.second + "\"} " +
               std::to_string(v) + "\n";
    }
    std::lock_guard l(repo_mu_);
    out += "# TYPE mock_mega_repository_version gauge\nmock_mega_repository_version " +
           std::to_string(repo_->version()) + "\n";
    out += "# TYPE mock_mega_repository_files gauge\nmock_mega_repository_files " +
           std::to_string(repo_->file_count()) + "\n";
    out += "# TYPE mock_mega_repository_dirs gauge\nmock_mega_repository_dirs " +
           std::to_string(repo_->dir_count()) + "\n";
    res.set_content(out, "text/plain; version=0.0.4");
  });
}

}  // namespace antares::mock
