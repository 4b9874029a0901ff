// Unit tests of MegaClient against a scripted fake HttpClient: parsing,
// URL building, retry rules and error mapping.
#include "fs/remote/mega_client.h"

#include <gtest/gtest.h>

#include <deque>
#include <mutex>
#include <thread>

namespace antares::remote {
namespace {

using std::chrono::milliseconds;

class FakeHttp : public HttpClient {
 public:
  // Each call pops the next scripted answer; the last one repeats.
  void script(std::vector<Result<HttpResponse>> answers) {
    answers_.assign(answers.begin(), answers.end());
  }
  Result<HttpResponse> perform(const HttpRequest& req) override {
    std::lock_guard l(mu_);
    requests.push_back(req);
    if (answers_.empty()) return Error{EIO, 0, "no script"};
    auto a = answers_.front();
    if (answers_.size() > 1) answers_.pop_front();
    return a;
  }
  std::vector<HttpRequest> requests;

 private:
  std::mutex mu_;
  std::deque<Result<HttpResponse>> answers_;
};

HttpResponse ok(std::string body, int status = 200) { return HttpResponse{status, std::move(body), {}}; }
Result<HttpResponse> transport(int e) { return Error{e, 0, "transport"}; }

const std::string kOid = "ce013625030ba8dba906f756967f9e9ca394464a";
const std::string kListing = R"({"req_result":true,"err_message":"","data":[
  {"name":"src","content_type":"directory","oid":")" + kOid + R"("},
  {"name":"BUCK","content_type":"file","oid":")" + kOid + R"(","size":6},
  {"name":"x.rs","content_type":"file","oid":")" + kOid + R"("}]})";

class MegaClientTest : public ::testing::Test {
 protected:
  std::shared_ptr<FakeHttp> http = std::make_shared<FakeHttp>();
  MegaClient client{MegaClientOptions{"http://mega:8000/",
                                      RetryPolicy{3, milliseconds(1), milliseconds(10000)},
                                      RetryPolicy{3, milliseconds(1), milliseconds(30000)}},
                    http};
};

TEST_F(MegaClientTest, ParsesContentHashWithAndWithoutSize) {
  http->script({ok(kListing)});
  auto r = client.content_hash("/a b/%c");
  ASSERT_TRUE(r.ok()) << r.error().describe();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].type, ItemType::directory);
  EXPECT_EQ((*r)[1].name, "BUCK");
  EXPECT_EQ((*r)[1].size, 6u);
  EXPECT_FALSE((*r)[2].size);
  EXPECT_EQ((*r)[2].oid.hex(), kOid);
  ASSERT_EQ(http->requests.size(), 1u);
  EXPECT_EQ(http->requests[0].url, "http://mega:8000/api/v1/tree/content-hash?path=/a%20b/%25c");
  EXPECT_EQ(http->requests[0].timeout, milliseconds(10000));
}

TEST_F(MegaClientTest, DirHashZeroOneOrTooMany) {
  http->script({ok(R"({"req_result":true,"data":[],"err_message":""})")});
  auto none = client.dir_hash("/x");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(*none);
  http->script({ok(kListing)});
  auto many = client.dir_hash("/x");
  ASSERT_FALSE(many.ok());
  EXPECT_EQ(many.err(), EBADMSG);
}

TEST_F(MegaClientTest, ListingRetriesTransportJsonAndTransientStatus) {
  http->script({transport(ECONNRESET), ok("{garbage"), ok("busy", 503), ok(kListing)});
  auto r = client.content_hash("/");
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(http->requests.size(), 4u);
  EXPECT_EQ(client.stats().retries.load(), 3u);
  EXPECT_EQ(client.stats().errors.load(), 3u);
}

