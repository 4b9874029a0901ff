// Tests of what issue 10 added to LowerStore: Merkle refresh (one dir-hash
// per TTL, re-listing only changed directories that were listed), the
// persisted mirror and its restart, the blob cache as the source of every
// materialization, prefetch, and the memory bound per mirrored entry.
// Requests are counted at the client (live mock-mega) or at FakeMega; time
// is a FakeClock; concurrency waits on conditions with deadlines.
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "common/unique_fd.h"
#include "fs/lower/blob_cache.h"
#include "fs/lower/lower_store.h"
#include "fs/lower/lower_test_util.h"
#include "fs/lower/mirror_fs.h"
#include "testing/subprocess.h"

namespace antares::fs {
namespace {

using namespace std::chrono_literals;
using test::FakeMega;
using test::LiveMega;
using test::lstat_of;
using test::names_in;
using test::slurp;
using test::Recorder;
using Kind = LayerChange::Kind;

constexpr Clock::Duration kTtl = 5s;

std::string parent_of(const std::string& rel) {
  auto s = rel.rfind('/');
  return s == std::string::npos ? "" : rel.substr(0, s);
}

// Every directory on the way to rel (the root included), e.g. "a/b/f" -> "", "a", "a/b".
std::vector<std::string> dirs_on_path(const std::string& rel) {
  std::vector<std::string> out{""};
  for (size_t s = rel.find('/'); s != std::string::npos; s = rel.find('/', s + 1)) out.push_back(rel.substr(0, s));
  return out;
}

struct Walked {
  std::vector<std::string> dirs, files;
};

// What the filesystem does: ensure_dir on every directory the mirror shows,
// breadth first. Fails the test on any error.
Walked walk(LowerStore& store, const std::string& root) {
  Walked w;
  std::vector<std::string> todo{""};
  for (size_t i = 0; i < todo.size(); ++i) {
    const std::string d = todo[i];
    auto s = store.ensure_dir(d);
    EXPECT_TRUE(s.ok()) << "'" << d << "': " << (s ? "" : s.error().describe());
    w.dirs.push_back(d);
    for (const auto& n : names_in(d.empty() ? root : root + "/" + d)) {
      if (LowerStore::is_internal_name(n)) continue;
      const std::string p = d.empty() ? n : d + "/" + n;
      auto st = lstat_of(root + "/" + p);
      if (!st) continue;
      if (S_ISDIR(st->st_mode)) todo.push_back(p);
      else w.files.push_back(p);
    }
  }
  return w;
}

// Names, types and sizes of the whole mirror equal the server's.
void expect_mirror_matches(LiveMega& mega, const std::string& root) {
  std::vector<std::string> todo{""};
  while (!todo.empty()) {
    std::string rel = todo.back();
    todo.pop_back();
    auto listing = mega.client->content_hash("/" + rel);
    ASSERT_TRUE(listing.ok());
    std::set<std::string> want;
    for (const auto& item : *listing) {
      const std::string p = rel.empty() ? item.name : rel + "/" + item.name;
      want.insert(item.name);
      auto st = lstat_of(root + "/" + p);
      ASSERT_TRUE(st) << p;
      if (item.type == remote::ItemType::directory) {
        EXPECT_TRUE(S_ISDIR(st->st_mode)) << p;
        if (!names_in(root + "/" + p).empty()) todo.push_back(p);  // listed ones only
      } else {
        EXPECT_EQ(uint64_t(st->st_size), *item.size) << p;
      }
    }
    std::set<std::string> have;
    for (const auto& n : names_in(rel.empty() ? root : root + "/" + rel))
      if (!LowerStore::is_internal_name(n)) have.insert(n);
    EXPECT_EQ(have, want) << "dir '" << rel << "'";
  }
}

LowerStoreOptions merkle_options() {
  LowerStoreOptions o;
  o.ttl = kTtl;
  o.refresh = RefreshMode::merkle;
  return o;
}

class Merkle : public ::testing::Test {
 protected:
  LiveMega mega;
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStore store{*mega.client, dir.path(), merkle_options(), clock};
  uint64_t requests() { return mega.client->stats().requests.load(); }
  std::string mirror(const std::string& rel) { return dir.path() + "/" + rel; }
  // n source files in distinct directories.
  std::vector<std::string> sources_in_distinct_dirs(size_t n) {
    auto all = mega.admin->paths("source");
    EXPECT_TRUE(all.ok());
    std::vector<std::string> out;
    std::set<std::string> parents;
    for (const auto& p : *all)
      if (out.size() < n && parents.insert(parent_of(p.substr(1))).second) out.push_back(p.substr(1));
    EXPECT_EQ(out.size(), n);
    return out;
  }
};

// ------------------------------------------------------------------ merkle

TEST_F(Merkle, UnchangedRepositoryCostsOneDirHashPerTtl) {
  Walked w = walk(store, dir.path());
  ASSERT_GT(w.dirs.size(), 10u);
  const uint64_t listings = store.stats().listings_fetched.load();
  EXPECT_EQ(listings, w.dirs.size());
  EXPECT_EQ(store.stats().listings_first.load(), listings);

  for (int ttl = 0; ttl < 3; ++ttl) {
    clock.advance(kTtl);
    const uint64_t before = requests();
    walk(store, dir.path());
    EXPECT_EQ(requests() - before, 1u) << "one dir-hash of / for a whole walk after the TTL";
  }
  EXPECT_EQ(store.stats().listings_fetched.load(), listings);
  EXPECT_EQ(store.stats().dir_hash_checks.load(), 4u) << "the first walk's check and one per TTL";
  EXPECT_EQ(store.stats().dir_hash_unchanged.load(), 4u);
  // Within the TTL nothing is asked at all.
  const uint64_t before = requests();
  walk(store, dir.path());
  EXPECT_EQ(requests(), before);
}

TEST_F(Merkle, ChangedFilesRelistExactlyTheListedDirectoriesOnTheirPaths) {
  walk(store, dir.path());
  Recorder rec;  // from here on: the walk's first listings are not changes
  store.set_listener(rec.listener());
  const auto changed = sources_in_distinct_dirs(3);
  std::map<std::string, ino_t> ino_before;
  std::set<std::string> on_paths;
  size_t bound = 1;  // (d+1) per file + the dir-hash
  for (const auto& f : changed) {
    ino_before[f] = lstat_of(mirror(f))->st_ino;
    auto dirs = dirs_on_path(f);
    on_paths.insert(dirs.begin(), dirs.end());
    bound += dirs.size();
    ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + f}}));
  }
  // An unchanged sibling keeps its inode.
  std::string sibling;
  for (const auto& n : names_in(mirror(parent_of(changed[0]))))
    if (n != changed[0].substr(changed[0].rfind('/') + 1) && S_ISREG(lstat_of(mirror(parent_of(changed[0])) + "/" + n)->st_mode))
      sibling = parent_of(changed[0]) + "/" + n;
  ASSERT_FALSE(sibling.empty());
  const ino_t sibling_ino = lstat_of(mirror(sibling))->st_ino;

  clock.advance(kTtl);
  const uint64_t before = requests();
  const uint64_t listings = store.stats().listings_fetched.load();
  ASSERT_TRUE(store.ensure_dir("").ok());  // any directory's first use after the TTL
  EXPECT_EQ(store.stats().listings_fetched.load() - listings, on_paths.size())
      << "every listed directory on a changed path, and nothing else";
  EXPECT_EQ(store.stats().listings_changed.load(), on_paths.size());
  EXPECT_EQ(requests() - before, on_paths.size() + 1);
  EXPECT_LE(requests() - before, bound) << "at most (d+1)k listings + 1 dir-hash";
  for (const auto& f : changed) {
    EXPECT_NE(lstat_of(mirror(f))->st_ino, ino_before[f]) << f << ": replaced, not rewritten";
    EXPECT_TRUE(rec.has(Kind::replaced, f)) << f;
    EXPECT_EQ(store.file_state(f), LowerStore::FileState::pending);
  }
  EXPECT_EQ(lstat_of(mirror(sibling))->st_ino, sibling_ino);
  EXPECT_EQ(rec.begins.load(), 3) << "one batch per directory that changed on disk";
  EXPECT_EQ(rec.ends.load(), rec.begins.load());
  // The whole mirror is fresh now: a walk costs nothing more.
  const uint64_t after = requests();
  walk(store, dir.path());
  EXPECT_EQ(requests(), after);
  expect_mirror_matches(mega, dir.path());
}

