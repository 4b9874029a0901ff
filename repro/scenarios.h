// The reproduction's runs: scripted scenarios (one per trigger of the bug),
// the soak (a looping walk while mock-mega mutates on a schedule) and the
// runtime strategy switch. Each run owns a Session: a mock-mega and an
// antares-fs (started privately, or attached), the oracle's History, the
// recorder, and the tail of antares-fs's log; ending the Session stops and
// unmounts whatever it started.
//
// Scenarios never sleep on luck: they mutate through /admin/mutate (applied
// synchronously), expire listings with `antares-ctl refresh`, and probe with
// bounded deadlines.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "repro/event.h"
#include "repro/fs_log.h"
#include "repro/harness.h"
#include "repro/oracle.h"
#include "repro/path_ops.h"
#include "repro/plan.h"
#include "repro/report.h"
#include "repro/walker.h"

namespace antares::repro {

struct Settings {
  std::string bin_dir;
  uint64_t seed = 42;
  uint64_t files = 400;
  uint32_t cls = 3;
  int64_t ttl_ms = 300;
  double entry_timeout = 1.0, attr_timeout = 1.0;  // seconds, passed to antares-fs
  int64_t slack_ms = 1000;
  int64_t hold_ms = 300;  // fixes: keep probing this long after fresh content appears
  // Attach instead of starting.
  std::string mega_url, mountpoint, upper, run_dir;
  // Walker.
  unsigned threads = 16, dirs_in_flight = 64;
  double source_share = 0.2;
  // antares-fs.
  unsigned fs_threads = 0;
  std::string fs_log_level = "info";
  std::string fs_refresh;  // antares-fs --refresh ("" = its default)
  bool keep = false;  // keep the private directories (logs, cache) after the run
  // Soak.
  int64_t mutate_every_ms = 500;
  uint32_t mutate_count = 2;
  std::optional<uint32_t> soak_cl;
  // Cost (cost.h): warm walks per strategy, repository size, TTL.
  unsigned cost_rounds = 5;
  uint64_t cost_files = 3000;
  int64_t cost_ttl_ms = 5000;

  // How long a filesystem may serve a superseded version: the TTL, the
  // kernel's entry/attr caches, and slack for scheduling.
  int64_t window_us() const {
    double k = entry_timeout > attr_timeout ? entry_timeout : attr_timeout;
    return (ttl_ms + static_cast<int64_t>(k * 1000) + slack_ms) * 1000;
  }
  std::string ttl_text() const { return std::to_string(ttl_ms) + "ms"; }
};

const std::vector<std::string>& all_scenarios();
const std::vector<std::string>& all_strategies();

// Live progress on stderr: a rewritten status line on a TTY (prefixed with
// "run k of N, elapsed, ETA" once a plan is set), plain lines otherwise.
class Progress {
 public:
  Progress();
  void set_plan(Eta* eta) { eta_ = eta; }
  void status(const std::string& text);  // TTY only: transient
  void line(const std::string& text);    // always: a permanent line
  bool tty() const { return tty_; }

 private:
  bool tty_;
  Eta* eta_ = nullptr;
  std::mutex mu_;  // status() runs on ticker threads too
};

class Session {
 public:
  // Starts mock-mega (unless attached), calls before_mount with it, starts
  // antares-fs (unless attached), takes the oracle's snapshot. Attached to a
  // mount, it switches the mount to `strategy` ("" = leave it as it is) and
  // close() (or the destructor, on any exit path) switches it back.
  static Result<std::unique_ptr<Session>> open(const Settings& s, const std::string& strategy,
                                               std::optional<uint32_t> cl,
                                               const std::function<Status(MegaServer&)>& before_mount = {});
  ~Session();

  MegaServer& mega() { return *mega_; }
  MountedFs& fs() { return *fs_; }
  History& history() { return history_; }
  Recorder& recorder() { return rec_; }
  const PathOps& ops() const { return ops_; }
  FsLogTail& fs_log() { return fs_log_; }
  std::vector<Marker>& markers() { return markers_; }

  // Applies mutations through /admin/mutate, feeds the oracle, marks them.
  Result<nlohmann::json> mutate(const nlohmann::json& mutations);
  // antares-ctl refresh, marked.
  Status refresh();
  // Pulls new entries from /admin/log into the oracle (and markers).
  Status sync_log();
  // Classifies everything recorded so far into run (and clears the recorder);
  // a wrong read gets a diagnosis against the path's known versions.
  void analyze_into(RunRecord* run, const std::vector<std::string>& skip_prefixes);
  // Classifies events already taken out of the recorder.
  void analyze_events(const std::vector<OpEvent>& events, RunRecord* run,
                      const std::vector<std::string>& skip_prefixes);
  // The strategy the mount uses now (antares-ctl status), "" if unknown.
  std::string current_strategy();
  // Stops and unmounts what it started; restores an attached mount's strategy.
  // Returns a note if antares-fs did not exit 0 on SIGTERM (its contract) or
  // the strategy could not be restored, else "".
  std::string close();
  // --keep: the private directory kept (logs, cache, upper), else "".
  const std::string& kept_dir() const { return kept_dir_; }

 private:
  explicit Session(const Settings& s) : s_(s), ops_("", nullptr) {}
  Status snapshot(std::optional<uint32_t> cl);
  void mark_entries(const nlohmann::json& entries);

  const Settings& s_;
  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<MegaServer> mega_;
  std::unique_ptr<MountedFs> fs_;
  History history_;
  Recorder rec_;
  PathOps ops_;
  FsLogTail fs_log_;
  std::vector<Marker> markers_;
  std::string restore_strategy_;  // attached: the strategy to switch back to
  std::string kept_dir_;
};

// One repetition of a scenario under a strategy; never throws. The record's
// ok says whether the outcome is the one the strategy promises.
RunRecord run_scenario(const Settings& s, const std::string& scenario, const std::string& strategy, int rep,
                       Progress* progress);
// A soak: the walker loops for `duration_ms` while mock-mega mutates.
// The walker's options from the settings, for one walk of `root`.
WalkOptions walk_options(const Settings& s, const std::string& root, uint64_t iteration,
                         const std::atomic<bool>* stop);

RunRecord run_soak(const Settings& s, const std::string& strategy, int64_t duration_ms, Progress* progress);
// Starts under none, reproduces, switches to auto mid-walk with antares-ctl.
RunRecord run_switch(const Settings& s, int64_t duration_ms, Progress* progress);

// Whether a run met its expectation, and if not why (for the exit code).
std::optional<std::string> failure_of(const RunRecord& r);

}  // namespace antares::repro
