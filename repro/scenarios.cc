#include "repro/scenarios.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "common/rng.h"
#include "fs/remote/mega_client.h"
#include "repro/walker.h"

namespace antares::repro {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

std::string parent_of(const std::string& p) {
  size_t s = p.rfind('/');
  return s == std::string::npos ? std::string() : p.substr(0, s);
}
std::string rel_of(const std::string& repo_path) { return repo_path.size() > 1 ? repo_path.substr(1) : ""; }

void nap(milliseconds d) {
  auto end = std::chrono::steady_clock::now() + d;
  while (!stop_requested().load() && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::min(d, milliseconds(10)));
}

// Writes a file outside the mount (another process's view of --upper).
int write_direct(const std::string& path, const std::string& content) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  ssize_t n = write(fd, content.data(), content.size());
  int err = n == static_cast<ssize_t>(content.size()) ? 0 : (n < 0 ? errno : EIO);
  if (fsync(fd) != 0 && !err) err = errno;
  close(fd);
  return err;
}

// Replaces `path` by write-temp + rename, as editors and build tools do.
int replace_direct(const std::string& path, const std::string& content) {
  std::string tmp = parent_of(path) + "/.repro-tmp." + std::to_string(getpid());
  if (int e = write_direct(tmp, content)) return e;
  return rename(tmp.c_str(), path.c_str()) == 0 ? 0 : errno;
}

std::string strerr(int e) { return e == 0 ? "ok" : std::string(strerror(e)) + " (" + std::to_string(e) + ")"; }

struct ProbeOutcome {
  bool estale = false, persistent = false, fresh = false;
  int rounds = 0;
};

// Probes paths through the mount the way a build walks them: list each
// parent, stat and read each file, until the strategy's outcome is settled
// (ESTALE and its persistence under `none`; fresh content held for hold_ms
// under a fix) or the window passes.
ProbeOutcome probe(Session& ss, const Settings& s, const std::vector<std::string>& files,
                   const std::map<std::string, Oid>& expected, bool expect_estale) {
  ProbeOutcome out;
  std::set<std::string> parents;
  for (const auto& f : files) parents.insert(parent_of(f));
  auto deadline = std::chrono::steady_clock::now() + milliseconds(s.window_us() / 1000 + 500);
  std::optional<std::chrono::steady_clock::time_point> fresh_since;
  int estale_rounds_after = -1;
  while (!stop_requested().load()) {
    uint64_t before = ss.recorder().estale();
    bool all_fresh = true;
    for (const auto& p : parents) (void)ss.ops().list(p);
    for (const auto& f : files) {
      (void)ss.ops().stat(f);
      auto data = ss.ops().read(f);
      auto it = expected.find(f);
      if (!data || (it != expected.end() && git_blob_oid(*data) != it->second)) all_fresh = false;
    }
    ++out.rounds;
    bool round_estale = ss.recorder().estale() > before;
    if (estale_rounds_after >= 0) {
      if (!round_estale) out.persistent = false;
      if (++estale_rounds_after >= 3) break;
    } else if (round_estale) {
      out.estale = true;
      out.persistent = true;
      estale_rounds_after = 0;
      if (!expect_estale) break;  // a fix failed; nothing more to learn
    } else if (all_fresh) {
      out.fresh = true;
      if (!fresh_since) fresh_since = std::chrono::steady_clock::now();
      if (!expect_estale && std::chrono::steady_clock::now() - *fresh_since >= milliseconds(s.hold_ms)) break;
    }
    if (std::chrono::steady_clock::now() > deadline) break;
    nap(milliseconds(estale_rounds_after >= 0 ? 50 : 20));
  }
  return out;
}

// Reads a path once through the mount (list parent, stat, read) and checks
// it against the oracle: the setup step of every scenario.
Status warm(Session& ss, const std::string& rel) {
  (void)ss.ops().list(parent_of(rel));
  if (int e = ss.ops().stat(rel)) return Error::from_errno(e, "stat " + rel + ": " + strerr(e));
  auto data = ss.ops().read(rel);
  if (!data) return Error::from_errno(EIO, "initial read of " + rel + " failed");
  auto want = ss.history().at("/" + rel, wall_us());
  if (want && git_blob_oid(*data) != *want)
    return Error::from_errno(EIO, "initial read of " + rel + " is not the server's version");
  return {};
}

Result<std::string> pick_lower_file(Session& ss, Rng& rng) {
  const char* cls = rng.chance(0.5) ? "buck" : "source";
  auto paths = ss.mega().admin().paths(cls);
  if (!paths) return paths.error();
  std::vector<std::string> ok;
  for (auto& p : *paths)
    if (p.rfind("/buck-out", 0) != 0) ok.push_back(p);
  if (ok.empty()) return Error::from_errno(ENOENT, std::string("no ") + cls + " files on the server");
  return ok[rng.below(ok.size())];
}

