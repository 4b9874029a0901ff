// mock-mega on loopback: listings/s and blob GETs/s through the real client
// with keep-alive, and the time and memory to generate a repository.
// Run: build/bin/mock_mega_bench   (see docs/benchmarks.md for recorded figures)
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <memory>

#include "fs/remote/mega_client.h"
#include "mock-mega/server.h"

namespace {

antares::remote::MegaClientOptions client_options(const std::string& base) {
  antares::remote::MegaClientOptions o;
  o.base_url = base;
  return o;
}

using antares::mock::MockMegaServer;
using antares::mock::Repository;
using antares::mock::ServerOptions;
using antares::remote::ItemType;
using antares::remote::MegaClient;

// One server for the HTTP benchmarks, started once.
struct Fixture {
  std::unique_ptr<MockMegaServer> server;
  std::vector<std::string> dirs;
  std::vector<antares::Oid> small_blobs, large_blobs;

  Fixture() {
    ServerOptions o;
    o.repo = {.seed = 1, .files = 20000, .cls = 3};
    server = std::make_unique<MockMegaServer>(o);
    if (!server->start().ok()) abort();
    MegaClient c(client_options(server->base_url()));
    std::vector<std::string> todo = {"/"};
    while (!todo.empty() && dirs.size() < 2000) {
      std::string d = todo.back();
      todo.pop_back();
      dirs.push_back(d);
      for (const auto& it : *c.content_hash(d)) {
        std::string p = d == "/" ? "/" + it.name : d + "/" + it.name;
        if (it.type == ItemType::directory) todo.push_back(p);
        else if (it.size && *it.size <= 4096) small_blobs.push_back(it.oid);
        else if (it.size && *it.size >= 32768) large_blobs.push_back(it.oid);
      }
    }
  }
  static Fixture& get() {
    static Fixture f;
    return f;
  }
};

void BM_ListingKeepAlive(benchmark::State& state) {
  auto& f = Fixture::get();
  MegaClient c(client_options(f.server->base_url()));  // one client per thread: its own connections
  size_t i = state.thread_index();
  for (auto _ : state) {
    auto r = c.content_hash(f.dirs[i++ % f.dirs.size()]);
    if (!r) state.SkipWithError("listing failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ListingKeepAlive)->Threads(1)->Threads(4)->UseRealTime();

void blob_bench(benchmark::State& state, const std::vector<antares::Oid>& oids) {
  auto& f = Fixture::get();
  MegaClient c(client_options(f.server->base_url()));
  size_t i = state.thread_index(), bytes = 0;
  for (auto _ : state) {
    auto r = c.blob(oids[i++ % oids.size()]);
    if (!r) state.SkipWithError("blob failed");
    else bytes += r->size();
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
void BM_BlobGetSmall(benchmark::State& state) { blob_bench(state, Fixture::get().small_blobs); }
void BM_BlobGetLarge(benchmark::State& state) { blob_bench(state, Fixture::get().large_blobs); }
BENCHMARK(BM_BlobGetSmall)->Threads(1)->Threads(4)->UseRealTime();
BENCHMARK(BM_BlobGetLarge)->Threads(1)->UseRealTime();

size_t heap_in_use() { return mallinfo2().uordblks + mallinfo2().hblkhd; }

void BM_GenerateRepository(benchmark::State& state) {
  const auto files = static_cast<uint64_t>(state.range(0));
  double mib = 0;
  for (auto _ : state) {
    size_t before = heap_in_use();
    auto r = std::make_unique<Repository>(antares::mock::RepoOptions{.seed = 1, .files = files, .cls = 3});
    mib = static_cast<double>(heap_in_use() - before) / (1 << 20);
    benchmark::DoNotOptimize(r->version());
    state.PauseTiming();  // destruction is not part of generation
    r.reset();
    state.ResumeTiming();
  }
  state.counters["heap_MiB"] = mib;
  state.counters["files"] = static_cast<double>(files);
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(files));
}
BENCHMARK(BM_GenerateRepository)->Arg(100000)->Arg(1000000)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