// What the daemon's background ticker calls: changes are found and reported
// with no ensure_dir at all, once per TTL.
TEST_F(Merkle, CheckDueFindsChangesWithoutAnyCaller) {
  walk(store, dir.path());
  Recorder rec;
  store.set_listener(rec.listener());
  const std::string f = sources_in_distinct_dirs(1)[0];
  const ino_t ino = lstat_of(mirror(f))->st_ino;
  ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + f}}));
  const uint64_t before = requests();
  EXPECT_FALSE(store.check_due()) << "not due within the TTL";
  EXPECT_EQ(requests(), before);
  clock.advance(kTtl);
  EXPECT_TRUE(store.check_due());
  EXPECT_EQ(requests() - before, dirs_on_path(f).size() + 1) << "the dir-hash and the listed dirs on the path";
  EXPECT_NE(lstat_of(mirror(f))->st_ino, ino) << "replaced, as a caller's refresh would";
  EXPECT_TRUE(rec.has(Kind::replaced, f));
  EXPECT_EQ(rec.ends.load(), rec.begins.load());
  EXPECT_FALSE(store.check_due()) << "fresh for another TTL";
  clock.advance(kTtl);
  EXPECT_TRUE(store.check_due());
  EXPECT_EQ(requests() - before, dirs_on_path(f).size() + 2) << "unchanged: one dir-hash";
}