TEST_F(MegaClientTest, ListingGivesUpAfterThreeRetriesKeepingTheCause) {
  http->script({ok(R"({"req_result":false,"data":null,"err_message":"overloaded"})", 503)});
  auto r = client.content_hash("/");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err(), EIO);
  EXPECT_EQ(r.error().http_status, 503);
  EXPECT_NE(r.error().message.find("overloaded"), std::string::npos);
  EXPECT_EQ(http->requests.size(), 4u);

  http->requests.clear();
  http->script({transport(ETIMEDOUT)});
  auto t = client.dir_hash("/");
  EXPECT_EQ(t.err(), ETIMEDOUT);
  EXPECT_EQ(t.error().http_status, 0);
  EXPECT_EQ(http->requests.size(), 4u);
}

TEST_F(MegaClientTest, FinalAnswersAreNotRetried) {
  http->script({ok(R"({"req_result":false,"data":null,"err_message":"no such path /x"})", 404)});
  auto r = client.content_hash("/x");
  EXPECT_EQ(r.err(), ENOENT);
  EXPECT_EQ(r.error().http_status, 404);
  EXPECT_NE(r.error().message.find("no such path /x"), std::string::npos);
  EXPECT_EQ(http->requests.size(), 1u);

  http->requests.clear();
  http->script({ok(R"({"req_result":false,"data":null,"err_message":"bad path"})", 400)});
  EXPECT_EQ(client.content_hash("/..").err(), EIO);
  EXPECT_EQ(http->requests.size(), 1u);

  http->requests.clear();
  http->script({ok(R"({"req_result":false,"data":null,"err_message":"nope"})")});
  auto f = client.content_hash("/");
  EXPECT_EQ(f.err(), EIO);
  EXPECT_EQ(http->requests.size(), 1u) << "req_result:false is an answer, not a glitch";
}

TEST_F(MegaClientTest, MalformedEnvelopesAreEbadmsg) {
  for (std::string body : {
           std::string(R"({"req_result":true,"data":{}})"),
           std::string(R"({"data":[]})"),
           std::string(R"(not json)"),
       }) {
    http->script({ok(body)});
    auto r = client.content_hash("/");
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.err(), EBADMSG) << body;
  }
}

TEST_F(MegaClientTest, MalformedEntriesAreDroppedAndTheRestServed) {
  const std::string good = R"({"name":"ok","content_type":"file","oid":")" + kOid + "\"}";
  for (std::string bad : {
           std::string(R"({"name":"a","content_type":"symlink","oid":")") + kOid + "\"}",
           std::string(R"({"name":"a","content_type":"file","oid":"xyz"})"),
           std::string(R"({"name":7,"content_type":"file","oid":")") + kOid + "\"}",
           std::string(R"({"name":"a","content_type":"file","oid":")") + kOid + R"(","size":-1})",
           std::string(R"({"name":"a","oid":")") + kOid + "\"}",
           std::string(R"("just a string")"),
       }) {
    http->requests.clear();
    http->script({ok(R"({"req_result":true,"data":[)" + bad + "," + good + "]}")});
    std::vector<DroppedItem> dropped;
    auto r = client.content_hash("/", &dropped);
    ASSERT_TRUE(r.ok()) << bad << ": " << r.error().describe();
    ASSERT_EQ(r->size(), 1u) << bad;
    EXPECT_EQ((*r)[0].name, "ok");
    ASSERT_EQ(dropped.size(), 1u) << bad;
    EXPECT_FALSE(dropped[0].reason.empty());
    EXPECT_EQ(http->requests.size(), 1u) << "a listing with a bad entry is an answer, not a glitch";
  }
  // dir-hash's one item is the answer itself: malformed, it is an error.
  http->script({ok(R"({"req_result":true,"data":[{"name":"a","content_type":"symlink","oid":")" + kOid + "\"}]}")});
  EXPECT_EQ(client.dir_hash("/a").err(), EBADMSG);
}

