// ControlServer, ControlClient and antares-ctl against fake handlers: routes,
// authentication, the endpoint file's permissions, loopback-only binding and
// the CLI's exit codes.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <atomic>
#include <mutex>
#include <thread>
#include <sstream>

#include "fs/control/control_client.h"
#include "fs/control/control_server.h"
#include "testing/subprocess.h"

namespace antares::control {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Records what the server asked of the daemon.
struct FakeDaemon {
  std::mutex mu;
  std::string strategy = "none";          // guarded by mu
  std::vector<std::string> refreshed;     // guarded by mu
  int status_calls = 0;                   // guarded by mu

  ControlHandlers handlers() {
    ControlHandlers h;
    h.status = [this] {
      std::lock_guard l(mu);
      ++status_calls;
      return json{{"strategy", strategy}, {"estale_total", 7}, {"mountpoint", "/mnt/x"}};
    };
    h.set_strategy = [this](const std::string& name) -> Result<std::string> {
      std::string s = name == "a" ? "A" : name;  // the daemon answers its canonical name
      if (s != "none" && s != "A" && s != "B" && s != "C" && s != "auto")
        return Error::from_errno(EINVAL, "unknown strategy '" + s + "': expected none, A, B, C or auto");
      std::lock_guard l(mu);
      strategy = s;
      return s;
    };
    h.refresh = [this](const std::string& p) -> Status {
      std::lock_guard l(mu);
      refreshed.push_back(p);
      return {};
    };
    h.metrics = [] { return std::string("# TYPE antares_estale_total counter\nantares_estale_total 7\n"); };
    return h;
  }
};

class ControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mnt_ = tmp_ / "mnt";
    run_dir_ = tmp_ / "run/antares";  // two missing levels: mkdir -p
    fs::create_directories(mnt_);
    auto s = ControlServer::start(mnt_, run_dir_, daemon_.handlers());
    ASSERT_TRUE(s.ok()) << s.error().describe();
    server_ = std::move(*s);
  }

  ControlClient client() {
    auto c = ControlClient::for_mountpoint(mnt_, run_dir_);
    EXPECT_TRUE(c.ok()) << c.error().describe();
    return std::move(*c);
  }

  httplib::Headers auth() { return {{"Authorization", "Bearer " + server_->token()}}; }

  testing::TempDir tmp_;
  std::string mnt_, run_dir_;
  FakeDaemon daemon_;
  std::unique_ptr<ControlServer> server_;
};

json body_json(const httplib::Result& r) { return json::parse(r->body, nullptr, false); }

TEST_F(ControlTest, StatusStrategyRefreshAndMetricsThroughTheClient) {
  auto c = client();
  auto st = c.status();
  ASSERT_TRUE(st.ok()) << st.error().describe();
  EXPECT_EQ((*st)["strategy"], "none");
  EXPECT_EQ((*st)["estale_total"], 7);

  auto s = c.set_strategy("B");
  ASSERT_TRUE(s.ok()) << s.error().describe();
  {
    std::lock_guard l(daemon_.mu);
    EXPECT_EQ(daemon_.strategy, "B");
  }
  EXPECT_EQ((*c.status())["strategy"], "B");

  ASSERT_TRUE(c.refresh("a/b").ok());
  ASSERT_TRUE(c.refresh("").ok());
  {
    std::lock_guard l(daemon_.mu);
    EXPECT_EQ(daemon_.refreshed, (std::vector<std::string>{"a/b", ""}));
  }

  auto m = c.metrics();
  ASSERT_TRUE(m.ok()) << m.error().describe();
  EXPECT_EQ(*m, "# TYPE antares_estale_total counter\nantares_estale_total 7\n");
}

TEST_F(ControlTest, RejectedStrategyIs400WithTheHandlersMessage) {
  auto c = client();
  auto s = c.set_strategy("Z");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_EQ(s.error().http_status, 400);
  EXPECT_NE(s.error().message.find("unknown strategy 'Z'"), std::string::npos) << s.error().message;
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.strategy, "none");
}

