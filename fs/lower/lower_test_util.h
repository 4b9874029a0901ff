// Test support for fs/lower: a live in-process mock-mega (real HTTP, real
// MegaClient) and FakeMega, a scripted in-process HttpClient that serves a
// hand-made tree, blobs and CL list and lets a test fail or stall any request.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/oid.h"
#include "fs/layers/layer_change.h"
#include "fs/remote/mega_client.h"
#include "mock-mega/admin_client.h"
#include "mock-mega/server.h"

namespace antares::fs::test {

inline remote::MegaClientOptions fast_options(const std::string& base, int retries = 3,
                                              std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  remote::MegaClientOptions o;
  o.base_url = base;
  o.listing = {retries, std::chrono::milliseconds(1), timeout};
  o.blob = {retries, std::chrono::milliseconds(1), timeout};
  return o;
}

// A seeded mock-mega on 127.0.0.1:0 with a real client and admin client.
struct LiveMega {
  explicit LiveMega(bool include_size = true, uint64_t files = 200, uint32_t cls = 2) {
    mock::ServerOptions o;
    o.repo = {.seed = 7, .files = files, .cls = cls};
    o.include_size = include_size;
    o.http_threads = 16;
    server = std::make_unique<mock::MockMegaServer>(std::move(o));
    auto port = server->start();
    if (!port) std::abort();
    client = std::make_unique<remote::MegaClient>(fast_options(server->base_url()));
    admin = std::make_unique<mock::AdminClient>(server->base_url());
  }
  bool mutate(nlohmann::json m) {
    auto r = admin->mutate({{"mutations", nlohmann::json::array({std::move(m)})}});
    return r.ok();
  }
  std::unique_ptr<mock::MockMegaServer> server;
  std::unique_ptr<remote::MegaClient> client;
  std::unique_ptr<mock::AdminClient> admin;
};

inline std::optional<struct stat> lstat_of(const std::string& p) {
  struct stat st;
  if (::lstat(p.c_str(), &st) != 0) return std::nullopt;
  return st;
}

// The names in directory `dir` (without "." and "..").
inline std::set<std::string> names_in(const std::string& dir) {
  std::set<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (struct dirent* de = ::readdir(d))
    if (std::string_view(de->d_name) != "." && std::string_view(de->d_name) != "..") out.insert(de->d_name);
  ::closedir(d);
  return out;
}

inline std::string slurp(const std::string& p) {
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<open failed>";
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// Scripted Mega: a tree of directories (repository path -> items), blobs by
// oid and a CL list, served as the real API would; `hook` may answer any
// request first (faults, stalls).
class FakeMega : public remote::HttpClient {
 public:
  struct Item {
    std::string name;
    bool is_dir = false;
    std::string oid;  // hex; ignored for directories made by add_dir (their tree oid is computed)
    std::optional<uint64_t> size;
    bool computed = false;  // a directory whose oid is the Merkle hash of what is beneath it
  };
  using Hook = std::function<std::optional<Result<remote::HttpResponse>>(const remote::HttpRequest&)>;

  // Adds a file with this content under dir; returns its oid.
  std::string add_file(const std::string& dir, const std::string& name, const std::string& content,
                       bool with_size = true) {
    std::string oid = git_blob_oid(content).hex();
    std::lock_guard l(mu_);
    blobs_[oid] = content;
    auto& v = dirs_[dir];
    std::erase_if(v, [&](const Item& i) { return i.name == name; });
    v.push_back({name, false, oid, with_size ? std::optional<uint64_t>(content.size()) : std::nullopt});
    return oid;
  }
  // A directory whose oid changes iff something beneath it changes, as on Mega.
  void add_dir(const std::string& dir, const std::string& name) {
    std::lock_guard l(mu_);
    auto& v = dirs_[dir];
    std::erase_if(v, [&](const Item& i) { return i.name == name; });
    v.push_back({name, true, "", std::nullopt, true});
    dirs_[(dir == "/" ? "" : dir) + "/" + name];
  }
  void remove(const std::string& dir, const std::string& name) {
    std::lock_guard l(mu_);
    std::erase_if(dirs_[dir], [&](const Item& i) { return i.name == name; });
  }
  void add_raw(const std::string& dir, Item item) {
    std::lock_guard l(mu_);
    dirs_[dir].push_back(std::move(item));
  }
  // An entry sent exactly as given (malformed ones included), after the items.
  void add_json(const std::string& dir, nlohmann::json entry) {
    std::lock_guard l(mu_);
    raw_[dir].push_back(std::move(entry));
  }
  void add_blob(const std::string& content) {
    std::lock_guard l(mu_);
    blobs_[git_blob_oid(content).hex()] = content;
  }
  void set_cl(nlohmann::json list) {
    std::lock_guard l(mu_);
    cl_ = std::move(list);
  }
  void set_hook(Hook h) {
    std::lock_guard l(mu_);
    hook_ = std::move(h);
  }
  int count(const std::string& url_part) {
    std::lock_guard l(mu_);
    int n = 0;
    for (const auto& u : urls_) n += u.find(url_part) != std::string::npos;
    return n;
  }

  Result<remote::HttpResponse> perform(const remote::HttpRequest& req) override {
    Hook hook;
    {
      std::lock_guard l(mu_);
      urls_.push_back(req.method + " " + req.url);
      hook = hook_;
    }
    if (hook)
      if (auto r = hook(req)) return *r;
    std::lock_guard l(mu_);
    const std::string api = "http://fake/api/v1";
    std::string rest = req.url.substr(api.size());
    if (rest.starts_with("/tree/content-hash?path=")) {
      std::string path = decode(rest.substr(24));
      auto it = dirs_.find(path);
      if (it == dirs_.end()) return remote::HttpResponse{404, R"({"req_result":false,"data":null,"err_message":"no such path"})", {}};
      auto data = nlohmann::json::array();
      for (const auto& i : it->second) {
        nlohmann::json j = {{"name", i.name}, {"content_type", i.is_dir ? "directory" : "file"}, {"oid", oid_of(path, i)}};
        if (i.size) j["size"] = *i.size;
        data.push_back(j);
      }
      for (const auto& j : raw_[path]) data.push_back(j);
      return ok_json(data);
    }
    if (rest.starts_with("/tree/dir-hash?path=")) {
      std::string path = decode(rest.substr(20));
      auto data = nlohmann::json::array();
      if (path == "/") {
        data.push_back({{"name", ""}, {"content_type", "directory"}, {"oid", tree_oid("/").hex()}});
      } else {
        const auto slash = path.rfind('/');
        const std::string parent = slash == 0 ? "/" : path.substr(0, slash);
        if (auto p = dirs_.find(parent); p != dirs_.end())
          for (const auto& i : p->second)
            if (i.name == path.substr(slash + 1))
              data.push_back({{"name", i.name}, {"content_type", i.is_dir ? "directory" : "file"}, {"oid", oid_of(parent, i)}});
      }
      return ok_json(data);
    }
    if (rest.starts_with("/file/blob/")) {
      auto it = blobs_.find(rest.substr(11));
      if (it == blobs_.end()) return remote::HttpResponse{404, "", {}};
      if (req.method == "HEAD") return remote::HttpResponse{200, "", {{"content-length", std::to_string(it->second.size())}}};
      return remote::HttpResponse{200, it->second, {}};
    }
    if (rest.starts_with("/cl/")) return ok_json(cl_);
    return remote::HttpResponse{404, "", {}};
  }

 private:
  static std::string child_path(const std::string& dir, const std::string& name) {
    return (dir == "/" ? "" : dir) + "/" + name;
  }
  std::string oid_of(const std::string& dir, const Item& i) {
    return i.computed ? tree_oid(child_path(dir, i.name)).hex() : i.oid;
  }
  // The Merkle oid of a directory: its items (and any raw entries) hashed.
  Oid tree_oid(const std::string& path) {
    std::vector<TreeEntry> entries;
    for (const auto& i : dirs_[path]) {
      auto oid = Oid::from_hex(oid_of(path, i));
      entries.push_back({i.name, i.is_dir, oid ? *oid : git_blob_oid(i.oid)});
    }
    Oid t = git_tree_oid(std::move(entries));
    std::string raw;
    for (const auto& j : raw_[path]) raw += j.dump();
    return raw.empty() ? t : git_blob_oid(t.hex() + raw);
  }
  static remote::HttpResponse ok_json(const nlohmann::json& data) {
    nlohmann::json j = {{"req_result", true}, {"data", data}, {"err_message", ""}};
    return remote::HttpResponse{200, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), {}};
  }
  static std::string decode(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '%' && i + 2 < s.size()) {
        out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
        i += 2;
      } else {
        out.push_back(s[i]);
      }
    }
    return out;
  }

  std::mutex mu_;
  std::map<std::string, std::vector<Item>> dirs_{{"/", {}}};
  std::map<std::string, std::vector<nlohmann::json>> raw_;
  std::map<std::string, std::string> blobs_;
  nlohmann::json cl_ = nlohmann::json::array();
  Hook hook_;
  std::vector<std::string> urls_;
};

// Collects what a LowerStore announces to its listener.
struct Recorder {
  std::mutex mu;
  std::vector<LayerChange> events;
  std::atomic<int> begins{0}, ends{0};
  LayerChangeListener listener() {
    return {[this] { begins++; },
            [this](const std::vector<LayerChange>& ev) {
              std::lock_guard l(mu);
              events.insert(events.end(), ev.begin(), ev.end());
              ends++;
            }};
  }
  bool has(LayerChange::Kind k, const std::string& path) {
    std::lock_guard l(mu);
    for (const auto& e : events)
      if (e.kind == k && e.path == path) return true;
    return false;
  }
};

inline std::shared_ptr<FakeMega> fake_mega() { return std::make_shared<FakeMega>(); }
inline remote::MegaClientOptions fake_options(int retries = 0) { return fast_options("http://fake", retries); }

}  // namespace antares::fs::test
