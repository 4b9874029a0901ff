// Tests of ClBuilder against a live in-process mock-mega (CL mutations through
// the admin API) and FakeMega (hostile paths).
#include "fs/lower/cl_builder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "fs/layers/layer.h"
#include "fs/lower/lower_test_util.h"
#include "fs/lower/mirror_fs.h"
#include "testing/subprocess.h"

namespace antares::fs {
namespace {

using test::LiveMega;
using test::lstat_of;
using test::slurp;
using Kind = LayerChange::Kind;

std::vector<std::string> names_of(const std::string& path) {
  mirror::Fd fd(::open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  auto names = mirror::list_dir(fd.get());
  return names.ok() ? *names : std::vector<std::string>{"<error>"};
}

class ClBuilderLive : public ::testing::Test {
 protected:
  void SetUp() override {
    // Known entries on top of the seeded ones: two files and a deletion.
    auto src = mega.admin->paths("source");
    ASSERT_TRUE(src.ok() && src->size() >= 3);
    deleted = (*src)[0];
    ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", "/cl/a.rs"}, {"action", "new"}}));
    ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", (*src)[1]}, {"action", "modified"}}));
    ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", (*src)[2]}, {"action", "modified"}}));
    ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", deleted}, {"action", "deleted"}}));
    modified = (*src)[1];
    kept = (*src)[2];
  }
  std::string at(const std::string& abs) { return dir.path() + abs; }
  std::vector<remote::ClFile> list() {
    auto l = mega.client->cl_files("1");
    EXPECT_TRUE(l.ok());
    return l.ok() ? *l : std::vector<remote::ClFile>{};
  }
  // Every entry of the server's list is on disk as it should be.
  void expect_matches_server() {
    for (const auto& f : list()) {
      auto st = lstat_of(at(f.path));
      ASSERT_TRUE(st) << f.path;
      if (f.action == remote::ClAction::deleted) {
        EXPECT_TRUE(S_ISCHR(st->st_mode)) << f.path;
        EXPECT_EQ(st->st_rdev, makedev(0, 0)) << f.path;
        EXPECT_EQ(st->st_mode & 07777, 0u) << f.path;
      } else {
        EXPECT_TRUE(S_ISREG(st->st_mode)) << f.path;
        EXPECT_EQ(st->st_mode & 07777, 0644u) << f.path;
        auto blob = mega.client->blob(*f.sha);
        ASSERT_TRUE(blob.ok());
        EXPECT_EQ(slurp(at(f.path)), *blob) << f.path;
      }
    }
  }

  LiveMega mega;
  antares::testing::TempDir dir;
  ClBuilder builder{*mega.client, "1", dir.path()};
  std::string deleted, modified, kept;
};

// With keep_max, replaced and removed files keep their inodes (their old
// handles still open) in a hidden attic, at most keep_max of them.
TEST_F(ClBuilderLive, KeptFilesStayOpenableByHandleUpToKeepMax) {
  ClBuilder keeping{*mega.client, "1", dir.path(), /*keep_max=*/2};
  ASSERT_TRUE(keeping.build().ok());
  mirror::Fd mount_fd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  auto handle_of = [&](const std::string& abs) {
    auto h = FileHandle::of(AT_FDCWD, at(abs));
    EXPECT_TRUE(h.ok()) << abs;
    return h.ok() ? *h : FileHandle{};
  };
  // Three versions of `modified` replaced in turn, then `/cl/a.rs` removed.
  std::vector<std::pair<FileHandle, std::string>> old;  // handle, its bytes
  for (int i = 0; i < 3; ++i) {
    old.emplace_back(handle_of(modified), slurp(at(modified)));
    ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", modified}, {"action", "modified"}}));
    auto r = keeping.resync();
    ASSERT_TRUE(r.ok() && *r);
  }
  old.emplace_back(handle_of("/cl/a.rs"), slurp(at("/cl/a.rs")));
  ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", "/cl/a.rs"}, {"action", "remove"}}));
  ASSERT_TRUE(keeping.resync().ok());
  EXPECT_EQ(keeping.stats().kept.load(), 2u);
  for (size_t i = 0; i < old.size(); ++i) {
    auto fd = old[i].first.open(mount_fd.get(), O_RDONLY);
    if (i < 2) {
      EXPECT_EQ(fd.err(), ESTALE) << "version " << i << " was pushed out";
    } else {
      ASSERT_TRUE(fd.ok()) << "version " << i << ": " << fd.error().describe();
      EXPECT_EQ(slurp("/proc/self/fd/" + std::to_string(fd->get())), old[i].second) << "version " << i;
    }
  }
  expect_matches_server();
  auto top = names_of(dir.path());
  EXPECT_EQ(std::count(top.begin(), top.end(), ".antares-tmp-attic"), 1) << "the attic, hidden from the layer";
  EXPECT_TRUE(mirror::is_temp_name(".antares-tmp-attic"));
}

TEST_F(ClBuilderLive, BuildWritesFilesAndWhiteoutsOverAWipedDirectory) {
  ASSERT_EQ(::mkdir(at("/junkdir").c_str(), 0755), 0);
  ASSERT_EQ(::close(::creat(at("/junkdir/x").c_str(), 0644)), 0);
  ASSERT_EQ(::symlink("/etc", at("/cl").c_str()), 0) << "a planted symlink must not be followed";
  auto s = builder.build();
  ASSERT_TRUE(s.ok()) << s.error().describe();
  EXPECT_FALSE(lstat_of(at("/junkdir")));
  EXPECT_TRUE(S_ISDIR(lstat_of(at("/cl"))->st_mode));
  EXPECT_FALSE(lstat_of("/etc/a.rs"));
  expect_matches_server();
  EXPECT_TRUE(S_ISCHR(lstat_of(at(deleted))->st_mode));
  EXPECT_EQ(builder.stats().files_written.load(), list().size());
  EXPECT_EQ(builder.stats().builds.load(), 1u);
}

TEST_F(ClBuilderLive, ResyncReplacesOnlyWhatChanged) {
  ASSERT_TRUE(builder.build().ok());
  auto r = builder.resync();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r) << "nothing changed";
  EXPECT_EQ(builder.stats().resyncs.load(), 0u);

  std::map<std::string, ino_t> inodes;
  for (const auto& f : list()) inodes[f.path] = lstat_of(at(f.path))->st_ino;
  std::vector<LayerChange> events;
  int begins = 0, ends = 0;
  builder.set_listener({[&] { begins++; },
                        [&](const std::vector<LayerChange>& ev) {
                          events.insert(events.end(), ev.begin(), ev.end());
                          ends++;
                        }});
  ASSERT_TRUE(builder.resync().ok());
  EXPECT_EQ(begins + ends, 0) << "a re-sync that changes nothing is no change";

  // The old handle of a file that is about to be replaced.
  alignas(struct file_handle) char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  auto* fh = reinterpret_cast<struct file_handle*>(buf);
  fh->handle_bytes = MAX_HANDLE_SZ;
  int mount_id;
  ASSERT_EQ(::name_to_handle_at(AT_FDCWD, at(modified).c_str(), fh, &mount_id, 0), 0);
  mirror::Fd mount_fd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));

