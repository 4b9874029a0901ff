// walk_bench: the buck2-style walk (repro's walker: breadth-first readdir,
// lstat every entry, read every BUCK/PACKAGE and the .bzl files they load) at
// monorepo scale, over the same tree served six ways in one run: native ext4
// (antares' own lower mirror after a full walk, the reference), kernel
// overlayfs over it (the union's physical limit), fuse-overlayfs and libfuse's
// passthrough_ll over it, and antares-fs under each strategy against mock-mega
// on loopback, hot, after TTL expiry, network-cold, after a restart over the
// same cache and after k server changes. Repetitions are interleaved round
// robin and reported as medians, with the machine's load. It prints a table
// (and, with --json, every sample) and unmounts and stops everything it
// started on every exit path, Ctrl-C included. docs/benchmarks.md ("Walk at
// scale") has the figures and the command.
#include <getopt.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/walk/systems.h"
#include "common/duration.h"
#include "common/rng.h"
#include "repro/harness.h"
#include "repro/process.h"
#include "repro/walker.h"

namespace antares::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using json = nlohmann::json;
namespace stdfs = std::filesystem;

enum Exit { kOk = 0, kFailure = 1, kUsage = 2, kInterrupted = 130 };

constexpr const char* kUsageText = R"(usage: walk_bench [options]

Times a buck2-style walk (breadth-first readdir, lstat every entry, read every
BUCK/PACKAGE and the .bzl files they load) over native ext4, kernel overlayfs,
fuse-overlayfs, passthrough_ll and antares-fs (per strategy and condition),
all interleaved in one run; prints medians, ratios to native, FUSE and HTTP
requests per walk and daemon RSS per entry. Needs root (mounts).

  --files LIST          repository sizes in files (default 10000,100000)
  --with-1m             also 1,000,000 files (long: minutes per walk, ~2 GB RSS)
  --reps R              repetitions per row, round robin (default 3)
  --threads N           walker threads (default 2)
  --ttl D               antares-fs --ttl (default 5s)
  --changes K           files the server changes for the "changes" condition (default 10)
  --globs               also list every package's subtree again, as its glob()s
                        would without buck2's cache (off: each directory is listed once)
  --configs LIST        of native, overlay, fuse-overlayfs, passthrough_ll,
                        antares-<none|A|B|C|auto>[+kdir|+kopen][@TTL] (+kdir:
                        antares-fs --dir-open kernel; +kopen: that and --file-open
                        kernel; B and auto only); "refs", "antares", "all"
                        (default all; native is always measured)
  --conditions LIST     antares conditions: hot, ttl, changes, cold, restart (default all)
  --passthrough-max-entries N
                        run passthrough_ll only up to N entries (default 18000:
                        it holds an fd per inode)
  --daemon-threads N    antares-fs --threads (default: the daemon's own)
  --daemon-arg ARG      one more antares-fs argument for every antares
                        configuration (repeat it: --daemon-arg=--long-timeout
                        --daemon-arg=3600)
  --seed S              mock-mega seed (default 42)
  --workdir DIR         where to put trees and mounts (default $TMPDIR or /tmp)
  --fs KIND             scratch: (default) measure on a fresh ext4 filesystem, a
                        sparse image in the work directory, loop-mounted (falls back
                        to the work directory's filesystem, saying so, if that fails);
                        workdir: on the work directory's own filesystem
  --keep                keep the work directory
  --json FILE           also write every sample as JSON
  --help                this text

Exit: 0 done; 1 a system failed to start or a walk failed; 2 bad usage;
130 interrupted (everything is unmounted and stopped first).
)";

enum class Kind { native, overlay, fuse_overlayfs, passthrough_ll, antares };

struct Config {
  std::string name;
  Kind kind = Kind::native;
  std::string strategy;  // antares
  milliseconds ttl{0};   // antares
  std::vector<std::string> fs_args = {};  // antares: "+kdir", "+kopen"
};

const std::vector<std::string> kConditions = {"hot", "ttl", "changes", "cold", "restart"};
const std::vector<std::string> kStrategies = {"none", "A", "B", "C", "auto"};

struct Options {
  std::vector<uint64_t> sizes{10000, 100000};
  unsigned reps = 3, threads = 2, changes = 10, daemon_threads = 0;
  std::vector<std::string> daemon_args;  // --daemon-arg
  milliseconds ttl{5000};
  std::vector<Config> configs;
  std::vector<std::string> conditions = kConditions;
  uint64_t passthrough_max_entries = 18000;
  uint64_t seed = 42;
  std::string workdir, json_path, command;
  bool keep = false;
  bool globs = false;
  bool scratch = true;  // --fs scratch
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "walk_bench: %s\nTry 'walk_bench --help'.\n", msg.c_str());
  std::exit(kUsage);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

uint64_t parse_count(const char* flag, const char* s, uint64_t lo, uint64_t hi) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (errno || end == s || *end || *s == '-' || v < lo || v > hi)
    usage_error(std::string(flag) + ": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi) +
                ", got '" + s + "'");
  return v;
}

std::string ms_text(milliseconds d) { return std::to_string(d.count()) + "ms"; }

