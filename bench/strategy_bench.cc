// The stale-handle strategies side by side, in one run:
//  - in-process (UnionFs over local directories, no FUSE): the cost of a
//    lookup+getattr and of an open+read per strategy, warm, and the cost of
//    recovering after every file was replaced behind the union;
//  - through a real mount (antares-fs + in-process mock-mega): a warm
//    buck2-style walk (readdir, stat, read BUCK files) per strategy, where the
//    kernel cache timeouts each strategy affords dominate.
// Benchmarks are named BM_X/<strategy>; each mount is set up once and kept
// for every call the benchmark library makes (so --benchmark_min_time bounds
// the run), the daemon's and the union's logs stay quiet, and a table of
// every figure by strategy is printed at the end (medians when
// --benchmark_repetitions is given).
// Run: build/bin/strategy_bench --benchmark_min_time=0.1 --benchmark_repetitions=3 (under a minute)
//      (figures and the command in docs/benchmarks.md)
#include <benchmark/benchmark.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/log.h"

#include "fs/union/union_fs.h"
#include "mock-mega/server.h"
#include "testing/mount_fixture.h"

namespace {

using namespace antares;
using namespace antares::fs;
const char* kStrategies[] = {"none", "A", "B", "C", "auto"};
constexpr int kDirs = 50, kFiles = 40;

// A lower tree of kDirs x kFiles small files; upper and CL empty.
struct Tree {
  testing::TempDir tmp;
  Tree() {
    for (auto d : {"upper", "cl", "lower"}) std::filesystem::create_directories(tmp / d);
    for (int d = 0; d < kDirs; ++d) {
      std::string dir = tmp / ("lower/d" + std::to_string(d));
      std::filesystem::create_directories(dir);
      for (int f = 0; f < kFiles; ++f) std::ofstream(dir + "/f" + std::to_string(f)) << std::string(512, 'x');
    }
  }
  void replace_all() {
    for (int d = 0; d < kDirs; ++d)
      for (int f = 0; f < kFiles; ++f) {
        std::string p = tmp / ("lower/d" + std::to_string(d) + "/f" + std::to_string(f));
        std::ofstream(p + ".new") << std::string(512, 'y');
        std::filesystem::rename(p + ".new", p);
      }
  }
};

struct Union {
  StrategySet set;
  StrategySlot slot{set.find("none")};
  std::unique_ptr<UnionFs> fs;
  explicit Union(Tree& t, const char* strategy) {
    slot.set(set.find(strategy));
    std::vector<std::unique_ptr<Layer>> layers;
    layers.push_back(std::move(*Layer::open("upper", t.tmp / "upper", true)));
    layers.push_back(std::move(*Layer::open("cl", t.tmp / "cl", false)));
    layers.push_back(std::move(*Layer::open("lower", t.tmp / "lower", false)));
    fs = std::make_unique<UnionFs>(std::move(layers), slot);
    if (!fs->init().ok()) abort();
  }
  // Looks up and stats every file; returns how many failed.
  int walk(bool read) {
    int errors = 0;
    char buf[1024];
    for (int d = 0; d < kDirs; ++d) {
      auto dir = fs->lookup(kRootNode, "d" + std::to_string(d));
      if (!dir.ok()) { ++errors; continue; }
      for (int f = 0; f < kFiles; ++f) {
        auto e = fs->lookup(dir->node, "f" + std::to_string(f));
        if (!e.ok()) { ++errors; continue; }
        if (!fs->getattr(e->node).ok()) ++errors;
        if (read) {
          auto fd = fs->open(e->node, O_RDONLY);
          if (!fd.ok() || ::pread(fd->get(), buf, sizeof buf, 0) < 0) ++errors;
        }
      }
    }
    return errors;
  }
};

// One tree for every union benchmark and every call the library makes:
// creating and removing its 2000 files per call cost more than the
// benchmarks themselves. Replacing its files (BM_UnionWalkAfterReplace)
// changes only their contents; each call builds a fresh union over it.
Tree& shared_tree() {
  static Tree t;
  return t;
}

void BM_UnionLookupStat(benchmark::State& state, const char* strategy) {
  Tree& t = shared_tree();
  Union u(t, strategy);
  u.walk(false);
  for (auto _ : state) benchmark::DoNotOptimize(u.walk(false));
  state.SetItemsProcessed(state.iterations() * kDirs * kFiles);
}

void BM_UnionOpenRead(benchmark::State& state, const char* strategy) {
  Tree& t = shared_tree();
  Union u(t, strategy);
  u.walk(true);
  for (auto _ : state) benchmark::DoNotOptimize(u.walk(true));
  state.SetItemsProcessed(state.iterations() * kDirs * kFiles);
}

// Every file replaced, then one walk: what each strategy pays to stay correct
// (B: the invalidation calls its owner makes; none: errors, counted).
void BM_UnionWalkAfterReplace(benchmark::State& state, const char* strategy) {
  Tree& t = shared_tree();
  Union u(t, strategy);
  int64_t errors = 0;
  for (auto _ : state) {
    state.PauseTiming();
    u.walk(false);
    t.replace_all();
    state.ResumeTiming();
    if (u.slot.get().invalidates()) {
      std::vector<LayerChange> changes;
      for (int d = 0; d < kDirs; ++d)
        for (int f = 0; f < kFiles; ++f)
          changes.push_back({LayerChange::Kind::replaced, "d" + std::to_string(d) + "/f" + std::to_string(f)});
      benchmark::DoNotOptimize(u.fs->on_layer_change(2, changes));
    }
    errors += u.walk(false);
  }
  state.counters["errors_per_walk"] = double(errors) / double(state.iterations());
  state.SetItemsProcessed(state.iterations() * kDirs * kFiles);
}

// --- through the kernel ------------------------------------------------------

std::string self_dir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  buf[n > 0 ? n : 0] = '\0';
  return std::filesystem::path(buf).parent_path();
}

