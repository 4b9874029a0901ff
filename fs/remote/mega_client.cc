#include "fs/remote/mega_client.h"

#include <charconv>
#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

namespace antares::remote {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// How one HTTP answer is judged: a value, a final error, or an error worth retrying.
template <class T>
struct Verdict {
  std::optional<T> value;
  std::optional<Error> error;
  bool retry = false;
  static Verdict ok(T v) { return {std::move(v), std::nullopt, false}; }
  static Verdict fail(Error e, bool retry) { return {std::nullopt, std::move(e), retry}; }
};

std::string err_message_of(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("err_message") && j["err_message"].is_string())
    return j["err_message"].get<std::string>();
  return body.size() > 200 ? body.substr(0, 200) + "..." : body;
}

// A non-2xx status: 404 is final ENOENT, 5xx and 429 are worth a retry,
// other 4xx are final EIO.
template <class T>
Verdict<T> judge_status(const HttpResponse& r, const std::string& what) {
  std::string msg = what + ": HTTP " + std::to_string(r.status);
  std::string server = err_message_of(r.body);
  if (!server.empty()) msg += ": " + server;
  if (r.status == 404) return Verdict<T>::fail(Error{ENOENT, r.status, msg}, false);
  bool transient = r.status == 429 || r.status >= 500;
  return Verdict<T>::fail(Error{EIO, r.status, msg}, transient);
}

// The envelope's data, or why not. Shape errors are EBADMSG and retried
// (upstream retries listings on JSON errors); req_result:false is final.
Verdict<json> envelope_data(const HttpResponse& r, const std::string& what) {
  json j = json::parse(r.body, nullptr, false);
  auto bad = [&](const std::string& why) {
    return Verdict<json>::fail(Error{EBADMSG, r.status, what + ": malformed response: " + why}, true);
  };
  if (j.is_discarded()) return bad("not JSON");
  if (!j.is_object() || !j.contains("req_result") || !j["req_result"].is_boolean()) return bad("no req_result");
  if (!j["req_result"].get<bool>())
    return Verdict<json>::fail(Error{EIO, r.status, what + ": server error: " + err_message_of(r.body)}, false);
  if (!j.contains("data") || !j["data"].is_array()) return bad("data is not a list");
  return Verdict<json>::ok(std::move(j["data"]));
}

std::optional<TreeItem> parse_item(const json& it, std::string* why) {
  if (!it.is_object()) return *why = "item is not an object", std::nullopt;
  if (!it.contains("name") || !it["name"].is_string()) return *why = "item without a string name", std::nullopt;
  // From here on the entry has a name: a bad field drops this entry only.
  if (!it.contains("content_type") || !it["content_type"].is_string())
    return *why = "item without content_type", std::nullopt;
  if (!it.contains("oid") || !it["oid"].is_string()) return *why = "item without oid", std::nullopt;
  TreeItem t;
  t.name = it["name"].get<std::string>();
  std::string type = it["content_type"].get<std::string>();
  if (type == "directory") t.type = ItemType::directory;
  else if (type == "file") t.type = ItemType::file;
  else return *why = "unknown content_type '" + type + "'", std::nullopt;
  auto oid = Oid::from_hex(it["oid"].get<std::string>());
  if (!oid) return *why = "bad oid '" + it["oid"].get<std::string>() + "'", std::nullopt;
  t.oid = *oid;
  if (it.contains("size") && !it["size"].is_null()) {
    if (!it["size"].is_number_unsigned()) return *why = "size is not a non-negative integer", std::nullopt;
    t.size = it["size"].get<uint64_t>();
  }
  return t;
}

// The usable entries of a listing; the others go to *dropped.
Verdict<std::vector<TreeItem>> parse_items(const HttpResponse& r, const std::string& what,
                                           std::vector<DroppedItem>* dropped) {
  if (r.status < 200 || r.status > 299) return judge_status<std::vector<TreeItem>>(r, what);
  auto data = envelope_data(r, what);
  if (!data.value) return Verdict<std::vector<TreeItem>>::fail(*data.error, data.retry);
  std::vector<TreeItem> out;
  out.reserve(data.value->size());
  dropped->clear();
  for (const auto& it : *data.value) {
    std::string why;
    auto item = parse_item(it, &why);
    if (!item) {
      std::string name = it.is_object() && it.contains("name") && it["name"].is_string() ? it["name"].get<std::string>() : "";
      dropped->push_back({std::move(name), std::move(why)});
      continue;
    }
    out.push_back(std::move(*item));
  }
  return Verdict<std::vector<TreeItem>>::ok(std::move(out));
}

HttpRequest request(std::string method, std::string url) {
  HttpRequest r;
  r.method = std::move(method);
  r.url = std::move(url);
  return r;
}

}  // namespace

std::string url_encode_path(std::string_view path) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(path.size());
  for (unsigned char c : path) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