Result<Oid> new_oid_of(const json& applied, const std::string& path) {
  if (applied.is_array())
    for (const auto& e : applied) {
      auto le = LogEntry::from_json(e);
      if (le && le->path == path && le->new_oid) return *le->new_oid;
    }
  return Error::from_errno(EPROTO, "mutation of " + path + " returned no new oid");
}

struct ScenarioCtx {
  Session& ss;
  const Settings& s;
  RunRecord& run;
  Rng rng;
  bool expect_estale;
  ProbeOutcome result;
};

// Picks the scenario's lower-layer file and reads it through the mount.
Result<std::string> warm_lower_target(ScenarioCtx& c) {
  auto target = pick_lower_file(c.ss, c.rng);
  if (!target) return target.error();
  c.run.target = *target;
  if (auto st = warm(c.ss, rel_of(*target)); !st.ok()) return st.error();
  return *target;
}

Status lower_refresh(ScenarioCtx& c) {
  auto target = warm_lower_target(c);
  if (!target) return target.error();
  std::string rel = rel_of(*target);
  auto applied = c.ss.mutate(json::array({{{"kind", "modify"}, {"path", *target}}}));
  if (!applied) return applied.error();
  auto oid = new_oid_of(*applied, *target);
  if (!oid) return oid.error();
  if (auto st = c.ss.refresh(); !st.ok()) return st;
  c.result = probe(c.ss, c.s, {rel}, {{rel, *oid}}, c.expect_estale);
  return {};
}

Status delete_readd(ScenarioCtx& c) {
  auto target = warm_lower_target(c);
  if (!target) return target.error();
  std::string rel = rel_of(*target);
  auto del = c.ss.mutate(json::array({{{"kind", "delete"}, {"path", *target}}}));
  if (!del) return del.error();
  if (auto st = c.ss.refresh(); !st.ok()) return st;
  // The walk sees the name vanish (the lower layer drops its copy) ...
  (void)c.ss.ops().list(parent_of(rel));
  (void)c.ss.ops().stat(rel);
  // ... and come back with new content.
  auto add = c.ss.mutate(json::array({{{"kind", "add"}, {"path", *target}}}));
  if (!add) return add.error();
  auto oid = new_oid_of(*add, *target);
  if (!oid) return oid.error();
  if (auto st = c.ss.refresh(); !st.ok()) return st;
  c.result = probe(c.ss, c.s, {rel}, {{rel, *oid}}, c.expect_estale);
  return {};
}

Status cl_resync(ScenarioCtx& c, uint32_t cl) {
  remote::MegaClient client(remote::MegaClientOptions{c.ss.mega().url()});
  auto files = client.cl_files(std::to_string(cl));
  if (!files) return files.error();
  std::vector<std::string> live;
  for (const auto& f : *files)
    if (f.action != remote::ClAction::deleted) live.push_back(f.path);
  std::sort(live.begin(), live.end());
  if (live.empty()) return Error::from_errno(ENOENT, "CL " + std::to_string(cl) + " has no new or modified file");
  std::string target = live[c.rng.below(live.size())];
  c.run.target = target;
  std::string rel = rel_of(target);
  if (auto st = warm(c.ss, rel); !st.ok()) return st;
  auto applied = c.ss.mutate(json::array({{{"kind", "cl"}, {"cl", cl}, {"path", target}, {"action", "modified"}}}));
  if (!applied) return applied.error();
  auto oid = new_oid_of(*applied, target);
  if (!oid) return oid.error();
  if (auto st = c.ss.refresh(); !st.ok()) return st;  // re-syncs the CL: cl_dir is rebuilt
  c.result = probe(c.ss, c.s, {rel}, {{rel, *oid}}, c.expect_estale);
  return {};
}

std::string upper_content(const Settings& s, const std::string& what, int rep, int version) {
  return "estale-repro " + what + " seed " + std::to_string(s.seed) + " rep " + std::to_string(rep) + " version " +
         std::to_string(version) + "\n";
}

