// Tests of LowerStore against a live in-process mock-mega (real HTTP, real
// MegaClient, FakeClock) and, where a test must script hostile answers or
// stall a request at an exact point, against FakeMega.
#include "fs/lower/lower_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <dirent.h>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>

#include "fs/layers/layer.h"
#include "fs/lower/lower_test_util.h"
#include "fs/lower/mirror_fs.h"
#include "testing/subprocess.h"

namespace antares::fs {
namespace {

using namespace std::chrono_literals;
using test::FakeMega;
using test::LiveMega;
using test::lstat_of;
using test::slurp;
using test::Recorder;
using Kind = LayerChange::Kind;

constexpr Clock::Duration kTtl = 5s;

std::set<std::string> names_in(const std::string& dir) {
  std::set<std::string> out;
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return out;
  auto names = [&] {
    DIR* d = ::fdopendir(fd);
    std::set<std::string> s;
    while (struct dirent* de = ::readdir(d))
      if (std::string(de->d_name) != "." && std::string(de->d_name) != "..") s.insert(de->d_name);
    ::closedir(d);
    return s;
  }();
  return names;
}

std::string parent_of(const std::string& rel) {
  auto s = rel.rfind('/');
  return s == std::string::npos ? "" : rel.substr(0, s);
}

// ensure_dir on every directory from the root down to rel's parent.
void ensure_parents(LowerStore& store, const std::string& rel) {
  ASSERT_TRUE(store.ensure_dir("").ok());
  for (size_t s = rel.find('/'); s != std::string::npos; s = rel.find('/', s + 1)) {
    auto st = store.ensure_dir(rel.substr(0, s));
    ASSERT_TRUE(st.ok()) << st.error().describe();
  }
}

// Every live test runs under both refresh modes: the mirror, the
// replacement of changed files and the failures behave alike; only what
// triggers a listing differs (per-dir-only tests skip under merkle; the
// merkle ones are in lower_merkle_test.cc).
class LowerStoreLive : public ::testing::TestWithParam<RefreshMode> {
 protected:
  static LowerStoreOptions options() {
    LowerStoreOptions o;
    o.ttl = kTtl;
    o.refresh = GetParam();
    return o;
  }
  bool merkle() const { return GetParam() == RefreshMode::merkle; }
  LiveMega mega;
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStore store{*mega.client, dir.path(), options(), clock};

