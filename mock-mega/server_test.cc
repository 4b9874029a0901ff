// End-to-end tests of mock-mega: a real server on 127.0.0.1 port 0, driven
// through the real Mega client (fs/remote) and the admin client.
#include "mock-mega/server.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <thread>

#include "fs/remote/mega_client.h"
#include "mock-mega/admin_client.h"
#include "testing/subprocess.h"

namespace antares::mock {
namespace {

using json = nlohmann::json;
using remote::ItemType;
using remote::MegaClient;
using std::chrono::milliseconds;

ServerOptions small_repo(uint64_t seed = 42, uint64_t files = 500) {
  ServerOptions o;
  o.repo = {.seed = seed, .files = files, .cls = 3};
  o.http_threads = 16;
  return o;
}

remote::MegaClientOptions fast_client(const std::string& base) {
  remote::MegaClientOptions o;
  o.base_url = base;
  o.listing.backoff = o.blob.backoff = milliseconds(1);
  return o;
}

class MockMegaTest : public ::testing::Test {
 protected:
  void SetUp() override { start(small_repo()); }
  void start(ServerOptions o) {
    server = std::make_unique<MockMegaServer>(std::move(o));
    auto port = server->start();
    ASSERT_TRUE(port.ok()) << port.error().describe();
    client = std::make_unique<MegaClient>(fast_client(server->base_url()));
    admin = std::make_unique<AdminClient>(server->base_url());
  }
  json raw_json(const std::string& path, int* status = nullptr) {
    auto r = admin->raw("GET", path);
    EXPECT_TRUE(r.ok());
    if (!r) return nullptr;
    if (status) *status = r->status;
    return json::parse(r->body, nullptr, false);
  }
  std::string first_path(const char* cls) {
    auto p = admin->paths(cls);
    EXPECT_TRUE(p.ok() && !p->empty());
    return p.ok() && !p->empty() ? p->front() : "";
  }
  std::optional<remote::TreeItem> item(const std::string& path) {
    auto r = client->dir_hash(path);
    EXPECT_TRUE(r.ok()) << path;
    return r.ok() ? *r : std::nullopt;
  }

  std::unique_ptr<MockMegaServer> server;
  std::unique_ptr<MegaClient> client;
  std::unique_ptr<AdminClient> admin;
};

// ------------------------------------------------------------------ shapes

TEST_F(MockMegaTest, ContentHashHasMegaShape) {
  json j = raw_json("/api/v1/tree/content-hash?path=/");
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["req_result"], true);
  EXPECT_EQ(j["err_message"], "");
  ASSERT_TRUE(j["data"].is_array());
  ASSERT_FALSE(j["data"].empty());
  bool seen_file = false;
  for (const auto& it : j["data"]) {
    ASSERT_TRUE(it["name"].is_string());
    ASSERT_TRUE(it["oid"].is_string());
    EXPECT_EQ(it["oid"].get<std::string>().size(), 40u);
    std::string type = it["content_type"];
    ASSERT_TRUE(type == "file" || type == "directory") << type;
    if (type == "file") {
      seen_file = true;
      EXPECT_TRUE(it["size"].is_number_unsigned());
    } else {
      EXPECT_FALSE(seen_file) << "directories come first";
      EXPECT_FALSE(it.contains("size"));
    }
  }
  auto items = client->content_hash("/");
  ASSERT_TRUE(items.ok()) << items.error().describe();
  ASSERT_EQ(items->size(), j["data"].size());
  EXPECT_EQ((*items)[0].name, j["data"][0]["name"]);
}

TEST_F(MockMegaTest, DirHashGivesTheEntryItselfOrNothing) {
  auto listing = client->content_hash("/");
  ASSERT_TRUE(listing.ok());
  for (const auto& it : *listing) {
    auto self = item("/" + it.name);
    ASSERT_TRUE(self);
    EXPECT_EQ(self->name, it.name);
    EXPECT_EQ(self->oid, it.oid);
    EXPECT_EQ(self->type, it.type);
  }
  EXPECT_FALSE(item("/no/such/dir"));
  json j = raw_json("/api/v1/tree/dir-hash?path=/no/such/dir");
  EXPECT_EQ(j["req_result"], true);
  EXPECT_TRUE(j["data"].is_array() && j["data"].empty());
}

TEST_F(MockMegaTest, BlobGetHeadAndRange) {
  std::string path = first_path("buck");
  auto it = item(path);
  ASSERT_TRUE(it && it->size);
  auto bytes = client->blob(it->oid);
  ASSERT_TRUE(bytes.ok()) << bytes.error().describe();
  EXPECT_EQ(git_blob_oid(*bytes), it->oid);
  EXPECT_EQ(bytes->size(), *it->size);
  auto size = client->blob_size(it->oid);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, *it->size);
  auto first = client->blob_range(it->oid, 0, 1);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, bytes->substr(0, 1));
  auto mid = client->blob_range(it->oid, 5, 10);
  ASSERT_TRUE(mid.ok());
  EXPECT_EQ(*mid, bytes->substr(5, 10));
  auto raw = admin->raw("GET", "/api/v1/file/blob/" + it->oid.hex());
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->headers["content-type"], "application/octet-stream");
}