TEST(MerkleFake, CheckDueDoesNothingUnderPerDir) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStoreOptions o = merkle_options();
  o.refresh = RefreshMode::per_dir;
  LowerStore store(client, dir.path(), o, clock);
  http->add_file("/", "a.rs", "a");
  ASSERT_TRUE(store.ensure_dir("").ok());
  const int before = http->count("/api/");
  clock.advance(kTtl);
  EXPECT_FALSE(store.check_due());
  EXPECT_EQ(http->count("/api/"), before) << "no request at all";
}

TEST_F(Merkle, DirectoriesNeverListedNeedNothing) {
  ASSERT_TRUE(store.ensure_dir("").ok());
  const std::string f = sources_in_distinct_dirs(1)[0];
  ASSERT_GE(dirs_on_path(f).size(), 3u) << "a file two directories down";
  const Oid old_oid = (*mega.client->dir_hash("/" + f))->oid;
  ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + f}}));
  clock.advance(kTtl);
  const uint64_t before = requests();
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(requests() - before, 2u) << "dir-hash, then the root only";
  EXPECT_EQ(store.stats().listings_changed.load(), 1u);
  // Reached later, the directories are listed as they are now.
  for (const auto& d : dirs_on_path(f)) ASSERT_TRUE(store.ensure_dir(d).ok()) << d;
  ASSERT_TRUE(store.ensure_file(f).ok());
  EXPECT_NE(git_blob_oid(slurp(mirror(f))), old_oid);
  EXPECT_EQ(git_blob_oid(slurp(mirror(f))), (*mega.client->dir_hash("/" + f))->oid);
}

TEST_F(Merkle, ExpireForcesTheNextCheck) {
  walk(store, dir.path());
  const uint64_t checks = store.stats().dir_hash_checks.load();
  store.expire("some/dir");
  const uint64_t before = requests();
  walk(store, dir.path());
  EXPECT_EQ(store.stats().dir_hash_checks.load(), checks + 1);
  EXPECT_EQ(requests() - before, 1u);
  walk(store, dir.path());
  EXPECT_EQ(requests() - before, 1u) << "fresh again for a TTL";
}

TEST_F(Merkle, FailedCheckServesTheMirrorForATtl) {
  walk(store, dir.path());
  const std::string f = sources_in_distinct_dirs(1)[0];
  const ino_t ino = lstat_of(mirror(f))->st_ino;
  ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + f}}));
  ASSERT_TRUE(mega.admin->set_faults({{{"endpoint", "dir-hash"}, {"kind", "status"}, {"status", 500}}}).ok());
  clock.advance(kTtl);
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(store.ensure_dir(parent_of(f)).ok());
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("lower_check_failed"), std::string::npos) << err;
  EXPECT_EQ(lstat_of(mirror(f))->st_ino, ino) << "the old mirror is served";
  const uint64_t before = requests();
  clock.advance(kTtl - 1ns);
  walk(store, dir.path());
  EXPECT_EQ(requests(), before) << "no retry storm: the next check waits a TTL";
  ASSERT_TRUE(mega.admin->set_faults(nlohmann::json::array()).ok());
  clock.advance(1ns);
  ASSERT_TRUE(store.ensure_dir(parent_of(f)).ok());
  EXPECT_NE(lstat_of(mirror(f))->st_ino, ino);
}

TEST_F(Merkle, FailedRelistIsRetriedByTheNextCheck) {
  walk(store, dir.path());
  const std::string f = sources_in_distinct_dirs(1)[0];
  const ino_t ino = lstat_of(mirror(f))->st_ino;
  ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + f}}));
  ASSERT_TRUE(mega.admin->set_faults({{{"endpoint", "content-hash"}, {"kind", "status"}, {"status", 503}}}).ok());
  clock.advance(kTtl);
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(store.ensure_dir("").ok());
  ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(lstat_of(mirror(f))->st_ino, ino);
  ASSERT_TRUE(mega.admin->set_faults(nlohmann::json::array()).ok());
  const uint64_t before = requests();
  walk(store, dir.path());
  EXPECT_EQ(requests(), before) << "served as it is until the next check";
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_NE(lstat_of(mirror(f))->st_ino, ino);
  expect_mirror_matches(mega, dir.path());
}