struct MountWalk {
  size_t entries = 0, reads = 0, errors = 0;
  void walk(const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) { ++errors; return; }
    std::vector<std::string> subdirs;
    while (auto* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      ++entries;
      std::string p = dir + "/" + name;
      struct stat st;
      if (::lstat(p.c_str(), &st) != 0) { ++errors; continue; }
      if (S_ISDIR(st.st_mode)) subdirs.push_back(p);
      else if (name == "BUCK" || name == "PACKAGE" || name == ".buckconfig") {
        std::ifstream f(p);
        std::string s((std::istreambuf_iterator<char>(f)), {});
        if (!f.good() && !f.eof()) ++errors;
        ++reads;
      }
    }
    ::closedir(d);
    for (auto& s : subdirs) walk(s);
  }
};

// One mock-mega for every mount, and one mount per strategy, made on first
// use and kept until the end of the run: the benchmark library calls a
// benchmark function several times (to find its iteration count, and once
// per repetition), and a mount per call made --benchmark_min_time meaningless.
struct MountFixtures {
  std::unique_ptr<mock::MockMegaServer> mega;
  std::string mega_error;
  struct One {
    std::unique_ptr<testing::TempDir> tmp;
    std::unique_ptr<testing::Mount> mount;
  };
  std::map<std::string, One> mounts;

  testing::Mount* get(const char* strategy, std::string* error) {
    if (!mega && mega_error.empty()) {
      mock::ServerOptions so;
      so.repo = {.seed = 3, .files = 3000, .cls = 1};
      mega = std::make_unique<mock::MockMegaServer>(so);
      if (auto p = mega->start(); !p.ok()) mega_error = "mock-mega did not start: " + p.error().describe();
    }
    if (!mega_error.empty()) {
      *error = mega_error;
      return nullptr;
    }
    auto& one = mounts[strategy];
    if (!one.mount) {
      one.tmp = std::make_unique<testing::TempDir>();
      testing::MountOptions mo;
      mo.strategy = strategy;
      mo.ttl = "5s";  // its log goes to a file under tmp, never to this terminal
      one.mount = std::make_unique<testing::Mount>(*one.tmp, mega->base_url(), mo);
      if (one.mount->ok()) {
        MountWalk cold;
        cold.walk(one.mount->mnt());  // fetches the listings and BUCK blobs once
      }
    }
    if (!one.mount->ok()) {
      *error = "mount failed: " + one.mount->log();
      return nullptr;
    }
    return one.mount.get();
  }
  void clear() {
    mounts.clear();  // unmounts
    mega.reset();
  }
};
MountFixtures& fixtures() {
  static MountFixtures f;
  return f;
}

void BM_MountWarmWalk(benchmark::State& state, const char* strategy) {
  ::setenv("ANTARES_BIN_DIR", self_dir().c_str(), 0);
  std::string error;
  testing::Mount* m = fixtures().get(strategy, &error);
  if (!m) return state.SkipWithError(error.c_str());
  size_t entries = 0, errors = 0;
  for (auto _ : state) {
    MountWalk w;
    w.walk(m->mnt());
    entries += w.entries;
    errors += w.errors;
  }
  state.counters["errors"] = double(errors);
  state.SetItemsProcessed(int64_t(entries));
}