// Range requests per RFC 9110: the blob endpoint advertises byte ranges, a
// range past the end is clamped, a suffix range counts from the end, and an
// unsatisfiable range gets 416 with `Content-Range: bytes */LENGTH`.
TEST_F(MockMegaTest, BlobRangesFollowRfc9110) {
  auto it = item(first_path("buck"));
  ASSERT_TRUE(it && it->size && *it->size > 10);
  const uint64_t n = *it->size;
  auto whole = client->blob(it->oid);
  ASSERT_TRUE(whole.ok());
  httplib::Client c("127.0.0.1", server->port());
  const std::string url = "/api/v1/file/blob/" + it->oid.hex();

  auto full = c.Get(url);
  ASSERT_TRUE(full);
  EXPECT_EQ(full->status, 200);
  EXPECT_EQ(full->get_header_value("Accept-Ranges"), "bytes");
  auto head = c.Head(url);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->get_header_value("Accept-Ranges"), "bytes");

  auto first = c.Get(url, {{"Range", "bytes=0-0"}});
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 206);
  EXPECT_EQ(first->body, whole->substr(0, 1));
  EXPECT_EQ(first->get_header_value("Content-Range"), "bytes 0-0/" + std::to_string(n));
  EXPECT_EQ(first->get_header_value("Accept-Ranges"), "bytes");

  auto past_end = c.Get(url, {{"Range", "bytes=5-99999999"}});
  ASSERT_TRUE(past_end);
  EXPECT_EQ(past_end->status, 206);
  EXPECT_EQ(past_end->body, whole->substr(5));
  EXPECT_EQ(past_end->get_header_value("Content-Range"),
            "bytes 5-" + std::to_string(n - 1) + "/" + std::to_string(n));

  auto suffix = c.Get(url, {{"Range", "bytes=-4"}});
  ASSERT_TRUE(suffix);
  EXPECT_EQ(suffix->status, 206);
  EXPECT_EQ(suffix->body, whole->substr(n - 4));
  EXPECT_EQ(suffix->get_header_value("Content-Range"),
            "bytes " + std::to_string(n - 4) + "-" + std::to_string(n - 1) + "/" + std::to_string(n));

  for (const std::string& range : {"bytes=" + std::to_string(n) + "-", "bytes=" + std::to_string(n + 10) + "-" +
                                                                          std::to_string(n + 20)}) {
    auto r = c.Get(url, {{"Range", range}});
    ASSERT_TRUE(r) << range;
    EXPECT_EQ(r->status, 416) << range;
    EXPECT_EQ(r->get_header_value("Content-Range"), "bytes */" + std::to_string(n)) << range;
    EXPECT_EQ(r->body, "") << range;
  }
  // The client's own range reads still agree with the whole blob.
  auto tail = client->blob_range(it->oid, n - 3, 3);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(*tail, whole->substr(n - 3));
}

TEST(MockMegaRange, ResolveRange) {
  using R = std::optional<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(resolve_range({-1, -1}, 10), R({0, 10}));
  EXPECT_EQ(resolve_range({2, 4}, 10), R({2, 3}));
  EXPECT_EQ(resolve_range({2, -1}, 10), R({2, 8}));
  EXPECT_EQ(resolve_range({2, 100}, 10), R({2, 8}));
  EXPECT_EQ(resolve_range({-1, 3}, 10), R({7, 3}));
  EXPECT_EQ(resolve_range({-1, 30}, 10), R({0, 10}));
  EXPECT_EQ(resolve_range({10, -1}, 10), std::nullopt);
  EXPECT_EQ(resolve_range({-1, 0}, 10), std::nullopt);
  EXPECT_EQ(resolve_range({0, -1}, 0), std::nullopt);
}