Status upper_replaced(ScenarioCtx& c) {
  const std::string& upper = c.ss.fs().upper();
  if (upper.empty()) return Error::from_errno(EINVAL, "the upper directory is unknown (attach with --upper DIR)");
  std::string dir = "buck-out/repro/upper-" + std::to_string(c.run.rep);
  std::string rel = dir + "/out.txt";
  c.run.target = "/" + rel;
  if (int e = c.ss.ops().mkdirs(dir)) return Error::from_errno(e, "mkdir " + dir + " in the mount: " + strerr(e));
  std::string v1 = upper_content(c.s, "upper-replaced", c.run.rep, 1);
  if (int e = c.ss.ops().write(rel, v1)) return Error::from_errno(e, "write " + rel + ": " + strerr(e));
  c.ss.history().record_upper("/" + rel, git_blob_oid(v1), wall_us(), "upper-write");
  if (auto st = warm(c.ss, rel); !st.ok()) return st;
  std::string v2 = upper_content(c.s, "upper-replaced", c.run.rep, 2);
  int64_t t = wall_us();
  if (int e = replace_direct(upper + "/" + rel, v2)) return Error::from_errno(e, "replace in --upper: " + strerr(e));
  c.ss.history().record_upper("/" + rel, git_blob_oid(v2), t, "upper-replace");
  c.ss.markers().push_back({t, "upper", "replace " + rel + " in --upper (write-temp + rename)"});
  c.result = probe(c.ss, c.s, {rel}, {{rel, git_blob_oid(v2)}}, c.expect_estale);
  return {};
}

Status dir_replaced(ScenarioCtx& c) {
  const std::string& upper = c.ss.fs().upper();
  if (upper.empty()) return Error::from_errno(EINVAL, "the upper directory is unknown (attach with --upper DIR)");
  std::string dir = "buck-out/repro/dir-" + std::to_string(c.run.rep) + "/D";
  c.run.target = "/" + dir;
  if (int e = c.ss.ops().mkdirs(dir)) return Error::from_errno(e, "mkdir " + dir + " in the mount: " + strerr(e));
  std::vector<std::string> names{"a.txt", "b.txt"};
  for (const auto& n : names) {
    std::string v1 = upper_content(c.s, "dir-replaced " + n, c.run.rep, 1);
    if (int e = c.ss.ops().write(dir + "/" + n, v1)) return Error::from_errno(e, "write " + n + ": " + strerr(e));
    c.ss.history().record_upper("/" + dir + "/" + n, git_blob_oid(v1), wall_us(), "upper-write");
  }
  for (const auto& n : names)
    if (auto st = warm(c.ss, dir + "/" + n); !st.ok()) return st;
  // Another process builds the directory anew beside it and swaps it in.
  std::string real = upper + "/" + dir;
  if (mkdir((real + ".new").c_str(), 0755) != 0) return Error::from_errno(errno, "mkdir D.new in --upper");
  std::map<std::string, Oid> expected;
  std::vector<std::string> files;
  for (const auto& n : names) {
    std::string v2 = upper_content(c.s, "dir-replaced " + n, c.run.rep, 2);
    if (int e = write_direct(real + ".new/" + n, v2)) return Error::from_errno(e, "write D.new/" + n);
    expected[dir + "/" + n] = git_blob_oid(v2);
    files.push_back(dir + "/" + n);
  }
  int64_t t = wall_us();
  if (rename(real.c_str(), (real + ".old").c_str()) != 0 || rename((real + ".new").c_str(), real.c_str()) != 0)
    return Error::from_errno(errno, "swapping D in --upper");
  std::error_code ec;
  std::filesystem::remove_all(real + ".old", ec);
  for (const auto& [f, oid] : expected) c.ss.history().record_upper("/" + f, oid, t, "upper-dir-replace");
  c.ss.markers().push_back({t, "upper", "replace directory " + dir + " in --upper"});
  c.result = probe(c.ss, c.s, files, expected, c.expect_estale);
  return {};
}

// A run whose Session could not open: interrupted if a stop signal came,
// else a setup failure with the reason.
void mark_not_run(RunRecord* run, const Error& e) {
  if (stop_requested().load()) {
    run->interrupted = true;
    run->note = "interrupted";
  } else {
    run->setup_failed = true;
    run->note = "setup: " + e.describe();
  }
  run->end_us = wall_us();
}

void finish_run(Session& ss, RunRecord* run, const std::vector<std::string>& skip) {
  ss.analyze_into(run, skip);
  if (auto st = ss.fs().status()) run->fs_status = *st;
  run->fs_estale = ss.fs_log().all();
  run->markers = ss.markers();
}

}  // namespace

const std::vector<std::string>& all_scenarios() {
  static const std::vector<std::string> v{"lower-refresh", "cl-resync", "upper-replaced", "dir-replaced",
                                          "delete-readd"};
  return v;
}

const std::vector<std::string>& all_strategies() {
  static const std::vector<std::string> v{"none", "A", "B", "C", "auto"};
  return v;
}

Progress::Progress() : tty_(isatty(STDERR_FILENO) == 1) {}

void Progress::status(const std::string& text) {
  if (!tty_) return;
  std::lock_guard lock(mu_);
  std::string t = (eta_ ? "[" + eta_->text() + "] " : std::string()) + text;
  if (t.size() > 200) t = t.substr(0, 200);
  fprintf(stderr, "\r\033[K%s", t.c_str());
  fflush(stderr);
}

