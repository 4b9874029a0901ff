#include "fs/remote/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <mutex>
#include <vector>

namespace antares::remote {
namespace {

std::once_flag g_curl_init;

struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;

size_t on_body(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
  std::string_view line(data, size * n);
  auto colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name(line.substr(0, colon));
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) value.remove_suffix(1);
    (*static_cast<std::map<std::string, std::string>*>(user))[name] = std::string(value);
  }
  return size * n;
}

int errno_for(CURLcode code, long os_errno) {
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT: return ETIMEDOUT;
    case CURLE_COULDNT_CONNECT: return os_errno == ECONNREFUSED || os_errno == 0 ? ECONNREFUSED : static_cast<int>(os_errno);
    case CURLE_GOT_NOTHING: return ECONNRESET;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR: return os_errno == ECONNRESET || os_errno == EPIPE ? ECONNRESET : EIO;
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING: return EPROTO;
    default: return EIO;
  }
}

}  // namespace

// Idle easy handles; each keeps its own connection cache, so a handle taken
// from the pool usually finds a live keep-alive connection to the server.
struct CurlHttpClient::Pool {
  std::mutex mu;
  std::vector<CURL*> idle;  // guarded by mu
  std::atomic<uint64_t> connects{0};

  CURL* take() {
    {
      std::lock_guard l(mu);
      if (!idle.empty()) {
        CURL* h = idle.back();
        idle.pop_back();
        return h;
      }
    }
    return curl_easy_init();
  }
  void give(CURL* h) {
    std::lock_guard l(mu);
    idle.push_back(h);
  }
  ~Pool() {
    for (CURL* h : idle) curl_easy_cleanup(h);
  }
};

CurlHttpClient::CurlHttpClient() : pool_(std::make_unique<Pool>()) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

CurlHttpClient::~CurlHttpClient() = default;

uint64_t CurlHttpClient::connections_opened() const { return pool_->connects.load(); }

Result<HttpResponse> CurlHttpClient::perform(const HttpRequest& req) {
  try {
    CURL* h = pool_->take();
    if (!h) return Error{ENOMEM, 0, "curl_easy_init failed"};
    struct Return {  // hands the handle back however we leave
      Pool* p;
      CURL* h;
      ~Return() { p->give(h); }
    } give_back{pool_.get(), h};

    curl_easy_reset(h);  // per-request options only: the connection cache survives
    HttpResponse res;
    Slist headers;
    for (const auto& [k, v] : req.headers) headers.reset(curl_slist_append(headers.release(), (k + ": " + v).c_str()));
    long timeout_ms = std::max<long>(1, static_cast<long>(req.timeout.count()));
    curl_easy_setopt(h, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     std::clamp<long>(static_cast<long>(req.connect_timeout.count()), 1, timeout_ms));
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &res.body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &res.headers);
    if (headers) curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());
    if (req.method == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (req.method == "POST") {
      curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, req.body.data());
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    } else if (req.method != "GET") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    }

    CURLcode rc = curl_easy_perform(h);
    long connects = 0;
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects);
    pool_->connects += static_cast<uint64_t>(connects);
    if (rc != CURLE_OK) {
      long os_errno = 0;
      curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os_errno);
      return Error{errno_for(rc, os_errno), 0,
                   std::string(curl_easy_strerror(rc)) + " (" + req.method + " " + req.url + ")"};
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    res.status = static_cast<int>(status);
    return res;
  } catch (const std::exception& e) {
    return Error{EIO, 0, std::string("HTTP client failure: ") + e.what()};
  }
}

}  // namespace antares::remote