TEST_F(MockMegaTest, FilesListHasMegaShapeAndBlobsResolve) {
  json j = raw_json("/api/v1/cl/1/files-list");
  ASSERT_EQ(j["req_result"], true);
  ASSERT_TRUE(j["data"].is_array() && !j["data"].empty());
  for (const auto& e : j["data"]) {
    ASSERT_TRUE(e["path"].is_string() && e["sha"].is_string() && e["action"].is_string());
    std::string a = e["action"];
    EXPECT_TRUE(a == "new" || a == "modified" || a == "deleted") << a;
  }
  auto files = client->cl_files("1");
  ASSERT_TRUE(files.ok()) << files.error().describe();
  ASSERT_EQ(files->size(), j["data"].size());
  for (const auto& f : *files) {
    if (f.action == remote::ClAction::deleted) continue;
    ASSERT_TRUE(f.sha);
    auto b = client->blob(*f.sha);
    ASSERT_TRUE(b.ok()) << f.path;
    EXPECT_EQ(git_blob_oid(*b), *f.sha);
  }
}

TEST_F(MockMegaTest, SizeFieldIsOptional) {
  auto o = small_repo();
  o.include_size = false;
  start(o);
  json j = raw_json("/api/v1/tree/content-hash?path=/");
  for (const auto& it : j["data"]) EXPECT_FALSE(it.contains("size"));
  auto items = client->content_hash("/");
  ASSERT_TRUE(items.ok());
  for (const auto& it : *items) EXPECT_FALSE(it.size);
}

TEST_F(MockMegaTest, ClientReusesOneKeepAliveConnection) {
  auto http = std::make_shared<remote::CurlHttpClient>();
  MegaClient c(fast_client(server->base_url()), http);
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(c.dir_hash("/").ok());
  EXPECT_EQ(http->connections_opened(), 1u);
  // Concurrent callers each get a connection, and all succeed.
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) good += c.content_hash("/").ok();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 100);
  EXPECT_LE(http->connections_opened(), 5u);
}

TEST(MegaClientTransport, RefusedConnectionIsEconnrefused) {
  int port;
  {
    MockMegaServer s(small_repo(1, 5));
    ASSERT_TRUE(s.start().ok());
    port = s.port();
  }  // stopped: nothing listens there now
  auto o = fast_client("http://127.0.0.1:" + std::to_string(port));
  o.listing.max_retries = 1;
  MegaClient c(o);
  auto r = c.content_hash("/");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err(), ECONNREFUSED) << r.error().describe();
  EXPECT_EQ(c.stats().requests.load(), 2u);
}

// ------------------------------------------------------------------ git oids

TEST_F(MockMegaTest, OidsEqualGitHashObjectAndMktree) {
  testing::TempDir tmp;
  ASSERT_EQ(testing::run({"/usr/bin/git", "init", "-q", tmp / "repo"}), 0);
  std::vector<std::string> dirs = {"/", "/tools/build_defs"};
  auto top = client->content_hash("/");
  ASSERT_TRUE(top.ok());
  for (const auto& it : *top)
    if (it.type == ItemType::directory) dirs.push_back("/" + it.name);
  int files_checked = 0;
  for (const auto& dir : dirs) {
    auto items = client->content_hash(dir);
    ASSERT_TRUE(items.ok()) << dir;
    std::string mktree_input;
    for (const auto& it : *items) {
      bool is_dir = it.type == ItemType::directory;
      mktree_input += std::string(is_dir ? "040000 tree " : "100644 blob ") + it.oid.hex() + "\t" + it.name + "\n";
      if (!is_dir && files_checked < 12) {
        auto bytes = client->blob(it.oid);
        ASSERT_TRUE(bytes.ok());
        std::string f = tmp / "blob";
        std::ofstream(f, std::ios::binary) << *bytes;
        std::string out;
        ASSERT_EQ(testing::run({"/usr/bin/git", "hash-object", f}, &out), 0);
        EXPECT_EQ(out, it.oid.hex() + "\n") << dir << "/" << it.name;
        ++files_checked;
      }
    }
    std::ofstream(tmp / "mktree.in") << mktree_input;
    std::string out;
    ASSERT_EQ(testing::run({"/bin/sh", "-c",
                            "cd '" + (tmp / "repo") + "' && git mktree --missing < '" + (tmp / "mktree.in") + "'"},
                           &out),
              0);
    auto self = item(dir);
    ASSERT_TRUE(self);
    EXPECT_EQ(out, self->oid.hex() + "\n") << dir;
  }
  EXPECT_GE(files_checked, 5);
}

// ------------------------------------------------------------------ determinism