TEST_F(ControlTest, MissingTokenIs401AndWrongTokenIs403) {
  httplib::Client raw("127.0.0.1", server_->port());
  auto none = raw.Get("/status");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(body_json(none)["ok"], false);

  std::string wrong = server_->token();
  wrong[0] = wrong[0] == 'a' ? 'b' : 'a';
  for (const std::string& header : {"Bearer " + wrong, std::string("Bearer "), std::string("Basic abc"),
                                    server_->token(), "Bearer " + server_->token() + "0"}) {
    auto r = raw.Get("/status", httplib::Headers{{"Authorization", header}});
    ASSERT_TRUE(r) << header;
    EXPECT_EQ(r->status, 403) << header;
    EXPECT_EQ(body_json(r)["ok"], false) << header;
  }
  // Unauthenticated requests learn nothing about routes, and change nothing.
  auto post = raw.Post("/strategy", R"({"strategy":"A"})", "application/json");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 401);
  auto unknown = raw.Get("/nope");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 401);
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.strategy, "none");
  EXPECT_EQ(daemon_.status_calls, 0);
}

TEST_F(ControlTest, MalformedBodiesAre400AndUnknownRoutes404) {
  httplib::Client raw("127.0.0.1", server_->port());
  struct Case {
    std::string path, body, want;
  };
  for (const Case& k : std::vector<Case>{{"/strategy", "{not json", "malformed JSON"},
                                         {"/strategy", "", "malformed JSON"},
                                         {"/strategy", "[\"B\"]", "must be a JSON object"},
                                         {"/strategy", "{}", "strategy"},
                                         {"/strategy", R"({"strategy":3})", "strategy"},
                                         {"/strategy", R"({"strategy":""})", "strategy"},
                                         {"/refresh", "{\"path\":", "malformed JSON"},
                                         {"/refresh", R"({"path":5})", "'path' must be a string"},
                                         {"/refresh", "\xff\xfe", "malformed JSON"}}) {
    auto r = raw.Post(k.path, auth(), k.body, "application/json");
    ASSERT_TRUE(r) << k.path << " " << k.body;
    EXPECT_EQ(r->status, 400) << k.path << " " << k.body;
    json j = body_json(r);
    ASSERT_TRUE(j.is_object()) << r->body;
    EXPECT_EQ(j["ok"], false);
    EXPECT_NE(j["error"].get<std::string>().find(k.want), std::string::npos) << r->body;
  }
  auto unknown = raw.Get("/nope", auth());
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_EQ(body_json(unknown)["ok"], false);
  auto wrong_method = raw.Get("/strategy", auth());
  ASSERT_TRUE(wrong_method);
  EXPECT_EQ(wrong_method->status, 405);

  // The server is still fine, and nothing reached the daemon.
  auto ok = raw.Get("/status", auth());
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.strategy, "none");
  EXPECT_TRUE(daemon_.refreshed.empty());
}

TEST_F(ControlTest, RefreshWithoutABodyRefreshesEverything) {
  httplib::Client raw("127.0.0.1", server_->port());
  auto r = raw.Post("/refresh", auth(), "", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.refreshed, std::vector<std::string>{""});
}