  std::string mirror(const std::string& rel) { return dir.path() + "/" + rel; }
  std::string first_path(const char* cls) {
    auto p = mega.admin->paths(cls);
    EXPECT_TRUE(p.ok() && !p->empty());
    return p.ok() && !p->empty() ? p->front().substr(1) : "";
  }
  uint64_t blob_size(const std::string& rel) {
    auto item = mega.client->dir_hash("/" + rel);
    EXPECT_TRUE(item.ok() && *item);
    auto b = mega.client->blob((*item)->oid);
    return b.ok() ? b->size() : ~0ull;
  }
  std::string blob_of(const std::string& rel) {
    auto item = mega.client->dir_hash("/" + rel);
    EXPECT_TRUE(item.ok() && *item);
    auto b = mega.client->blob((*item)->oid);
    return b.ok() ? *b : "<missing>";
  }
  void set_faults(nlohmann::json faults) { ASSERT_TRUE(mega.admin->set_faults(faults).ok()); }
};

// -------------------------------------------------------------- listings

// Walks the whole repository through the store and compares every mirrored
// name, type and placeholder size with what the server says.
void check_mirror_matches_server(LiveMega& mega, LowerStore& store, const std::string& root, bool expect_size) {
  std::vector<std::string> todo{""};
  size_t files = 0;
  while (!todo.empty()) {
    std::string rel = todo.back();
    todo.pop_back();
    auto s = store.ensure_dir(rel);
    ASSERT_TRUE(s.ok()) << rel << ": " << s.error().describe();
    auto listing = mega.client->content_hash("/" + rel);
    ASSERT_TRUE(listing.ok());
    std::set<std::string> want;
    for (const auto& item : *listing) {
      const std::string path = rel.empty() ? item.name : rel + "/" + item.name;
      want.insert(item.name);
      auto st = lstat_of(root + "/" + path);
      ASSERT_TRUE(st) << path;
      if (item.type == remote::ItemType::directory) {
        EXPECT_TRUE(S_ISDIR(st->st_mode)) << path;
        EXPECT_EQ(st->st_mode & 07777, 0755u) << path;
        todo.push_back(path);
      } else {
        ++files;
        EXPECT_EQ(item.size.has_value(), expect_size) << path;
        EXPECT_TRUE(S_ISREG(st->st_mode)) << path;
        EXPECT_EQ(st->st_mode & 07777, 0644u) << path;
        auto blob = mega.client->blob(item.oid);
        ASSERT_TRUE(blob.ok());
        EXPECT_EQ(static_cast<uint64_t>(st->st_size), blob->size()) << path;
        EXPECT_EQ(store.file_state(path), LowerStore::FileState::pending) << path;
      }
    }
    EXPECT_EQ(names_in(rel.empty() ? root : root + "/" + rel), want) << "dir '" << rel << "'";
  }
  EXPECT_EQ(files, 200u);
}

TEST_P(LowerStoreLive, MirrorsEveryListingWithTrueSizes) {
  check_mirror_matches_server(mega, store, dir.path(), true);
  EXPECT_GT(store.stats().listings_fetched.load(), 10u);
  EXPECT_EQ(store.stats().blobs_fetched.load(), 0u) << "listing must not download content";
}

TEST(LowerStoreNoSize, PlaceholderSizesComeFromHead) {
  LiveMega mega(/*include_size=*/false);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStore store(*mega.client, dir.path(), kTtl, clock);
  uint64_t before = mega.client->stats().requests.load();
  check_mirror_matches_server(mega, store, dir.path(), false);
  // One HEAD per file on top of the listings (and the test's own requests).
  EXPECT_GE(mega.client->stats().requests.load() - before, 200u + store.stats().listings_fetched.load());
}

TEST_P(LowerStoreLive, UnknownDirectoryIsEnoent) {
  EXPECT_EQ(store.ensure_dir("no-such-dir").err(), ENOENT);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(store.ensure_dir("no-such-dir").err(), ENOENT);
  EXPECT_EQ(store.ensure_dir("../etc").err(), ENOENT);
  EXPECT_TRUE(store.ensure_file("no/such/file").ok()) << "untracked paths are not the store's business";
}

TEST(LowerStoreRoot, MissingMirrorRootIsReported) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  LowerStore store(client, "/nonexistent/antares-mirror", kTtl);
  EXPECT_EQ(store.status().err(), ENOENT);
  EXPECT_EQ(store.ensure_dir("").err(), ENOENT);
}

// ---------------------------------------------------------- materializing

TEST_P(LowerStoreLive, MaterializesInPlaceKeepingTheInode) {
  const std::string rel = first_path("source");
  ensure_parents(store, rel);
  auto before = lstat_of(mirror(rel));
  ASSERT_TRUE(before);
  EXPECT_EQ(store.file_state(rel), LowerStore::FileState::pending);
  auto s = store.ensure_file(rel);
  ASSERT_TRUE(s.ok()) << s.error().describe();
  auto after = lstat_of(mirror(rel));
  ASSERT_TRUE(after);
  EXPECT_EQ(after->st_ino, before->st_ino);
  EXPECT_EQ(after->st_size, before->st_size);
  EXPECT_EQ(slurp(mirror(rel)), blob_of(rel));
  EXPECT_EQ(store.file_state(rel), LowerStore::FileState::materialized);
  EXPECT_EQ(store.stats().blobs_fetched.load(), 1u);
  EXPECT_EQ(store.stats().blob_bytes.load(), static_cast<uint64_t>(after->st_size));
  ASSERT_TRUE(store.ensure_file(rel).ok());
  EXPECT_EQ(store.stats().blobs_fetched.load(), 1u) << "materialized files are not fetched again";
}

// ------------------------------------------------------------------- TTL

TEST_P(LowerStoreLive, RefetchesOnlyAfterTtlOrExpire) {
  if (merkle()) GTEST_SKIP() << "per-dir refresh only (merkle: lower_merkle_test.cc)";
  auto fetched = [&] { return store.stats().listings_fetched.load(); };
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(fetched(), 1u);
  ASSERT_TRUE(store.ensure_dir("").ok());
  clock.advance(kTtl - 1ns);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(fetched(), 1u) << "no refetch before the TTL";
  clock.advance(1ns);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(fetched(), 2u) << "refetch once the listing is TTL old";
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(fetched(), 2u);

  const std::string sub = parent_of(first_path("source"));
  ensure_parents(store, sub + "/x");
  const uint64_t n = fetched();
  store.expire(sub);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(fetched(), n) << "expire(sub) leaves the root alone";
  ASSERT_TRUE(store.ensure_dir(sub).ok());
  EXPECT_EQ(fetched(), n + 1);
  store.expire("");
  ASSERT_TRUE(store.ensure_dir("").ok());
  ASSERT_TRUE(store.ensure_dir(sub).ok());
  EXPECT_EQ(fetched(), n + 3);
  EXPECT_EQ(store.stats().refreshes.load(), 0u) << "nothing changed on the server";
}

// ---------------------------------------------------------- the bug trigger

struct Handle {
  alignas(struct file_handle) char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  struct file_handle* fh() { return reinterpret_cast<struct file_handle*>(buf); }
};

TEST_P(LowerStoreLive, RefreshReplacesChangedFileSoOldHandlesGoStale) {
  Recorder rec;
  store.set_listener(rec.listener());
  const std::string rel = first_path("source");
  const std::string parent = parent_of(rel);
  ensure_parents(store, rel);
  ASSERT_TRUE(store.ensure_file(rel).ok());
  const std::string old_content = slurp(mirror(rel));
  auto before = lstat_of(mirror(rel));
  ASSERT_TRUE(before);

  // A sibling that does not change must keep its inode.
  std::string sibling;
  for (const auto& n : names_in(mirror(parent)))
    if (n != rel.substr(parent.size() + (parent.empty() ? 0 : 1)) && S_ISREG(lstat_of(mirror(parent) + "/" + n)->st_mode))
      sibling = parent.empty() ? n : parent + "/" + n;
  ASSERT_FALSE(sibling.empty());
  auto sibling_before = lstat_of(mirror(sibling));

  // What the passthrough layer keeps: a file handle, re-opened against a mount fd.
  Handle h;
  h.fh()->handle_bytes = MAX_HANDLE_SZ;
  int mount_id;
  ASSERT_EQ(::name_to_handle_at(AT_FDCWD, mirror(rel).c_str(), h.fh(), &mount_id, 0), 0) << strerror(errno);
  antares::fs::mirror::Fd mount_fd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(mount_fd.valid());
  {
    antares::fs::mirror::Fd fd(::open_by_handle_at(mount_fd.get(), h.fh(), O_RDONLY));
    ASSERT_TRUE(fd.valid()) << "open_by_handle_at needs CAP_DAC_READ_SEARCH: " << strerror(errno);
  }

  // A refresh that finds nothing new is no change: no batch is announced.
  const int begins = rec.begins;
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir(parent).ok());
  EXPECT_EQ(rec.begins, begins);

  ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + rel}}));
  // Before the TTL nothing moves.
  ASSERT_TRUE(store.ensure_dir(parent).ok());
  EXPECT_EQ(lstat_of(mirror(rel))->st_ino, before->st_ino);

  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir(parent).ok());
  EXPECT_EQ(rec.begins, begins + 1) << "the changing refresh is announced once";
  EXPECT_EQ(rec.ends.load(), rec.begins.load());
  auto after = lstat_of(mirror(rel));
  ASSERT_TRUE(after);
  EXPECT_NE(after->st_ino, before->st_ino) << "a changed file is replaced, not rewritten";
  errno = 0;
  int stale = ::open_by_handle_at(mount_fd.get(), h.fh(), O_RDONLY);
  EXPECT_EQ(stale, -1);
  EXPECT_EQ(errno, ESTALE) << "the old handle must be stale: " << strerror(errno);
  if (stale >= 0) ::close(stale);

  EXPECT_EQ(store.file_state(rel), LowerStore::FileState::pending);
  EXPECT_EQ(static_cast<uint64_t>(after->st_size), blob_size(rel));
  EXPECT_EQ(lstat_of(mirror(sibling))->st_ino, sibling_before->st_ino);
  ASSERT_TRUE(store.ensure_file(rel).ok());
  const std::string new_content = slurp(mirror(rel));
  EXPECT_EQ(new_content, blob_of(rel));
  EXPECT_NE(new_content, old_content);
  EXPECT_EQ(lstat_of(mirror(rel))->st_ino, after->st_ino);

  EXPECT_TRUE(rec.has(Kind::replaced, rel));
  EXPECT_FALSE(rec.has(Kind::replaced, sibling));
  EXPECT_EQ(store.stats().refreshes.load(), 1u);
  for (const auto& n : names_in(mirror(parent))) EXPECT_FALSE(LowerStore::is_internal_name(n)) << n;
}