std::vector<Config> parse_configs(const std::string& list, milliseconds ttl) {
  std::vector<Config> out;
  auto add = [&](Config c) {
    for (const auto& o : out)
      if (o.name == c.name) return;
    out.push_back(std::move(c));
  };
  auto add_refs = [&] {
    add({"overlay", Kind::overlay, "", {}});
    add({"fuse-overlayfs", Kind::fuse_overlayfs, "", {}});
    add({"passthrough_ll", Kind::passthrough_ll, "", {}});
  };
  auto add_antares = [&] {
    for (const auto& s : kStrategies) add({"antares-" + s, Kind::antares, s, ttl});
  };
  add({"native", Kind::native, "", {}});  // the reference of every ratio
  for (const auto& t : split(list, ',')) {
    if (t == "all") {
      add_refs();
      add_antares();
    } else if (t == "refs") {
      add_refs();
    } else if (t == "antares") {
      add_antares();
    } else if (t == "native") {
    } else if (t == "overlay") {
      add({t, Kind::overlay, "", {}});
    } else if (t == "fuse-overlayfs") {
      add({t, Kind::fuse_overlayfs, "", {}});
    } else if (t == "passthrough_ll") {
      add({t, Kind::passthrough_ll, "", {}});
    } else if (t.rfind("antares-", 0) == 0) {
      std::string rest = t.substr(8), strategy = rest;
      milliseconds cfg_ttl = ttl;
      if (size_t at = rest.find('@'); at != std::string::npos) {
        strategy = rest.substr(0, at);
        auto d = parse_duration(rest.substr(at + 1));
        if (!d || d->count() <= 0) usage_error("--configs: bad TTL in '" + t + "' (try antares-auto@300s)");
        cfg_ttl = *d;
      }
      std::vector<std::string> fs_args;
      for (const std::string suffix : {"+kdir", "+kopen"}) {
        if (!strategy.ends_with(suffix)) continue;
        strategy.erase(strategy.size() - suffix.size());
        fs_args = {"--dir-open", "kernel"};
        if (suffix == "+kopen") fs_args.insert(fs_args.end(), {"--file-open", "kernel"});
        if (strategy != "B" && strategy != "auto") usage_error("--configs: " + suffix + " needs B or auto, in '" + t + "'");
      }
      if (std::find(kStrategies.begin(), kStrategies.end(), strategy) == kStrategies.end())
        usage_error("--configs: unknown strategy in '" + t + "' (none, A, B, C, auto)");
      add({t, Kind::antares, strategy, cfg_ttl, fs_args});
    } else {
      usage_error("--configs: unknown configuration '" + t + "'");
    }
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 0; i < argc; ++i) o.command += (i ? " " : "") + std::string(argv[i]);
  std::string configs = "all";
  bool with_1m = false;
  enum { kFiles = 256, k1m, kReps, kThreads, kTtl, kChanges, kConfigs, kConds, kPtMax, kDaemonThreads, kDaemonArg, kSeed,
         kWorkdir, kKeep, kJson, kGlobs, kFs, kHelp };
  static const option longopts[] = {
      {"files", required_argument, nullptr, kFiles},         {"with-1m", no_argument, nullptr, k1m},
      {"reps", required_argument, nullptr, kReps},           {"threads", required_argument, nullptr, kThreads},
      {"ttl", required_argument, nullptr, kTtl},             {"changes", required_argument, nullptr, kChanges},
      {"configs", required_argument, nullptr, kConfigs},     {"conditions", required_argument, nullptr, kConds},
      {"passthrough-max-entries", required_argument, nullptr, kPtMax},
      {"daemon-threads", required_argument, nullptr, kDaemonThreads},
      {"daemon-arg", required_argument, nullptr, kDaemonArg},
      {"seed", required_argument, nullptr, kSeed},           {"workdir", required_argument, nullptr, kWorkdir},
      {"keep", no_argument, nullptr, kKeep},                 {"json", required_argument, nullptr, kJson},
      {"globs", no_argument, nullptr, kGlobs},               {"help", no_argument, nullptr, kHelp},
      {"fs", required_argument, nullptr, kFs},
      {nullptr, 0, nullptr, 0}};
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "", longopts, nullptr)) != -1) {
    switch (c) {
      case kFiles:
        o.sizes.clear();
        for (const auto& s : split(optarg, ',')) o.sizes.push_back(parse_count("--files", s.c_str(), 10, 10000000));
        if (o.sizes.empty()) usage_error("--files: empty list");
        break;
      case k1m: with_1m = true; break;
      case kReps: o.reps = unsigned(parse_count("--reps", optarg, 1, 1000)); break;
      case kThreads: o.threads = unsigned(parse_count("--threads", optarg, 1, 256)); break;
      case kTtl: {
        auto d = parse_duration(optarg);
        if (!d || d->count() <= 0) usage_error(std::string("--ttl: not a duration: '") + optarg + "' (try 5s)");
        o.ttl = *d;
        break;
      }
      case kChanges: o.changes = unsigned(parse_count("--changes", optarg, 1, 100000)); break;
      case kConfigs: configs = optarg; break;
      case kConds:
        o.conditions = split(optarg, ',');
        if (o.conditions.empty()) usage_error("--conditions: empty list");
        for (const auto& cond : o.conditions)
          if (std::find(kConditions.begin(), kConditions.end(), cond) == kConditions.end())
            usage_error("--conditions: unknown condition '" + cond + "' (hot, ttl, changes, cold, restart)");
        break;
      case kPtMax: o.passthrough_max_entries = parse_count("--passthrough-max-entries", optarg, 0, 100000000); break;
      case kDaemonThreads: o.daemon_threads = unsigned(parse_count("--daemon-threads", optarg, 1, 256)); break;
      case kDaemonArg: o.daemon_args.push_back(optarg); break;
      case kSeed: o.seed = parse_count("--seed", optarg, 0, UINT64_MAX); break;
      case kWorkdir: o.workdir = optarg; break;
      case kKeep: o.keep = true; break;
      case kJson: o.json_path = optarg; break;
      case kGlobs: o.globs = true; break;
      case kFs:
        if (std::string(optarg) != "scratch" && std::string(optarg) != "workdir")
          usage_error(std::string("--fs: unknown kind '") + optarg + "' (scratch, workdir)");
        o.scratch = std::string(optarg) == "scratch";
        break;
      case kHelp: std::fputs(kUsageText, stdout); std::exit(kOk);
      case ':': usage_error(std::string("option ") + argv[optind - 1] + " needs a value");
      default: usage_error(std::string("unknown option ") + argv[optind - 1]);
    }
  }
  if (optind < argc) usage_error(std::string("unexpected argument '") + argv[optind] + "'");
  if (with_1m && std::find(o.sizes.begin(), o.sizes.end(), 1000000) == o.sizes.end()) o.sizes.push_back(1000000);
  o.configs = parse_configs(configs, o.ttl);
  return o;
}

