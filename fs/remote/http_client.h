// HttpClient: the seam between everything that talks HTTP and libcurl.
// MegaClient, the admin client and tests use it; a fault injector or a fake
// overrides one call. Errors are values (Result), never exceptions.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/result.h"

namespace antares::remote {

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, POST
  std::string url;             // absolute: http://127.0.0.1:PORT/api/v1/...
  std::vector<std::pair<std::string, std::string>> headers;  // extra request headers
  std::string body;            // for POST
  std::chrono::milliseconds timeout{10000};  // whole transfer, connect included
  std::chrono::milliseconds connect_timeout{5000};  // TCP connect alone (capped by timeout)
};

struct HttpResponse {
  int status = 0;  // HTTP status; the transport succeeded if we have one
  std::string body;
  std::map<std::string, std::string> headers;  // lower-cased names
};

class HttpClient {
 public:
  virtual ~HttpClient() = default;
  // Performs one request; no retries at this level.
  // Success: any HTTP status (4xx/5xx included) with the body as received.
  // Failure (Error): the transport failed. err is ETIMEDOUT for a timeout,
  // ECONNREFUSED for a refused connection, ECONNRESET for a reset, EPROTO for
  // a truncated or malformed HTTP response, EIO otherwise; message names the
  // curl error and the URL. Thread-safe.
  virtual Result<HttpResponse> perform(const HttpRequest& req) = 0;
};

// libcurl implementation. Keeps a pool of easy handles; each keeps its
// connection alive, so sequential and concurrent requests reuse connections.
// Thread-safe: any number of threads may call perform() at once.
class CurlHttpClient final : public HttpClient {
 public:
  CurlHttpClient();
  ~CurlHttpClient() override;
  CurlHttpClient(const CurlHttpClient&) = delete;
  CurlHttpClient& operator=(const CurlHttpClient&) = delete;

  Result<HttpResponse> perform(const HttpRequest& req) override;

  // Connections opened so far (for tests and metrics: proves reuse).
  uint64_t connections_opened() const;

 private:
  struct Pool;
  std::unique_ptr<Pool> pool_;
};

}  // namespace antares::remote
