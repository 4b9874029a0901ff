// estale-repro: reproduces antares-fs's ESTALE failure and checks its fixes.
// Starts its own mock-mega and antares-fs (or attaches to given ones), walks
// the mount like `buck2 targets //...`, judges every read against mock-mega's
// history, and reports per strategy. See docs/repro.md.
#include <getopt.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "common/duration.h"
#include "common/version.h"
#include "repro/cost.h"
#include "repro/plan.h"
#include "repro/report.h"
#include "repro/scenarios.h"
#include "repro/summary.h"
#include "repro/walker.h"

namespace {

using namespace antares::repro;
using nlohmann::json;

constexpr const char* kUsage = R"(usage: estale-repro [options] COMMAND [ARGS]

Reproduces the ESTALE failure of the antares union FUSE filesystem and checks
its fixes. By default starts a private mock-mega (port 0) and antares-fs
(private mountpoint) per run, and always unmounts and stops them.

Commands:
  scenario NAME|all   scripted scenarios, one per trigger: lower-refresh,
                      cl-resync, upper-replaced, dir-replaced, delete-readd
                      (--strategy default none, --repeat default 1)
  soak                the walker loops while mock-mega mutates on a schedule
                      (--strategy default all, --duration default 30s)
  matrix              every strategy x every scenario (--repeat, default 3),
                      plus a soak per strategy (--soak, default 20s; 0 skips)
  switch              reproduce under none, switch to auto with antares-ctl
                      mid-walk, check that errors stop without a remount
  walk                one buck2-style walk of the mount with the oracle;
                      with --root DIR, of a plain directory (no FUSE, no oracle)
  help [COMMAND]      this text, or COMMAND's
  merge FILE...       combine --json reports of matrix shards into one report
                      (with --json and/or --html for the combined files)

Options:
  --strategy S|all      none, A, B, C, auto, or all (comma lists work too)
  --repeat N            repetitions per scenario
  --duration DUR        soak / switch length (e.g. 30s)
  --soak DUR            matrix: soak length per strategy (0: none)
  --ttl DUR             antares-fs --ttl (default 300ms)
  --entry-timeout SEC   antares-fs --entry-timeout (default 1)
  --attr-timeout SEC    antares-fs --attr-timeout (default 1)
  --slack DUR           added to ttl + timeouts for the staleness window (default 1s)
  --hold DUR            fixes: keep probing this long after fresh content (default 300ms)
  --seed S              mock-mega seed (default 42); same seed, same targets
  --seeds N             run every scenario/soak with N seeds: S, S+1, ... (default 1)
  --shard K/N           run only shard K of N of the plan (strategy x scenario x
                        seed x repetition, soaks, cost); merge joins the shards
  --cost-rounds N       matrix: warm walks per strategy for the cost (default 5; 0 skips)
  --cost-files N        matrix: repository size for the cost (default 3000)
  --cost-ttl DUR        matrix: antares-fs --ttl for the cost (default 5s)
  --files N             repository size (default 400)
  --cls N               open changelists (default 3)
  --mutate-every DUR    soak: mutation period (default 500ms)
  --mutate-count K      soak: mutations per period (default 2)
  --cl ID               soak/walk: mount changelist ID too
  --threads N           walker threads (default 16)
  --dirs-in-flight N    concurrent directory listings (default 64)
  --source-share X      share of sources lstat'ed and read (default 0.2)
  --fs-threads N        antares-fs --threads
  --fs-log-level L      antares-fs --log-level (default info)
  --fs-refresh M        antares-fs --refresh: merkle or per-dir (default: antares-fs's, merkle)
  --mega URL            attach to this mock-mega instead of starting one
  --mountpoint M        attach to this mounted antares-fs (needs --mega); a run
                        with --strategy switches it and switches it back after
  --upper DIR           with --mountpoint: its --upper directory
  --run-dir DIR         with --mountpoint: its --run-dir
  --root DIR            walk: a plain directory tree
  --bin-dir DIR         where mock-mega, antares-fs, antares-ctl are
                        (default $ANTARES_BIN_DIR, else this binary's directory)
  --json FILE           write every figure and event as JSON
  --html FILE           write a self-contained HTML report with SVG charts
  --keep                keep the private directories (logs, caches) and print them
  -h, --help            this text (after a COMMAND: that command's)
  -V, --version         print the version

Exit status: 0 when every outcome is the expected one (none reproduces ESTALE;
A, B, C and auto show no ESTALE and no stale read beyond the window), 1 when
one is not, 2 for a bad command line, 3 if nothing could run, 130 if
interrupted.
)";

// "estale-repro COMMAND --help" and "estale-repro help [COMMAND]".
struct CommandHelp {
  const char* name;
  const char* text;
};
constexpr CommandHelp kCommandHelp[] = {
    {"scenario", "usage: estale-repro [options] scenario NAME|all\n\n"
                 "Runs the scripted scenarios, one per ESTALE trigger: lower-refresh, cl-resync,\n"
                 "upper-replaced, dir-replaced, delete-readd. --strategy (default none) and\n"
                 "--repeat (default 1) choose what runs.\n"},
    {"soak", "usage: estale-repro [options] soak\n\n"
             "The walker loops while mock-mega mutates on a schedule (--mutate-every,\n"
             "--mutate-count); every read is judged by the oracle. --strategy (default all),\n"
             "--duration (default 30s).\n"},
    {"matrix", "usage: estale-repro [options] matrix\n\n"
               "Every strategy x every scenario (--repeat, default 3), plus a soak per\n"
               "strategy (--soak, default 20s; 0 skips) for each of --seeds seeds, then the\n"
               "cost of a warm walk per strategy side by side (--cost-rounds, default 5; 0\n"
               "skips) and a verdict with the recommended strategy. --shard K/N runs a\n"
               "deterministic slice. Exit 1 on any unexpected outcome.\n"},
    {"switch", "usage: estale-repro [options] switch\n\n"
               "Reproduces under none, switches to auto with antares-ctl mid-walk, and checks\n"
               "that the errors stop without a remount (--duration, default 6s).\n"},
    {"walk", "usage: estale-repro [options] walk [--root DIR]\n\n"
             "One buck2-style walk of the mount, judged by the oracle; with --root DIR, of a\n"
             "plain directory (no FUSE, no oracle).\n"},
    {"merge", "usage: estale-repro merge SHARD.json... [--json FILE] [--html FILE]\n\n"
              "Joins the --json reports of `matrix --shard K/N` runs into one report. Refuses\n"
              "reports made with other settings or a shard twice; fails when one is missing.\n"},
    {"help", "usage: estale-repro help [COMMAND]\n\nThe global help, or COMMAND's.\n"},
};

int print_command_help(const std::string& name) {
  for (const auto& c : kCommandHelp)
    if (name == c.name) {
      fputs(c.text, stdout);
      fputs("\nSee 'estale-repro --help' for the options.\n", stdout);
      return 0;
    }
  fprintf(stderr, "estale-repro: unknown command '%s'\nTry 'estale-repro --help'.\n", name.c_str());
  return 2;
}

[[noreturn]] void usage_error(const std::string& msg) {
  fprintf(stderr, "estale-repro: %s\nTry 'estale-repro --help'.\n", msg.c_str());
  exit(2);
}

int64_t duration_ms(const char* flag, const char* text) {
  auto d = antares::parse_duration(text);
  if (!d) usage_error(std::string("invalid duration for ") + flag + ": '" + text + "' (e.g. 300ms, 5s)");
  return d->count();
}

uint64_t number(const char* flag, const char* text, uint64_t max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || !end || *end || text[0] == '-' || !text[0] || v > max)
    usage_error(std::string("invalid value for ") + flag + ": '" + text + "'");
  return v;
}

double real_number(const char* flag, const char* text, double max) {
  char* end = nullptr;
  double v = strtod(text, &end);
  if (!end || *end || !text[0] || !(v >= 0) || v > max)
    usage_error(std::string("invalid value for ") + flag + ": '" + text + "'");
  return v;
}

std::vector<std::string> expand(const std::string& spec, const std::vector<std::string>& all, const char* what) {
  if (spec == "all") return all;
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t c = spec.find(',', pos);
    std::string item = spec.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    if (std::find(all.begin(), all.end(), item) == all.end()) usage_error(std::string("unknown ") + what + " '" + item + "'");
    out.push_back(item);
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return out;
}

std::string describe_run(const RunRecord& r) {
  std::string s = "[" + r.strategy + "] " + r.scenario + (r.mode == "scenario" ? " #" + std::to_string(r.rep) : "") + ": ";
  if (r.interrupted) return s + "interrupted";
  if (r.setup_failed) return s + "COULD NOT RUN: " + r.note;
  if (r.mode == "scenario") {
    s += r.reproduced ? std::string("ESTALE reproduced") + (r.persistent ? " (persistent)" : "") : "no ESTALE";
    s += r.converged ? ", fresh content read" : ", no fresh read";
  } else {
    s += std::to_string(r.stats.estale) + " ESTALE";
  }
  char b[256];
  snprintf(b, sizeof b, ", stale<=win %llu, stale>win %llu, wrong %llu, other errors %llu, %llu ops, %.2fs",
           static_cast<unsigned long long>(r.stats.stale_within), static_cast<unsigned long long>(r.stats.stale_beyond),
           static_cast<unsigned long long>(r.stats.wrong),
           static_cast<unsigned long long>(r.stats.enoent_exists + r.stats.other_errors),
           static_cast<unsigned long long>(r.stats.ops), (r.end_us - r.start_us) / 1e6);
  s += b;
  if (!r.target.empty()) s += ", target " + r.target;
  if (!r.note.empty() && r.mode != "scenario") s += " (" + r.note + ")";
  s += failure_of(r) ? "  <- UNEXPECTED" : "";
  return s;
}

// The walker alone over a plain tree: every failed operation is named, and
// --json writes the summary and the errors.
int local_walk(const Settings& s, const std::string& root, const std::string& json_path) {
  Recorder rec;
  WalkOptions w = walk_options(s, root, 0, &stop_requested());
  w.write_buck_out = false;
  auto sum = walk(w, &rec);
  auto events = rec.take();
  json errors = json::array();
  for (const auto& e : events)
    if (e.err)
      errors.push_back({{"op", op_name(e.op)}, {"path", e.path}, {"errno", e.err}, {"error", strerror(e.err)}});
  printf("walked %s: %llu dirs, %llu packages, %llu PACKAGE, %llu buildfiles, %llu .bzl, %llu sources, "
         "%zu operations, %zu errors, %.3fs\n",
         root.c_str(), static_cast<unsigned long long>(sum.dirs), static_cast<unsigned long long>(sum.packages),
         static_cast<unsigned long long>(sum.package_files), static_cast<unsigned long long>(sum.buildfiles),
         static_cast<unsigned long long>(sum.bzl), static_cast<unsigned long long>(sum.sources), events.size(),
         errors.size(), (sum.end_us - sum.start_us) / 1e6);
  constexpr size_t kShown = 50;
  for (size_t i = 0; i < errors.size() && i < kShown; ++i)
    printf("  %s %s: %s (errno %d)\n", errors[i]["op"].get<std::string>().c_str(),
           errors[i]["path"].get<std::string>().empty() ? "." : errors[i]["path"].get<std::string>().c_str(),
           errors[i]["error"].get<std::string>().c_str(), errors[i]["errno"].get<int>());
  if (errors.size() > kShown) printf("  ... and %zu more (--json FILE lists them all)\n", errors.size() - kShown);
  if (!json_path.empty()) {
    json j{{"root", root},
           {"dirs", sum.dirs},
           {"packages", sum.packages},
           {"package_files", sum.package_files},
           {"buildfiles", sum.buildfiles},
           {"bzl", sum.bzl},
           {"sources", sum.sources},
           {"operations", events.size()},
           {"seconds", (sum.end_us - sum.start_us) / 1e6},
           {"interrupted", sum.stopped},
           {"errors", errors}};
    if (int e = write_file_atomic(json_path, j.dump(2, ' ', false, json::error_handler_t::replace) + "\n")) {
      fprintf(stderr, "estale-repro: cannot write %s: %s\n", json_path.c_str(), strerror(e));
      return 3;
    }
  }
  if (stop_requested().load()) return 130;
  return errors.empty() ? 0 : 1;
}

// Prints the table, the verdict and the failures; writes --json/--html;
// returns the exit status.
int finish(const Report& report, const std::string& json_path, const std::string& html_path) {
  printf("\n%s", render_table(report).c_str());
  printf("\n%s", render_summary(summarize(report)).c_str());
  if (!report.failures.empty()) {
    printf("\nUnexpected outcomes:\n");
    for (const auto& f : report.failures) printf("  - %s\n", f.c_str());
  }
  if (report.interrupted) {
    size_t done = 0;
    for (const auto& r : report.runs) done += !r.interrupted;
    printf("\nInterrupted: %zu of %d planned runs finished.\n", done, report.planned_units);
  }
  fflush(stdout);
  int rc = 0;
  if (!json_path.empty()) {
    std::string text = report_json(report).dump(2, ' ', false, json::error_handler_t::replace) + "\n";
    if (int e = write_file_atomic(json_path, text)) {
      fprintf(stderr, "estale-repro: cannot write %s: %s\n", json_path.c_str(), strerror(e));
      rc = 3;
    }
  }
  if (!html_path.empty()) {
    if (int e = write_file_atomic(html_path, render_html(report))) {
      fprintf(stderr, "estale-repro: cannot write %s: %s\n", html_path.c_str(), strerror(e));
      rc = 3;
    }
  }
  if (report.interrupted) return 130;
  bool all_setup_failed = !report.runs.empty();
  for (const auto& r : report.runs) all_setup_failed &= r.setup_failed;
  if (all_setup_failed) return 3;
  if (!report.failures.empty()) return 1;
  return rc;
}

int merge_main(const std::vector<std::string>& files, const std::string& json_path, const std::string& html_path) {
  std::vector<Report> parts;
  for (const auto& f : files) {
    std::ifstream in(f);
    if (!in) {
      fprintf(stderr, "estale-repro: cannot read %s: %s\n", f.c_str(), strerror(errno));
      return 2;
    }
    json j = json::parse(in, nullptr, false);
    if (j.is_discarded()) {
      fprintf(stderr, "estale-repro: %s is not JSON\n", f.c_str());
      return 2;
    }
    auto r = report_from_json(j);
    if (!r) {
      fprintf(stderr, "estale-repro: %s: %s\n", f.c_str(), r.error().message.c_str());
      return 2;
    }
    parts.push_back(std::move(*r));
  }
  auto merged = merge_reports(std::move(parts));
  if (!merged) {
    fprintf(stderr, "estale-repro: cannot merge: %s\n", merged.error().message.c_str());
    return 2;
  }
  return finish(*merged, json_path, html_path);
}

int real_main(int argc, char** argv) {
  const std::string typed = shell_command(argc, argv);  // before getopt_long permutes argv
  Settings s;
  std::string strategy_spec, json_path, html_path, root;
  int repeat = -1;
  int64_t duration = -1, soak_ms = 20000;
  uint64_t seeds = 1;
  Shard shard;
  bool sharded = false;
  enum {
    kStrategy = 1000, kRepeat, kDuration, kSoak, kTtl, kEntry, kAttr, kSlack, kHold, kSeed, kFiles, kCls, kEvery,
    kCount, kCl, kThreads, kDirs, kShare, kFsThreads, kFsLog, kFsRefresh, kMega, kMount, kUpper, kRunDir, kRoot, kBin, kJson,
    kHtml, kKeep, kSeeds, kShard, kCostRounds, kCostFiles, kCostTtl
  };
  static const option kOpts[] = {
      {"strategy", required_argument, nullptr, kStrategy}, {"repeat", required_argument, nullptr, kRepeat},
      {"duration", required_argument, nullptr, kDuration}, {"soak", required_argument, nullptr, kSoak},
      {"ttl", required_argument, nullptr, kTtl},           {"entry-timeout", required_argument, nullptr, kEntry},
      {"attr-timeout", required_argument, nullptr, kAttr}, {"slack", required_argument, nullptr, kSlack},
      {"hold", required_argument, nullptr, kHold},         {"seed", required_argument, nullptr, kSeed},
      {"files", required_argument, nullptr, kFiles},       {"cls", required_argument, nullptr, kCls},
      {"mutate-every", required_argument, nullptr, kEvery}, {"mutate-count", required_argument, nullptr, kCount},
      {"cl", required_argument, nullptr, kCl},             {"threads", required_argument, nullptr, kThreads},
      {"dirs-in-flight", required_argument, nullptr, kDirs}, {"source-share", required_argument, nullptr, kShare},
      {"fs-threads", required_argument, nullptr, kFsThreads}, {"fs-log-level", required_argument, nullptr, kFsLog},
      {"fs-refresh", required_argument, nullptr, kFsRefresh},
      {"mega", required_argument, nullptr, kMega},         {"mountpoint", required_argument, nullptr, kMount},
      {"upper", required_argument, nullptr, kUpper},       {"run-dir", required_argument, nullptr, kRunDir},
      {"root", required_argument, nullptr, kRoot},         {"bin-dir", required_argument, nullptr, kBin},
      {"json", required_argument, nullptr, kJson},         {"html", required_argument, nullptr, kHtml},
      {"keep", no_argument, nullptr, kKeep},               {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {"seeds", required_argument, nullptr, kSeeds},       {"shard", required_argument, nullptr, kShard},
      {"cost-rounds", required_argument, nullptr, kCostRounds},
      {"cost-files", required_argument, nullptr, kCostFiles},
      {"cost-ttl", required_argument, nullptr, kCostTtl},
      {nullptr, 0, nullptr, 0}};
  bool help = false;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":hV", kOpts, nullptr)) != -1) {
    switch (c) {
      case kStrategy: strategy_spec = optarg; break;
      case kRepeat: repeat = static_cast<int>(number("--repeat", optarg, 100000)); break;
      case kDuration: duration = duration_ms("--duration", optarg); break;
      case kSoak: soak_ms = duration_ms("--soak", optarg); break;
      case kTtl: s.ttl_ms = duration_ms("--ttl", optarg); break;
      case kEntry: s.entry_timeout = real_number("--entry-timeout", optarg, 86400); break;
      case kAttr: s.attr_timeout = real_number("--attr-timeout", optarg, 86400); break;
      case kSlack: s.slack_ms = duration_ms("--slack", optarg); break;
      case kHold: s.hold_ms = duration_ms("--hold", optarg); break;
      case kSeed: s.seed = number("--seed", optarg, UINT64_MAX); break;
      case kFiles: s.files = number("--files", optarg, 20'000'000); break;
      case kCls: s.cls = static_cast<uint32_t>(number("--cls", optarg, 10000)); break;
      case kEvery: s.mutate_every_ms = duration_ms("--mutate-every", optarg); break;
      case kCount: s.mutate_count = static_cast<uint32_t>(number("--mutate-count", optarg, 100000)); break;
      case kCl: s.soak_cl = static_cast<uint32_t>(number("--cl", optarg, UINT32_MAX)); break;
      case kThreads: s.threads = static_cast<unsigned>(std::max<uint64_t>(1, number("--threads", optarg, 4096))); break;
      case kDirs: s.dirs_in_flight = static_cast<unsigned>(std::max<uint64_t>(1, number("--dirs-in-flight", optarg, 100000))); break;
      case kShare: s.source_share = real_number("--source-share", optarg, 1.0); break;
      case kFsThreads: s.fs_threads = static_cast<unsigned>(number("--fs-threads", optarg, 4096)); break;
      case kFsLog: s.fs_log_level = optarg; break;
      case kFsRefresh:
        if (std::string(optarg) != "merkle" && std::string(optarg) != "per-dir")
          usage_error(std::string("--fs-refresh: unknown mode '") + optarg + "' (merkle, per-dir)");
        s.fs_refresh = optarg;
        break;
      case kMega: s.mega_url = optarg; break;
      case kMount: s.mountpoint = optarg; break;
      case kUpper: s.upper = optarg; break;
      case kRunDir: s.run_dir = optarg; break;
      case kRoot: root = optarg; break;
      case kBin: s.bin_dir = optarg; break;
      case kJson: json_path = optarg; break;
      case kHtml: html_path = optarg; break;
      case kKeep: s.keep = true; break;
      case kSeeds: seeds = std::max<uint64_t>(1, number("--seeds", optarg, 10000)); break;
      case kShard: {
        auto sh = parse_shard(optarg);
        if (!sh) usage_error(sh.error().message);
        shard = *sh;
        sharded = true;
        break;
      }
      case kCostRounds: s.cost_rounds = static_cast<unsigned>(number("--cost-rounds", optarg, 1000)); break;
      case kCostFiles: s.cost_files = std::max<uint64_t>(1, number("--cost-files", optarg, 2'000'000)); break;
      case kCostTtl: s.cost_ttl_ms = duration_ms("--cost-ttl", optarg); break;
      case 'h': help = true; break;
      case 'V': fputs(antares::version_text("estale-repro").c_str(), stdout); return 0;
      case ':': usage_error(std::string("option ") + argv[optind - 1] + " needs a value");
      default: usage_error(std::string("unknown option ") + argv[optind - 1]);
    }
  }
  if (optind < argc && std::string(argv[optind]) == "help")
    return optind + 1 < argc ? print_command_help(argv[optind + 1]) : (fputs(kUsage, stdout), 0);
  if (help) return optind < argc ? print_command_help(argv[optind]) : (fputs(kUsage, stdout), 0);
  if (optind >= argc) usage_error("a command is required (scenario, soak, matrix, switch, walk, merge)");
  std::string command = argv[optind++];
  std::string scenario_spec;
  std::vector<std::string> merge_files;
  if (command == "scenario") {
    if (optind >= argc) usage_error("scenario needs a NAME or 'all'");
    scenario_spec = argv[optind++];
  } else if (command == "merge") {
    while (optind < argc) merge_files.push_back(argv[optind++]);
    if (merge_files.empty()) usage_error("merge needs the JSON reports to combine");
    if (json_path.empty() && html_path.empty()) usage_error("merge needs --json FILE and/or --html FILE for the result");
  }
  if (optind < argc) usage_error(std::string("unexpected argument '") + argv[optind] + "'");
  if (command != "scenario" && command != "soak" && command != "matrix" && command != "switch" && command != "walk" &&
      command != "merge")
    usage_error("unknown command '" + command + "'");
  if (sharded && command != "matrix" && command != "scenario" && command != "soak")
    usage_error("--shard applies to matrix, scenario and soak");
  if (command == "merge") return merge_main(merge_files, json_path, html_path);
  if (!s.mountpoint.empty() && s.mega_url.empty()) usage_error("--mountpoint needs --mega (the server it mounts)");
  if (s.bin_dir.empty()) {
    const char* env = getenv("ANTARES_BIN_DIR");
    s.bin_dir = env && *env ? env : self_dir();
  }
  install_stop_handlers();
  if (command == "walk" && !root.empty()) return local_walk(s, root, json_path);