std::vector<std::string> walk(MegaClient& c, const std::string& dir = "/") {
  std::vector<std::string> out;
  auto items = c.content_hash(dir);
  EXPECT_TRUE(items.ok()) << dir;
  if (!items) return out;
  for (const auto& it : *items) {
    std::string p = dir == "/" ? "/" + it.name : dir + "/" + it.name;
    out.push_back(p + " " + it.oid.hex());
    if (it.type == ItemType::directory) {
      auto sub = walk(c, p);
      out.insert(out.end(), sub.begin(), sub.end());
    }
  }
  return out;
}

TEST(MockMegaDeterminism, SameSeedSameListingsAndSameScheduledLog) {
  std::vector<std::unique_ptr<MockMegaServer>> servers;
  std::vector<std::vector<std::string>> walks;
  std::vector<json> logs;
  for (int i = 0; i < 2; ++i) {
    auto o = small_repo(1234, 800);
    o.mutate_every = milliseconds(10);
    o.mutate_count = 3;
    o.schedule_paused = true;
    servers.push_back(std::make_unique<MockMegaServer>(o));
    ASSERT_TRUE(servers.back()->start().ok());
    MegaClient c(fast_client(servers.back()->base_url()));
    walks.push_back(walk(c));
    AdminClient a(servers.back()->base_url());
    ASSERT_TRUE(a.schedule({{"paused", false}}).ok());
    ASSERT_TRUE(testing::wait_until([&] { return a.state().ok() && (*a.state())["version"].get<int>() > 40; },
                                    std::chrono::seconds(30)));
    ASSERT_TRUE(a.schedule({{"paused", true}}).ok());
    auto log = a.log(0);
    ASSERT_TRUE(log.ok());
    for (auto& e : *log) e.erase("time_ms");  // the only field that may differ
    logs.push_back(*log);
  }
  EXPECT_EQ(walks[0], walks[1]);
  size_t n = std::min(logs[0].size(), logs[1].size());
  ASSERT_GE(n, 39u);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(logs[0][i], logs[1][i]) << i;
  // And the trees agree after the same mutations.
  auto o = small_repo(1234, 800);
  MockMegaServer other(small_repo(4321, 800));
  ASSERT_TRUE(other.start().ok());
  MegaClient c(fast_client(other.base_url()));
  EXPECT_NE(walk(c), walks[0]) << "another seed gives another tree";
}

// ------------------------------------------------------------------ mutations

TEST_F(MockMegaTest, ModifyChangesOidAndOldBlobStaysFetchable) {
  std::string p = first_path("buck");
  auto before = item(p);
  auto applied = admin->mutate({{"mutations", {{{"kind", "modify"}, {"path", p}}}}});
  ASSERT_TRUE(applied.ok()) << applied.error().describe();
  ASSERT_EQ(applied->size(), 1u);
  const auto& e = (*applied)[0];
  EXPECT_EQ(e["kind"], "modify");
  EXPECT_EQ(e["path"], p);
  EXPECT_EQ(e["old_oid"], before->oid.hex());
  auto after = item(p);
  EXPECT_EQ(e["new_oid"], after->oid.hex());
  EXPECT_NE(after->oid, before->oid);
  EXPECT_TRUE(client->blob(before->oid).ok());
  EXPECT_EQ((*admin->state())["version"], e["version"]);
  for (const char* k : {"id", "version", "time_ms"}) EXPECT_TRUE(e[k].is_number()) << k;
}

TEST_F(MockMegaTest, EveryMutationKindIsVisibleThroughTheApi) {
  std::string src = first_path("source"), bzl = first_path("bzl");
  auto src_oid = item(src)->oid;
  auto r = admin->mutate({{"mutations",
                           {{{"kind", "replace"}, {"path", bzl}},
                            {{"kind", "rename"}, {"path", src}, {"to", "/moved/file.rs"}},
                            {{"kind", "add"}, {"path", "/brand/new/BUCK"}},
                            {{"kind", "rename_dir"}, {"path", "/brand"}, {"to", "/renamed"}},
                            {{"kind", "delete"}, {"path", "/renamed/new/BUCK"}},
                            {{"kind", "cl"}, {"cl", 2}, {"path", "/cl/only.rs"}, {"action", "new"}}}}});
  ASSERT_TRUE(r.ok()) << r.error().describe();
  ASSERT_EQ(r->size(), 6u);
  EXPECT_FALSE(item(src));
  ASSERT_TRUE(item("/moved/file.rs"));
  EXPECT_EQ(item("/moved/file.rs")->oid, src_oid);
  EXPECT_FALSE(item("/brand"));
  ASSERT_TRUE(item("/renamed/new"));
  EXPECT_FALSE(item("/renamed/new/BUCK"));
  EXPECT_EQ(client->content_hash("/renamed/new")->size(), 0u);
  auto cl = client->cl_files("2");
  ASSERT_TRUE(cl.ok());
  EXPECT_TRUE(std::any_of(cl->begin(), cl->end(), [](const remote::ClFile& f) { return f.path == "/cl/only.rs"; }));
  auto log = admin->log(0);
  ASSERT_TRUE(log.ok());
  std::vector<std::string> kinds;
  for (const auto& e : *log) kinds.push_back(e["kind"]);
  EXPECT_EQ(kinds, (std::vector<std::string>{"replace", "rename", "add", "rename_dir", "delete", "cl"}));
  EXPECT_EQ(admin->log(4)->size(), 2u);
  // Random mutations: every kind eventually, each logged.
  auto random = admin->mutate({{"count", 200}});
  ASSERT_TRUE(random.ok());
  std::set<std::string> seen;
  for (const auto& e : *random) seen.insert(e["kind"].get<std::string>());
  EXPECT_EQ(seen.size(), 7u);
}