TEST_F(ControlTest, EndpointFileIs0600InA0700RunDirAndDescribesTheServer) {
  struct stat st{};
  ASSERT_EQ(stat(run_dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(stat((tmp_ / "run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);

  EXPECT_EQ(server_->endpoint_file(), endpoint_file_for(run_dir_, mnt_));
  ASSERT_EQ(stat(server_->endpoint_file().c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  json j = json::parse(testing::read_file(server_->endpoint_file()), nullptr, false);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["port"], server_->port());
  EXPECT_EQ(j["token"], server_->token());
  EXPECT_EQ(j["token"].get<std::string>().size(), 64u);
  EXPECT_EQ(j["pid"], getpid());
  EXPECT_EQ(j["mountpoint"], fs::canonical(mnt_).string());

  // Only the endpoint file: the temporary file was renamed, not left behind.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(run_dir_)) {
    ++entries;
    EXPECT_EQ(e.path().string(), server_->endpoint_file());
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(ControlTest, TokensDifferBetweenServers) {
  testing::TempDir other;
  auto s2 = ControlServer::start(mnt_, other.path(), FakeDaemon().handlers());
  ASSERT_TRUE(s2.ok());
  EXPECT_NE((*s2)->token(), server_->token());
  EXPECT_NE((*s2)->port(), server_->port());
}

TEST_F(ControlTest, EndpointFileNameIgnoresHowTheMountpointIsSpelled) {
  fs::create_directories(tmp_ / "links");
  fs::create_directory_symlink(mnt_, tmp_ / "links/m");
  std::string want = server_->endpoint_file();
  EXPECT_EQ(endpoint_file_for(run_dir_, mnt_ + "/"), want);
  EXPECT_EQ(endpoint_file_for(run_dir_, tmp_ / "links/../mnt"), want);
  EXPECT_EQ(endpoint_file_for(run_dir_, tmp_ / "links/m"), want);
  EXPECT_NE(endpoint_file_for(run_dir_, tmp_ / "links"), want);
  // A path that does not exist still maps to a stable, normalized name.
  EXPECT_EQ(endpoint_file_for(run_dir_, tmp_ / "gone/x/../y"), endpoint_file_for(run_dir_, tmp_ / "gone/y"));
}

TEST_F(ControlTest, ListensOnlyOn127001) {
  // All of 127/8 is loopback on Linux: a server bound to 0.0.0.0 (or any
  // address but 127.0.0.1) would accept on 127.0.0.2 too.
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(server_->port()));
  inet_pton(AF_INET, "127.0.0.2", &to.sin_addr);
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to);
  int err = errno;
  close(fd);
  EXPECT_EQ(rc, -1);
  EXPECT_EQ(err, ECONNREFUSED);

  // And the kernel's socket table has it listening on 0100007F (127.0.0.1).
  char want[32];
  std::snprintf(want, sizeof want, "0100007F:%04X", server_->port());
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  bool listening = false;
  while (std::getline(tcp, line)) {
    std::istringstream ls(line);
    std::string sl, local, remote, state;
    ls >> sl >> local >> remote >> state;
    if (local == want && state == "0A") listening = true;  // 0A = LISTEN
    if (local.size() > 9 && local.substr(8) == want + 8 && state == "0A") {
      EXPECT_EQ(local, want);  // nothing else listens on our port
    }
  }
  EXPECT_TRUE(listening) << "no LISTEN socket on " << want;
}

TEST_F(ControlTest, RequestsFromAnotherSourceAddressAre403) {
  // A client bound to 127.0.0.2 reaches 127.0.0.1 but is not 127.0.0.1.
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.2", &from.sin_addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from), 0) << strerror(errno);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(server_->port()));
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to), 0) << strerror(errno);
  std::string req = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + server_->token() +
                    "\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  EXPECT_EQ(resp.rfind("HTTP/1.1 403", 0), 0u) << resp;
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.status_calls, 0);
}

TEST_F(ControlTest, DestructorRemovesTheEndpointFile) {
  std::string file = server_->endpoint_file();
  ASSERT_TRUE(fs::exists(file));
  server_.reset();
  EXPECT_FALSE(fs::exists(file));
  auto c = ControlClient::for_mountpoint(mnt_, run_dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.err(), ENOENT);
}

TEST_F(ControlTest, ThrowingOrMissingHandlersDoNotCrashTheServer) {
  testing::TempDir other;
  ControlHandlers h;
  h.status = []() -> json { throw std::runtime_error("status exploded"); };
  auto s = ControlServer::start(mnt_, other.path(), std::move(h));
  ASSERT_TRUE(s.ok());
  auto c = ControlClient::for_mountpoint(mnt_, other.path());
  ASSERT_TRUE(c.ok());
  auto st = c->status();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().http_status, 500);
  EXPECT_NE(st.error().message.find("status exploded"), std::string::npos) << st.error().message;
  auto strat = c->set_strategy("A");
  EXPECT_EQ(strat.err(), ENOSYS);
  EXPECT_EQ(strat.error().http_status, 501);
  EXPECT_EQ(c->metrics().error().http_status, 501);
  // Still serving.
  EXPECT_EQ(c->status().error().http_status, 500);
}

// A TCP connection to the endpoint from 127.0.0.1 (-1 on failure).
int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Any local user can connect without the token. Connections that never send
// and connections that trickle a request one byte at a time must not starve
// the token holder: neither may pin a server thread, and each is cut off once
// its request deadline passes.
TEST_F(ControlTest, IdleAndTricklingConnectionsDoNotBlockAuthenticatedRequests) {
  constexpr int kTrickling = 16, kIdle = 400;  // more idle ones than the server keeps
  std::vector<int> trickling, idle;
  for (int i = 0; i < kTrickling; ++i) trickling.push_back(connect_to(server_->port()));
  for (int i = 0; i < kIdle; ++i) idle.push_back(connect_to(server_->port()));
  for (int fd : trickling) ASSERT_GE(fd, 0);
  for (int fd : idle) ASSERT_GE(fd, 0);
  std::atomic<bool> stop{false};
  std::thread trickler([&] {
    const std::string head = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    for (size_t i = 0; !stop.load(); ++i) {
      char c = i < head.size() ? head[i] : 'x';
      for (int fd : trickling) (void)send(fd, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      for (int k = 0; k < 20 && !stop.load(); ++k) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  auto c = client();
  c.set_timeout(std::chrono::seconds(5));
  for (int i = 0; i < 8; ++i) {  // more requests than the server has threads
    auto st = c.status();
    EXPECT_TRUE(st.ok()) << i << ": " << st.error().describe();
  }
  // The tricklers are cut off at their deadline rather than served forever.
  auto closed = [](int fd) {
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);  // an answer (408), EOF or a reset
  };
  EXPECT_TRUE(testing::wait_until([&] { return closed(trickling.front()) && closed(trickling.back()); },
                                  std::chrono::seconds(30)));
  stop = true;
  trickler.join();
  for (int fd : trickling) close(fd);
  for (int fd : idle) close(fd);
  // And the server is still healthy afterwards.
  EXPECT_TRUE(c.status().ok());
}

// A daemon that runs out of descriptors (the FUSE side holds many) cannot
// accept; the waiting connection keeps the listening socket readable. The
// server must wait for descriptors rather than spin a core on poll, and
// serve the connection once there are descriptors again.
TEST_F(ControlTest, OutOfDescriptorsTheServerWaitsInsteadOfSpinning) {
  auto cpu_seconds = [] {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  };
  std::vector<int> hog;
  for (;;) {  // every descriptor but one
    int fd = dup(0);
    if (fd < 0) break;
    hog.push_back(fd);
  }
  ASSERT_FALSE(hog.empty());
  close(hog.back());
  hog.pop_back();
  int conn = connect_to(server_->port());  // takes the last one; the server has none to accept it with
  ASSERT_GE(conn, 0);
  double before = cpu_seconds();
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the window measured, not a synchronisation
  double used = cpu_seconds() - before;
  for (int fd : hog) close(fd);
  EXPECT_LT(used, 0.1) << "CPU seconds used in 1 s while no descriptor was free";
  const std::string req = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + server_->token() +
                          "\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(send(conn, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
  std::string answer;
  timeval tv{10, 0};
  setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (ssize_t n; (n = recv(conn, buf, sizeof buf, 0)) > 0;) answer.append(buf, size_t(n));
  close(conn);
  EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << "the connection is served once descriptors are free: " << answer;
}

TEST(ControlClient, MissingEndpointSaysIsItMounted) {
  testing::TempDir tmp;
  auto c = ControlClient::for_mountpoint(tmp / "nowhere", tmp / "run");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.err(), ENOENT);
  const std::string& msg = c.error().message;
  EXPECT_NE(msg.find("no antares-fs control endpoint for mountpoint " + (tmp / "nowhere")), std::string::npos) << msg;
  EXPECT_NE(msg.find(endpoint_file_for(tmp / "run", tmp / "nowhere")), std::string::npos) << msg;
  EXPECT_NE(msg.find("is it mounted?"), std::string::npos) << msg;
}

// A pid that certainly exited: a reaped child of ours.
pid_t dead_pid() {
  testing::TempDir dir;
  testing::Subprocess p({"/bin/true"}, dir / "true");
  pid_t pid = p.pid();
  p.wait(std::chrono::seconds(10));
  return pid;
}

TEST(ControlClient, DeadDaemonPidIsAStaleEndpointFile) {
  testing::TempDir tmp;
  fs::create_directories(tmp / "run");
  Endpoint e{12345, std::string(64, 'a'), dead_pid(), tmp / "m"};
  ASSERT_TRUE(write_endpoint_file(endpoint_file_for(tmp / "run", tmp / "m"), e).ok());
  auto c = ControlClient::for_mountpoint(tmp / "m", tmp / "run");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.err(), ESRCH);
  EXPECT_EQ(c.error().message.rfind("stale endpoint file " + endpoint_file_for(tmp / "run", tmp / "m"), 0), 0u)
      << c.error().message;
}

TEST(ControlClient, MalformedEndpointFileIsEPROTO) {
  testing::TempDir tmp;
  std::string file = endpoint_file_for(tmp.path(), tmp / "m");
  std::ofstream(file) << R"({"port":"x","token":"t"})";
  auto c = ControlClient::for_mountpoint(tmp / "m", tmp.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.err(), EPROTO);
  EXPECT_NE(c.error().message.find("malformed endpoint file"), std::string::npos);
}

// A port on 127.0.0.1 that nothing listens on (bound, then closed).
int closed_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// ------------------------------------------------------------ antares-ctl

class CtlTest : public ControlTest {
 protected:
  int ctl(std::vector<std::string> args, std::string* out, std::string* err) {
    std::vector<std::string> argv = {testing::bin_dir() + "/antares-ctl"};
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::run(argv, out, err, std::chrono::seconds(30));
  }
};

TEST_F(CtlTest, StatusPrintsPrettyJson) {
  std::string out, err;
  ASSERT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "status"}, &out, &err), 0) << err;
  json j = json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["strategy"], "none");
  EXPECT_EQ(j["estale_total"], 7);
  EXPECT_NE(out.find("\n  \""), std::string::npos) << "not pretty-printed: " << out;
}