MegaClient::MegaClient(MegaClientOptions opts, std::shared_ptr<HttpClient> http)
    : opts_(std::move(opts)), http_(http ? std::move(http) : std::make_shared<CurlHttpClient>()) {
  while (!opts_.base_url.empty() && opts_.base_url.back() == '/') opts_.base_url.pop_back();
}

namespace {

// Runs req under policy: up to 1 + max_retries attempts, backoff doubling,
// retrying transport errors and whatever judge marks retryable.
template <class T, class Judge>
Result<T> with_retries(HttpClient& http, MegaClientStats& stats, const RetryPolicy& policy, HttpRequest req,
                       Judge judge) {
  req.timeout = policy.timeout;
  Error last{EIO, 0, "no attempt made"};
  auto backoff = policy.backoff;
  const auto start = Clock::now();
  // What is left of the policy's deadline (effectively unbounded without one).
  auto left = [&] {
    if (policy.deadline.count() <= 0) return std::chrono::milliseconds::max();
    return policy.deadline - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  };
  for (int attempt = 0; attempt <= std::max(0, policy.max_retries); ++attempt) {
    if (attempt > 0) {
      if (left() <= backoff) break;  // no time for another attempt
      ++stats.retries;
      std::this_thread::sleep_for(backoff);
      backoff *= 2;
    }
    if (auto l = left(); l < std::chrono::milliseconds::max()) {
      if (l.count() <= 0) break;
      req.timeout = std::min(policy.timeout, l);
      req.connect_timeout = std::min(req.connect_timeout, req.timeout);
    }
    ++stats.requests;
    auto t0 = Clock::now();
    auto r = http.perform(req);
    stats.latency_us_total +=
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
    if (!r) {
      ++stats.errors;
      last = r.error();
      continue;
    }
    Verdict<T> v = judge(*r);
    if (v.value) return std::move(*v.value);
    ++stats.errors;
    last = std::move(*v.error);
    if (!v.retry) return last;
  }
  return last;
}

}  // namespace

namespace {

// The dir-hash answer: the one item of a path, nullopt if there is none.
Verdict<std::optional<TreeItem>> judge_dir_hash(const HttpResponse& r, const std::string& what) {
  using T = std::optional<TreeItem>;
  std::vector<DroppedItem> dropped;
  auto items = parse_items(r, what, &dropped);
  if (!items.value) return Verdict<T>::fail(*items.error, items.retry);
  if (!dropped.empty())  // the one item is the answer: there is nothing else to serve
    return Verdict<T>::fail(Error{EBADMSG, r.status, what + ": malformed response: " + dropped[0].reason}, true);
  if (items.value->size() > 1)
    return Verdict<T>::fail(Error{EBADMSG, r.status, what + ": malformed response: more than one item"}, true);
  return Verdict<T>::ok(items.value->empty() ? T() : T(std::move(items.value->front())));
}

RetryPolicy probe_policy(RetryPolicy policy, std::chrono::milliseconds deadline) {
  policy.timeout = std::min(policy.timeout, deadline);
  policy.deadline = deadline;
  return policy;
}

Error probe_error(Error e, std::chrono::milliseconds deadline) {
  if (e.err == ETIMEDOUT || e.message == "no attempt made")
    e = Error{ETIMEDOUT, e.http_status,
              "no answer within " + std::to_string(deadline.count()) + " ms (" + e.message + ")"};
  return e;
}

}  // namespace

Status MegaClient::probe(std::chrono::milliseconds deadline) {
  HttpRequest req = request("GET", opts_.base_url + "/api/v1/tree/content-hash?path=/");
  auto r = with_retries<std::vector<TreeItem>>(*http_, stats_, probe_policy(opts_.listing, deadline), req,
                                                [&](const HttpResponse& resp) {
                                                   std::vector<DroppedItem> dropped;
                                                   return parse_items(resp, "content-hash /", &dropped);
                                                 });
  if (r) return {};
  return probe_error(r.error(), deadline);
}

Result<Oid> MegaClient::probe_root(std::chrono::milliseconds deadline) {
  HttpRequest req = request("GET", opts_.base_url + "/api/v1/tree/dir-hash?path=/");
  auto r = with_retries<std::optional<TreeItem>>(*http_, stats_, probe_policy(opts_.listing, deadline), req,
                                                 [&](const HttpResponse& resp) { return judge_dir_hash(resp, "dir-hash /"); });
  if (!r) return probe_error(r.error(), deadline);
  if (!*r || (*r)->type != ItemType::directory)
    return Error{EBADMSG, 0, "dir-hash /: the answer holds no directory entry for /"};
  return (*r)->oid;
}

Result<std::vector<TreeItem>> MegaClient::content_hash(const std::string& path, std::vector<DroppedItem>* dropped) {
  HttpRequest req = request("GET", opts_.base_url + "/api/v1/tree/content-hash?path=" + url_encode_path(path));
  std::string what = "content-hash " + path;
  std::vector<DroppedItem> local;
  return with_retries<std::vector<TreeItem>>(*http_, stats_, opts_.listing, req, [&](const HttpResponse& r) {
    return parse_items(r, what, dropped ? dropped : &local);
  });
}