  const std::string before = slurp(at(modified));
  ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", modified}, {"action", "modified"}}));
  ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", "/cl/a.rs"}, {"action", "remove"}}));
  ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", "/newdir/sub/b.rs"}, {"action", "new"}}));
  ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", deleted}, {"action", "modified"}}));
  r = builder.resync();
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_TRUE(*r);
  EXPECT_EQ(builder.stats().resyncs.load(), 1u);
  expect_matches_server();

  EXPECT_NE(lstat_of(at(modified))->st_ino, inodes[modified]) << "replaced, not rewritten";
  EXPECT_NE(slurp(at(modified)), before);
  errno = 0;
  int stale = ::open_by_handle_at(mount_fd.get(), fh, O_RDONLY);
  EXPECT_EQ(stale, -1);
  EXPECT_EQ(errno, ESTALE) << strerror(errno);
  if (stale >= 0) ::close(stale);
  EXPECT_EQ(lstat_of(at(kept))->st_ino, inodes[kept]) << "unchanged files keep their inode";
  EXPECT_FALSE(lstat_of(at("/cl/a.rs")));
  EXPECT_TRUE(lstat_of(at("/cl"))) << "emptied directories stay";
  EXPECT_TRUE(S_ISREG(lstat_of(at(deleted))->st_mode)) << "a whiteout turned back into a file";