void Progress::line(const std::string& text) {
  std::lock_guard lock(mu_);
  if (tty_) fprintf(stderr, "\r\033[K");
  fprintf(stderr, "%s\n", text.c_str());
  fflush(stderr);
}

Result<std::unique_ptr<Session>> Session::open(const Settings& s, const std::string& strategy,
                                               std::optional<uint32_t> cl,
                                               const std::function<Status(MegaServer&)>& before_mount) {
  std::unique_ptr<Session> ss(new Session(s));
  auto dir = TempDir::create("estale-repro");
  if (!dir) return dir.error();
  ss->dir_ = std::move(*dir);
  if (s.keep) ss->dir_->keep();
  MegaOptions mo;
  mo.bin_dir = s.bin_dir;
  mo.attach_url = s.mega_url;
  mo.seed = s.seed;
  mo.files = s.files;
  mo.cls = s.cls;
  auto mega = MegaServer::start(mo, ss->dir_->path());
  if (!mega) return mega.error();
  ss->mega_ = std::move(*mega);
  if (before_mount)
    if (auto st = before_mount(*ss->mega_); !st.ok()) return st.error();
  ss->history_ = History(cl);
  if (auto st = ss->snapshot(cl); !st.ok()) return st.error();
  FsOptions fo;
  fo.bin_dir = s.bin_dir;
  fo.attach_mountpoint = s.mountpoint;
  fo.attach_upper = s.upper;
  fo.run_dir = s.run_dir;
  fo.strategy = strategy;
  fo.ttl = s.ttl_text();
  fo.cl = cl;
  fo.entry_timeout = s.entry_timeout;
  fo.attr_timeout = s.attr_timeout;
  fo.threads = s.fs_threads;
  fo.log_level = s.fs_log_level;
  if (!s.fs_refresh.empty()) fo.extra_args = {"--refresh", s.fs_refresh};
  auto fs = MountedFs::start(fo, ss->mega_->url(), ss->dir_->path());
  if (!fs) return fs.error();
  ss->fs_ = std::move(*fs);
  if (!s.mountpoint.empty() && !strategy.empty()) {
    // Attached: use the strategy asked for for this run only; close() and the
    // destructor (any exit path, a stop signal included) switch it back.
    std::string before = ss->current_strategy();
    if (before.empty()) return Error::from_errno(EPROTO, "antares-ctl status on " + s.mountpoint + " names no strategy");
    if (before != strategy) {
      if (auto st = ss->fs_->set_strategy(strategy); !st.ok()) return st.error();
      ss->restore_strategy_ = before;
    }
  }
  ss->ops_ = PathOps(ss->fs_->mountpoint(), &ss->rec_);
  ss->fs_log_.set_path(ss->fs_->stderr_path());
  return ss;
}

Session::~Session() { close(); }

std::string Session::current_strategy() {
  if (!fs_) return "";
  auto st = fs_->status();
  if (!st) return "";
  auto it = st->find("strategy");
  return it != st->end() && it->is_string() ? it->get<std::string>() : "";
}

std::string Session::close() {
  std::string note;
  if (fs_ && !restore_strategy_.empty()) {
    if (auto st = fs_->set_strategy(restore_strategy_); !st.ok())
      note = "could not switch " + fs_->mountpoint() + " back to strategy " + restore_strategy_ + ": " +
             st.error().describe();
    restore_strategy_.clear();
  }
  if (fs_ && fs_->started()) {
    fs_->stop();
    if (fs_->exit_code() != 0)
      note += std::string(note.empty() ? "" : "; ") + "antares-fs exited " + std::to_string(fs_->exit_code()) +
              " on SIGTERM (expected 0)";
  }
  fs_.reset();
  mega_.reset();
  if (dir_ && s_.keep) kept_dir_ = dir_->path();
  dir_.reset();
  return note;
}

Status Session::snapshot(std::optional<uint32_t> cl) {
  auto log = mega_->admin().log(0);
  if (!log) return log.error();
  uint64_t base = 0;
  for (const auto& e : *log)
    if (auto le = LogEntry::from_json(e)) base = std::max(base, le->id);
  remote::MegaClient client(remote::MegaClientOptions{mega_->url()});
  std::vector<std::string> queue{"/"};
  while (!queue.empty()) {
    std::string dir = queue.back();
    queue.pop_back();
    auto items = client.content_hash(dir);
    if (!items) return Error{items.error().err, items.error().http_status, "snapshot " + dir + ": " + items.error().message};
    for (const auto& it : *items) {
      std::string p = dir == "/" ? "/" + it.name : dir + "/" + it.name;
      if (it.type == remote::ItemType::directory) queue.push_back(p);
      else history_.add_initial_file(p, it.oid);
    }
  }
  if (cl) {
    auto files = client.cl_files(std::to_string(*cl));
    if (!files) return files.error();
    for (const auto& f : *files) history_.add_initial_cl(f.path, f.sha, f.action == remote::ClAction::deleted);
  }
  history_.set_base(base);
  return sync_log();
}