TEST_F(Merkle, ConcurrentCallersShareOneCheck) {
  Walked w = walk(store, dir.path());
  ASSERT_TRUE(mega.admin->mutate({{"count", 5}}).ok());
  clock.advance(kTtl);
  const uint64_t checks = store.stats().dir_hash_checks.load();
  std::atomic<int> ready{0}, failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      ++ready;
      while (ready.load() < 8) std::this_thread::yield();
      for (size_t k = size_t(i); k < w.dirs.size(); k += 8) {
        auto s = store.ensure_dir(w.dirs[k]);
        if (!s && s.err() != ENOENT) ++failures;  // mutations may remove a directory
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store.stats().dir_hash_checks.load(), checks + 1);
  walk(store, dir.path());
  expect_mirror_matches(mega, dir.path());
}

TEST(MerkleFake, ChangedSiblingsAreRelistedInParallel) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStoreOptions o = merkle_options();
  o.refresh_parallelism = 4;
  LowerStore store(client, dir.path(), o, clock);
  for (int i = 0; i < 4; ++i) {
    http->add_dir("/", "d" + std::to_string(i));
    http->add_file("/d" + std::to_string(i), "f", "v1");
  }
  walk(store, dir.path());
  for (int i = 0; i < 4; ++i) http->add_file("/d" + std::to_string(i), "f", "v2 " + std::to_string(i));
  // Each sibling listing waits until another one is in flight too (or 10 s).
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0, most = 0;
  http->set_hook([&](const remote::HttpRequest& req) -> std::optional<Result<remote::HttpResponse>> {
    if (req.url.find("content-hash?path=/d") == std::string::npos) return std::nullopt;
    std::unique_lock l(mu);
    most = std::max(most, ++in_flight);
    cv.notify_all();
    cv.wait_for(l, 10s, [&] { return most >= 2; });
    --in_flight;
    return std::nullopt;
  });
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_GE(most, 2) << "sibling directories are listed at the same time";
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(store.ensure_file("d" + std::to_string(i) + "/f").ok());
    EXPECT_EQ(slurp(dir.path() + "/d" + std::to_string(i) + "/f"), "v2 " + std::to_string(i));
  }
}

// ------------------------------------------------------------ persistence

LowerStoreOptions persist_options(RefreshMode mode = RefreshMode::merkle, BlobCache* cache = nullptr) {
  LowerStoreOptions o;
  o.ttl = kTtl;
  o.refresh = mode;
  o.persist = true;
  o.blob_cache = cache;
  return o;
}

class Persist : public ::testing::Test {
 protected:
  Persist() {
    // The owner marker the daemon puts there: the mirror is ours to keep or wipe.
    EXPECT_TRUE(mirror::claim_dir(dir.path(), "test mirror").ok());
  }
  LiveMega mega;
  antares::testing::TempDir dir;
  FakeClock clock;
  std::string mirror(const std::string& rel) { return dir.path() + "/" + rel; }
  uint64_t requests() { return mega.client->stats().requests.load(); }
  // A first life: everything listed, build files and a few sources
  // materialized (returned in w.materialized).
  struct Life : Walked {
    std::vector<std::string> materialized;
  };
  Life populate(RefreshMode mode = RefreshMode::merkle, BlobCache* cache = nullptr) {
    LowerStore s(*mega.client, dir.path(), persist_options(mode, cache), clock);
    EXPECT_EQ(s.stats().mirror_restored.load(), 0u);
    Life w;
    static_cast<Walked&>(w) = walk(s, dir.path());
    size_t n = 0;
    for (const auto& f : w.files) {
      const std::string name = f.substr(f.rfind('/') + 1);
      if (name == "BUCK" || name == "PACKAGE" || n++ % 7 == 0) {
        EXPECT_TRUE(s.ensure_file(f).ok()) << f;
        w.materialized.push_back(f);
      }
    }
    return w;
  }
};

TEST_F(Persist, RestartOverAnUnchangedRepositoryIsOneRequestAndNoBlob) {
  Life w = populate();
  ASSERT_GT(w.materialized.size(), 20u);
  std::map<std::string, ino_t> ino;
  for (const auto& f : w.files) ino[f] = lstat_of(mirror(f))->st_ino;
  const std::set<std::string> materialized(w.materialized.begin(), w.materialized.end());

  const uint64_t req0 = requests();
  LowerStore s(*mega.client, dir.path(), persist_options(), clock);
  EXPECT_EQ(s.stats().mirror_restored.load(), 1u);
  EXPECT_EQ(s.stats().mirror_wiped.load(), 0u);
  Walked again = walk(s, dir.path());
  EXPECT_EQ(again.dirs.size(), w.dirs.size());
  EXPECT_EQ(again.files.size(), w.files.size());
  for (const auto& f : w.files) {
    EXPECT_EQ(lstat_of(mirror(f))->st_ino, ino[f]) << f << ": kept, not re-created";
    if (materialized.count(f)) {
      EXPECT_EQ(s.file_state(f), LowerStore::FileState::materialized) << f;
      EXPECT_TRUE(s.content_ready(ino[f])) << f;
      ASSERT_TRUE(s.ensure_file(f).ok()) << f;
    } else {
      EXPECT_EQ(s.file_state(f), LowerStore::FileState::pending) << f;
      EXPECT_FALSE(s.content_ready(ino[f])) << f << ": a placeholder is never served";
    }
  }
  EXPECT_EQ(requests() - req0, 1u) << "one dir-hash of /, nothing else";
  EXPECT_EQ(s.stats().listings_fetched.load(), 0u);
  EXPECT_EQ(s.stats().blobs_fetched.load(), 0u);
  EXPECT_EQ(s.stats().dirs_loaded.load(), w.dirs.size());
  for (const auto& f : w.materialized)
    EXPECT_EQ(git_blob_oid(slurp(mirror(f))), (*mega.client->dir_hash("/" + f))->oid) << f;
}