TEST_F(MockMegaTest, UnapplicableMutationIsRejectedAndNothingApplies) {
  std::string p = first_path("buck");
  auto before = item(p);
  auto version = (*admin->state())["version"];
  auto r = admin->mutate({{"mutations",
                           {{{"kind", "modify"}, {"path", p}}, {{"kind", "modify"}, {"path", "/no/such/file"}}}}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().http_status, 404);
  EXPECT_NE(r.error().message.find("/no/such/file"), std::string::npos) << r.error().message;
  EXPECT_EQ(item(p)->oid, before->oid);
  EXPECT_EQ((*admin->state())["version"], version);
  auto exists = admin->mutate({{"mutations", {{{"kind", "add"}, {"path", p}}}}});
  ASSERT_FALSE(exists.ok());
  EXPECT_EQ(exists.error().http_status, 409);
}

// ------------------------------------------------------------------ faults

TEST_F(MockMegaTest, StatusFaultForNextRequestsIsRetriedByTheClient) {
  ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "content-hash"}, {"kind", "status"}, {"status", 503}, {"count", 2}}})).ok());
  auto r = client->content_hash("/");
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(client->stats().retries.load(), 2u);
  EXPECT_TRUE((*admin->raw("GET", "/admin/faults")).body.find("\"faults\":[]") != std::string::npos);
}

TEST_F(MockMegaTest, PersistentStatusFaultsSurfaceWithTheirStatus) {
  for (int status : {500, 503, 429}) {
    ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "*"}, {"kind", "status"}, {"status", status}}})).ok());
    auto r = client->content_hash("/");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err(), EIO);
    EXPECT_EQ(r.error().http_status, status);
    auto b = client->blob(Oid{});
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.error().http_status, status);
  }
  ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "blob"}, {"kind", "status"}, {"status", 404}}})).ok());
  std::string p = first_path("source");
  auto oid = item(p)->oid;
  auto b = client->blob(oid);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.err(), ENOENT);
  ASSERT_TRUE(admin->set_faults(json::array()).ok());
  EXPECT_TRUE(client->blob(oid).ok());
}

TEST_F(MockMegaTest, LatencyFaultTimesOut) {
  ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "dir-hash"}, {"kind", "latency"}, {"latency_ms", 1500}}})).ok());
  auto o = fast_client(server->base_url());
  o.listing.timeout = milliseconds(200);
  o.listing.max_retries = 1;
  MegaClient slow(o);
  auto r = slow.dir_hash("/");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err(), ETIMEDOUT);
  EXPECT_TRUE(slow.content_hash("/").ok()) << "other endpoints are unaffected";
}

TEST_F(MockMegaTest, ResetTruncateAndMalformedAreTransportOrProtocolErrors) {
  std::string p = first_path("source");
  auto oid = item(p)->oid;
  auto o = fast_client(server->base_url());
  o.listing.max_retries = o.blob.max_retries = 0;
  MegaClient once(o);

  ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "*"}, {"kind", "reset"}}})).ok());
  auto r1 = once.content_hash("/");
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.error().http_status, 0) << r1.error().describe();
  EXPECT_EQ(r1.err(), ECONNRESET) << r1.error().describe();

  ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "*"}, {"kind", "truncate"}}})).ok());
  auto r2 = once.blob(oid);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.err(), EPROTO) << r2.error().describe();
  auto r3 = once.content_hash("/");
  ASSERT_FALSE(r3.ok());

  ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "content-hash"}, {"kind", "malformed"}}})).ok());
  auto r4 = once.content_hash("/");
  ASSERT_FALSE(r4.ok());
  EXPECT_EQ(r4.err(), EBADMSG) << r4.error().describe();
  ASSERT_TRUE(admin->set_faults(json::array({{{"endpoint", "blob"}, {"kind", "malformed"}}})).ok());
  auto raw = admin->raw("GET", "/api/v1/file/blob/" + oid.hex());
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->status, 200) << "a corrupted blob still arrives whole";
  EXPECT_NE(git_blob_oid(raw->body), oid) << "only its oid shows the corruption";
  auto r5 = once.blob(oid);
  ASSERT_FALSE(r5.ok()) << "the client checks every blob against its oid";
  EXPECT_EQ(r5.err(), EIO) << r5.error().describe();

  ASSERT_TRUE(admin->set_faults(json::array()).ok());
  EXPECT_TRUE(once.content_hash("/").ok());
  EXPECT_TRUE(once.blob(oid).ok());
}