void Session::mark_entries(const json& entries) {
  for (const auto& e : entries)
    if (auto le = LogEntry::from_json(e))
      markers_.push_back({le->time_us, "mutation", le->kind + " " + le->path + (le->to.empty() ? "" : " -> " + le->to)});
}

Status Session::sync_log() {
  auto entries = mega_->admin().log(history_.last_id());
  if (!entries) return entries.error();
  if (!entries->is_array()) return Error::from_errno(EPROTO, "/admin/log: entries is not a list");
  uint64_t before = history_.last_id();
  json fresh = json::array();
  for (const auto& e : *entries)
    if (auto le = LogEntry::from_json(e); le && le->id > before) {
      history_.apply(*le);
      fresh.push_back(e);
    }
  mark_entries(fresh);
  return {};
}

Result<json> Session::mutate(const json& mutations) {
  auto applied = mega_->admin().mutate(json{{"mutations", mutations}});
  if (!applied) return applied.error();
  if (auto st = sync_log(); !st.ok()) return st.error();
  return applied;
}

Status Session::refresh() {
  int64_t t = wall_us();
  auto st = fs_->refresh();
  markers_.push_back({t, "refresh", "antares-ctl refresh"});
  return st;
}

void Session::analyze_into(RunRecord* run, const std::vector<std::string>& skip_prefixes) {
  analyze_events(rec_.take(), run, skip_prefixes);
}

void Session::analyze_events(const std::vector<OpEvent>& events, RunRecord* run,
                             const std::vector<std::string>& skip_prefixes) {
  fs_log_.poll();
  size_t first_new = run->notable.size();
  rec_.with_contents([&](const std::map<Oid, std::string>& contents) {
    analyze(history_, events, s_.window_us(), fs_log_.all(), run, skip_prefixes, &contents);
    // A wrong read: which version each part of the bytes came from, against
    // every version the path had (lower and CL blobs stay fetchable by oid).
    std::optional<remote::MegaClient> client;
    for (size_t i = first_new; i < run->notable.size(); ++i) {
      Notable& n = run->notable[i];
      if (n.kind != "wrong") continue;
      auto read_oid = Oid::from_hex(n.read_oid);
      auto it = read_oid ? contents.find(*read_oid) : contents.end();
      if (it == contents.end()) {
        n.diagnosis = "the bytes read were not kept (over the recorder's budget)";
        continue;
      }
      std::vector<std::pair<std::string, std::string>> versions;
      int k = 0;
      for (const auto& span : history_.spans("/" + n.path)) {
        if (!span.oid) continue;
        ++k;
        std::string label = "v" + std::to_string(k) + " " + span.oid->hex().substr(0, 10) + " (" + span.layer + ")";
        if (auto c = contents.find(*span.oid); c != contents.end()) {
          versions.emplace_back(label, c->second);
          continue;
        }
        if (!client) client.emplace(remote::MegaClientOptions{mega_->url()});
        if (auto b = client->blob(*span.oid); b.ok()) {
          versions.emplace_back(label, *b);
        }
      }
      n.diagnosis = diagnose_bytes(it->second, versions);
    }
  });
}