TEST_F(Persist, RestartAfterAChangeRelistsOnlyWhatChanged) {
  Life w = populate();
  std::string changed;  // a materialized file below the root
  for (const auto& f : w.materialized)
    if (f.find('/') != std::string::npos) {
      changed = f;
      break;
    }
  ASSERT_FALSE(changed.empty());
  std::string kept;  // a materialized file elsewhere
  for (const auto& f : w.materialized)
    if (parent_of(f) != parent_of(changed)) kept = f;
  ASSERT_FALSE(kept.empty());
  const ino_t changed_ino = lstat_of(mirror(changed))->st_ino, kept_ino = lstat_of(mirror(kept))->st_ino;
  ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + changed}}));
  ASSERT_TRUE(mega.mutate({{"kind", "add"}, {"path", "/" + parent_of(changed) + "/added.rs"}}));

  const uint64_t req0 = requests();
  LowerStore s(*mega.client, dir.path(), persist_options(), clock);
  walk(s, dir.path());
  EXPECT_EQ(requests() - req0, 1 + dirs_on_path(changed).size()) << "dir-hash + the directories on the path";
  EXPECT_EQ(s.stats().listings_changed.load(), dirs_on_path(changed).size());
  EXPECT_NE(lstat_of(mirror(changed))->st_ino, changed_ino);
  EXPECT_EQ(s.file_state(changed), LowerStore::FileState::pending);
  EXPECT_TRUE(lstat_of(mirror(parent_of(changed) + "/added.rs")));
  EXPECT_EQ(lstat_of(mirror(kept))->st_ino, kept_ino);
  EXPECT_EQ(s.file_state(kept), LowerStore::FileState::materialized);
  ASSERT_TRUE(s.ensure_file(kept).ok());
  EXPECT_EQ(s.stats().blobs_fetched.load(), 0u);
  ASSERT_TRUE(s.ensure_file(changed).ok());
  EXPECT_EQ(git_blob_oid(slurp(mirror(changed))), (*mega.client->dir_hash("/" + changed))->oid);
  expect_mirror_matches(mega, dir.path());
}

TEST_F(Persist, PerDirRestartKeepsMaterializedFiles) {
  Life w = populate(RefreshMode::per_dir);
  LowerStore s(*mega.client, dir.path(), persist_options(RefreshMode::per_dir), clock);
  walk(s, dir.path());
  EXPECT_EQ(s.stats().listings_ttl.load(), w.dirs.size()) << "per-dir: each directory listed again at first use";
  for (const auto& f : w.materialized) {
    EXPECT_EQ(s.file_state(f), LowerStore::FileState::materialized) << f;
    ASSERT_TRUE(s.ensure_file(f).ok()) << f;
  }
  EXPECT_EQ(s.stats().blobs_fetched.load(), 0u) << "unchanged files keep their bytes";
}

