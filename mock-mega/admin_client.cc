#include "mock-mega/admin_client.h"

namespace antares::mock {

using json = nlohmann::json;

AdminClient::AdminClient(std::string base_url, std::string token, std::shared_ptr<remote::HttpClient> http)
    : base_(std::move(base_url)),
      token_(std::move(token)),
      http_(http ? std::move(http) : std::make_shared<remote::CurlHttpClient>()) {}

Result<remote::HttpResponse> AdminClient::raw(const std::string& method, const std::string& path_and_query,
                                              const std::string& body) {
  remote::HttpRequest req;
  req.method = method;
  req.url = base_ + path_and_query;
  req.body = body;
  if (!body.empty()) req.headers.emplace_back("Content-Type", "application/json");
  if (!token_.empty()) req.headers.emplace_back("Authorization", "Bearer " + token_);
  req.timeout = std::chrono::seconds(60);  // a reset of a large repository regenerates it
  return http_->perform(req);
}

Result<json> AdminClient::call(const std::string& method, const std::string& path, const std::string& body) {
  auto res = raw(method, path, body);
  if (!res) return res.error();
  json j = json::parse(res->body, nullptr, false);
  if (res->status < 200 || res->status > 299) {
    std::string msg = j.is_object() && j.contains("err_message") && j["err_message"].is_string()
                          ? j["err_message"].get<std::string>()
                          : res->body;
    int e = res->status == 404 ? ENOENT : res->status == 409 ? EEXIST : res->status == 401 ? EACCES : EINVAL;
    return Error{e, res->status, method + " " + path + ": " + msg};
  }
  if (j.is_discarded()) return Error{EPROTO, res->status, method + " " + path + ": response is not JSON"};
  return j;
}

namespace {
Result<json> field(Result<json> r, const char* name) {
  if (!r) return r;
  if (!r->is_object() || !r->contains(name)) return Error{EPROTO, 0, std::string("response lacks '") + name + "'"};
  return (*r)[name];
}
}  // namespace

Result<json> AdminClient::state() { return call("GET", "/admin/state"); }
Result<json> AdminClient::mutate(const json& body) { return field(call("POST", "/admin/mutate", body.dump()), "applied"); }
Result<json> AdminClient::log(uint64_t since) {
  return field(call("GET", "/admin/log?since=" + std::to_string(since)), "entries");
}
Result<json> AdminClient::schedule(const json& body) { return call("POST", "/admin/schedule", body.dump()); }
Result<json> AdminClient::set_faults(const json& faults) { return call("POST", "/admin/faults", faults.dump()); }
Result<json> AdminClient::reset(uint64_t seed) { return call("POST", "/admin/reset", json{{"seed", seed}}.dump()); }

Result<std::vector<std::string>> AdminClient::paths(const std::string& file_class) {
  auto r = field(call("GET", "/admin/paths?class=" + file_class), "paths");
  if (!r) return r.error();
  if (!r->is_array()) return Error{EPROTO, 0, "paths is not a list"};
  std::vector<std::string> out;
  for (const auto& p : *r) {
    if (!p.is_string()) return Error{EPROTO, 0, "paths holds a non-string"};
    out.push_back(p.get<std::string>());
  }
  return out;
}

Result<std::string> AdminClient::metrics() {
  auto r = raw("GET", "/metrics");
  if (!r) return r.error();
  if (r->status != 200) return Error{EIO, r->status, "GET /metrics failed"};
  return r->body;
}

}  // namespace antares::mock