RunRecord run_scenario(const Settings& s, const std::string& scenario, const std::string& strategy, int rep,
                       Progress* progress) {
  RunRecord run;
  run.mode = "scenario";
  run.strategy = strategy;
  run.scenario = scenario;
  run.rep = rep;
  run.seed = s.seed;
  run.start_us = wall_us();
  if (progress) progress->status("[" + strategy + "] " + scenario + " #" + std::to_string(rep) + ": starting");
  const std::optional<uint32_t> cl = scenario == "cl-resync" ? std::optional<uint32_t>(1) : std::nullopt;
  auto ss = Session::open(s, strategy, cl);
  if (!ss) {
    mark_not_run(&run, ss.error());
    return run;
  }
  Session& session = **ss;
  ScenarioCtx c{session, s, run, Rng(mix64(s.seed ^ hash_str(scenario) ^ mix64(static_cast<uint64_t>(rep) + 1))),
                strategy == "none", {}};
  Status st;
  if (scenario == "lower-refresh") st = lower_refresh(c);
  else if (scenario == "delete-readd") st = delete_readd(c);
  else if (scenario == "cl-resync") st = cl_resync(c, 1);
  else if (scenario == "upper-replaced") st = upper_replaced(c);
  else if (scenario == "dir-replaced") st = dir_replaced(c);
  else st = Error::from_errno(EINVAL, "unknown scenario " + scenario);
  if (stop_requested().load()) {
    run.interrupted = true;
    run.note = "interrupted";
  } else if (!st.ok()) {
    run.setup_failed = true;
    run.note = st.error().describe();
  }
  finish_run(session, &run, {});
  if (!run.interrupted && !session.fs().alive()) {
    run.note += (run.note.empty() ? "" : "; ") + std::string("antares-fs died or the mount vanished");
    run.setup_failed = true;
  }
  if (auto n = session.close(); !n.empty()) run.note += (run.note.empty() ? "" : "; ") + n;
  run.kept_dir = session.kept_dir();
  run.end_us = wall_us();
  run.reproduced = run.stats.estale > 0;
  run.persistent = c.result.persistent;
  run.converged = c.result.fresh;
  if (!run.setup_failed && !run.interrupted) {
    if (strategy == "none") {
      run.ok = run.reproduced;
    } else {
      run.ok = !run.reproduced && run.stats.stale_beyond == 0 && run.stats.wrong == 0 &&
               run.stats.enoent_exists == 0 && run.stats.other_errors == 0 && run.converged;
      if (!run.converged) run.note += std::string(run.note.empty() ? "" : "; ") + "never read the new content within the window";
    }
  }
  return run;
}

namespace {

// Prints the live counters while a long run is in progress.
class Ticker {
 public:
  Ticker(Progress* p, std::string label, const Recorder* rec, int64_t start_us, int64_t duration_us)
      : thread_([=, this] {
          while (!done_.load()) {
            if (p) {
              char b[256];
              snprintf(b, sizeof b, "%s: %.1fs/%.1fs ops=%llu errors=%llu ESTALE=%llu", label.c_str(),
                       (wall_us() - start_us) / 1e6, duration_us / 1e6,
                       static_cast<unsigned long long>(rec->ops() + base_ops_.load()),
                       static_cast<unsigned long long>(rec->errors() + base_err_.load()),
                       static_cast<unsigned long long>(rec->estale() + base_estale_.load()));
              p->status(b);
            }
            for (int i = 0; i < 25 && !done_.load(); ++i) std::this_thread::sleep_for(milliseconds(10));
          }
        }) {}
  ~Ticker() {
    done_ = true;
    thread_.join();
  }
  // Counters already taken out of the recorder.
  void add_base(uint64_t ops, uint64_t err, uint64_t estale) {
    base_ops_ += ops;
    base_err_ += err;
    base_estale_ += estale;
  }

 private:
  std::atomic<bool> done_{false};
  std::atomic<uint64_t> base_ops_{0}, base_err_{0}, base_estale_{0};
  std::thread thread_;
};

}  // namespace

WalkOptions walk_options(const Settings& s, const std::string& root, uint64_t iteration,
                         const std::atomic<bool>* stop) {
  WalkOptions w;
  w.root = root;
  w.threads = s.threads;
  w.dirs_in_flight = s.dirs_in_flight;
  w.source_share = s.source_share;
  w.seed = s.seed;
  w.iteration = iteration;
  w.stop = stop;
  return w;
}

RunRecord run_soak(const Settings& s, const std::string& strategy, int64_t duration_ms, Progress* progress) {
  RunRecord run;
  run.mode = "soak";
  run.strategy = strategy;
  run.scenario = "soak";
  run.seed = s.seed;
  run.start_us = wall_us();
  auto ss = Session::open(s, strategy, s.soak_cl);
  if (!ss) {
    mark_not_run(&run, ss.error());
    return run;
  }
  Session& session = **ss;
  auto sched = session.mega().admin().schedule(
      json{{"every_ms", s.mutate_every_ms}, {"count", s.mutate_count}, {"paused", false}});
  if (!sched) {
    run.setup_failed = true;
    run.note = "schedule: " + sched.error().describe();
  }
  uint64_t walks = 0;
  const int64_t start = wall_us();
  {
    Ticker ticker(progress, "[" + strategy + "] soak", &session.recorder(), start, duration_ms * 1000);
    while (!run.setup_failed && !stop_requested().load() && wall_us() - start < duration_ms * 1000) {
      std::atomic<bool> stop_walk{false};
      // A walk stops at the deadline too, so the soak lasts what was asked.
      std::thread deadline([&] {
        while (!stop_walk.load()) {
          if (stop_requested().load() || wall_us() - start >= duration_ms * 1000) {
            stop_walk = true;
            break;
          }
          std::this_thread::sleep_for(milliseconds(10));
        }
      });
      auto summary = walk(walk_options(s, session.fs().mountpoint(), walks, &stop_walk), &session.recorder());
      stop_walk = true;
      deadline.join();
      ++walks;
      (void)summary;
      uint64_t ops = session.recorder().ops(), err = session.recorder().errors(), est = session.recorder().estale();
      if (auto st = session.sync_log(); !st.ok()) run.note = "log: " + st.error().describe();
      session.analyze_into(&run, {"buck-out/"});
      ticker.add_base(ops - session.recorder().ops(), err - session.recorder().errors(),
                      est - session.recorder().estale());
      if (!session.fs().alive()) {
        run.note += "antares-fs died or the mount vanished";
        break;
      }
    }
  }
  (void)session.mega().admin().schedule(json{{"paused", true}});
  (void)session.sync_log();
  finish_run(session, &run, {"buck-out/"});
  if (auto n = session.close(); !n.empty()) run.note += (run.note.empty() ? "" : "; ") + n;
  run.kept_dir = session.kept_dir();
  run.end_us = wall_us();
  run.reproduced = run.stats.estale > 0;
  run.interrupted = stop_requested().load();
  run.note += (run.note.empty() ? "" : "; ") + std::to_string(walks) + " walks" +
              (run.interrupted ? ", interrupted after " + std::to_string((run.end_us - start) / 1000000) + " s" : "");
  run.ok = !run.setup_failed && !run.interrupted && (strategy == "none" ? run.reproduced
                                                    : run.stats.estale == 0 && run.stats.stale_beyond == 0 &&
                                                          run.stats.wrong == 0);
  return run;
}