// ---------------------------------------------------------------- results

struct Sample {
  unsigned rep = 0;
  double secs = 0;
  double idle_before_s = 0;  // since the previous walk of the same system ended
  std::optional<double> mount_secs;  // restart: from unmount to mounted again
  repro::WalkSummary walk;
  Counters c;
  std::optional<uint64_t> rss;
  std::optional<uint64_t> rss_at_mount;  // the daemon's RSS before its first walk
  // CPU seconds during the walk: the walker (this process), the FUSE daemon,
  // mock-mega. Less sensitive to a loaded machine than the wall time.
  double cpu_walker = 0;
  std::optional<double> cpu_daemon, cpu_server;
  double cpu_total() const { return cpu_walker + cpu_daemon.value_or(0) + cpu_server.value_or(0); }
  double load1 = 0;
};

struct Row {
  Config cfg;
  std::string condition;  // "hot" for the references
  std::string skipped;    // why the row has no samples
  std::vector<Sample> samples;
};

struct Load {
  std::string when;
  double one = 0, five = 0, fifteen = 0;
};

Load read_load(const std::string& when) {
  Load l;
  l.when = when;
  std::ifstream f("/proc/loadavg");
  f >> l.one >> l.five >> l.fifteen;
  return l;
}

struct SizeResult {
  uint64_t files = 0, dirs = 0, entries = 0;
  repro::WalkSummary expect;  // the native walk's counts
  std::vector<Row> rows;
  std::vector<Load> load;
  std::vector<std::string> notes;
};

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

template <class F>
std::optional<double> median_of(const std::vector<Sample>& s, F get) {
  std::vector<double> v;
  for (const auto& x : s)
    if (auto g = get(x)) v.push_back(*g);
  if (v.empty()) return std::nullopt;
  return median(v);
}

std::optional<double> row_secs(const Row& r) {
  return median_of(r.samples, [](const Sample& s) { return std::optional<double>(s.secs); });
}

std::string condition_label(const std::string& c, unsigned k) {
  if (c == "hot") return "hot";
  if (c == "ttl") return "TTL expired";
  if (c == "changes") return "TTL+" + std::to_string(k) + " changes";
  if (c == "cold") return "cold (empty)";
  if (c == "restart") return "restart";
  return c;
}

std::string grouped(double v) {
  if (std::isnan(v)) return "n/a";
  long long n = std::llround(v);
  std::string s = std::to_string(n < 0 ? -n : n);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return (n < 0 ? "-" : "") + s;
}

std::string secs_text(double s) {
  char buf[32];
  if (s < 0.1) std::snprintf(buf, sizeof buf, "%.4f", s);
  else if (s < 10) std::snprintf(buf, sizeof buf, "%.3f", s);
  else std::snprintf(buf, sizeof buf, "%.1f", s);
  return buf;
}

// A row's samples that walked a different tree than native (errors, other counts).
unsigned bad_samples(const Row& r, const repro::WalkSummary& expect) {
  unsigned bad = 0;
  for (const auto& s : r.samples)
    if (s.walk.errors || s.walk.dirs != expect.dirs || s.walk.buildfiles != expect.buildfiles) ++bad;
  return bad;
}