  Report report;
  report.start_us = wall_us();
  report.command = typed;
  report.config = json{{"seed", s.seed},
                       {"seeds", seeds},
                       {"files", s.files},
                       {"cls", s.cls},
                       {"ttl_ms", s.ttl_ms},
                       {"entry_timeout_s", s.entry_timeout},
                       {"attr_timeout_s", s.attr_timeout},
                       {"slack_ms", s.slack_ms},
                       {"window_ms", s.window_us() / 1000},
                       {"hold_ms", s.hold_ms},
                       {"threads", s.threads},
                       {"dirs_in_flight", s.dirs_in_flight},
                       {"source_share", s.source_share},
                       {"mutate_every_ms", s.mutate_every_ms},
                       {"mutate_count", s.mutate_count},
                       {"attached_mega", s.mega_url},
                       {"attached_mountpoint", s.mountpoint},
                       {"bin_dir", s.bin_dir}};
  if (command == "matrix" || command == "scenario") report.config["repeat"] = repeat >= 0 ? repeat : command == "matrix" ? 3 : 1;
  if (command == "matrix") report.config["soak_ms"] = soak_ms;
  if (command == "soak") report.config["soak_ms"] = duration >= 0 ? duration : 30000;
  if (sharded) report.config["shard"] = shard.text();
  report.shards = {sharded ? shard.text() : ""};
  Progress progress;
  auto add = [&](RunRecord r) {
    progress.line(describe_run(r));
    if (!r.kept_dir.empty()) progress.line("  kept: " + r.kept_dir + " (mock-mega.log, antares-fs.log, upper/, cache/)");
    if (auto f = failure_of(r)) report.failures.push_back(*f);
    report.runs.push_back(std::move(r));
  };
  auto interrupted = [] { return stop_requested().load(); };