TEST_P(LowerStoreLive, DeletedEntriesVanishAndRenamedDirsMove) {
  Recorder rec;
  store.set_listener(rec.listener());
  // A top-level directory holding a file directly.
  const std::string rel = first_path("source");
  const std::string top = rel.substr(0, rel.find('/'));
  ASSERT_NE(top, rel);
  ensure_parents(store, rel);
  ASSERT_TRUE(store.ensure_file(rel).ok());

  ASSERT_TRUE(mega.mutate({{"kind", "delete"}, {"path", "/" + rel}}));
  ASSERT_TRUE(mega.mutate({{"kind", "add"}, {"path", "/" + parent_of(rel) + "/fresh.rs"}}));
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir(parent_of(rel)).ok());
  EXPECT_FALSE(lstat_of(mirror(rel)));
  EXPECT_EQ(store.file_state(rel), LowerStore::FileState::untracked);
  EXPECT_TRUE(rec.has(Kind::removed, rel));
  const std::string fresh = parent_of(rel) + "/fresh.rs";
  EXPECT_TRUE(rec.has(Kind::added, fresh));
  ASSERT_TRUE(store.ensure_file(fresh).ok());
  EXPECT_EQ(slurp(mirror(fresh)), blob_of(fresh));

  ASSERT_TRUE(mega.mutate({{"kind", "rename_dir"}, {"path", "/" + top}, {"to", "/" + top + "_moved"}}));
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_FALSE(lstat_of(mirror(top)));
  ASSERT_TRUE(lstat_of(mirror(top + "_moved")));
  EXPECT_TRUE(S_ISDIR(lstat_of(mirror(top + "_moved"))->st_mode));
  EXPECT_TRUE(rec.has(Kind::removed, top));
  EXPECT_TRUE(rec.has(Kind::added, top + "_moved"));
  EXPECT_EQ(store.file_state(fresh), LowerStore::FileState::untracked) << "state beneath a removed dir is dropped";
  EXPECT_EQ(store.ensure_dir(parent_of(rel)).err(), ENOENT);
  // The moved tree is listed afresh under its new name.
  const std::string moved = top + "_moved" + fresh.substr(top.size());
  ensure_parents(store, moved);
  EXPECT_EQ(store.file_state(moved), LowerStore::FileState::pending);
  ASSERT_TRUE(store.ensure_file(moved).ok());
  EXPECT_EQ(slurp(mirror(moved)), blob_of(moved));
}