TEST_F(CtlTest, StrategyCallsTheHandler) {
  std::string out, err;
  ASSERT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "strategy", "C"}, &out, &err), 0) << err;
  EXPECT_EQ(json::parse(out, nullptr, false), (json{{"strategy", "C"}})) << out;
  {
    std::lock_guard l(daemon_.mu);
    EXPECT_EQ(daemon_.strategy, "C");
  }
  // A name the daemon rejects: exit 1 with its message.
  ASSERT_EQ(ctl({"-r", run_dir_, "-m", mnt_, "strategy", "Q"}, &out, &err), 1);
  EXPECT_NE(err.find("unknown strategy 'Q'"), std::string::npos) << err;
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.strategy, "C");
}

TEST_F(CtlTest, RefreshAndMetrics) {
  std::string out, err;
  ASSERT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "refresh", "x/y"}, &out, &err), 0) << err;
  ASSERT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "refresh"}, &out, &err), 0) << err;
  {
    std::lock_guard l(daemon_.mu);
    EXPECT_EQ(daemon_.refreshed, (std::vector<std::string>{"x/y", ""}));
  }
  ASSERT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "metrics"}, &out, &err), 0) << err;
  EXPECT_EQ(out, "# TYPE antares_estale_total counter\nantares_estale_total 7\n");
}

