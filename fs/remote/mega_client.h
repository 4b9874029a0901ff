// MegaClient: the typed client of the Mega monorepo HTTP API
// (GET /api/v1/tree/content-hash, /tree/dir-hash, /file/blob/{oid},
// /cl/{cl}/files-list), with upstream's timeouts and retry rules:
//   listings (content-hash, dir-hash, files-list): 10 s timeout, up to 3
//   retries on network errors and JSON/envelope errors;
//   blobs: 30 s timeout, up to 3 retries on network errors, 5xx and 429.
// Everything returns Result; HTTP status and errno are kept in the Error.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/oid.h"
#include "common/result.h"
#include "fs/remote/http_client.h"

namespace antares::remote {

enum class ItemType { file, directory };

struct TreeItem {
  std::string name;  // as sent by the server: NOT validated here (callers drop hostile names)
  ItemType type = ItemType::file;
  Oid oid;
  std::optional<uint64_t> size;  // extension field; absent on the real Mega
};

// An entry of a listing that could not be used (no usable name, an unknown
// content_type, a malformed oid or size): left out, the rest is served.
struct DroppedItem {
  std::string name;    // as sent ("" if it had none)
  std::string reason;  // "unknown content_type 'symlink'", ...
};

enum class ClAction { added, modified, deleted };  // "new", "modified", "deleted"

struct ClFile {
  std::string path;  // absolute repository path, e.g. "/a/b/BUCK"
  std::optional<Oid> sha;  // absent or ignored for deleted entries
  ClAction action = ClAction::modified;
};

struct RetryPolicy {
  int max_retries = 3;
  std::chrono::milliseconds backoff{100};  // doubled after each retry
  std::chrono::milliseconds timeout{10000};
  // Total budget for all attempts and backoffs; 0 = none. Each attempt's
  // timeout is cut to what is left, and no attempt starts past it.
  std::chrono::milliseconds deadline{0};
};

struct MegaClientOptions {
  std::string base_url;  // "http://127.0.0.1:8000" (no trailing /api/v1)
  RetryPolicy listing{3, std::chrono::milliseconds(100), std::chrono::milliseconds(10000)};
  RetryPolicy blob{3, std::chrono::milliseconds(100), std::chrono::milliseconds(30000)};
};

// Counters for metrics; all monotonic.
struct MegaClientStats {
  std::atomic<uint64_t> requests{0};  // HTTP attempts, retries included
  std::atomic<uint64_t> errors{0};    // attempts that failed (transport, status, JSON)
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> latency_us_total{0};
};

// Errors keep their cause (Error::err): transport errors keep the HttpClient's
// errno (ETIMEDOUT, ECONNREFUSED, ECONNRESET, EPROTO, EIO); HTTP 404 is ENOENT,
// other HTTP errors and req_result:false are EIO; a malformed response (bad
// JSON, a missing envelope field, a `data` that is not a list) is EBADMSG.
// One malformed entry of a listing does not fail the listing: it is dropped
// (see content_hash). A blob whose bytes do not hash to its oid is retried
// like a 5xx, then EIO. Error::http_status is
// the status of the last attempt (0 if it got none). Listings also retry 5xx
// and 429, like blobs: a transiently unhealthy server is not an answer.
// A blob_range at or past EOF (HTTP 416) is an empty string, not an error.
// Thread-safe: one MegaClient may serve every thread of the filesystem.
class MegaClient {
 public:
  // http is borrowed if given (tests, fault injection), else a CurlHttpClient is owned.
  explicit MegaClient(MegaClientOptions opts, std::shared_ptr<HttpClient> http = nullptr);

  // GET /api/v1/tree/content-hash?path=P: the children of directory P,
  // directories first then by name, as the server sent them. Entries that
  // cannot be used are left out and, if `dropped` is given, listed there.
  Result<std::vector<TreeItem>> content_hash(const std::string& path, std::vector<DroppedItem>* dropped = nullptr);
  // GET /api/v1/tree/dir-hash?path=P: the tree entry of P itself, nullopt if the
  // server returned no item.
  Result<std::optional<TreeItem>> dir_hash(const std::string& path);
  // GET /api/v1/file/blob/{oid}: the whole blob, checked against its oid.
  Result<std::string> blob(const Oid& oid);
  // GET with Range: bytes [offset, offset+length) of a blob (shorter at EOF).
  Result<std::string> blob_range(const Oid& oid, uint64_t offset, uint64_t length);
  // HEAD /api/v1/file/blob/{oid}: the blob's size from Content-Length.
  Result<uint64_t> blob_size(const Oid& oid);
  // GET /api/v1/cl/{cl}/files-list.
  Result<std::vector<ClFile>> cl_files(const std::string& cl);

  // Whether the server answers at all: the listing of "/" under the listing
  // retry rules, but all attempts (connect and first byte included) within
  // `deadline`. A server that accepts connections and never answers fails
  // with ETIMEDOUT after `deadline`, not after 4 full listing timeouts.
  Status probe(std::chrono::milliseconds deadline);
  // probe(), asking dir-hash of "/" instead: the root's tree oid, so a store
  // that keeps its mirror across restarts needs no second request to know
  // whether anything changed. EBADMSG if the answer holds no directory.
  Result<Oid> probe_root(std::chrono::milliseconds deadline);

  const MegaClientStats& stats() const { return stats_; }
  const std::string& base_url() const { return opts_.base_url; }

 private:
  MegaClientOptions opts_;
  std::shared_ptr<HttpClient> http_;
  MegaClientStats stats_;
};

// Percent-encodes a repository path for a query string (keeps '/').
std::string url_encode_path(std::string_view path);

}  // namespace antares::remote