void print_table(FILE* out, const SizeResult& r, const Options& o) {
  std::optional<double> native;
  for (const auto& row : r.rows)
    if (row.cfg.kind == Kind::native) native = row_secs(row);
  std::fprintf(out, "\n== %s files, %s directories (%s entries); %u walker threads; TTL %s; k = %u; %u repetitions; "
                    "time = median (and min-max) of n walks ==\n",
               grouped(double(r.files)).c_str(), grouped(double(r.dirs)).c_str(), grouped(double(r.entries)).c_str(),
               o.threads, ms_text(o.ttl).c_str(), o.changes, o.reps);
  std::fprintf(out, "%-22s %-18s %3s %9s %19s %8s %7s %10s %10s %10s %10s\n", "config", "condition", "n", "time s",
               "min-max s", "x native", "CPU s", "FUSE req", "HTTP req", "listings", "RSS/entry");
  for (const auto& row : r.rows) {
    std::string cond = condition_label(row.condition, o.changes);
    if (!row.skipped.empty()) {
      std::fprintf(out, "%-22s %-18s skipped: %s\n", row.cfg.name.c_str(), cond.c_str(), row.skipped.c_str());
      continue;
    }
    if (row.samples.empty()) {
      std::fprintf(out, "%-22s %-18s no samples\n", row.cfg.name.c_str(), cond.c_str());
      continue;
    }
    double med = *row_secs(row);
    double lo = row.samples[0].secs, hi = lo;
    for (const auto& s : row.samples) lo = std::min(lo, s.secs), hi = std::max(hi, s.secs);
    std::string range = secs_text(lo) + "-" + secs_text(hi);
    char ratio[32] = "n/a";
    if (native && *native > 0) std::snprintf(ratio, sizeof ratio, "%.1f", med / *native);
    if (row.cfg.kind == Kind::native) std::snprintf(ratio, sizeof ratio, "1.0");
    auto fuse = median_of(row.samples, [](const Sample& s) { return s.c.fuse; });
    auto http = median_of(row.samples, [](const Sample& s) { return s.c.http; });
    auto listings = median_of(row.samples, [](const Sample& s) -> std::optional<double> {
      if (!s.c.http) return std::nullopt;
      auto it = s.c.http_by_endpoint.find("content-hash");
      return it == s.c.http_by_endpoint.end() ? 0.0 : it->second;
    });
    auto rss = median_of(row.samples, [](const Sample& s) -> std::optional<double> {
      if (!s.rss) return std::nullopt;
      return double(*s.rss);
    });
    std::string rss_text = rss && r.entries ? grouped(*rss / double(r.entries)) + " B" : "n/a";
    unsigned bad = bad_samples(row, r.expect);
    auto cpu = median_of(row.samples, [](const Sample& s) { return std::optional<double>(s.cpu_total()); });
    std::fprintf(out, "%-22s %-18s %3zu %9s %19s %8s %7s %10s %10s %10s %10s%s\n", row.cfg.name.c_str(), cond.c_str(),
                 row.samples.size(), secs_text(med).c_str(), range.c_str(), ratio, secs_text(*cpu).c_str(),
                 fuse ? grouped(*fuse).c_str() : "n/a",
                 http ? grouped(*http).c_str() : "n/a", listings ? grouped(*listings).c_str() : "n/a",
                 rss_text.c_str(), bad ? "  (!)" : "");
  }
  double lmin = 1e9, lmax = 0;
  for (const auto& l : r.load) lmin = std::min(lmin, l.one), lmax = std::max(lmax, l.one);
  if (!r.load.empty())
    std::fprintf(out, "load average (1 min) during these walks: %.2f-%.2f over %zu samples (%u CPUs)\n", lmin, lmax,
                 r.load.size(), std::thread::hardware_concurrency());
  std::vector<double> base;
  for (const auto& row : r.rows)
    for (const auto& s : row.samples)
      if (s.rss_at_mount) base.push_back(double(*s.rss_at_mount));
  if (!base.empty())
    std::fprintf(out, "antares-fs RSS right after mounting (before any walk): %.1f MiB median; RSS/entry above "
                      "counts it\n",
                 median(base) / 1048576.0);
  std::string remounts;
  for (const auto& row : r.rows)
    if (auto m = median_of(row.samples, [](const Sample& s) { return s.mount_secs; }))
      remounts += (remounts.empty() ? "" : ", ") + row.cfg.name + " " + secs_text(*m);
  if (!remounts.empty())
    std::fprintf(out, "restart: unmount + mount (the mirror and blob cache are kept and revalidated), median s, not in the walk time: %s\n",
                 remounts.c_str());
  for (const auto& n : r.notes) std::fprintf(out, "note: %s\n", n.c_str());
  for (const auto& row : r.rows)
    if (unsigned bad = bad_samples(row, r.expect)) {
      uint64_t errors = 0;
      for (const auto& s : row.samples) errors += s.walk.errors;
      std::fprintf(out, "(!) %s %s: %u of %zu walks saw errors (%llu in all) or another tree than native (%llu dirs, "
                        "%llu build files)%s\n",
                   row.cfg.name.c_str(), row.condition.c_str(), bad, row.samples.size(), (unsigned long long)errors,
                   (unsigned long long)r.expect.dirs, (unsigned long long)r.expect.buildfiles,
                   row.cfg.strategy == "none" ? "; none serves ESTALE after server changes by design" : "");
    }
  std::fflush(out);
}

json opt_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

json to_json(const SizeResult& r) {
  json rows = json::array();
  std::optional<double> native;
  for (const auto& row : r.rows)
    if (row.cfg.kind == Kind::native) native = row_secs(row);
  for (const auto& row : r.rows) {
    json samples = json::array();
    for (const auto& s : row.samples) {
      samples.push_back({{"rep", s.rep},
                         {"secs", s.secs},
                         {"idle_before_s", s.idle_before_s},
                         {"mount_s", opt_json(s.mount_secs)},
                         {"load1", s.load1},
                         {"cpu_walker_s", s.cpu_walker},
                         {"cpu_daemon_s", opt_json(s.cpu_daemon)},
                         {"cpu_server_s", opt_json(s.cpu_server)},
                         {"walk",
                          {{"dirs", s.walk.dirs},
                           {"packages", s.walk.packages},
                           {"package_files", s.walk.package_files},
                           {"buildfiles", s.walk.buildfiles},
                           {"bzl", s.walk.bzl},
                           {"errors", s.walk.errors}}},
                         {"fuse_requests", opt_json(s.c.fuse)},
                         {"fuse_by_op", s.c.fuse_by_op},
                         {"fs_http_requests", opt_json(s.c.fs_http)},
                         {"invalidations", opt_json(s.c.invalidations)},
                         {"http_requests", opt_json(s.c.http)},
                         {"http_by_endpoint", s.c.http_by_endpoint},
                         {"rss_bytes", s.rss ? json(*s.rss) : json(nullptr)},
                         {"rss_at_mount_bytes", s.rss_at_mount ? json(*s.rss_at_mount) : json(nullptr)}});
    }
    auto med = row_secs(row);
    rows.push_back({{"config", row.cfg.name},
                    {"condition", row.condition},
                    {"ttl_ms", row.cfg.kind == Kind::antares ? json(row.cfg.ttl.count()) : json(nullptr)},
                    {"skipped", row.skipped.empty() ? json(nullptr) : json(row.skipped)},
                    {"median_s", opt_json(med)},
                    {"cpu_median_s",
                     opt_json(median_of(row.samples, [](const Sample& s) { return std::optional<double>(s.cpu_total()); }))},
                    {"ratio_to_native", med && native && *native > 0 ? json(*med / *native) : json(nullptr)},
                    {"fuse_requests", opt_json(median_of(row.samples, [](const Sample& s) { return s.c.fuse; }))},
                    {"http_requests", opt_json(median_of(row.samples, [](const Sample& s) { return s.c.http; }))},
                    {"rss_per_entry", opt_json(median_of(row.samples, [&](const Sample& s) -> std::optional<double> {
                       if (!s.rss || !r.entries) return std::nullopt;
                       return double(*s.rss) / double(r.entries);
                     }))},
                    {"samples", samples}});
  }
  json load = json::array();
  for (const auto& l : r.load) load.push_back({{"when", l.when}, {"load1", l.one}, {"load5", l.five}, {"load15", l.fifteen}});
  return {{"files", r.files}, {"dirs", r.dirs}, {"entries", r.entries}, {"rows", rows}, {"load", load},
          {"notes", r.notes}};
}

