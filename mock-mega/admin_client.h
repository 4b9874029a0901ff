// A client of mock-mega's admin API (state, mutate, log, schedule, faults,
// reset, paths, metrics), for tests, the reproduction driver and benchmarks.
// Errors are Results: a non-2xx answer keeps its status and err_message.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "fs/remote/http_client.h"

namespace antares::mock {

class AdminClient {
 public:
  explicit AdminClient(std::string base_url, std::string token = "",
                       std::shared_ptr<remote::HttpClient> http = nullptr);

  Result<nlohmann::json> state();
  // {"count":N} or {"mutations":[...]}; returns the "applied" log entries.
  Result<nlohmann::json> mutate(const nlohmann::json& body);
  Result<nlohmann::json> log(uint64_t since = 0);  // the "entries" array
  Result<nlohmann::json> schedule(const nlohmann::json& body);
  Result<nlohmann::json> set_faults(const nlohmann::json& faults);
  Result<nlohmann::json> reset(uint64_t seed);
  Result<std::vector<std::string>> paths(const std::string& file_class);
  Result<std::string> metrics();

  // One raw request (tests of the HTTP surface itself).
  Result<remote::HttpResponse> raw(const std::string& method, const std::string& path_and_query,
                                   const std::string& body = "");

 private:
  Result<nlohmann::json> call(const std::string& method, const std::string& path, const std::string& body = "");

  std::string base_;
  std::string token_;
  std::shared_ptr<remote::HttpClient> http_;
};

}  // namespace antares::mock