TEST_F(Persist, DirtyOrForeignMirrorIsWipedKeepingTheOwnerMarker) {
  const std::string root = dir.path();
  for (const char* state : {"antares-mirror/1 dirty", "antares-mirror/0 clean", ""}) {
    // Each round's first life starts over (the last round left a clean mirror).
    ::removexattr(root.c_str(), "user.antares.mirror");
    {
      UniqueFd fd(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
      ASSERT_TRUE(fd.valid());
      ASSERT_TRUE(mirror::clear_owned_dir(fd.get()).ok());
    }
    populate();
    if (*state)
      ASSERT_EQ(::setxattr(root.c_str(), "user.antares.mirror", state, strlen(state), 0), 0);
    else
      ASSERT_EQ(::removexattr(root.c_str(), "user.antares.mirror"), 0);
    ::testing::internal::CaptureStderr();
    LowerStore s(*mega.client, root, persist_options(), clock);
    std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(s.stats().mirror_wiped.load(), 1u) << state;
    EXPECT_EQ(s.stats().mirror_restored.load(), 0u) << state;
    EXPECT_NE(err.find("lower_mirror_wiped"), std::string::npos) << err;
    EXPECT_EQ(names_in(root), (std::set<std::string>{std::string(mirror::kOwnerMarker)})) << state;
    walk(s, root);
    expect_mirror_matches(mega, root);
  }
}

TEST_F(Persist, DamagedDirectoryIsClearedAndListedAgain) {
  Life w = populate();
  std::string d;
  for (const auto& f : w.files)
    if (parent_of(f) != "") {
      d = parent_of(f);
      break;
    }
  std::ofstream(mirror(d + "/stray")) << "no state";
  LowerStore s(*mega.client, dir.path(), persist_options(), clock);
  ::testing::internal::CaptureStderr();
  walk(s, dir.path());
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(s.stats().dirs_damaged.load(), 1u);
  EXPECT_NE(err.find("lower_dir_damaged"), std::string::npos) << err;
  EXPECT_FALSE(lstat_of(mirror(d + "/stray")));
  size_t beneath = 0;  // the damaged directory and everything walked beneath it (cleared with it)
  for (const auto& x : w.dirs) beneath += x == d || x.rfind(d + "/", 0) == 0;
  EXPECT_EQ(s.stats().listings_first.load(), beneath) << "only the damaged directory and its subtree";
  expect_mirror_matches(mega, dir.path());
}

// ------------------------------------------------------------- blob cache

TEST(LowerBlobCache, SameContentElsewhereIsCopiedFromTheCacheNeverLinked) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir, cache_dir;
  FakeClock clock;
  auto cache = BlobCache::open(cache_dir.path(), 1 << 20, clock, false);
  ASSERT_TRUE(cache.ok());
  LowerStoreOptions o = merkle_options();
  o.blob_cache = cache->get();
  LowerStore store(client, dir.path(), o, clock);
  const std::string oid = http->add_file("/", "a", "shared bytes");
  http->add_dir("/", "sub");
  http->add_file("/sub", "b", "shared bytes");
  walk(store, dir.path());
  ASSERT_TRUE(store.ensure_file("a").ok());
  ASSERT_TRUE(store.ensure_file("sub/b").ok());
  EXPECT_EQ(http->count("/file/blob/" + oid), 1) << "downloaded once";
  EXPECT_EQ(store.stats().blobs_fetched.load(), 1u);
  EXPECT_EQ(store.stats().blobs_from_cache.load(), 1u);
  EXPECT_EQ(slurp(dir.path() + "/sub/b"), "shared bytes");
  auto a = lstat_of(dir.path() + "/a"), b = lstat_of(dir.path() + "/sub/b");
  auto c = lstat_of((*cache)->path_of(*Oid::from_hex(oid)));
  ASSERT_TRUE(a && b && c);
  EXPECT_NE(a->st_ino, b->st_ino);
  EXPECT_NE(b->st_ino, c->st_ino);
  EXPECT_EQ(b->st_nlink, 1u);
  EXPECT_EQ(c->st_nlink, 1u) << "mirror files are never hard links to cache objects";
}

TEST(LowerBlobCache, FileChangedBackComesFromTheCacheAndIsStillReplaced) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir, cache_dir;
  FakeClock clock;
  auto cache = BlobCache::open(cache_dir.path(), 1 << 20, clock, false);
  ASSERT_TRUE(cache.ok());
  LowerStoreOptions o = merkle_options();
  o.blob_cache = cache->get();
  LowerStore store(client, dir.path(), o, clock);
  Recorder rec;
  store.set_listener(rec.listener());
  const std::string f = dir.path() + "/f";
  http->add_file("/", "f", "version one");
  ASSERT_TRUE(store.ensure_dir("").ok());
  ASSERT_TRUE(store.ensure_file("f").ok());
  const ino_t v1 = lstat_of(f)->st_ino;
  // An open fd on version one: what a reader of the old version keeps.
  mirror::Fd old_fd(::open(f.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(old_fd.valid());
  http->add_file("/", "f", "version two");
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());
  ASSERT_TRUE(store.ensure_file("f").ok());
  http->add_file("/", "f", "version one");
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());
  const ino_t v3 = lstat_of(f)->st_ino;
  EXPECT_NE(v3, v1) << "the same bytes again still land as a new inode";
  EXPECT_TRUE(rec.has(Kind::replaced, "f"));
  ASSERT_TRUE(store.ensure_file("f").ok());
  EXPECT_EQ(slurp(f), "version one");
  EXPECT_EQ(store.stats().blobs_fetched.load(), 2u);
  EXPECT_EQ(store.stats().blobs_from_cache.load(), 1u);
  EXPECT_EQ(lstat_of(f)->st_nlink, 1u);
}