  auto has = [&](Kind k, const std::string& p) {
    for (const auto& e : events)
      if (e.kind == k && e.path == p) return true;
    return false;
  };
  EXPECT_TRUE(has(Kind::replaced, modified.substr(1)));
  EXPECT_TRUE(has(Kind::replaced, deleted.substr(1)));
  EXPECT_TRUE(has(Kind::removed, "cl/a.rs"));
  EXPECT_TRUE(has(Kind::added, "newdir"));
  EXPECT_TRUE(has(Kind::added, "newdir/sub/b.rs"));
  EXPECT_FALSE(has(Kind::replaced, kept.substr(1)));
  EXPECT_EQ(events.size(), 5u);

  r = builder.resync();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  for (const auto& n : names_of(dir.path() + "/newdir/sub")) EXPECT_FALSE(mirror::is_temp_name(n));
}

TEST_F(ClBuilderLive, HttpFailuresLeaveTheDirectoryAsItWas) {
  ASSERT_TRUE(builder.build().ok());
  const ino_t ino = lstat_of(at(kept))->st_ino;
  ASSERT_TRUE(mega.mutate({{"kind", "cl"}, {"cl", 1}, {"path", kept}, {"action", "modified"}}));
  ASSERT_TRUE(mega.admin->set_faults({{{"endpoint", "files-list"}, {"kind", "status"}, {"status", 500}}}).ok());
  EXPECT_EQ(builder.resync().err(), EIO);
  EXPECT_EQ(builder.build().err(), EIO);
  EXPECT_EQ(lstat_of(at(kept))->st_ino, ino);
  ASSERT_TRUE(mega.admin->set_faults({{{"endpoint", "blob"}, {"kind", "status"}, {"status", 500}}}).ok());
  EXPECT_EQ(builder.resync().err(), EIO);
  EXPECT_EQ(builder.build().err(), EIO);
  EXPECT_EQ(lstat_of(at(kept))->st_ino, ino);
  ASSERT_TRUE(mega.admin->set_faults(nlohmann::json::array()).ok());
  auto r = builder.resync();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  EXPECT_NE(lstat_of(at(kept))->st_ino, ino);

  ClBuilder unknown(*mega.client, "99", dir.path());
  EXPECT_EQ(unknown.build().err(), ENOENT);
  EXPECT_TRUE(lstat_of(at(kept))) << "a failed build wipes nothing";
}

TEST(ClBuilderFake, HostilePathsAreSkipped) {
  auto http = test::fake_mega();
  remote::MegaClient client(test::fake_options(), http);
  antares::testing::TempDir dir;
  http->add_blob("ok\n");
  const std::string sha = git_blob_oid("ok\n").hex();
  nlohmann::json list = nlohmann::json::array();
  for (std::string p : {std::string("/ok/a.rs"), std::string("/../x"), std::string("/a/../../x"),
                        std::string("//y"), std::string("/a/./b"), std::string("rel"), std::string("/z\0", 3),
                        "/" + std::string(256, 'n'), std::string("/"), std::string("/d/"),
                        std::string("/ok/.antares-tmp-1"), std::string("/ok/a.rs")})
    list.push_back({{"path", p}, {"sha", sha}, {"action", "new"}});
  http->set_cl(list);
  ClBuilder builder(client, "1", dir.path());
  auto s = builder.build();
  ASSERT_TRUE(s.ok()) << s.error().describe();
  EXPECT_EQ(slurp(dir.path() + "/ok/a.rs"), "ok\n");
  EXPECT_EQ(names_of(dir.path()), std::vector<std::string>{"ok"});
  EXPECT_EQ(builder.stats().dropped_paths.load(), 11u);
  EXPECT_EQ(builder.stats().files_written.load(), 1u);
}

}  // namespace
}  // namespace antares::fs
