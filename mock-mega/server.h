// MockMegaServer: the Mega monorepo HTTP API (content-hash, dir-hash, blob,
// files-list) over a seeded Repository, plus the admin API (state, mutate,
// log, schedule, faults, reset, paths), Prometheus metrics, a mutation
// scheduler and the fault table. Used by the mock-mega binary and, in
// process, by tests and benchmarks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/result.h"
#include "mock-mega/faults.h"
#include "mock-mega/repo.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace antares::mock {

// Peak memory per file while a repository is generated (measured: 471 MB
// peak for 1,000,000 files; docs/mock-mega.md), rounded up.
inline constexpr uint64_t kPeakBytesPerFile = 512;
inline constexpr uint64_t kDefaultMaxFiles = 2'000'000;

// Why a repository of `files` files must be refused (over max_files, or more
// than half the available memory), or nullopt if it may be built.
std::optional<std::string> files_refusal(uint64_t files, uint64_t max_files, uint64_t mem_available);

struct ServerOptions {
  RepoOptions repo;
  Weights weights;
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port
  std::chrono::milliseconds mutate_every{0};  // 0: no scheduled mutations
  uint32_t mutate_count = 1;
  bool schedule_paused = false;
  std::string admin_token;  // empty: admin API open (it only ever binds where told)
  bool include_size = true;  // send the `size` extension field on file items
  std::vector<Fault> faults;
  unsigned http_threads = 64;
  // The largest repository /admin/reset (and the binary's --files) accepts:
  // generation holds ~kPeakBytesPerFile per file and takes minutes per million.
  uint64_t max_files = kDefaultMaxFiles;
};

// A single byte range of a body of `length` bytes, as httplib parsed it
// (first or last may be -1: "a-", "-n"), resolved per RFC 9110: the end is
// clamped to the body, a suffix longer than the body is the whole body.
// Returns (offset, count), or nullopt when unsatisfiable (416).
std::optional<std::pair<uint64_t, uint64_t>> resolve_range(std::pair<int64_t, int64_t> range, uint64_t length);

class MockMegaServer {
 public:
  explicit MockMegaServer(ServerOptions opts);
  ~MockMegaServer();  // stop()s
  MockMegaServer(const MockMegaServer&) = delete;
  MockMegaServer& operator=(const MockMegaServer&) = delete;

  // Binds host:port, starts serving and the scheduler. Returns the bound port.
  // Error: EADDRINUSE / EACCES style failures with a message. Call once.
  Result<int> start();
  // Stops serving and joins every thread; idempotent, thread-safe.
  void stop();
  int port() const { return port_; }
  std::string base_url() const;

 private:
  struct Metrics;
  void install_routes();
  bool authorized(const httplib::Request& req, httplib::Response& res);
  // Applies the fault decision for endpoint; returns true if the request is finished.
  bool inject(const std::string& endpoint, const httplib::Request& req, httplib::Response& res,
              FaultDecision& d);
  void send_json(const httplib::Request& req, httplib::Response& res, const std::string& body,
                 const FaultDecision& d);
  void scheduler_loop();
  bool sleep_interruptible(std::chrono::milliseconds d);

  ServerOptions opts_;
  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
  std::thread scheduler_;
  int port_ = 0;

  std::mutex repo_mu_;  // lock order: repo_mu_ before sched_mu_; never held while sleeping
  std::shared_ptr<Repository> repo_;  // guarded by repo_mu_; contents generated outside it

  std::mutex sched_mu_;
  std::condition_variable sched_cv_;
  std::chrono::milliseconds every_;  // guarded by sched_mu_
  uint32_t count_;                   // guarded by sched_mu_
  bool paused_;                      // guarded by sched_mu_
  bool stopping_ = false;            // guarded by sched_mu_

  FaultTable faults_;
  std::unique_ptr<Metrics> metrics_;
  std::once_flag stop_once_;
};

}  // namespace antares::mock