// ---------------------------------------------------------------- the run

bool stopping() { return repro::stop_requested().load(); }

Status interrupted() { return Error::from_errno(EINTR, "interrupted"); }

// Sleeps until `t`, waking every 10 ms to notice a Ctrl-C.
Status nap_until(SteadyClock::time_point t) {
  while (SteadyClock::now() < t) {
    if (stopping()) return interrupted();
    std::this_thread::sleep_for(std::min<SteadyClock::duration>(t - SteadyClock::now(), milliseconds(10)));
  }
  return stopping() ? interrupted() : Status{};
}

class Bench {
 public:
  Bench(const Options& o, std::string dir) : o_(o), dir_(std::move(dir)) {}
  // Runs one repository size into *out (partial on failure or interrupt).
  Status run_size(uint64_t files, SizeResult* out);

 private:
  // A reference system: mounted once per size, walked once per visit.
  struct Ref {
    Row* row = nullptr;
    std::string root;
    pid_t pid = -1;
    std::function<bool()> alive;
    SteadyClock::time_point last_end{};
  };

  Result<Sample> measure(const std::string& root, Antares* fs, pid_t pid);
  Status prepare_native(const std::string& native);
  Status setup_refs(const std::string& native);
  Status walk_refs(unsigned rep, unsigned rotate);
  Status run_antares(const Config& c, unsigned rep, unsigned rotate);
  Status mutate(const Config& c, unsigned rep);
  Row* row(const std::string& config, const std::string& condition);
  repro::FsOptions fs_options(const Config& c) const;

  const Options& o_;
  std::string dir_;  // this run's work directory
  std::string size_dir_;
  SizeResult* res_ = nullptr;
  std::unique_ptr<repro::MegaServer> mega_;
  pid_t mega_pid_ = -1;
  std::unique_ptr<KernelOverlay> overlay_;
  std::unique_ptr<FuseDaemon> fuse_overlayfs_, passthrough_;
  std::vector<Ref> refs_;
  std::vector<std::string> change_pool_;
};

Row* Bench::row(const std::string& config, const std::string& condition) {
  for (auto& r : res_->rows)
    if (r.cfg.name == config && r.condition == condition) return &r;
  return nullptr;
}

repro::FsOptions Bench::fs_options(const Config& c) const {
  repro::FsOptions f;
  f.bin_dir = repro::self_dir();
  f.strategy = c.strategy;
  f.ttl = ms_text(c.ttl);
  f.log_level = "warn";  // the walk, not the daemon's log, is measured
  f.threads = o_.daemon_threads;
  f.extra_args = c.fs_args;
  f.extra_args.insert(f.extra_args.end(), o_.daemon_args.begin(), o_.daemon_args.end());
  // A mirror not shut down cleanly is wiped at startup: at 100k files (and on
  // ext4 mounted with `discard`) that alone can take tens of seconds.
  f.ready_timeout = std::chrono::minutes(10);
  return f;
}

Result<Sample> Bench::measure(const std::string& root, Antares* fs, pid_t pid) {
  Counters before;
  if (fs) {
    auto c = fs->scrape();
    if (!c) return c.error();
    before = *c;
    auto m = scrape_mega(mega_->admin());
    if (!m) return m.error();
    before.http = m->http;
    before.http_by_endpoint = m->http_by_endpoint;
  }
  repro::WalkOptions w;
  w.root = root;
  w.threads = o_.threads;
  w.dirs_in_flight = o_.threads;
  w.source_share = 0;
  w.write_buck_out = false;
  w.lstat_entries = true;
  w.list_package_globs = o_.globs;
  w.stop = &repro::stop_requested();
  Sample s;
  s.load1 = read_load("").one;
  auto self_cpu = [] {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  };
  pid_t server = fs ? mega_pid_ : -1;
  auto daemon0 = cpu_seconds(pid), server0 = cpu_seconds(server);
  double walker0 = self_cpu();
  auto t0 = SteadyClock::now();
  s.walk = repro::walk(w, nullptr);
  s.secs = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  s.cpu_walker = self_cpu() - walker0;
  auto daemon1 = cpu_seconds(pid), server1 = cpu_seconds(server);
  if (daemon0 && daemon1) s.cpu_daemon = *daemon1 - *daemon0;
  if (server0 && server1) s.cpu_server = *server1 - *server0;
  if (s.walk.stopped || stopping()) return Error::from_errno(EINTR, "interrupted");
  s.rss = rss_bytes(pid);
  if (fs) {
    auto c = fs->scrape();
    if (!c) return c.error();
    Counters after = *c;
    auto m = scrape_mega(mega_->admin());
    if (!m) return m.error();
    after.http = m->http;
    after.http_by_endpoint = m->http_by_endpoint;
    s.c = after - before;
  }
  return s;
}

Status Bench::prepare_native(const std::string& native) {
  // antares' own lower mirror after a full walk: the same names, sizes and
  // build files as the server; sources stay sparse placeholders, which the
  // walk only lstats.
  Config prep{"prepare", Kind::antares, "auto", std::chrono::hours(1)};
  std::string pdir = size_dir_ + "/prepare";
  auto a = Antares::start(fs_options(prep), mega_->url(), pdir);
  if (!a) return Error{a.error().err, 0, "antares-fs (preparing the native tree): " + a.error().describe()};
  auto s = measure((*a)->root(), a->get(), (*a)->pid());
  if (!s) return s.error();
  if (s->walk.errors) return Error::from_errno(EIO, "the preparing walk over antares-fs saw errors");
  std::fprintf(stderr, "walk_bench: native tree: mirrored by antares-fs in %.2f s (%s listings, %s blobs)\n", s->secs,
               grouped(s->c.http_by_endpoint["content-hash"]).c_str(), grouped(s->c.http_by_endpoint["blob"]).c_str());
  (*a)->stop();
  std::error_code ec;
  stdfs::rename(pdir + "/cache/lower", native, ec);
  if (ec) return Error::from_errno(ec.value(), "rename the mirror to " + native);
  stdfs::remove_all(pdir, ec);
  return {};
}