  if (command == "scenario" || command == "soak" || command == "matrix") {
    // The plan: every unit of the command, in order; this shard's slice of it.
    const auto scenarios = command == "soak" ? std::vector<std::string>{}
                           : command == "scenario" ? expand(scenario_spec, all_scenarios(), "scenario")
                                                   : all_scenarios();
    const auto strategies =
        expand(strategy_spec.empty() ? (command == "scenario" ? "none" : "all") : strategy_spec, all_strategies(), "strategy");
    const int reps = command == "matrix" ? (repeat >= 0 ? repeat : 3) : std::max(1, repeat);
    const int64_t soak_len = command == "soak" ? (duration >= 0 ? duration : 30000) : command == "matrix" ? soak_ms : 0;
    std::vector<Unit> plan;
    auto push = [&](Unit u) {
      u.index = static_cast<int>(plan.size());
      plan.push_back(std::move(u));
    };
    for (const auto& st : strategies)
      for (uint64_t k = 0; k < seeds; ++k) {
        for (const auto& sc : scenarios)
          for (int rep = 0; rep < reps; ++rep) push({Unit::Kind::scenario, st, sc, s.seed + k, rep, 0, 4.0});
        if (soak_len > 0) push({Unit::Kind::soak, st, "soak", s.seed + k, 0, 0, soak_len / 1000.0 + 4});
      }
    const bool cost = command == "matrix" && s.cost_rounds > 0 && s.mountpoint.empty() && s.mega_url.empty();
    if (cost)
      push({Unit::Kind::cost, "all", "cost", s.seed, 0, 0,
            4.0 + static_cast<double>(strategies.size()) * (4.0 + 0.4 * s.cost_rounds)});
    report.planned_units = static_cast<int>(plan.size());
    const std::vector<Unit> mine = select_shard(plan, shard);
    if (sharded) progress.line("shard " + shard.text() + ": " + std::to_string(mine.size()) + " of " +
                               std::to_string(plan.size()) + " planned runs");
    Eta eta(mine);
    progress.set_plan(&eta);
    for (size_t i = 0; i < mine.size() && !interrupted(); ++i) {
      const Unit& u = mine[i];
      eta.begin(i);
      Settings su = s;  // outlives the run's Session, which refers to it
      su.seed = u.seed;
      if (u.kind == Unit::Kind::cost) {
        report.cost = run_cost(su, strategies, &progress, &report.cost_config);
        report.cost_config["unit"] = u.index;
        std::string line = "[all] cost:";
        for (const auto& c : report.cost)
          line += " " + c.strategy + " " + (c.walk_seconds.empty() ? "not measured (" + c.note + ")"
                                                                    : rate_str(c.entries_per_s()) + " entries/s");
        progress.line(line);
      } else {
        RunRecord r = u.kind == Unit::Kind::soak ? run_soak(su, u.strategy, soak_len, &progress)
                                                 : run_scenario(su, u.scenario, u.strategy, u.rep, &progress);
        r.unit = u.index;
        add(std::move(r));
      }
      eta.end();
    }
    progress.set_plan(nullptr);
    size_t done = report.runs.size() + (report.cost.empty() ? 0 : 1);
    report.interrupted = interrupted() && (done < mine.size() || std::any_of(report.runs.begin(), report.runs.end(),
                                                                             [](const RunRecord& r) { return r.interrupted; }));
  } else if (command == "switch") {
    report.planned_units = 1;
    RunRecord r = run_switch(s, duration >= 0 ? duration : 6000, &progress);
    r.unit = 0;
    add(std::move(r));
    report.interrupted = interrupted();
  } else {  // walk through a mount, with the oracle
    report.planned_units = 1;
    std::string want;  // "" with --mountpoint: keep the mount's strategy
    if (!strategy_spec.empty()) {
      auto v = expand(strategy_spec, all_strategies(), "strategy");
      if (v.size() != 1) usage_error("walk takes one --strategy");
      want = v[0];
    } else if (s.mountpoint.empty()) {
      want = "auto";  // antares-fs's default
    }
    RunRecord r;
    r.mode = "walk";
    r.scenario = "walk";
    r.strategy = want;
    r.seed = s.seed;
    r.unit = 0;
    r.start_us = wall_us();
    auto ss = Session::open(s, want, s.soak_cl);
    if (!ss) {
      if (interrupted()) r.interrupted = true, r.note = "interrupted";
      else r.setup_failed = true, r.note = "setup: " + ss.error().describe();
      if (r.strategy.empty()) r.strategy = "(mount's)";
    } else {
      if (r.strategy.empty()) r.strategy = (*ss)->current_strategy();
      if (r.strategy.empty()) r.strategy = "(unknown)";
      (void)walk(walk_options(s, (*ss)->fs().mountpoint(), 0, &stop_requested()), &(*ss)->recorder());
      (void)(*ss)->sync_log();
      (*ss)->analyze_into(&r, {"buck-out/"});
      r.fs_estale = (*ss)->fs_log().all();
      if (auto st = (*ss)->fs().status()) r.fs_status = *st;
      r.markers = (*ss)->markers();
      if (auto n = (*ss)->close(); !n.empty()) r.note = n;
      r.kept_dir = (*ss)->kept_dir();
      r.interrupted = interrupted();
    }
    r.end_us = wall_us();
    r.reproduced = r.stats.estale > 0;
    r.ok = !r.setup_failed && !r.interrupted && r.note.empty() &&
           (r.strategy == "none" || (r.stats.estale == 0 && r.stats.stale_beyond == 0 && r.stats.wrong == 0));
    add(std::move(r));
    report.interrupted = interrupted();
  }
  report.end_us = wall_us();
  return finish(report, json_path, html_path);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return real_main(argc, argv);
  } catch (const std::exception& e) {
    fprintf(stderr, "estale-repro: internal error: %s\n", e.what());
  } catch (...) {
    fprintf(stderr, "estale-repro: internal error\n");
  }
  return 3;
}