TEST_P(LowerStoreLive, ChangedSubdirectoryIsRelistedAtOnce) {
  if (merkle()) GTEST_SKIP() << "per-dir refresh only (merkle: lower_merkle_test.cc)";
  const std::string rel = first_path("source");
  const std::string parent = parent_of(rel);
  ASSERT_FALSE(parent.empty());
  const std::string grandparent = parent_of(parent);
  ensure_parents(store, parent);  // lists the root .. grandparent now
  clock.advance(kTtl / 2);
  ASSERT_TRUE(store.ensure_dir(parent).ok());  // fresh until half a TTL after the grandparent
  ASSERT_TRUE(mega.mutate({{"kind", "modify"}, {"path", "/" + rel}}));
  clock.advance(kTtl / 2);
  ASSERT_TRUE(store.ensure_dir(grandparent).ok());  // sees the parent's new tree oid
  const uint64_t n = store.stats().listings_fetched.load();
  ASSERT_TRUE(store.ensure_dir(parent).ok());
  EXPECT_EQ(store.stats().listings_fetched.load(), n + 1) << "a changed tree oid expires the listing";
  EXPECT_EQ(static_cast<uint64_t>(lstat_of(mirror(rel))->st_size), blob_size(rel));
}

// ------------------------------------------------------------- hostile names