Status Bench::setup_refs(const std::string& native) {
  auto add = [&](const std::string& name, std::string root, pid_t pid, std::function<bool()> alive) {
    Row* r = row(name, "hot");
    if (r) refs_.push_back({r, std::move(root), pid, std::move(alive), {}});
  };
  add("native", native, -1, [] { return true; });
  if (Row* r = row("overlay", "hot")) {
    auto ov = KernelOverlay::mount(native, size_dir_ + "/overlay");
    if (ov) {
      overlay_ = std::move(*ov);
      add("overlay", overlay_->root(), -1, [] { return true; });
    } else {
      r->skipped = "cannot mount: " + ov.error().describe();
    }
  }
  if (Row* r = row("fuse-overlayfs", "hot")) {
    std::string bin = find_program("fuse-overlayfs");
    if (bin.empty()) {
      r->skipped = "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)";
    } else {
      std::string d = size_dir_ + "/fuse-overlayfs";
      std::error_code ec;
      stdfs::create_directories(d + "/upper", ec);
      stdfs::create_directories(d + "/work", ec);
      auto f = FuseDaemon::start(
          {bin, "-f", "-o", "lowerdir=" + native + ",upperdir={dir}/upper,workdir={dir}/work", "{mnt}"}, d);
      if (!f) {
        if (stopping()) return interrupted();
        r->skipped = "cannot start: " + f.error().describe();
      } else {
        fuse_overlayfs_ = std::move(*f);
        add("fuse-overlayfs", fuse_overlayfs_->root(), fuse_overlayfs_->pid(),
            [this] { return fuse_overlayfs_->alive(); });
      }
    }
  }
  if (Row* r = row("passthrough_ll", "hot")) {
    std::string bin = repro::self_dir() + "/passthrough_ll";
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    if (::access(bin.c_str(), X_OK) != 0) {
      r->skipped = "not built (libfuse3-dev's examples/passthrough_ll.c was missing at configure time)";
    } else if (res_->entries > o_.passthrough_max_entries) {
      r->skipped = grouped(double(res_->entries)) + " entries > " + grouped(double(o_.passthrough_max_entries)) +
                   ": passthrough_ll holds an fd per inode (open-file hard limit here: " +
                   (lim.rlim_max == RLIM_INFINITY ? std::string("unlimited") : grouped(double(lim.rlim_max))) + ")";
    } else {
      auto f = FuseDaemon::start({bin, "-f", "-o", "source=" + native, "{mnt}"}, size_dir_ + "/passthrough_ll");
      if (!f) {
        if (stopping()) return interrupted();
        r->skipped = "cannot start: " + f.error().describe();
      } else {
        passthrough_ = std::move(*f);
        add("passthrough_ll", passthrough_->root(), passthrough_->pid(), [this] { return passthrough_->alive(); });
      }
    }
  }
  // One unrecorded walk each, so every recorded walk is a repeated one.
  for (auto& ref : refs_) {
    auto s = measure(ref.root, nullptr, ref.pid);
    if (!s) return s.error();
    ref.last_end = SteadyClock::now();
    if (ref.row->cfg.kind == Kind::native) res_->expect = s->walk;
  }
  return {};
}

Status Bench::walk_refs(unsigned rep, unsigned rotate) {
  for (size_t i = 0; i < refs_.size(); ++i) {
    Ref& ref = refs_[(i + rotate) % refs_.size()];
    if (!ref.alive()) return Error::from_errno(EIO, ref.row->cfg.name + " died or was unmounted");
    auto t0 = SteadyClock::now();
    auto s = measure(ref.root, nullptr, ref.pid);
    if (!s) return s.error();
    s->rep = rep;
    s->idle_before_s = std::chrono::duration<double>(t0 - ref.last_end).count();
    ref.last_end = SteadyClock::now();
    std::fprintf(stderr, "  %-22s %-18s %s s\n", ref.row->cfg.name.c_str(), "hot", secs_text(s->secs).c_str());
    ref.row->samples.push_back(std::move(*s));
  }
  return {};
}

Status Bench::mutate(const Config& c, unsigned rep) {
  if (change_pool_.empty()) {
    for (const char* cls : {"buck", "package", "bzl", "source"}) {
      auto p = mega_->admin().paths(cls);
      if (!p) return p.error();
      change_pool_.insert(change_pool_.end(), p->begin(), p->end());
    }
    if (change_pool_.empty()) return Error::from_errno(ENOENT, "mock-mega lists no files to change");
  }
  // Seeded: the same files change for the same (seed, config, rep) in every run.
  Rng rng(mix64(o_.seed ^ hash_str(c.name) ^ mix64(rep + 1)));
  json muts = json::array();
  std::vector<std::string> picked;
  for (unsigned i = 0; i < o_.changes && picked.size() < change_pool_.size(); ++i) {
    std::string p = change_pool_[rng.below(change_pool_.size())];
    if (std::find(picked.begin(), picked.end(), p) != picked.end()) {
      --i;
      continue;
    }
    picked.push_back(p);
    muts.push_back({{"kind", "modify"}, {"path", p}});
  }
  auto r = mega_->admin().mutate({{"mutations", muts}});
  if (!r) return Error{r.error().err, r.error().http_status, "mock-mega mutate: " + r.error().describe()};
  return {};
}