TEST_F(MockMegaTest, ProbabilisticFaultsAreSeeded) {
  auto pattern = [&] {
    EXPECT_TRUE(admin->set_faults({{"seed", 99}, {"faults", {{{"kind", "status"}, {"status", 500}, {"probability", 0.5}}}}}).ok());
    std::string s;
    for (int i = 0; i < 40; ++i) s += admin->raw("GET", "/api/v1/tree/dir-hash?path=/")->status == 500 ? 'x' : '.';
    return s;
  };
  std::string a = pattern(), b = pattern();
  EXPECT_EQ(a, b);
  EXPECT_NE(a.find('x'), std::string::npos);
  EXPECT_NE(a.find('.'), std::string::npos);
}

TEST_F(MockMegaTest, FaultsCanBeSetAtStartup) {
  auto o = small_repo();
  o.faults = {Fault{"files-list", FaultKind::status, 500, 0, 1.0, 1}};
  start(o);
  EXPECT_EQ(admin->raw("GET", "/api/v1/cl/1/files-list")->status, 500);
  EXPECT_EQ(admin->raw("GET", "/api/v1/cl/1/files-list")->status, 200);
}

// ------------------------------------------------------------------ bad requests

TEST_F(MockMegaTest, BadRequestsGet4xxWithEnvelope) {
  struct Case {
    std::string method, path, body;
    int status;
    std::string message_part;
  };
  std::vector<Case> cases = {
      {"GET", "/api/v1/tree/content-hash?path=/apps/../etc", "", 400, ".."},
      {"GET", "/api/v1/tree/content-hash?path=", "", 400, "path"},
      {"GET", "/api/v1/tree/content-hash", "", 400, "path"},
      {"GET", "/api/v1/tree/content-hash?path=/no/such", "", 404, "/no/such"},
      {"GET", "/api/v1/tree/content-hash?path=/.buckconfig", "", 400, "not a directory"},
      {"GET", "/api/v1/tree/dir-hash?path=", "", 400, "path"},
      {"GET", "/api/v1/tree/dir-hash?path=relative", "", 400, "absolute"},
      {"GET", "/api/v1/file/blob/not-an-oid", "", 400, "oid"},
      {"GET", "/api/v1/cl/99/files-list", "", 404, "99"},
      {"GET", "/api/v1/cl/abc/files-list", "", 400, "abc"},
      {"POST", "/admin/mutate", "{not json", 400, "JSON"},
      {"POST", "/admin/mutate", "{}", 400, "count"},
      {"POST", "/admin/mutate", R"({"mutations":[{"kind":"explode","path":"/a"}]})", 400, "kind"},
      {"POST", "/admin/mutate", R"({"mutations":[{"kind":"rename","path":"/a"}]})", 400, "to"},
      {"POST", "/admin/mutate", R"({"count":-1})", 400, "count"},
      {"POST", "/admin/schedule", R"({"every_ms":"soon"})", 400, "every_ms"},
      {"POST", "/admin/faults", R"([{"kind":"explode"}])", 400, "kind"},
      {"POST", "/admin/faults", R"([{"kind":"status","endpoint":"nowhere"}])", 400, "endpoint"},
      {"POST", "/admin/reset", R"({"seed":"x"})", 400, "seed"},
      {"GET", "/admin/log?since=minus", "", 400, "since"},
      {"GET", "/no/such/endpoint", "", 404, "no such endpoint"},
  };
  for (const auto& c : cases) {
    auto r = admin->raw(c.method, c.path, c.body);
    ASSERT_TRUE(r.ok()) << c.path;
    EXPECT_EQ(r->status, c.status) << c.method << " " << c.path << " " << r->body;
    json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << c.path << ": " << r->body;
    EXPECT_EQ(j["req_result"], false) << c.path;
    EXPECT_NE(j["err_message"].get<std::string>().find(c.message_part), std::string::npos)
        << c.path << ": " << j["err_message"];
  }
  // Unknown blob: 404 with an empty body, as Mega does.
  auto r = admin->raw("GET", "/api/v1/file/blob/" + std::string(40, '0'));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, "");
  EXPECT_EQ(client->blob(Oid{}).err(), ENOENT);
  // The server is still fine.
  EXPECT_TRUE(client->content_hash("/").ok());
}