// While the store writes to an object for itself, a stat through KeptMtimes
// answers the mtime it keeps, never the passing one the writes leave until
// KeepDirMtime puts it back (a stat mid-way through a first listing written
// out showed the directory changing, then changing back).
TEST(MirrorKeptMtimes, StatAnswersTheKeptMtimeWhileTheOwnerWrites) {
  antares::testing::TempDir dir;
  const std::string d = dir.path() + "/d";
  ASSERT_EQ(::mkdir(d.c_str(), 0755), 0);
  const struct timespec old[2] = {{0, UTIME_OMIT}, {1000, 7}};
  ASSERT_EQ(::utimensat(AT_FDCWD, d.c_str(), old, 0), 0);
  mirror::Fd fd(::open(d.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  mirror::KeptMtimes kept;
  auto mtime_sec = [&](bool through_kept) -> int64_t {
    auto stx = through_kept ? kept.stat(fd.get()) : statx_at(fd.get(), "");
    EXPECT_TRUE(stx.ok());
    return stx.ok() ? int64_t(stx->stx_mtime.tv_sec) : -1;
  };
  {
    mirror::KeepDirMtime first_listing(fd.get(), &kept);
    {
      mirror::KeptMtimes::Scope second(kept, fd.get());  // another writer of the same directory
      ASSERT_TRUE(second.ok());
      EXPECT_EQ(second.mtime().tv_sec, 1000);
    }
    mirror::Fd f(::open((d + "/x").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));  // a placeholder written out
    ASSERT_TRUE(f.valid());
    EXPECT_GT(mtime_sec(false), 1000) << "the write moved the directory's own mtime";
    EXPECT_EQ(mtime_sec(true), 1000);
    auto stx = kept.stat(fd.get());
    ASSERT_TRUE(stx.ok());
    EXPECT_EQ(stx->stx_mtime.tv_nsec, 7u);
  }
  EXPECT_EQ(mtime_sec(false), 1000) << "put back";
  EXPECT_EQ(mtime_sec(true), 1000);
  // Nothing kept: the object's own mtime.
  const struct timespec later[2] = {{0, UTIME_OMIT}, {2000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, d.c_str(), later, 0), 0);
  EXPECT_EQ(mtime_sec(true), 2000);
}

TEST(LowerStoreFake, HostileNamesAreDroppedAndTheRestServed) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  LowerStore store(client, dir.path(), kTtl);
  const std::string oid = http->add_file("/", "good.rs", "hello\n");
  http->add_dir("/", "sub");
  http->add_file("/", "dup", "first");
  http->add_raw("/", {"dup", true, oid, std::nullopt});
  const std::string long_ok(255, 'm');
  http->add_file("/", long_ok, "max length is fine");
  for (std::string bad : {std::string(""), std::string("."), std::string(".."), std::string("a/b"),
                          std::string("x\0y", 3), std::string(256, 'n'), std::string("/"),
                          std::string(".antares-tmp-1-1")})
    http->add_raw("/", {bad, false, oid, 6});

  ::testing::internal::CaptureStderr();
  auto s = store.ensure_dir("");
  std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(s.ok()) << s.error().describe();
  EXPECT_EQ(names_in(dir.path()), (std::set<std::string>{"good.rs", "sub", "dup", long_ok}));
  EXPECT_TRUE(S_ISREG(lstat_of(dir.path() + "/dup")->st_mode)) << "the first of duplicates is served";
  EXPECT_EQ(store.stats().dropped_names.load(), 9u);
  EXPECT_NE(err.find("event=lower_dropped_entries"), std::string::npos);
  EXPECT_NE(err.find("count=9"), std::string::npos) << err;
  EXPECT_NE(err.find("x\\\\x00y"), std::string::npos) << err;  // escaped, then quoted
  EXPECT_TRUE(store.ensure_dir("sub").ok());
  ASSERT_TRUE(store.ensure_file("good.rs").ok());
  EXPECT_EQ(slurp(dir.path() + "/good.rs"), "hello\n");
}

TEST(LowerStoreFake, MalformedEntriesAreDroppedCountedAndWarnedOncePerDirectory) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStore store(client, dir.path(), kTtl, clock);
  const std::string oid = http->add_file("/", "good.rs", "hello\n");
  http->add_dir("/", "sub");
  http->add_json("/", {{"name", "link"}, {"content_type", "symlink"}, {"oid", oid}});
  http->add_json("/", {{"name", "badoid"}, {"content_type", "file"}, {"oid", "xyz"}});
  http->add_json("/", {{"name", "badsize"}, {"content_type", "file"}, {"oid", oid}, {"size", -1}});
  http->add_json("/", {{"content_type", "file"}, {"oid", oid}});
  http->add_json("/", 42);

  ::testing::internal::CaptureStderr();
  auto s = store.ensure_dir("");  // the root: a bad entry must not stop a mount
  http->add_file("/", "new.rs", "a change, so that the root is listed again");
  clock.advance(kTtl);
  auto again = store.ensure_dir("");
  std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(s.ok()) << s.error().describe();
  ASSERT_TRUE(again.ok()) << again.error().describe();
  EXPECT_EQ(names_in(dir.path()), (std::set<std::string>{"good.rs", "sub", "new.rs"}));
  EXPECT_EQ(store.stats().dropped_names.load(), 10u) << "five per listing, two listings";
  size_t warnings = 0;
  for (size_t at = err.find("event=lower_dropped_entries"); at != std::string::npos;
       at = err.find("event=lower_dropped_entries", at + 1))
    ++warnings;
  EXPECT_EQ(warnings, 1u) << err;
  EXPECT_NE(err.find("unknown content_type"), std::string::npos) << err;
  EXPECT_NE(err.find("badoid"), std::string::npos) << err;
  ASSERT_TRUE(store.ensure_file("good.rs").ok());
  EXPECT_EQ(slurp(dir.path() + "/good.rs"), "hello\n");
}

// ------------------------------------------------------------- HTTP faults

TEST_P(LowerStoreLive, ListingFailureOnNeverListedDirIsEio) {
  set_faults({{{"endpoint", "content-hash"}, {"kind", "status"}, {"status", 500}}});
  auto s = store.ensure_dir("");
  EXPECT_EQ(s.err(), EIO) << (s ? "" : s.error().describe());
  EXPECT_TRUE(names_in(dir.path()).empty());
  EXPECT_EQ(store.stats().fetch_errors.load(), 1u);
  set_faults(nlohmann::json::array());
  EXPECT_TRUE(store.ensure_dir("").ok()) << "a failed first listing is retried on the next call";
}

