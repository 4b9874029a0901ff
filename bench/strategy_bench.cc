// The stale-handle strategies side by side, in one run:
//  - in-process (UnionFs over local directories, no FUSE): the cost of a
//    lookup+getattr and of an open+read per strategy, warm, and the cost of
//    recovering after every file was replaced behind the union;
//  - through a real mount (antares-fs + in-process mock-mega): a warm
//    buck2-style walk (readdir, stat, read BUCK files) per strategy, where the
//    kernel cache timeouts each strategy affords dominate.
// Run: build/bin/strategy_bench   (figures and the command in docs/benchmarks.md)
#include <benchmark/benchmark.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>

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

void BM_UnionLookupStat(benchmark::State& state) {
  Tree t;
  Union u(t, kStrategies[state.range(0)]);
  u.walk(false);
  for (auto _ : state) benchmark::DoNotOptimize(u.walk(false));
  state.SetLabel(kStrategies[state.range(0)]);
  state.SetItemsProcessed(state.iterations() * kDirs * kFiles);
}
BENCHMARK(BM_UnionLookupStat)->DenseRange(0, 4);

void BM_UnionOpenRead(benchmark::State& state) {
  Tree t;
  Union u(t, kStrategies[state.range(0)]);
  u.walk(true);
  for (auto _ : state) benchmark::DoNotOptimize(u.walk(true));
  state.SetLabel(kStrategies[state.range(0)]);
  state.SetItemsProcessed(state.iterations() * kDirs * kFiles);
}
BENCHMARK(BM_UnionOpenRead)->DenseRange(0, 4);

// Every file replaced, then one walk: what each strategy pays to stay correct
// (B: the invalidation calls its owner makes; none: errors, counted).
void BM_UnionWalkAfterReplace(benchmark::State& state) {
  Tree t;
  Union u(t, kStrategies[state.range(0)]);
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
  state.SetLabel(kStrategies[state.range(0)]);
  state.counters["errors_per_walk"] = double(errors) / double(state.iterations());
  state.SetItemsProcessed(state.iterations() * kDirs * kFiles);
}
BENCHMARK(BM_UnionWalkAfterReplace)->DenseRange(0, 4)->Iterations(20);

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

void BM_MountWarmWalk(benchmark::State& state) {
  ::setenv("ANTARES_BIN_DIR", self_dir().c_str(), 0);
  mock::ServerOptions so;
  so.repo = {.seed = 3, .files = 3000, .cls = 1};
  mock::MockMegaServer mega(so);
  if (!mega.start().ok()) return state.SkipWithError("mock-mega did not start");
  testing::TempDir tmp;
  testing::MountOptions mo;
  mo.strategy = kStrategies[state.range(0)];
  mo.ttl = "5s";
  testing::Mount m(tmp, mega.base_url(), mo);
  if (!m.ok()) return state.SkipWithError(("mount failed: " + m.log()).c_str());
  MountWalk first;
  first.walk(m.mnt());  // cold: fetches listings and BUCK blobs
  size_t entries = 0, errors = 0;
  for (auto _ : state) {
    MountWalk w;
    w.walk(m.mnt());
    entries += w.entries;
    errors += w.errors;
  }
  state.SetLabel(kStrategies[state.range(0)]);
  state.counters["errors"] = double(errors);
  state.SetItemsProcessed(int64_t(entries));
}
BENCHMARK(BM_MountWarmWalk)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