TEST_F(MegaClientTest, BlobWhoseBytesFailTheOidCheckIsRetriedLikeA5xx) {
  http->script({ok("hellO\n"), ok("hello\n")});
  auto b = client.blob(*Oid::from_hex(kOid));
  ASSERT_TRUE(b.ok()) << b.error().describe();
  EXPECT_EQ(*b, "hello\n");
  EXPECT_EQ(http->requests.size(), 2u);

  http->requests.clear();
  http->script({ok("corrupt every time")});
  auto bad = client.blob(*Oid::from_hex(kOid));
  EXPECT_EQ(bad.err(), EIO);
  EXPECT_NE(bad.error().message.find("do not hash"), std::string::npos) << bad.error().message;
  EXPECT_EQ(http->requests.size(), 4u);
}

TEST_F(MegaClientTest, BlobRetriesOnlyTransientFailures) {
  http->script({ok("", 429), ok("", 500), ok("hello\n")});
  auto b = client.blob(*Oid::from_hex(kOid));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "hello\n");
  EXPECT_EQ(http->requests.size(), 3u);
  EXPECT_EQ(http->requests[0].url, "http://mega:8000/api/v1/file/blob/" + kOid);
  EXPECT_EQ(http->requests[0].timeout, milliseconds(30000));

  http->requests.clear();
  http->script({ok("", 404)});
  EXPECT_EQ(client.blob(*Oid::from_hex(kOid)).err(), ENOENT);
  EXPECT_EQ(http->requests.size(), 1u);

  http->requests.clear();
  http->script({transport(EPROTO)});
  EXPECT_EQ(client.blob(*Oid::from_hex(kOid)).err(), EPROTO);
  EXPECT_EQ(http->requests.size(), 4u);
}

TEST_F(MegaClientTest, RangeAndHead) {
  Oid oid = *Oid::from_hex(kOid);
  http->script({ok("ell", 206)});
  EXPECT_EQ(*client.blob_range(oid, 1, 3), "ell");
  bool has_range = false;
  for (auto& [k, v] : http->requests.back().headers) has_range |= k == "Range" && v == "bytes=1-3";
  EXPECT_TRUE(has_range);
  http->script({ok("hello\n", 200)});
  EXPECT_EQ(*client.blob_range(oid, 1, 3), "ell") << "a 200 is sliced locally";
  http->script({ok("", 416)});
  EXPECT_EQ(*client.blob_range(oid, 100, 3), "");
  EXPECT_EQ(*client.blob_range(oid, 0, 0), "");

  HttpResponse head{200, "", {{"content-length", "6"}}};
  http->script({head});
  EXPECT_EQ(*client.blob_size(oid), 6u);
  EXPECT_EQ(http->requests.back().method, "HEAD");
  http->script({HttpResponse{200, "", {}}});
  EXPECT_EQ(client.blob_size(oid).err(), EBADMSG);
}

TEST_F(MegaClientTest, FilesList) {
  http->script({ok(R"({"req_result":true,"err_message":"","data":[
    {"path":"/a/BUCK","sha":")" + kOid + R"(","action":"modified"},
    {"path":"/b.rs","sha":")" + kOid + R"(","action":"new"},
    {"path":"/c.rs","sha":"","action":"deleted"}]})")});
  auto r = client.cl_files("7");
  ASSERT_TRUE(r.ok()) << r.error().describe();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].action, ClAction::modified);
  EXPECT_EQ((*r)[1].action, ClAction::added);
  EXPECT_EQ((*r)[2].action, ClAction::deleted);
  EXPECT_FALSE((*r)[2].sha);
  EXPECT_EQ(http->requests.back().url, "http://mega:8000/api/v1/cl/7/files-list");

  http->script({ok(R"({"req_result":true,"data":[{"path":"/a","sha":"","action":"renamed"}]})")});
  EXPECT_EQ(client.cl_files("7").err(), EBADMSG);
  http->script({ok(R"({"req_result":true,"data":[{"path":"/a","sha":"","action":"new"}]})")});
  EXPECT_EQ(client.cl_files("7").err(), EBADMSG) << "a new file needs a sha";
}