TEST_P(LowerStoreLive, ListedDirKeepsServingTheOldMirrorOnFailure) {
  const std::string rel = first_path("source");
  ensure_parents(store, rel);
  const std::string parent = parent_of(rel);
  ASSERT_TRUE(mega.mutate({{"kind", "delete"}, {"path", "/" + rel}}));
  set_faults({{{"endpoint", "content-hash"}, {"kind", "status"}, {"status", 503}}});
  clock.advance(kTtl);
  ::testing::internal::CaptureStderr();
  EXPECT_TRUE(store.ensure_dir(parent).ok());
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("lower_refresh_failed"), std::string::npos);
  EXPECT_TRUE(lstat_of(mirror(rel))) << "old mirror kept";
  const uint64_t requests = mega.client->stats().requests.load();
  EXPECT_TRUE(store.ensure_dir(parent).ok());
  clock.advance(kTtl - 1ns);
  EXPECT_TRUE(store.ensure_dir(parent).ok());
  EXPECT_EQ(mega.client->stats().requests.load(), requests) << "a failed refresh waits a TTL before retrying";
  set_faults(nlohmann::json::array());
  clock.advance(1ns);
  EXPECT_TRUE(store.ensure_dir(parent).ok());
  EXPECT_FALSE(lstat_of(mirror(rel)));
}

TEST_P(LowerStoreLive, BlobFailureLeavesTheFilePending) {
  const std::string rel = first_path("source");
  ensure_parents(store, rel);
  auto before = lstat_of(mirror(rel));
  set_faults({{{"endpoint", "blob"}, {"kind", "status"}, {"status", 500}}});
  EXPECT_EQ(store.ensure_file(rel).err(), EIO);
  EXPECT_EQ(store.file_state(rel), LowerStore::FileState::pending);
  set_faults({{{"endpoint", "blob"}, {"kind", "malformed"}}});
  EXPECT_EQ(store.ensure_file(rel).err(), EIO) << "corrupt bytes are refused";
  EXPECT_EQ(store.file_state(rel), LowerStore::FileState::pending);
  set_faults(nlohmann::json::array());
  ASSERT_TRUE(store.ensure_file(rel).ok());
  EXPECT_EQ(lstat_of(mirror(rel))->st_ino, before->st_ino);
  EXPECT_EQ(slurp(mirror(rel)), blob_of(rel));
}

TEST_P(LowerStoreLive, TimeoutsStayEtimedout) {
  remote::MegaClient slow(test::fast_options(mega.server->base_url(), 0, 200ms));
  antares::testing::TempDir d2;
  LowerStore s2(slow, d2.path(), kTtl, clock);
  set_faults({{{"endpoint", "content-hash"}, {"kind", "latency"}, {"latency_ms", 1000}}});
  EXPECT_EQ(s2.ensure_dir("").err(), ETIMEDOUT);
  set_faults({{{"endpoint", "blob"}, {"kind", "latency"}, {"latency_ms", 1000}}});
  ASSERT_TRUE(s2.ensure_dir("").ok());
  std::string file;
  for (const auto& n : names_in(d2.path()))
    if (S_ISREG(lstat_of(d2.path() + "/" + n)->st_mode)) file = n;
  ASSERT_FALSE(file.empty());
  EXPECT_EQ(s2.ensure_file(file).err(), ETIMEDOUT);
  EXPECT_EQ(s2.file_state(file), LowerStore::FileState::pending);
}

TEST_P(LowerStoreLive, ConnectionRefusedIsEio) {
  const std::string base = mega.server->base_url();
  mega.server->stop();
  remote::MegaClient dead(test::fast_options(base, 1));
  antares::testing::TempDir d2;
  LowerStore s2(dead, d2.path(), kTtl, clock);
  EXPECT_EQ(s2.ensure_dir("").err(), EIO);
}

TEST(LowerStoreFake, ServerSaysNoSuchDirIsEnoent) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  LowerStore store(client, dir.path(), kTtl);
  http->add_raw("/", {"ghost", true, git_blob_oid("ghost").hex(), std::nullopt});  // listed, but 404 itself
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(store.ensure_dir("ghost").err(), ENOENT);
}

// ---------------------------------------------- races with a scripted server

TEST(LowerStoreFake, ReplacedDuringBlobFetchGetsTheNewContent) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  FakeClock clock;
  LowerStore store(client, dir.path(), kTtl, clock);
  Recorder rec;
  store.set_listener(rec.listener());
  const std::string v1 = http->add_file("/", "f", "version one");
  ASSERT_TRUE(store.ensure_dir("").ok());

  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, release = false;
  http->set_hook([&](const remote::HttpRequest& req) -> std::optional<Result<remote::HttpResponse>> {
    if (req.method == "GET" && req.url.ends_with(v1)) {
      std::unique_lock l(mu);
      entered = true;
      cv.notify_all();
      cv.wait(l, [&] { return release; });
    }
    return std::nullopt;
  });
  Status fetched;
  std::thread t([&] { fetched = store.ensure_file("f"); });
  {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return entered; });
  }
  http->add_file("/", "f", "version two, longer");
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());  // replaces the placeholder mid-fetch
  EXPECT_TRUE(rec.has(Kind::replaced, "f"));
  {
    std::lock_guard l(mu);
    release = true;
    cv.notify_all();
  }
  t.join();
  ASSERT_TRUE(fetched.ok()) << fetched.error().describe();
  EXPECT_EQ(slurp(dir.path() + "/f"), "version two, longer") << "no stale bytes in the new placeholder";
  EXPECT_EQ(store.file_state("f"), LowerStore::FileState::materialized);
  EXPECT_EQ(store.stats().blobs_fetched.load(), 2u);
}