RunRecord run_switch(const Settings& s, int64_t duration_ms, Progress* progress) {
  RunRecord run;
  run.mode = "switch";
  run.strategy = "none->auto";
  run.scenario = "switch";
  run.seed = s.seed;
  run.start_us = wall_us();
  auto ss = Session::open(s, "none", std::nullopt);
  if (!ss) {
    mark_not_run(&run, ss.error());
    return run;
  }
  Session& session = **ss;
  RunRecord scratch;  // the scenario helpers fill target/result fields we do not keep
  Rng rng(mix64(s.seed ^ hash_str("switch")));
  // 1. Reproduce under none: three lower files modified and refreshed, one upper file replaced.
  std::vector<std::string> broken;
  std::map<std::string, Oid> expected;
  Status st;
  json mutations = json::array();
  std::vector<std::string> targets;
  for (int i = 0; i < 3 && st.ok(); ++i) {
    auto t = pick_lower_file(session, rng);
    if (!t) {
      st = t.error();
      break;
    }
    if (std::find(targets.begin(), targets.end(), *t) != targets.end()) continue;
    targets.push_back(*t);
    st = warm(session, rel_of(*t));
    mutations.push_back({{"kind", "modify"}, {"path", *t}});
  }
  if (st.ok()) {
    auto applied = session.mutate(mutations);
    if (!applied) st = applied.error();
    for (const auto& t : targets)
      if (st.ok()) {
        auto oid = new_oid_of(*applied, t);
        if (!oid) st = oid.error();
        else expected[rel_of(t)] = *oid;
      }
  }
  std::string upper_rel = "buck-out/repro/switch/out.txt";
  if (st.ok() && !session.fs().upper().empty()) {
    std::string v1 = upper_content(s, "switch", 0, 1), v2 = upper_content(s, "switch", 0, 2);
    int e = session.ops().mkdirs(parent_of(upper_rel));
    if (!e) e = session.ops().write(upper_rel, v1);
    if (e) {
      st = Error::from_errno(e, "writing " + upper_rel + " through the mount");
    } else {
      session.history().record_upper("/" + upper_rel, git_blob_oid(v1), wall_us(), "upper-write");
      st = warm(session, upper_rel);
      int64_t t = wall_us();
      if (st.ok() && replace_direct(session.fs().upper() + "/" + upper_rel, v2) == 0) {
        session.history().record_upper("/" + upper_rel, git_blob_oid(v2), t, "upper-replace");
        session.markers().push_back({t, "upper", "replace " + upper_rel + " in --upper"});
        expected[upper_rel] = git_blob_oid(v2);
      }
    }
  }
  if (st.ok()) st = session.refresh();
  std::vector<std::string> files;
  for (const auto& [f, oid] : expected) files.push_back(f);
  if (st.ok()) {
    auto r = probe(session, s, files, expected, true);
    if (!r.estale) st = Error::from_errno(EAGAIN, "ESTALE did not reproduce under none before the switch");
  }
  if (!st.ok() || stop_requested().load()) {
    if (stop_requested().load()) {
      run.interrupted = true;
      run.note = "interrupted";
    } else {
      run.setup_failed = true;
      run.note = st.error().describe();
    }
    finish_run(session, &run, {"buck-out/"});
    if (auto n = session.close(); !n.empty()) run.note += "; " + n;
    run.kept_dir = session.kept_dir();
    run.end_us = wall_us();
    return run;
  }
  for (const auto& f : files) broken.push_back(f);

  // 2. Walk and probe in the background; switch to auto mid-walk.
  std::atomic<bool> stop_bg{false};
  std::thread walker([&] {
    for (uint64_t i = 0; !stop_bg.load() && !stop_requested().load(); ++i)
      (void)walk(walk_options(s, session.fs().mountpoint(), i, &stop_bg), &session.recorder());
  });
  std::thread prober([&] {
    while (!stop_bg.load() && !stop_requested().load()) {
      for (const auto& f : broken) {
        (void)session.ops().stat(f);
        (void)session.ops().read(f);
      }
      std::this_thread::sleep_for(milliseconds(50));
    }
  });
  int64_t total_ms = std::max<int64_t>(duration_ms, 2 * s.window_us() / 1000 + 1000);
  nap(milliseconds(std::min<int64_t>(1500, total_ms / 3)));
  int64_t t_switch = wall_us();
  auto sw = session.fs().set_strategy("auto");
  session.markers().push_back({t_switch, "switch", "antares-ctl strategy auto"});
  {
    Ticker ticker(progress, "[none->auto] switch", &session.recorder(), run.start_us, total_ms * 1000);
    nap(milliseconds(total_ms - std::min<int64_t>(1500, total_ms / 3)));
  }
  stop_bg = true;
  walker.join();
  prober.join();
  // 3. The broken paths must now read fresh, without a remount.
  auto final_probe = probe(session, s, files, expected, false);
  auto events = session.recorder().take();
  const int64_t grace_us = static_cast<int64_t>(std::max(s.entry_timeout, s.attr_timeout) * 1e6) + s.slack_ms * 1000;
  uint64_t before = 0, in_grace = 0, after = 0;
  for (const auto& e : events) {
    if (e.err != ESTALE) continue;
    if (e.t_us < t_switch) ++before;
    else if (e.t_us < t_switch + grace_us) ++in_grace;
    else ++after;
  }
  session.analyze_events(events, &run, {"buck-out/"});
  finish_run(session, &run, {"buck-out/"});
  std::string close_note = session.close();
  run.kept_dir = session.kept_dir();
  run.end_us = wall_us();
  run.interrupted = stop_requested().load();
  run.reproduced = before > 0;
  run.converged = final_probe.fresh && !final_probe.estale;
  char note[256];
  snprintf(note, sizeof note, "ESTALE before the switch: %llu, within %.1fs grace: %llu, after: %llu",
           static_cast<unsigned long long>(before), grace_us / 1e6, static_cast<unsigned long long>(in_grace),
           static_cast<unsigned long long>(after));
  run.note = note;
  if (!sw.ok()) run.note += "; strategy switch failed: " + sw.error().describe();
  if (!run.converged) run.note += "; broken paths did not read fresh after the switch";
  if (!close_note.empty()) run.note += "; " + close_note;
  if (run.interrupted) run.note += "; interrupted";
  run.ok = !run.interrupted && sw.ok() && run.reproduced && after == 0 && run.converged;
  return run;
}