Status Bench::run_antares(const Config& c, unsigned rep, unsigned rotate) {
  auto want = [&](const std::string& cond) {
    return std::find(o_.conditions.begin(), o_.conditions.end(), cond) != o_.conditions.end();
  };
  std::string adir = size_dir_ + "/" + c.name;
  std::error_code ec;
  stdfs::remove_all(adir, ec);
  auto a = Antares::start(fs_options(c), mega_->url(), adir);
  if (!a) {
    if (stopping()) return interrupted();
    return Error{a.error().err, 0, c.name + ": " + a.error().describe()};
  }
  Antares& fs = **a;
  SteadyClock::time_point last_end = SteadyClock::now();
  std::optional<uint64_t> rss_at_mount = rss_bytes(fs.pid());
  std::optional<double> remount_secs;
  auto step = [&](const std::string& cond, bool record) -> Status {
    if (!fs.alive()) return Error::from_errno(EIO, c.name + ": antares-fs died or was unmounted");
    auto t0 = SteadyClock::now();
    auto s = measure(fs.root(), &fs, fs.pid());
    if (!s) return s.error();
    s->rep = rep;
    s->idle_before_s = std::chrono::duration<double>(t0 - last_end).count();
    s->rss_at_mount = rss_at_mount;
    if (cond == "restart") s->mount_secs = remount_secs;
    last_end = SteadyClock::now();
    std::fprintf(stderr, "  %-22s %-18s %s s, %s FUSE, %s HTTP\n", c.name.c_str(),
                 condition_label(cond, o_.changes).c_str(), secs_text(s->secs).c_str(),
                 s->c.fuse ? grouped(*s->c.fuse).c_str() : "?", s->c.http ? grouped(*s->c.http).c_str() : "?");
    if (record)
      if (Row* r = row(c.name, cond)) r->samples.push_back(std::move(*s));
    return {};
  };
  auto ttl_wait = [&] {
    return nap_until(last_end + c.ttl + std::max<milliseconds>(milliseconds(300), c.ttl / 10));
  };
  // The first walk of a fresh mount over an empty cache: network-cold.
  if (auto st = step("cold", want("cold")); !st.ok()) return st;
  if (want("hot"))
    if (auto st = step("hot", true); !st.ok()) return st;
  // The references walk while this mount's TTL runs out.
  if (auto st = walk_refs(rep, rotate); !st.ok()) return st;
  bool long_ttl = c.ttl > std::chrono::minutes(2);
  if (want("ttl") && !long_ttl) {
    if (auto st = ttl_wait(); !st.ok()) return st;
    if (auto st = step("ttl", true); !st.ok()) return st;
  }
  if (want("changes") && !long_ttl) {
    if (auto st = mutate(c, rep); !st.ok()) return st;
    if (auto st = ttl_wait(); !st.ok()) return st;
    if (auto st = step("changes", true); !st.ok()) return st;
  }
  if (want("restart")) {
    auto r0 = SteadyClock::now();
    auto st = fs.restart();
    remount_secs = std::chrono::duration<double>(SteadyClock::now() - r0).count();
    if (!st.ok()) {
      if (stopping()) return interrupted();
      return Error{st.error().err, 0, c.name + " restart: " + st.error().describe()};
    }
    last_end = SteadyClock::now();
    rss_at_mount = rss_bytes(fs.pid());
    if (auto st = step("restart", true); !st.ok()) return st;
  }
  fs.stop();
  stdfs::remove_all(adir, ec);
  return {};
}