TEST_F(CtlTest, RunDirFromTheEnvironment) {
  setenv("ANTARES_RUN_DIR", run_dir_.c_str(), 1);
  std::string out, err;
  int rc = ctl({"--mountpoint", mnt_, "status"}, &out, &err);
  unsetenv("ANTARES_RUN_DIR");
  EXPECT_EQ(rc, 0) << err;
}

TEST_F(CtlTest, UnknownMountpointExits1WithAClearMessage) {
  std::string out, err;
  fs::create_directories(tmp_ / "other");
  EXPECT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", tmp_ / "other", "status"}, &out, &err), 1);
  EXPECT_NE(err.find("no antares-fs control endpoint for mountpoint"), std::string::npos) << err;
  EXPECT_NE(err.find("is it mounted?"), std::string::npos) << err;
  EXPECT_TRUE(out.empty());
}

TEST_F(CtlTest, UnreachableDaemonExits1) {
  testing::TempDir run;
  Endpoint e{closed_port(), std::string(64, 'b'), getpid(), mnt_};
  ASSERT_TRUE(write_endpoint_file(endpoint_file_for(run.path(), mnt_), e).ok());
  std::string out, err;
  EXPECT_EQ(ctl({"--run-dir", run.path(), "--mountpoint", mnt_, "status"}, &out, &err), 1);
  EXPECT_NE(err.find("cannot reach antares-fs control endpoint"), std::string::npos) << err;
}