TEST(LowerBlobCache, DamagedCacheEntryIsDownloadedInstead) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir, cache_dir;
  FakeClock clock;
  auto cache = BlobCache::open(cache_dir.path(), 1 << 20, clock, false);
  ASSERT_TRUE(cache.ok());
  LowerStoreOptions o = merkle_options();
  o.blob_cache = cache->get();
  LowerStore store(client, dir.path(), o, clock);
  const std::string oid = http->add_file("/", "f", "good bytes");
  (*cache)->put(*Oid::from_hex(oid), "good bytes");
  std::ofstream((*cache)->path_of(*Oid::from_hex(oid)), std::ios::trunc) << "BAD bytes!";
  ASSERT_TRUE(store.ensure_dir("").ok());
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(store.ensure_file("f").ok());
  ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(slurp(dir.path() + "/f"), "good bytes");
  EXPECT_EQ(store.stats().blobs_fetched.load(), 1u);
  EXPECT_EQ((*cache)->stats().damaged.load(), 1u);
  EXPECT_EQ(slurp((*cache)->path_of(*Oid::from_hex(oid))), "good bytes") << "replaced by the downloaded copy";
}

TEST_F(Persist, WipedMirrorIsRebuiltFromTheCacheWithoutDownloads) {
  antares::testing::TempDir cache_dir;
  auto cache = BlobCache::open(cache_dir.path(), 1 << 30, clock, false);
  ASSERT_TRUE(cache.ok());
  Life w = populate(RefreshMode::merkle, cache->get());
  const std::vector<std::string>& materialized = w.materialized;
  ASSERT_GT(materialized.size(), 20u);
  // A crash: the mirror is not trusted, the cache is.
  const char* dirty = "antares-mirror/1 dirty";
  ASSERT_EQ(::setxattr(dir.path().c_str(), "user.antares.mirror", dirty, strlen(dirty), 0), 0);
  ::testing::internal::CaptureStderr();
  LowerStore s(*mega.client, dir.path(), persist_options(RefreshMode::merkle, cache->get()), clock);
  ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(s.stats().mirror_wiped.load(), 1u);
  walk(s, dir.path());
  for (const auto& f : materialized) ASSERT_TRUE(s.ensure_file(f).ok()) << f;
  EXPECT_EQ(s.stats().blobs_fetched.load(), 0u);
  EXPECT_EQ(s.stats().blobs_from_cache.load(), materialized.size());
}

// --------------------------------------------------------------- prefetch

// root: BUCK, PACKAGE, src.rs, a/ b/ c/ (each: BUCK, PACKAGE, BUCK.v2, src.rs, x/ (BUCK)).
std::shared_ptr<FakeMega> prefetch_tree() {
  auto http = test::fake_mega();
  http->add_file("/", "BUCK", "root buck");
  http->add_file("/", "PACKAGE", "root package");
  http->add_file("/", "src.rs", "root src");
  for (const std::string d : {"a", "b", "c"}) {
    http->add_dir("/", d);
    for (const std::string f : {"BUCK", "PACKAGE", "BUCK.v2", "src.rs"}) http->add_file("/" + d, f, d + " " + f);
    http->add_dir("/" + d, "x");
    http->add_file("/" + d + "/x", "BUCK", d + " x buck");
  }
  return http;
}