// ------------------------------------------------------------------ admin API

TEST_F(MockMegaTest, StateScheduleResetAndMetrics) {
  auto st = admin->state();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)["seed"], 42);
  EXPECT_EQ((*st)["files"], 500);
  EXPECT_EQ((*st)["version"], 1);
  EXPECT_GT((*st)["dirs"].get<int>(), 1);

  auto sch = admin->schedule({{"every_ms", 5}, {"count", 2}, {"paused", false}});
  ASSERT_TRUE(sch.ok());
  EXPECT_EQ((*sch)["every_ms"], 5);
  ASSERT_TRUE(testing::wait_until([&] { return (*admin->state())["version"].get<int>() >= 9; }, std::chrono::seconds(20)));
  ASSERT_TRUE(admin->schedule({{"paused", true}}).ok());

  auto root_before = item("/")->oid;
  auto reset = admin->reset(42);
  ASSERT_TRUE(reset.ok());
  EXPECT_EQ((*reset)["version"], 1);
  EXPECT_TRUE(admin->log(0)->empty());
  auto fresh = small_repo();
  MockMegaServer twin(fresh);
  ASSERT_TRUE(twin.start().ok());
  MegaClient tc(fast_client(twin.base_url()));
  EXPECT_EQ(walk(*client), walk(tc)) << "reset gives the seed's pristine tree";
  EXPECT_NE(item("/")->oid, root_before);
  ASSERT_TRUE(admin->reset(43).ok());
  EXPECT_EQ((*admin->state())["seed"], 43);

  auto m = admin->metrics();
  ASSERT_TRUE(m.ok());
  EXPECT_NE(m->find("mock_mega_requests_total{endpoint=\"dir-hash\",status=\"200\"}"), std::string::npos) << *m;
  EXPECT_NE(m->find("mock_mega_mutations_total{kind=\"modify\"}"), std::string::npos);
  EXPECT_NE(m->find("# TYPE mock_mega_requests_total counter"), std::string::npos);
}

// A reset to a repository the server cannot hold is refused with a 4xx that
// says why, and the current repository stays.
TEST_F(MockMegaTest, ResetRefusesARepositoryTooLargeToGenerate) {
  auto before = admin->state();
  ASSERT_TRUE(before.ok());
  auto r = admin->raw("POST", "/admin/reset", R"({"files":20000000})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 422) << r->body;
  json j = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r->body;
  EXPECT_EQ(j["req_result"], false);
  EXPECT_NE(j["err_message"].get<std::string>().find("20000000"), std::string::npos) << j["err_message"];
  EXPECT_NE(j["err_message"].get<std::string>().find("--max-files"), std::string::npos) << j["err_message"];
  auto after = admin->state();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)["files"], (*before)["files"]);
  EXPECT_TRUE(client->content_hash("/").ok());
  // Within the limit a reset still works.
  auto ok = admin->raw("POST", "/admin/reset", R"({"seed":3,"files":200})");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ((*admin->state())["files"], 200);
}

TEST(MockMegaLimits, FilesRefusalNamesTheLimitOrTheMemory) {
  EXPECT_EQ(files_refusal(1000, 2000, 0), std::nullopt);
  EXPECT_EQ(files_refusal(1000, 2000, uint64_t{1} << 30), std::nullopt);
  auto over = files_refusal(3000, 2000, uint64_t{1} << 40);
  ASSERT_TRUE(over);
  EXPECT_NE(over->find("--max-files"), std::string::npos) << *over;
  // Within the limit but more than half the available memory.
  auto memory = files_refusal(1'000'000, 2'000'000, 600ull << 20);
  ASSERT_TRUE(memory);
  EXPECT_NE(memory->find("MemAvailable"), std::string::npos) << *memory;
}

// Opens a keep-alive connection to 127.0.0.1:port, completes one request and
// leaves the connection idle; returns the fd (-1 on failure).
int idle_keep_alive_connection(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
  const std::string req = "GET /admin/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) return -1;
  char buf[4096];
  if (read(fd, buf, sizeof buf) <= 0) return -1;  // the answer: the connection is now idle, kept alive
  return fd;
}

