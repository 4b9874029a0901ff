// mock-mega: a Mega-compatible monorepo server for tests, reproductions and
// benchmarks. See docs/mock-mega.md.
#include <getopt.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "common/duration.h"
#include "common/log.h"
#include "common/version.h"
#include "mock-mega/server.h"

namespace {

using antares::mock::ServerOptions;

constexpr const char* kUsage = R"(usage: mock-mega [options]

Serves a seeded buck2-style monorepo over the Mega HTTP API
(/api/v1/tree/content-hash, /tree/dir-hash, /file/blob/{oid}, /cl/{cl}/files-list),
with an admin API (/admin/...) and Prometheus metrics (/metrics).

  --seed S              repository seed (default 1); same seed, same bytes and oids
  --files N             total files in the repository (default 1000)
  --cls N               open changelists, ids 1..N (default 3)
  --host ADDR           address to bind (default 127.0.0.1)
  --port P              port (default 8000); 0 picks a free port
  --port-file F         write the bound port to F (atomically) once listening
  --mutate-every DUR    apply scheduled mutations every DUR (e.g. 2s, 500ms; default off)
  --mutate-count K      mutations per scheduled tick (default 1)
  --paused              start with the schedule paused
  --kind-weights SPEC   e.g. modify=40,replace=20,delete=8,add=15,rename=7,rename_dir=2,cl=8
  --class-weights SPEC  e.g. buckconfig=1,buck=20,package=5,bzl=8,source=66
  --faults FILE         initial fault list (JSON, same format as POST /admin/faults)
  --admin-token T       require 'Authorization: Bearer T' on /admin/*
  --no-size             omit the 'size' extension field from listings
  --http-threads N      HTTP worker threads (default 64)
  --max-files N         largest repository --files and /admin/reset accept
                        (default 2000000; ~512 bytes per file while generating)
  --log-level L         debug, info, warn, error, off (default info)
  -h, --help            this text
  -V, --version         print the version

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 if the server cannot
start (port busy, unreadable fault file), 2 for a bad command line.
)";

[[noreturn]] void usage_error(const std::string& msg) {
  fprintf(stderr, "mock-mega: %s\nTry 'mock-mega --help'.\n", msg.c_str());
  exit(2);
}

template <class T>
T parse_number(const char* flag, const char* text, T max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || !end || *end || text[0] == '-' || text[0] == '\0' || v > static_cast<unsigned long long>(max))
    usage_error(std::string("invalid value for ") + flag + ": '" + text + "'");
  return static_cast<T>(v);
}

bool write_port_file(const std::string& path, int port) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!(f << port << "\n")) return false;
  }
  return rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  ServerOptions opts;
  opts.port = 8000;
  std::string port_file, faults_file;
  enum {
    kSeed = 1000, kFiles, kCls, kHost, kPort, kPortFile, kEvery, kCount, kPaused, kKindW, kClassW,
    kFaults, kToken, kNoSize, kThreads, kLogLevel, kMaxFiles
  };
  static const option kOpts[] = {
      {"seed", required_argument, nullptr, kSeed},
      {"files", required_argument, nullptr, kFiles},
      {"cls", required_argument, nullptr, kCls},
      {"host", required_argument, nullptr, kHost},
      {"port", required_argument, nullptr, kPort},
      {"port-file", required_argument, nullptr, kPortFile},
      {"mutate-every", required_argument, nullptr, kEvery},
      {"mutate-count", required_argument, nullptr, kCount},
      {"paused", no_argument, nullptr, kPaused},
      {"kind-weights", required_argument, nullptr, kKindW},
      {"class-weights", required_argument, nullptr, kClassW},
      {"faults", required_argument, nullptr, kFaults},
      {"admin-token", required_argument, nullptr, kToken},
      {"no-size", no_argument, nullptr, kNoSize},
      {"http-threads", required_argument, nullptr, kThreads},
      {"log-level", required_argument, nullptr, kLogLevel},
      {"max-files", required_argument, nullptr, kMaxFiles},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {nullptr, 0, nullptr, 0}};
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":hV", kOpts, nullptr)) != -1) {
    switch (c) {
      case kSeed: opts.repo.seed = parse_number<uint64_t>("--seed", optarg, UINT64_MAX); break;
      case kFiles: opts.repo.files = parse_number<uint64_t>("--files", optarg, 20'000'000); break;
      case kCls: opts.repo.cls = parse_number<uint32_t>("--cls", optarg, 10000); break;
      case kHost: opts.host = optarg; break;
      case kPort: opts.port = parse_number<int>("--port", optarg, 65535); break;
      case kPortFile: port_file = optarg; break;
      case kEvery: {
        auto d = antares::parse_duration(optarg);
        if (!d) usage_error(std::string("invalid duration for --mutate-every: '") + optarg + "' (e.g. 2s, 500ms)");
        opts.mutate_every = *d;
        break;
      }
      case kCount: opts.mutate_count = parse_number<uint32_t>("--mutate-count", optarg, 100000); break;
      case kPaused: opts.schedule_paused = true; break;
      case kKindW:
        if (!antares::mock::parse_kind_weights(optarg, &opts.weights))
          usage_error(std::string("invalid --kind-weights: '") + optarg + "'");
        break;
      case kClassW:
        if (!antares::mock::parse_class_weights(optarg, &opts.weights))
          usage_error(std::string("invalid --class-weights: '") + optarg + "'");
        break;
      case kFaults: faults_file = optarg; break;
      case kToken: opts.admin_token = optarg; break;
      case kNoSize: opts.include_size = false; break;
      case kThreads: opts.http_threads = std::max(1u, parse_number<unsigned>("--http-threads", optarg, 4096)); break;
      case kMaxFiles: opts.max_files = parse_number<uint64_t>("--max-files", optarg, 20'000'000); break;
      case kLogLevel: {
        antares::log::Level l;
        if (!antares::log::parse_level(optarg, &l)) usage_error(std::string("invalid --log-level: '") + optarg + "'");
        antares::log::set_level(l);
        break;
      }
      case 'h': fputs(kUsage, stdout); return 0;
      case 'V': fputs(antares::version_text("mock-mega").c_str(), stdout); return 0;
      case ':': usage_error(std::string("option ") + argv[optind - 1] + " needs a value");
      default: usage_error(std::string("unknown option ") + argv[optind - 1]);
    }
  }
  if (optind < argc) usage_error(std::string("unexpected argument '") + argv[optind] + "'");
  if (opts.repo.files > opts.max_files)
    usage_error("--files " + std::to_string(opts.repo.files) + " exceeds --max-files " + std::to_string(opts.max_files) +
                " (a repository costs about " + std::to_string(antares::mock::kPeakBytesPerFile) +
                " bytes per file while it is generated; raise --max-files if the machine has the memory)");

  if (!faults_file.empty()) {
    std::ifstream f(faults_file);
    std::stringstream ss;
    if (!f || !(ss << f.rdbuf())) {
      fprintf(stderr, "mock-mega: cannot read fault file %s: %s\n", faults_file.c_str(), strerror(errno));
      return 1;
    }
    auto j = nlohmann::json::parse(ss.str(), nullptr, false);
    auto faults = j.is_discarded() ? antares::Result<std::vector<antares::mock::Fault>>(
                                         antares::Error::from_errno(EINVAL, "not valid JSON"))
                                   : antares::mock::parse_faults(j);
    if (!faults) {
      fprintf(stderr, "mock-mega: bad fault file %s: %s\n", faults_file.c_str(), faults.error().message.c_str());
      return 1;
    }
    opts.faults = std::move(*faults);
  }

  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto t0 = std::chrono::steady_clock::now();
  antares::mock::MockMegaServer server(opts);
  auto gen_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  auto port = server.start();
  if (!port) {
    fprintf(stderr, "mock-mega: %s\n", port.error().describe().c_str());
    return 1;
  }
  if (!port_file.empty() && !write_port_file(port_file, *port)) {
    fprintf(stderr, "mock-mega: cannot write port file %s: %s\n", port_file.c_str(), strerror(errno));
    server.stop();
    return 1;
  }
  antares::log::info("listening", {{"url", server.base_url()},
                                   {"seed", std::to_string(opts.repo.seed)},
                                   {"files", std::to_string(opts.repo.files)},
                                   {"generate_ms", std::to_string(gen_ms)}});
  int sig = 0;
  sigwait(&stop_signals, &sig);
  antares::log::info("stopping", {{"signal", strsignal(sig)}});
  server.stop();
  return 0;
}