// The kernel retries an open that met ESTALE once, after a fresh lookup; a
// file replaced again between that lookup and the open must still open. Under
// the fixes the store keeps a replaced or removed file reachable for a while:
// by its handle, by inode number (open_kept), and a kept placeholder can get
// the bytes of the version it stood for (fill_kept).
TEST(LowerStoreFake, ReplacedAndRemovedFilesAreKeptForAWhileUnderTheFixes) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir, attic;
  FakeClock clock;
  LowerStoreOptions o;
  o.ttl = kTtl;
  o.attic = attic.path();
  o.keep_for = 2s;
  LowerStore store(client, dir.path(), o, clock);
  http->add_file("/", "filled", "filled, version one");
  http->add_file("/", "pending", "pending, version one");
  http->add_file("/", "removed", "removed, version one");
  ASSERT_TRUE(store.ensure_dir("").ok());
  ASSERT_TRUE(store.ensure_file("filled").ok());
  ASSERT_TRUE(store.ensure_file("removed").ok());
  auto handle_of = [&](const std::string& name) {
    auto h = std::make_unique<Handle>();
    h->fh()->handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    EXPECT_EQ(::name_to_handle_at(AT_FDCWD, (dir.path() + "/" + name).c_str(), h->fh(), &mount_id, 0), 0);
    return h;
  };
  antares::fs::mirror::Fd mount_fd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(mount_fd.valid());
  auto read_handle = [&](Handle& h) -> std::string {
    antares::fs::mirror::Fd fd(::open_by_handle_at(mount_fd.get(), h.fh(), O_RDONLY));
    if (!fd.valid()) return std::string("<") + strerror(errno) + ">";
    return slurp("/proc/self/fd/" + std::to_string(fd.get()));
  };
  auto h_filled = handle_of("filled"), h_pending = handle_of("pending"), h_removed = handle_of("removed");
  const uint64_t pending_ino = lstat_of(dir.path() + "/pending")->st_ino;
  const uint64_t filled_ino = lstat_of(dir.path() + "/filled")->st_ino;

  // Off (strategy none): a replaced file's handle is stale at once.
  http->add_file("/", "filled", "filled, version two");
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());
  EXPECT_EQ(read_handle(*h_filled), "<" + std::string(strerror(ESTALE)) + ">");
  EXPECT_EQ(store.open_kept(filled_ino, O_RDONLY).err(), ENOENT);
  ASSERT_TRUE(store.ensure_file("filled").ok());
  h_filled = handle_of("filled");
  const uint64_t filled2_ino = lstat_of(dir.path() + "/filled")->st_ino;

  store.set_keep_replaced(true);
  http->add_file("/", "filled", "filled, version three");
  http->add_file("/", "pending", "pending, version two");
  http->remove("/", "removed");
  clock.advance(kTtl);
  ASSERT_TRUE(store.ensure_dir("").ok());
  ASSERT_NE(lstat_of(dir.path() + "/filled")->st_ino, filled2_ino) << "replaced";
  EXPECT_FALSE(lstat_of(dir.path() + "/removed"));
  EXPECT_EQ(read_handle(*h_filled), "filled, version two") << "the version the handle was made for";
  EXPECT_EQ(read_handle(*h_removed), "removed, version one");
  {
    auto fd = store.open_kept(filled2_ino, O_RDONLY);
    ASSERT_TRUE(fd.ok()) << fd.error().describe();
    EXPECT_EQ(slurp("/proc/self/fd/" + std::to_string(fd->get())), "filled, version two");
  }
  // The placeholder replaced before it was filled: never its zeros, but its own version's bytes once filled.
  EXPECT_FALSE(store.content_ready(pending_ino));
  ASSERT_TRUE(store.fill_kept(pending_ino).ok());
  EXPECT_TRUE(store.content_ready(pending_ino));
  EXPECT_EQ(read_handle(*h_pending), "pending, version one");
  EXPECT_EQ(lstat_of(dir.path() + "/pending")->st_size, std::string("pending, version two").size());
  EXPECT_EQ(store.stats().kept.load(), 3u);
  EXPECT_EQ(names_in(dir.path()).size(), 2u) << "the attic is outside the mirror";

  // Kept for keep_for only.
  clock.advance(2s);
  EXPECT_EQ(store.open_kept(filled2_ino, O_RDONLY).err(), ENOENT);
  EXPECT_EQ(read_handle(*h_filled), "<" + std::string(strerror(ESTALE)) + ">");
  EXPECT_EQ(store.fill_kept(pending_ino).err(), ENOENT);
}