// Collects every run for the summary table, and prints as usual meanwhile.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      std::string name = r.benchmark_name();
      // BM_Family/strategy[/real_time][_median|_mean|...]: one cell per family x strategy.
      size_t slash = name.find('/');
      if (slash == std::string::npos) continue;
      std::string family = name.substr(0, slash), rest = name.substr(slash + 1);
      std::string strategy = rest.substr(0, rest.find_first_of("/_"));
      bool aggregate = r.run_type == Run::RT_Aggregate;
      if (aggregate && r.aggregate_name == "cv") {  // the noise: stddev / mean of the repetitions
        auto items = r.counters.find("items_per_second");
        if (items != r.counters.end()) cells_[family][strategy].cv = double(items->second);
        continue;
      }
      if (aggregate && r.aggregate_name != "median") continue;
      Cell& c = cells_[family][strategy];
      if (c.from_median && !aggregate) continue;
      if (aggregate) {
        double cv = c.cv;
        c = Cell{};
        c.cv = cv;
      }
      c.from_median = aggregate;
      c.error = r.error_occurred ? r.error_message : "";
      auto items = r.counters.find("items_per_second");
      c.items_per_s = items == r.counters.end() ? 0 : double(items->second);
      c.real_ms = r.GetAdjustedRealTime() * (r.time_unit == benchmark::kMillisecond ? 1.0
                                              : r.time_unit == benchmark::kMicrosecond ? 1e-3 : 1e-6);
      for (const char* k : {"errors", "errors_per_walk"})
        if (auto e = r.counters.find(k); e != r.counters.end()) c.errors = double(e->second);
      if (std::find(families_.begin(), families_.end(), family) == families_.end()) families_.push_back(family);
    }
    ConsoleReporter::ReportRuns(runs);
  }

  void PrintSummary() const {
    if (families_.empty()) return;
    printf("\nSummary by strategy (items/s; the mount walk also in ms per walk; with --benchmark_repetitions the\n"
           "median, and +-N%% the coefficient of variation across the repetitions):\n");
    printf("%-26s", "benchmark");
    for (const char* st : kStrategies) printf(" %18s", st);
    printf("\n");
    for (const auto& f : families_) {
      printf("%-26s", f.c_str());
      for (const char* st : kStrategies) {
        auto it = cells_.at(f).find(st);
        std::string v = "-";
        if (it != cells_.at(f).end()) {
          const Cell& c = it->second;
          char b[64];
          if (!c.error.empty()) snprintf(b, sizeof b, "error");
          else if (f == "BM_MountWarmWalk") snprintf(b, sizeof b, "%.1fk %.0fms", c.items_per_s / 1e3, c.real_ms);
          else snprintf(b, sizeof b, "%.1fk", c.items_per_s / 1e3);
          v = b;
          if (c.error.empty() && c.cv > 0) v += " +-" + std::to_string(int(c.cv * 100 + 0.5)) + "%";
        }
        printf(" %18s", v.c_str());
      }
      printf("\n");
      bool any_errors = false;
      for (const auto& [st, c] : cells_.at(f)) any_errors |= c.errors > 0;
      if (any_errors) {
        printf("%-26s", "  errors per walk");
        for (const char* st : kStrategies) {
          auto it = cells_.at(f).find(st);
          printf(" %18s", it == cells_.at(f).end() ? "-" : std::to_string(int64_t(it->second.errors)).c_str());
        }
        printf("\n");
      }
    }
  }

 private:
  struct Cell {
    double cv = 0;
    double items_per_s = 0, real_ms = 0, errors = 0;
    bool from_median = false;
    std::string error;
  };
  std::vector<std::string> families_;
  std::map<std::string, std::map<std::string, Cell>> cells_;
};

}  // namespace

int main(int argc, char** argv) {
  // The strategies log each ESTALE they meet (tens of thousands under none).
  antares::log::set_level(antares::log::Level::error);
  for (const char* st : kStrategies) {
    benchmark::RegisterBenchmark((std::string("BM_UnionLookupStat/") + st).c_str(), BM_UnionLookupStat, st);
    benchmark::RegisterBenchmark((std::string("BM_UnionOpenRead/") + st).c_str(), BM_UnionOpenRead, st);
    // Each iteration first replaces 2000 files (untimed, but the run's main
    // cost), so a few iterations per repetition.
    benchmark::RegisterBenchmark((std::string("BM_UnionWalkAfterReplace/") + st).c_str(), BM_UnionWalkAfterReplace, st)
        ->Iterations(4);
  }
  for (const char* st : kStrategies)
    benchmark::RegisterBenchmark((std::string("BM_MountWarmWalk/") + st).c_str(), BM_MountWarmWalk, st)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  fixtures().clear();
  reporter.PrintSummary();
  benchmark::Shutdown();
  return 0;
}