// Stopping never waits out httplib's 5 s keep-alive timeout on an idle
// client connection, even while the scheduler mutates every millisecond.
TEST(MockMegaStop, StopsPromptlyWithAnIdleKeepAliveClientAndAFastSchedule) {
  auto o = small_repo();
  o.mutate_every = milliseconds(1);
  MockMegaServer server(o);
  auto port = server.start();
  ASSERT_TRUE(port.ok());
  int fd = idle_keep_alive_connection(*port);
  ASSERT_GE(fd, 0);
  std::atomic<bool> stopped{false};
  std::thread t([&] {
    server.stop();
    stopped = true;
  });
  // Well under the keep-alive timeout this used to wait for.
  bool prompt = testing::wait_until([&] { return stopped.load(); }, std::chrono::seconds(3));
  t.join();
  close(fd);
  EXPECT_TRUE(prompt);
}

TEST_F(MockMegaTest, AdminTokenIsEnforced) {
  auto o = small_repo();
  o.admin_token = "s3cret";
  start(o);
  auto denied = admin->state();
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.error().http_status, 401);
  AdminClient ok(server->base_url(), "s3cret");
  EXPECT_TRUE(ok.state().ok());
  EXPECT_TRUE(client->content_hash("/").ok()) << "the Mega API itself needs no token";
}

// ------------------------------------------------------------------ CLI

TEST(MockMegaCli, HelpBadFlagsAndPortFile) {
  std::string bin = testing::bin_dir() + "/mock-mega", out, err;
  EXPECT_EQ(testing::run({bin, "--help"}, &out), 0);
  EXPECT_NE(out.find("--port-file"), std::string::npos);
  EXPECT_EQ(testing::run({bin, "--bogus"}, &out, &err), 2);
  EXPECT_NE(err.find("unknown option --bogus"), std::string::npos) << err;
  EXPECT_EQ(testing::run({bin, "--files", "lots"}, &out, &err), 2);
  EXPECT_NE(err.find("--files"), std::string::npos) << err;
  EXPECT_EQ(testing::run({bin, "--mutate-every", "soon"}, &out, &err), 2);
  EXPECT_EQ(testing::run({bin, "--port"}, &out, &err), 2);

  testing::TempDir tmp;
  std::string pf = tmp / "port";
  testing::Subprocess p({bin, "--seed", "5", "--files", "50", "--port", "0", "--port-file", pf}, tmp / "mm");
  ASSERT_TRUE(testing::wait_until([&] { return !testing::read_file(pf).empty(); }, std::chrono::seconds(20)))
      << p.stderr_text();
  int port = std::stoi(testing::read_file(pf));
  MegaClient c(fast_client("http://127.0.0.1:" + std::to_string(port)));
  auto items = c.content_hash("/");
  ASSERT_TRUE(items.ok()) << items.error().describe();
  EXPECT_FALSE(items->empty());
  // A second server on the same port fails clearly with exit 1.
  std::string err2;
  EXPECT_EQ(testing::run({bin, "--files", "5", "--port", std::to_string(port)}, nullptr, &err2), 1);
  EXPECT_NE(err2.find("cannot bind"), std::string::npos) << err2;
  EXPECT_EQ(p.terminate(), 0);
  EXPECT_NE(p.stderr_text().find("event=listening"), std::string::npos);

  // SIGTERM stops promptly with a 1 ms schedule and an idle keep-alive client.
  testing::Subprocess fast({bin, "--files", "300", "--port", "0", "--port-file", tmp / "port2", "--mutate-every", "1ms"},
                           tmp / "fast");
  ASSERT_TRUE(testing::wait_until([&] { return !testing::read_file(tmp / "port2").empty(); }, std::chrono::seconds(20)))
      << fast.stderr_text();
  int idle = idle_keep_alive_connection(std::stoi(testing::read_file(tmp / "port2")));
  ASSERT_GE(idle, 0);
  EXPECT_EQ(fast.terminate(std::chrono::seconds(3)), 0) << "did not exit within 3 s of SIGTERM";
  close(idle);

  // A repository beyond --max-files is a usage error, not an out-of-memory death.
  EXPECT_EQ(testing::run({bin, "--files", "20000000"}, nullptr, &err2), 2);
  EXPECT_NE(err2.find("--max-files"), std::string::npos) << err2;

  std::ofstream(tmp / "faults.json") << R"([{"kind":"bogus"}])";
  EXPECT_EQ(testing::run({bin, "--faults", tmp / "faults.json"}, nullptr, &err2), 1);
  EXPECT_NE(err2.find("bogus"), std::string::npos) << err2;
}

}  // namespace
}  // namespace antares::mock