// A server that accepts and never answers: every attempt runs into its own
// timeout. (Simulated: the fake waits out the request's timeout.)
class SilentHttp : public HttpClient {
 public:
  Result<HttpResponse> perform(const HttpRequest& req) override {
    {
      std::lock_guard l(mu);
      requests.push_back(req);
    }
    std::this_thread::sleep_for(req.timeout);
    return Error{ETIMEDOUT, 0, "Timeout was reached"};
  }
  std::mutex mu;
  std::vector<HttpRequest> requests;
};

TEST(MegaClientProbe, SilentServerFailsWithinTheDeadline) {
  auto http = std::make_shared<SilentHttp>();
  MegaClient client(MegaClientOptions{"http://mega:8000"}, http);  // upstream's 10 s x 4 listing policy
  const milliseconds deadline(400);
  auto t0 = std::chrono::steady_clock::now();
  Status st = client.probe(deadline);
  auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.err(), ETIMEDOUT);
  EXPECT_NE(st.error().message.find("no answer within 400 ms"), std::string::npos) << st.error().message;
  // Every attempt, connect included, fits in what was left of the deadline.
  milliseconds total(0);
  ASSERT_FALSE(http->requests.empty());
  for (const auto& r : http->requests) {
    EXPECT_LE(r.timeout, deadline);
    EXPECT_LE(r.connect_timeout, r.timeout);
    total += r.timeout;
  }
  EXPECT_LE(total, deadline);
  EXPECT_LT(took, std::chrono::seconds(5));  // not 4 x 10 s
  EXPECT_EQ(http->requests[0].url, "http://mega:8000/api/v1/tree/content-hash?path=/");
}

TEST(MegaClientProbe, AnsweringServerPasses) {
  auto http = std::make_shared<FakeHttp>();
  http->script({transport(ECONNRESET), ok(kListing)});
  MegaClient client(MegaClientOptions{"http://mega:8000", RetryPolicy{3, milliseconds(1), milliseconds(10000)}}, http);
  EXPECT_TRUE(client.probe(std::chrono::seconds(5)).ok());
  EXPECT_EQ(http->requests.size(), 2u);
}

TEST(MegaClientProbe, ProbeRootAnswersTheRootOidWithinTheDeadline) {
  auto http = std::make_shared<FakeHttp>();
  http->script({transport(ECONNRESET),
                ok(R"({"req_result":true,"err_message":"","data":[{"name":"","content_type":"directory","oid":")" +
                   kOid + R"("}]})")});
  MegaClient client(MegaClientOptions{"http://mega:8000", RetryPolicy{3, milliseconds(1), milliseconds(10000)}}, http);
  auto r = client.probe_root(std::chrono::seconds(5));
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->hex(), kOid);
  ASSERT_EQ(http->requests.size(), 2u);
  EXPECT_EQ(http->requests[1].url, "http://mega:8000/api/v1/tree/dir-hash?path=/");
  EXPECT_LE(http->requests[1].timeout, std::chrono::seconds(5));

  http->script({ok(R"({"req_result":true,"err_message":"","data":[]})")});
  EXPECT_EQ(client.probe_root(std::chrono::seconds(5)).err(), EBADMSG) << "no entry for /";

  auto silent = std::make_shared<SilentHttp>();
  MegaClient slow(MegaClientOptions{"http://mega:8000"}, silent);
  auto t0 = std::chrono::steady_clock::now();
  auto s = slow.probe_root(milliseconds(300));
  EXPECT_EQ(s.err(), ETIMEDOUT);
  EXPECT_NE(s.error().message.find("no answer within 300 ms"), std::string::npos) << s.error().message;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(UrlEncode, KeepsSlashesAndUnreserved) {
  EXPECT_EQ(url_encode_path("/a-b_c.d~e/f"), "/a-b_c.d~e/f");
  EXPECT_EQ(url_encode_path("/a b&c=d?e#f"), "/a%20b%26c%3Dd%3Fe%23f");
  EXPECT_EQ(url_encode_path("/\xc3\xa9"), "/%C3%A9");
}

}  // namespace
}  // namespace antares::remote