Result<std::optional<TreeItem>> MegaClient::dir_hash(const std::string& path) {
  HttpRequest req = request("GET", opts_.base_url + "/api/v1/tree/dir-hash?path=" + url_encode_path(path));
  std::string what = "dir-hash " + path;
  return with_retries<std::optional<TreeItem>>(*http_, stats_, opts_.listing, req,
                                               [&](const HttpResponse& r) { return judge_dir_hash(r, what); });
}

Result<std::string> MegaClient::blob(const Oid& oid) {
  HttpRequest req = request("GET", opts_.base_url + "/api/v1/file/blob/" + oid.hex());
  std::string what = "blob " + oid.hex();
  return with_retries<std::string>(*http_, stats_, opts_.blob, req, [&](const HttpResponse& r) {
    if (r.status != 200) return judge_status<std::string>(r, what);
    // Bytes damaged on the way are a transient failure, like a 5xx.
    if (git_blob_oid(r.body) != oid)
      return Verdict<std::string>::fail(
          Error{EIO, r.status, what + ": " + std::to_string(r.body.size()) + " bytes that do not hash to the oid"},
          true);
    return Verdict<std::string>::ok(r.body);
  });
}

Result<std::string> MegaClient::blob_range(const Oid& oid, uint64_t offset, uint64_t length) {
  if (length == 0) return std::string();
  HttpRequest req = request("GET", opts_.base_url + "/api/v1/file/blob/" + oid.hex());
  req.headers.emplace_back("Range", "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1));
  std::string what = "blob " + oid.hex() + " range";
  return with_retries<std::string>(*http_, stats_, opts_.blob, req, [&](const HttpResponse& r) {
    if (r.status == 206) return Verdict<std::string>::ok(r.body.substr(0, length));
    if (r.status == 200)  // a server that ignores Range: slice it here
      return Verdict<std::string>::ok(offset >= r.body.size() ? std::string() : r.body.substr(offset, length));
    if (r.status == 416) return Verdict<std::string>::ok(std::string());  // offset at or past EOF
    return judge_status<std::string>(r, what);
  });
}

Result<uint64_t> MegaClient::blob_size(const Oid& oid) {
  HttpRequest req = request("HEAD", opts_.base_url + "/api/v1/file/blob/" + oid.hex());
  std::string what = "blob " + oid.hex() + " size";
  return with_retries<uint64_t>(*http_, stats_, opts_.blob, req, [&](const HttpResponse& r) {
    if (r.status != 200) return judge_status<uint64_t>(r, what);
    auto it = r.headers.find("content-length");
    uint64_t size = 0;
    if (it == r.headers.end() ||
        std::from_chars(it->second.data(), it->second.data() + it->second.size(), size).ec != std::errc())
      return Verdict<uint64_t>::fail(Error{EBADMSG, r.status, what + ": no valid Content-Length"}, true);
    return Verdict<uint64_t>::ok(size);
  });
}

Result<std::vector<ClFile>> MegaClient::cl_files(const std::string& cl) {
  HttpRequest req = request("GET", opts_.base_url + "/api/v1/cl/" + url_encode_path(cl) + "/files-list");
  std::string what = "files-list " + cl;
  using T = std::vector<ClFile>;
  return with_retries<T>(*http_, stats_, opts_.listing, req, [&](const HttpResponse& r) {
    if (r.status < 200 || r.status > 299) return judge_status<T>(r, what);
    auto data = envelope_data(r, what);
    if (!data.value) return Verdict<T>::fail(*data.error, data.retry);
    T out;
    for (const auto& e : *data.value) {
      auto bad = [&](const std::string& why) {
        return Verdict<T>::fail(Error{EBADMSG, r.status, what + ": malformed response: " + why}, true);
      };
      if (!e.is_object() || !e.contains("path") || !e["path"].is_string()) return bad("entry without a string path");
      if (!e.contains("action") || !e["action"].is_string()) return bad("entry without an action");
      ClFile f;
      f.path = e["path"].get<std::string>();
      std::string action = e["action"].get<std::string>();
      if (action == "new") f.action = ClAction::added;
      else if (action == "modified") f.action = ClAction::modified;
      else if (action == "deleted") f.action = ClAction::deleted;
      else return bad("unknown action '" + action + "'");
      if (e.contains("sha") && e["sha"].is_string() && !e["sha"].get<std::string>().empty()) {
        auto oid = Oid::from_hex(e["sha"].get<std::string>());
        if (!oid) return bad("bad sha '" + e["sha"].get<std::string>() + "'");
        f.sha = *oid;
      } else if (e.contains("sha") && !e["sha"].is_string() && !e["sha"].is_null()) {
        return bad("sha is not a string");
      }
      if (f.action != ClAction::deleted && !f.sha) return bad("'" + action + "' entry without a sha");
      out.push_back(std::move(f));
    }
    return Verdict<T>::ok(std::move(out));
  });
}

}  // namespace antares::remote