template <class F>
bool eventually(F f, std::chrono::seconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!f()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

TEST(Prefetch, FirstReadOfADirectoryPrefetchesItsSubdirectoriesAndBuildFiles) {
  auto http = prefetch_tree();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStoreOptions o = merkle_options();
  o.prefetch_threads = 4;
  LowerStore store(client, dir.path(), o, clock);
  store.start_prefetch();
  using FS = LowerStore::FileState;
  ASSERT_TRUE(store.ensure_dir("").ok());
  ASSERT_TRUE(eventually([&] {
    for (const std::string d : {"a", "b", "c"})
      for (const std::string f : {"BUCK", "PACKAGE", "BUCK.v2"})
        if (store.file_state(d + "/" + f) != FS::materialized) return false;
    return store.file_state("BUCK") == FS::materialized && store.file_state("PACKAGE") == FS::materialized &&
           store.stats().prefetch_done.load() == store.stats().prefetch_queued.load();
  })) << "queued " << store.stats().prefetch_queued.load() << ", done " << store.stats().prefetch_done.load();
  EXPECT_EQ(store.stats().listings_prefetch.load(), 3u);
  EXPECT_EQ(store.file_state("src.rs"), FS::pending) << "only build files";
  EXPECT_EQ(store.file_state("a/src.rs"), FS::pending);
  EXPECT_EQ(store.file_state("a/x/BUCK"), FS::untracked) << "one level ahead of the caller, not the whole tree";
  EXPECT_EQ(store.stats().prefetch_errors.load(), 0u);
  // The caller reaching a prefetched directory lists nothing, and queues the next level.
  const uint64_t first = store.stats().listings_first.load();
  ASSERT_TRUE(store.ensure_dir("a").ok());
  EXPECT_EQ(store.stats().listings_first.load(), first);
  ASSERT_TRUE(eventually([&] { return store.file_state("a/x/BUCK") == FS::materialized; }));
  EXPECT_EQ(store.file_state("b/x/BUCK"), FS::untracked);
}

TEST(Prefetch, QueueIsBoundedAndCallersAreNotHeldUp) {
  auto http = test::fake_mega();
  for (int i = 0; i < 50; ++i) http->add_dir("/", "d" + std::to_string(100 + i));
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStoreOptions o = merkle_options();
  o.prefetch_threads = 2;
  o.prefetch_queue = 10;
  auto store = std::make_unique<LowerStore>(client, dir.path(), o, clock);
  store->start_prefetch();
  // The two workers take d100 and d101 first and stall there.
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  int stalled = 0;
  http->set_hook([&](const remote::HttpRequest& req) -> std::optional<Result<remote::HttpResponse>> {
    if (!req.url.ends_with("path=/d100") && !req.url.ends_with("path=/d101")) return std::nullopt;
    std::unique_lock l(mu);
    ++stalled;
    cv.notify_all();
    cv.wait(l, [&] { return release; });
    return std::nullopt;
  });
  ASSERT_TRUE(store->ensure_dir("").ok());
  EXPECT_EQ(store->stats().prefetch_queued.load(), 10u);
  EXPECT_EQ(store->stats().prefetch_dropped.load(), 40u);
  {
    std::unique_lock l(mu);
    ASSERT_TRUE(cv.wait_for(l, 20s, [&] { return stalled == 2; }));
  }
  // A caller's own directory is listed at once, whatever prefetch is stuck on.
  ASSERT_TRUE(store->ensure_dir("d149").ok());
  EXPECT_EQ(store->stats().listings_first.load(), 2u);
  {
    std::lock_guard l(mu);
    release = true;
    cv.notify_all();
  }
  store.reset();  // drops what is queued, joins the workers
  SUCCEED();
}

TEST(Prefetch, ErrorsAreCountedNotReturned) {
  auto http = prefetch_tree();
  http->set_hook([](const remote::HttpRequest& req) -> std::optional<Result<remote::HttpResponse>> {
    if (req.url.ends_with("path=/b")) return remote::HttpResponse{500, "", {}};
    return std::nullopt;
  });
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStoreOptions o = merkle_options();
  o.prefetch_threads = 2;
  LowerStore store(client, dir.path(), o, clock);
  store.start_prefetch();
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(store.ensure_dir("").ok());
  ASSERT_TRUE(eventually([&] {
    return store.stats().prefetch_done.load() == store.stats().prefetch_queued.load() &&
           store.stats().prefetch_errors.load() == 1;
  }));
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("lower_prefetch_failed"), std::string::npos) << err;
  EXPECT_EQ(store.ensure_dir("b").err(), EIO) << "the caller meets the error itself";
  EXPECT_TRUE(store.ensure_dir("a").ok());
}

// ----------------------------------------------------------------- memory

size_t heap_in_use() {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

// The store's state for a large mirror (200k entries, names relative to
// their directory, short enough for the SSO) stays under 120 bytes an entry.
TEST(LowerMemory, StateIsUnder120BytesPerMirroredEntry) {
  constexpr int kDirs = 2000, kFiles = 100;
  auto http = test::fake_mega();
  char name[32];
  for (int d = 0; d < kDirs; ++d) {
    std::snprintf(name, sizeof name, "dir%04d", d);
    http->add_dir("/", name);
    const std::string dir_path = std::string("/") + name;
    for (int f = 0; f < kFiles; ++f) {
      std::snprintf(name, sizeof name, "file%05d.rs", f);
      http->add_file(dir_path, name, "fn main() {}\n");
    }
  }
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  auto store = std::make_unique<LowerStore>(client, dir.path(), merkle_options(), clock);
  ASSERT_TRUE(store->ensure_dir("").ok());  // the check, the root listing: FakeMega's own work done once
  const size_t before = heap_in_use();
  for (int d = 0; d < kDirs; ++d) {
    std::snprintf(name, sizeof name, "dir%04d", d);
    ASSERT_TRUE(store->ensure_dir(name).ok());
  }
  const size_t after = heap_in_use();
  const double entries = double(kDirs) * kFiles;
  const double per_entry = double(after - before) / entries;
  EXPECT_LT(per_entry, 120.0) << "the lower store holds " << per_entry << " bytes per mirrored entry ("
                              << (after - before) << " bytes for " << entries
                              << " entries): names must be relative, no per-entry heap beyond long names";
  std::printf("lower store state: %.1f bytes per mirrored entry\n", per_entry);
  EXPECT_EQ(store->file_state("dir1999/file00099.rs"), LowerStore::FileState::pending);
}

}  // namespace
}  // namespace antares::fs