Status Bench::run_size(uint64_t files, SizeResult* out) {
  res_ = out;
  out->files = files;
  size_dir_ = dir_ + "/files-" + std::to_string(files);
  std::error_code ec;
  stdfs::create_directories(size_dir_, ec);
  if (ec) return Error::from_errno(ec.value(), "mkdir " + size_dir_);

  std::vector<Config> antares;
  for (const auto& c : o_.configs) {
    if (c.kind == Kind::antares) {
      antares.push_back(c);
      bool long_ttl = c.ttl > std::chrono::minutes(2);
      for (const auto& cond : kConditions) {
        if (std::find(o_.conditions.begin(), o_.conditions.end(), cond) == o_.conditions.end()) continue;
        Row r{c, cond, "", {}};
        if (long_ttl && (cond == "ttl" || cond == "changes")) r.skipped = "TTL " + ms_text(c.ttl) + " > 2 min";
        out->rows.push_back(r);
      }
    } else {
      out->rows.push_back({c, "hot", "", {}});
    }
  }
  // Rows grouped by condition: the references, then every antares config per condition.
  std::stable_sort(out->rows.begin(), out->rows.end(), [](const Row& a, const Row& b) {
    auto rank = [](const Row& r) {
      if (r.cfg.kind != Kind::antares) return -1;
      return int(std::find(kConditions.begin(), kConditions.end(), r.condition) - kConditions.begin());
    };
    return rank(a) < rank(b);
  });

  repro::MegaOptions mo;
  mo.bin_dir = repro::self_dir();
  mo.seed = o_.seed;
  mo.files = files;
  mo.cls = 1;
  std::fprintf(stderr, "walk_bench: %s files: starting mock-mega\n", grouped(double(files)).c_str());
  auto mega = repro::MegaServer::start(mo, size_dir_);
  if (!mega) return stopping() ? interrupted() : Error{mega.error().err, 0, "mock-mega: " + mega.error().describe()};
  mega_ = std::move(*mega);
  mega_pid_ = find_process(size_dir_ + "/mock-mega.port");
  auto state = mega_->admin().state();
  if (!state) return state.error();
  out->dirs = (*state)["dirs"].get<uint64_t>();
  out->entries = (*state)["files"].get<uint64_t>() + out->dirs;

  std::string native = size_dir_ + "/native";
  if (auto st = prepare_native(native); !st.ok()) return st;
  if (auto st = setup_refs(native); !st.ok()) return st;
  for (const auto& r : out->rows)
    if (!r.skipped.empty()) out->notes.push_back(r.cfg.name + " skipped: " + r.skipped);

  out->load.push_back(read_load("start"));
  for (unsigned rep = 0; rep < o_.reps; ++rep) {
    std::fprintf(stderr, "walk_bench: %s files, repetition %u/%u (load %.2f)\n", grouped(double(files)).c_str(),
                 rep + 1, o_.reps, read_load("").one);
    if (antares.empty()) {
      if (auto st = walk_refs(rep, rep); !st.ok()) return st;
    }
    for (size_t i = 0; i < antares.size(); ++i) {
      const Config& c = antares[(i + rep) % antares.size()];
      if (auto st = run_antares(c, rep, rep + unsigned(i)); !st.ok()) {
        // One failed mount or walk costs that config its repetition, not the run.
        if (stopping()) return st;
        std::string note = c.name + ", repetition " + std::to_string(rep + 1) + ": " + st.error().describe();
        std::fprintf(stderr, "walk_bench: %s\n", note.c_str());
        out->notes.push_back(note);
      }
      out->load.push_back(read_load("rep " + std::to_string(rep + 1) + " " + antares[(i + rep) % antares.size()].name));
    }
  }
  out->load.push_back(read_load("end"));
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  repro::install_stop_handlers();
  if (::geteuid() != 0) std::fprintf(stderr, "walk_bench: not root: mounting kernel overlayfs will fail\n");

  const char* tmp = std::getenv("TMPDIR");
  std::string base = !o.workdir.empty() ? o.workdir : tmp && *tmp ? tmp : "/tmp";
  std::string tmpl = base + "/walk-bench-XXXXXX";
  if (!::mkdtemp(tmpl.data())) {
    std::fprintf(stderr, "walk_bench: cannot create a directory under %s: %s\n", base.c_str(), std::strerror(errno));
    return kFailure;
  }
  char real[PATH_MAX];
  std::string top = ::realpath(tmpl.c_str(), real) ? real : tmpl;
  // Trees, caches and mounts go to `dir`: the scratch filesystem, or the work directory.
  std::string dir = top, fs_note;
  std::unique_ptr<ScratchExt4> scratch;
  if (o.scratch) {
    // Sparse: only what the run writes takes space; 64 GiB leaves ext4 4M inodes.
    auto s = ScratchExt4::make(top, uint64_t(64) << 30);
    if (s) {
      scratch = std::move(*s);
      dir = scratch->root();
      fs_note = "a fresh ext4 filesystem (loop-mounted image)";
    } else {
      fs_note = "the work directory's own filesystem (a fresh ext4 could not be made: " + s.error().describe() + ")";
    }
  } else {
    fs_note = "the work directory's own filesystem (--fs workdir)";
  }

  utsname un{};
  ::uname(&un);
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  Load start = read_load("start");
  std::printf("walk_bench: buck2-style walk (breadth-first readdir, lstat every entry, read every BUCK/PACKAGE and "
              "the .bzl they load%s), %u walker threads\n",
              o.globs ? "; every package's subtree listed again for its globs" : "", o.threads);
  std::printf("command: %s\n", o.command.c_str());
  std::printf("machine: %u CPUs, kernel %s, open-file hard limit %s; load average at start %.2f %.2f %.2f\n",
              std::thread::hardware_concurrency(), un.release,
              lim.rlim_max == RLIM_INFINITY ? "unlimited" : std::to_string(lim.rlim_max).c_str(), start.one,
              start.five, start.fifteen);
  std::printf("filesystem: %s\n", fs_note.c_str());
  std::fflush(stdout);

  std::vector<SizeResult> results;
  Status failed;
  for (uint64_t files : o.sizes) {
    results.emplace_back();
    Status st;
    {
      // A Bench per size: its mounts and daemons go away before the next size starts.
      Bench b(o, dir);
      st = b.run_size(files, &results.back());
    }
    print_table(stdout, results.back(), o);
    if (!st.ok()) {
      failed = st;
      break;
    }
  }
  Load end = read_load("end");
  std::printf("load average at end %.2f %.2f %.2f\n", end.one, end.five, end.fifteen);

  int code = kOk;
  if (!failed.ok()) {
    bool intr = failed.err() == EINTR && stopping();
    std::fprintf(stderr, "walk_bench: %s\n", intr ? "interrupted; everything it mounted is unmounted"
                                                  : failed.error().describe().c_str());
    code = intr ? kInterrupted : kFailure;
  }
  if (!o.json_path.empty()) {
    json sizes = json::array();
    for (const auto& r : results) sizes.push_back(to_json(r));
    json doc = {{"command", o.command},
                {"machine",
                 {{"cpus", std::thread::hardware_concurrency()},
                  {"kernel", un.release},
                  {"nofile_hard", lim.rlim_max == RLIM_INFINITY ? json(nullptr) : json(uint64_t(lim.rlim_max))}}},
                {"params",
                 {{"threads", o.threads},
                  {"reps", o.reps},
                  {"ttl_ms", o.ttl.count()},
                  {"changes", o.changes},
                  {"seed", o.seed},
                  {"globs", o.globs},
                  {"conditions", o.conditions}}},
                {"filesystem", fs_note},
                {"load_start", {start.one, start.five, start.fifteen}},
                {"load_end", {end.one, end.five, end.fifteen}},
                {"completed", code == kOk},
                {"sizes", sizes}};
    std::ofstream f(o.json_path);
    f << doc.dump(2) << '\n';
    if (!f) {
      std::fprintf(stderr, "walk_bench: cannot write %s\n", o.json_path.c_str());
      if (code == kOk) code = kFailure;
    }
  }
  // Everything is torn down by now (the scratch filesystem last); say so if the kernel disagrees.
  if (scratch && o.keep) scratch->keep_image();
  scratch.reset();
  auto left = mounts_under(top);
  for (const auto& m : left) std::fprintf(stderr, "walk_bench: still mounted: %s\n", m.c_str());
  if (!left.empty()) return kFailure;
  if (!o.keep) {
    std::error_code ec;
    stdfs::remove_all(top, ec);
  } else {
    std::fprintf(stderr, "walk_bench: kept %s\n", top.c_str());
  }
  return code;
}

}  // namespace antares::bench

int main(int argc, char** argv) { return antares::bench::main(argc, argv); }