TEST_F(CtlTest, BadUsageExits2) {
  std::string out, err;
  const std::vector<std::vector<std::string>> bad = {
      {},                                                       // nothing
      {"--run-dir", run_dir_, "status"},                        // no --mountpoint
      {"--run-dir", run_dir_, "--mountpoint", mnt_},            // no command
      {"--run-dir", run_dir_, "--mountpoint", mnt_, "frobnicate"},
      {"--run-dir", run_dir_, "--mountpoint", mnt_, "strategy"},  // missing NAME
      {"--run-dir", run_dir_, "--mountpoint", mnt_, "strategy", "A", "B"},
      {"--run-dir", run_dir_, "--mountpoint", mnt_, "status", "extra"},
      {"--run-dir", run_dir_, "--mountpoint", mnt_, "--bogus", "status"},
      {"--run-dir", run_dir_, "--mountpoint"},                  // option without a value
      {"--mountpoint", mnt_, "--timeout", "soon", "status"},
  };
  for (const auto& args : bad) {
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(ctl(args, &out, &err), 2) << joined;
    EXPECT_NE(err.find("usage: antares-ctl"), std::string::npos) << joined << ": " << err;
  }
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.status_calls, 0);
  EXPECT_EQ(daemon_.strategy, "none");
}

TEST_F(CtlTest, StrategyAnswersTheCanonicalName) {
  std::string out, err;
  ASSERT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "strategy", "a"}, &out, &err), 0) << err;
  EXPECT_EQ(json::parse(out, nullptr, false), (json{{"strategy", "A"}})) << out;
}

TEST_F(CtlTest, RefreshOutsideTheMountIsBadUsage) {
  std::string out, err;
  for (const char* bad : {"../../etc", "a/../../b", ".."}) {
    EXPECT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "refresh", bad}, &out, &err), 2) << bad;
    EXPECT_NE(err.find("leaves the mount"), std::string::npos) << err;
  }
  ASSERT_EQ(ctl({"--run-dir", run_dir_, "--mountpoint", mnt_, "refresh", "/x//y/./"}, &out, &err), 0) << err;
  std::lock_guard l(daemon_.mu);
  EXPECT_EQ(daemon_.refreshed, std::vector<std::string>{"x/y"});
}

TEST_F(CtlTest, SubcommandHelpAndVersionNeedNoMount) {
  std::string out, err;
  for (const char* cmd : {"status", "strategy", "refresh", "metrics"}) {
    ASSERT_EQ(ctl({cmd, "--help"}, &out, &err), 0) << cmd << ": " << err;
    EXPECT_NE(out.find(std::string("--mountpoint M ") + cmd), std::string::npos) << out;
    ASSERT_EQ(ctl({"help", cmd}, &out, &err), 0) << cmd;
  }
  EXPECT_EQ(ctl({"frob", "--help"}, &out, &err), 2);
  ASSERT_EQ(ctl({"--version"}, &out, &err), 0);
  EXPECT_EQ(out.rfind("antares-ctl ", 0), 0u) << out;
  EXPECT_NE(out.find("(git "), std::string::npos) << out;
}

TEST(RefreshPath, Normalized) {
  EXPECT_EQ(*normalize_refresh_path(""), "");
  EXPECT_EQ(*normalize_refresh_path("/"), "");
  EXPECT_EQ(*normalize_refresh_path("/a//b/./c/"), "a/b/c");
  EXPECT_EQ(normalize_refresh_path("a/../b").err(), EINVAL);
  EXPECT_EQ(normalize_refresh_path("..").err(), EINVAL);
  EXPECT_EQ(*normalize_refresh_path("a/..b"), "a/..b");
}

TEST_F(CtlTest, HelpExits0) {
  std::string out, err;
  EXPECT_EQ(ctl({"--help"}, &out, &err), 0);
  EXPECT_NE(out.find("usage: antares-ctl"), std::string::npos);
  EXPECT_NE(out.find("strategy NAME"), std::string::npos);
}

}  // namespace
}  // namespace antares::control
