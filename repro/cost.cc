#include "repro/cost.h"

#include <sys/stat.h>

#include <algorithm>
#include <memory>

namespace antares::repro {

std::vector<CostRow> run_cost(const Settings& s, const std::vector<std::string>& strategies, Progress* progress,
                              nlohmann::json* config) {
  std::vector<CostRow> rows;
  for (const auto& st : strategies) {
    CostRow r;
    r.strategy = st;
    rows.push_back(std::move(r));
  }
  std::string ttl = std::to_string(s.cost_ttl_ms) + "ms";
  *config = {{"files", s.cost_files}, {"ttl", ttl}, {"rounds", s.cost_rounds}, {"seed", s.seed},
             {"threads", s.threads}, {"source_share", s.source_share}};
  auto fail_all = [&](const std::string& why) {
    for (auto& r : rows) r.note = why;
    return rows;
  };
  if (!s.mountpoint.empty() || !s.mega_url.empty())
    return fail_all("attached to a running system: the cost needs a private mount per strategy");
  auto dir = TempDir::create("estale-repro-cost");
  if (!dir) return fail_all(dir.error().describe());
  if (s.keep) (*dir)->keep();
  MegaOptions mo;
  mo.bin_dir = s.bin_dir;
  mo.seed = s.seed;
  mo.files = s.cost_files;
  mo.cls = s.cls;
  if (progress) progress->status("[all] cost: starting mock-mega (" + std::to_string(s.cost_files) + " files)");
  auto mega = MegaServer::start(mo, (*dir)->path());
  if (!mega) return fail_all("mock-mega: " + mega.error().describe());

  // One mount per strategy, all at once, on the same server.
  std::vector<std::unique_ptr<MountedFs>> mounts(rows.size());
  for (size_t i = 0; i < rows.size() && !stop_requested().load(); ++i) {
    std::string work = (*dir)->path() + "/" + rows[i].strategy;
    if (mkdir(work.c_str(), 0755) != 0) {
      rows[i].note = "mkdir " + work + " failed";
      continue;
    }
    FsOptions fo;
    fo.bin_dir = s.bin_dir;
    fo.strategy = rows[i].strategy;
    fo.ttl = ttl;
    fo.entry_timeout = s.entry_timeout;
    fo.attr_timeout = s.attr_timeout;
    fo.threads = s.fs_threads;
    fo.log_level = "warn";
    if (!s.fs_refresh.empty()) fo.extra_args = {"--refresh", s.fs_refresh};
    if (progress) progress->status("[all] cost: mounting " + rows[i].strategy);
    auto fs = MountedFs::start(fo, (*mega)->url(), work);
    if (!fs) {
      rows[i].note = "mount: " + fs.error().describe();
      continue;
    }
    mounts[i] = std::move(*fs);
  }
  auto one_walk = [&](size_t i, bool warm) {
    Recorder rec;
    WalkOptions w = walk_options(s, mounts[i]->mountpoint(), 0, &stop_requested());
    w.write_buck_out = false;
    auto sum = walk(w, &rec);
    if (!warm) return;
    auto events = rec.take();
    uint64_t entries = 0, errors = 0;
    for (const auto& e : events) {
      if (e.op == Op::readdir && !e.err) entries += e.bytes;
      errors += e.err != 0;
      rows[i].latency.add(e.latency_us());
    }
    rows[i].walk_seconds.push_back(std::max<int64_t>(1, sum.end_us - sum.start_us) / 1e6);
    rows[i].entries_per_walk = std::max(rows[i].entries_per_walk, entries);
    rows[i].ops_per_walk = std::max<uint64_t>(rows[i].ops_per_walk, events.size());
    rows[i].errors += errors;
  };
  for (size_t i = 0; i < rows.size() && !stop_requested().load(); ++i)
    if (mounts[i]) {
      if (progress) progress->status("[all] cost: cold walk, " + rows[i].strategy);
      one_walk(i, false);
    }
  for (unsigned round = 0; round < s.cost_rounds && !stop_requested().load(); ++round) {
    if (progress)
      progress->status("[all] cost: warm walks, round " + std::to_string(round + 1) + " of " +
                       std::to_string(s.cost_rounds));
    for (size_t k = 0; k < rows.size() && !stop_requested().load(); ++k) {
      size_t i = (k + round) % rows.size();
      if (mounts[i] && mounts[i]->alive()) one_walk(i, true);
    }
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    if (mounts[i] && !mounts[i]->alive() && rows[i].note.empty()) rows[i].note = "antares-fs died or the mount vanished";
    if (mounts[i]) mounts[i]->stop();
  }
  if (stop_requested().load())
    for (auto& r : rows)
      if (r.note.empty() && r.walk_seconds.size() < s.cost_rounds) r.note = "interrupted";
  if (s.keep && progress) progress->line("kept: " + (*dir)->path() + " (the cost measurement's logs and caches)");
  return rows;
}

}  // namespace antares::repro