// ------------------------------------------------------------- concurrency

TEST_P(LowerStoreLive, ConcurrentCallersShareOneFetch) {
  const std::string rel = first_path("source");
  const std::string parent = parent_of(rel);
  ASSERT_TRUE(store.ensure_dir("").ok());  // so the walk below starts from a known root
  const uint64_t listings = store.stats().listings_fetched.load();
  std::vector<std::string> dirs;  // every directory from the root's child down to parent
  for (size_t s = rel.find('/'); s != std::string::npos; s = rel.find('/', s + 1)) dirs.push_back(rel.substr(0, s));

  std::atomic<int> ready{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      ++ready;
      while (ready.load() < 8) std::this_thread::yield();
      for (const auto& d : dirs)
        if (!store.ensure_dir(d)) ++failures;
      for (const auto& n : names_in(mirror(parent))) {
        const std::string p = parent + "/" + n;
        if (store.file_state(p) != LowerStore::FileState::untracked && !store.ensure_file(p)) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store.stats().listings_fetched.load(), listings + dirs.size()) << "one listing per directory";
  uint64_t files = 0;
  for (const auto& n : names_in(mirror(parent))) {
    const std::string p = parent + "/" + n;
    if (store.file_state(p) == LowerStore::FileState::untracked) continue;
    ++files;
    EXPECT_EQ(slurp(mirror(p)), blob_of(p)) << p;
  }
  EXPECT_GT(files, 0u);
  EXPECT_EQ(store.stats().blobs_fetched.load(), files) << "one blob fetch per file";
}

TEST_P(LowerStoreLive, ConcurrentCallersDuringRefreshesStayConsistent) {
  std::atomic<bool> stop{false};
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      while (!stop.load()) {
        // Walk whatever the mirror shows now; vanishing names are expected.
        std::vector<std::string> todo{""};
        while (!todo.empty() && !stop.load()) {
          std::string d = todo.back();
          todo.pop_back();
          auto s = store.ensure_dir(d);
          if (!s) {
            if (s.err() != ENOENT) ++unexpected;
            continue;
          }
          size_t k = 0;
          for (const auto& n : names_in(d.empty() ? dir.path() : mirror(d))) {
            const std::string p = d.empty() ? n : d + "/" + n;
            auto st = lstat_of(mirror(p));
            if (!st) continue;
            if (S_ISDIR(st->st_mode)) {
              todo.push_back(p);
            } else if ((k++ + i) % 3 == 0) {
              auto f = store.ensure_file(p);
              if (!f && f.err() != ENOENT) ++unexpected;
            }
          }
        }
      }
    });
  }
  for (int round = 0; round < 15; ++round) {
    ASSERT_TRUE(mega.admin->mutate({{"count", 5}}).ok());
    clock.advance(kTtl);
    if (round % 4 == 0) store.expire("");
    std::this_thread::sleep_for(30ms);
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_GT(store.stats().refreshes.load(), 0u);

  // Quiesced: one more full pass must match the server exactly, and every
  // materialized file must hold its current blob.
  clock.advance(kTtl);
  std::vector<std::string> todo{""};
  while (!todo.empty()) {
    std::string d = todo.back();
    todo.pop_back();
    ASSERT_TRUE(store.ensure_dir(d).ok()) << d;
    auto listing = mega.client->content_hash("/" + d);
    ASSERT_TRUE(listing.ok());
    std::set<std::string> want;
    for (const auto& item : *listing) {
      const std::string p = d.empty() ? item.name : d + "/" + item.name;
      want.insert(item.name);
      if (item.type == remote::ItemType::directory) {
        todo.push_back(p);
        continue;
      }
      auto blob = mega.client->blob(item.oid);
      ASSERT_TRUE(blob.ok());
      EXPECT_EQ(static_cast<uint64_t>(lstat_of(mirror(p))->st_size), blob->size()) << p;
      if (store.file_state(p) == LowerStore::FileState::materialized) {
        EXPECT_EQ(slurp(mirror(p)), *blob) << p;
      }
    }
    EXPECT_EQ(names_in(d.empty() ? dir.path() : mirror(d)), want) << d;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, LowerStoreLive, ::testing::Values(RefreshMode::merkle, RefreshMode::per_dir),
                         [](const ::testing::TestParamInfo<RefreshMode>& i) {
                           return i.param == RefreshMode::merkle ? "merkle" : "per_dir";
                         });

}  // namespace
}  // namespace antares::fs