std::optional<std::string> failure_of(const RunRecord& r) {
  std::string name = r.strategy + " " + r.scenario + (r.mode == "scenario" ? " #" + std::to_string(r.rep) : "");
  if (r.interrupted) return std::nullopt;  // the report as a whole says "interrupted"
  if (r.setup_failed) return name + ": could not run: " + r.note;
  if (r.mode == "scenario") {
    if (r.strategy == "none" && !r.reproduced) return name + ": ESTALE did not reproduce";
    if (r.strategy != "none" && !r.ok)
      return name + ": " + std::to_string(r.stats.estale) + " ESTALE, " + std::to_string(r.stats.stale_beyond) +
             " stale beyond window, " + std::to_string(r.stats.wrong) + " wrong, " +
             std::to_string(r.stats.enoent_exists + r.stats.other_errors) + " other errors" +
             (r.converged ? "" : ", never fresh") + (r.note.empty() ? "" : " (" + r.note + ")");
    return std::nullopt;
  }
  if (r.mode == "soak" || r.mode == "walk") {
    if (r.strategy != "none" && !r.ok)
      return name + ": " + std::to_string(r.stats.estale) + " ESTALE, " + std::to_string(r.stats.stale_beyond) +
             " stale beyond window, " + std::to_string(r.stats.wrong) + " wrong" +
             (r.note.empty() ? "" : " (" + r.note + ")");
    return std::nullopt;
  }
  if (!r.ok) return name + ": " + r.note;
  return std::nullopt;
}

}  // namespace antares::repro
