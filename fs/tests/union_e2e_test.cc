// The union's POSIX behaviour through a real mount over mock-mega with a CL
// layer: lower reads equal the server's blobs, writes copy up, deletions are
// whiteouts, readdir merges layers without duplicates or whited-out names,
// and the usual metadata operations (links, xattrs, times, modes, renames with
// flags, statfs, nlink, ownership, inode numbers) behave as on a local
// filesystem. Strategy auto (the default) throughout.
#include <linux/fs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

int renameat2_errno(const std::string& from, const std::string& to, unsigned flags) {
  long r = ::syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags);
  return r == 0 ? 0 : errno;
}

struct stat must_lstat(const std::string& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p << ": " << strerror(errno);
  return st;
}

class UnionE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    // A directory with at least three source files no CL touches: one gets a
    // CL deletion (a whiteout in the CL layer), one a CL modification (a name
    // in both CL and lower), one stays lower-only; plus a CL-new file there.
    auto in_cl = cl_paths(mega_);
    std::map<std::string, std::vector<std::string>> by_dir;
    for (auto& p : paths_of_class(mega_, "source"))
      if (!in_cl.count(p)) by_dir[split_repo_path(p).first].push_back(p);
    for (auto& [d, files] : by_dir) {
      bool touched = false;
      for (auto& c : in_cl) touched |= split_repo_path(c).first == d;
      if (!touched && files.size() >= 3) {
        merge_dir_ = d;
        cl_deleted_ = files[0];
        cl_modified_ = files[1];
        lower_only_ = files[2];
        break;
      }
    }
    ASSERT_FALSE(merge_dir_.empty()) << "no directory with 3 untouched source files";
    cl_new_ = merge_dir_ + "/cl_added_by_test.rs";
    mutate(mega_, json::array({{{"kind", "cl"}, {"cl", 1}, {"path", cl_deleted_}, {"action", "deleted"}},
                               {{"kind", "cl"}, {"cl", 1}, {"path", cl_modified_}, {"action", "modified"}},
                               {{"kind", "cl"}, {"cl", 1}, {"path", cl_new_}, {"action", "new"}}}));
    // Files elsewhere for tests that need untouched lower files.
    spare_ = lower_only_files(mega_, 6);
    MountOptions o;
    o.cl = "1";
    m_ = std::make_unique<Mount>(dir_, mega_.url(), o);
    ASSERT_TRUE(m_->ok()) << m_->log();
  }

  std::string mnt(const std::string& repo_path) const { return m_->path(rel(repo_path)); }
  std::string upper(const std::string& repo_path) const { return m_->upper() + repo_path; }
  std::string mirror(const std::string& repo_path) const { return dir_ / "cache/lower" + repo_path; }

  TempDir dir_;
  MegaProcess mega_{dir_};
  std::unique_ptr<Mount> m_;
  std::string merge_dir_, cl_deleted_, cl_modified_, cl_new_, lower_only_;
  std::vector<std::string> spare_;
};

TEST_F(UnionE2E, LowerFileReadsAsTheServersBlob) {
  for (auto& p : {spare_[0], spare_[1], std::string("/.buckconfig")}) {
    int err = 0;
    auto got = testing::read_whole(mnt(p), &err);
    ASSERT_TRUE(got) << p << ": " << strerror(err);
    EXPECT_EQ(*got, server_content(mega_, p)) << p;
  }
}

TEST_F(UnionE2E, ClLayerShadowsLowerAndServesTheClBlob) {
  std::string want;
  for (auto& e : cl_files(mega_, "1"))
    if (e["path"] == cl_modified_) want = blob(mega_, e["sha"]);
  ASSERT_FALSE(want.empty());
  EXPECT_NE(want, server_content(mega_, cl_modified_));
  EXPECT_EQ(testing::read_whole(mnt(cl_modified_)).value_or("<error>"), want);
}

TEST_F(UnionE2E, WriteToLowerFileCopiesUpAndLeavesTheMirrorAlone) {
  const std::string p = spare_[0];
  const std::string original = server_content(mega_, p);
  ASSERT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), original);
  ASSERT_TRUE(write_file(mnt(p), "written through the mount\n"));
  EXPECT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), "written through the mount\n");
  EXPECT_EQ(testing::read_file(upper(p)), "written through the mount\n");
  EXPECT_EQ(testing::read_file(mirror(p)), original);
}

TEST_F(UnionE2E, DeletingLowerFileLeavesWhiteout) {
  const std::string p = spare_[1];
  ASSERT_EQ(testing::stat_errno(mnt(p)), 0);
  ASSERT_EQ(::unlink(mnt(p).c_str()), 0) << strerror(errno);
  struct stat st = must_lstat(upper(p));
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << std::oct << st.st_mode;
  EXPECT_EQ(major(st.st_rdev), 0u);
  EXPECT_EQ(minor(st.st_rdev), 0u);
  EXPECT_EQ(testing::stat_errno(mnt(p)), ENOENT);
  auto names = list_dir(mnt(split_repo_path(p).first));
  ASSERT_TRUE(names);
  EXPECT_EQ(std::count(names->begin(), names->end(), split_repo_path(p).second), 0);
  // The name can be used again.
  ASSERT_TRUE(write_file(mnt(p), "again"));
  EXPECT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), "again");
}

TEST_F(UnionE2E, RenameLowerFileAcrossLayers) {
  const std::string p = spare_[2];
  const std::string content = server_content(mega_, p);
  const std::string to = p + ".renamed";
  ASSERT_EQ(::rename(mnt(p).c_str(), mnt(to).c_str()), 0) << strerror(errno);
  EXPECT_EQ(testing::stat_errno(mnt(p)), ENOENT);
  EXPECT_EQ(testing::read_whole(mnt(to)).value_or("<error>"), content);
  auto names = list_dir(mnt(split_repo_path(p).first));
  ASSERT_TRUE(names);
  EXPECT_EQ(std::count(names->begin(), names->end(), split_repo_path(p).second), 0);
  EXPECT_EQ(std::count(names->begin(), names->end(), split_repo_path(to).second), 1);
  // Into another directory as well.
  const std::string other = split_repo_path(spare_[3]).first + "/moved_here";
  ASSERT_EQ(::rename(mnt(to).c_str(), mnt(other).c_str()), 0) << strerror(errno);
  EXPECT_EQ(testing::stat_errno(mnt(to)), ENOENT);
  EXPECT_EQ(testing::read_whole(mnt(other)).value_or("<error>"), content);
}

TEST_F(UnionE2E, MkdirAndRmdir) {
  const std::string lower_dir = split_repo_path(spare_[0]).first;
  for (auto& d : {std::string("/new_top_dir"), lower_dir + "/new_sub_dir"}) {
    ASSERT_EQ(::mkdir(mnt(d).c_str(), 0755), 0) << d << ": " << strerror(errno);
    struct stat st = must_lstat(mnt(d));
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_TRUE(S_ISDIR(must_lstat(upper(d)).st_mode));
    ASSERT_TRUE(write_file(mnt(d + "/f"), "x"));
    EXPECT_EQ(::rmdir(mnt(d).c_str()), -1);
    EXPECT_EQ(errno, ENOTEMPTY);
    ASSERT_EQ(::unlink(mnt(d + "/f").c_str()), 0);
    ASSERT_EQ(::rmdir(mnt(d).c_str()), 0) << d << ": " << strerror(errno);
    EXPECT_EQ(testing::stat_errno(mnt(d)), ENOENT);
    EXPECT_EQ(testing::stat_errno(upper(d)), ENOENT);
  }
  // A name freed by rmdir can be created again.
  ASSERT_EQ(::mkdir(mnt("/new_top_dir").c_str(), 0755), 0);
  EXPECT_EQ(testing::stat_errno(mnt("/new_top_dir")), 0);
}

TEST_F(UnionE2E, RenamingLowerDirectoryIsExdev) {
  const std::string d = split_repo_path(spare_[0]).first;
  ASSERT_EQ(testing::stat_errno(mnt(d)), 0);
  EXPECT_EQ(renameat2_errno(mnt(d), mnt(d + "_moved"), 0), EXDEV);
  EXPECT_EQ(testing::stat_errno(mnt(d)), 0);
  EXPECT_EQ(testing::stat_errno(mnt(d + "_moved")), ENOENT);
  // A directory created in upper moves fine.
  ASSERT_EQ(::mkdir(mnt("/upper_only_dir").c_str(), 0755), 0);
  EXPECT_EQ(renameat2_errno(mnt("/upper_only_dir"), mnt("/upper_only_dir2"), 0), 0);
  EXPECT_EQ(testing::stat_errno(mnt("/upper_only_dir2")), 0);
}

TEST_F(UnionE2E, ReaddirMergesLayersWithoutDuplicatesOrWhiteouts) {
  std::set<std::string> want;
  for (auto& e : listing(mega_, merge_dir_)) want.insert(e["name"].get<std::string>());
  want.erase(split_repo_path(cl_deleted_).second);
  want.insert(split_repo_path(cl_new_).second);
  int err = 0;
  auto names = list_dir(mnt(merge_dir_), &err);
  ASSERT_TRUE(names) << strerror(err);
  std::multiset<std::string> got(names->begin(), names->end());
  for (auto& n : got) EXPECT_EQ(got.count(n), 1u) << "duplicate name " << n;
  EXPECT_EQ(std::set<std::string>(names->begin(), names->end()), want);
  EXPECT_EQ(testing::stat_errno(mnt(cl_deleted_)), ENOENT);
  EXPECT_EQ(testing::stat_errno(mnt(cl_modified_)), 0);
  EXPECT_EQ(testing::stat_errno(mnt(cl_new_)), 0);
  EXPECT_EQ(testing::stat_errno(mnt(lower_only_)), 0);
  // The root merges all three layers too.
  auto root = list_dir(m_->mnt());
  ASSERT_TRUE(root);
  std::multiset<std::string> rgot(root->begin(), root->end());
  for (auto& n : rgot) EXPECT_EQ(rgot.count(n), 1u) << "duplicate name in / " << n;
  std::set<std::string> rwant;
  for (auto& e : listing(mega_, "/")) rwant.insert(e["name"].get<std::string>());
  EXPECT_EQ(std::set<std::string>(root->begin(), root->end()), rwant);
}

TEST_F(UnionE2E, SymlinkAndReadlink) {
  const std::string l = mnt("/a_link");
  ASSERT_EQ(::symlink(rel(spare_[0]).c_str(), l.c_str()), 0) << strerror(errno);
  char buf[PATH_MAX];
  ssize_t n = ::readlink(l.c_str(), buf, sizeof buf);
  ASSERT_GT(n, 0) << strerror(errno);
  EXPECT_EQ(std::string(buf, size_t(n)), rel(spare_[0]));
  EXPECT_TRUE(S_ISLNK(must_lstat(l).st_mode));
  EXPECT_EQ(testing::read_whole(l).value_or("<error>"), server_content(mega_, spare_[0]));
  EXPECT_TRUE(S_ISLNK(must_lstat(m_->upper() + "/a_link").st_mode));
}

TEST_F(UnionE2E, HardLinks) {
  const std::string a = mnt("/hl_a"), b = mnt("/hl_b");
  ASSERT_TRUE(write_file(a, "one"));
  ASSERT_EQ(::link(a.c_str(), b.c_str()), 0) << strerror(errno);
  struct stat sa = must_lstat(a), sb = must_lstat(b);
  EXPECT_EQ(sa.st_ino, sb.st_ino);
  EXPECT_EQ(sb.st_nlink, 2u);
  {
    int fd = ::open(b.c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "two", 3), 3);
    ::close(fd);
  }
  EXPECT_EQ(testing::read_whole(a).value_or("<error>"), "onetwo");
  // A lower file is copied up first.
  const std::string lf = mnt(spare_[3]), lnk = mnt(spare_[3] + ".link");
  ASSERT_EQ(::link(lf.c_str(), lnk.c_str()), 0) << strerror(errno);
  EXPECT_EQ(testing::read_whole(lnk).value_or("<error>"), server_content(mega_, spare_[3]));
  EXPECT_EQ(must_lstat(upper(spare_[3])).st_nlink, 2u);
}

TEST_F(UnionE2E, TruncateCopiesUp) {
  const std::string p = spare_[4];
  const std::string content = server_content(mega_, p);
  ASSERT_GT(content.size(), 10u);
  ASSERT_EQ(::truncate(mnt(p).c_str(), 10), 0) << strerror(errno);
  EXPECT_EQ(must_lstat(mnt(p)).st_size, 10);
  EXPECT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), content.substr(0, 10));
  EXPECT_EQ(testing::read_file(upper(p)), content.substr(0, 10));
  ASSERT_EQ(::truncate(mnt(p).c_str(), 0), 0);
  EXPECT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), "");
}

TEST_F(UnionE2E, ChmodAndUtimesCopyUp) {
  const std::string p = spare_[5], q = spare_[0];
  ASSERT_EQ(::chmod(mnt(p).c_str(), 0600), 0) << strerror(errno);
  EXPECT_EQ(must_lstat(mnt(p)).st_mode & 07777, 0600u);
  EXPECT_EQ(must_lstat(upper(p)).st_mode & 07777, 0600u);
  EXPECT_EQ(testing::read_whole(mnt(p)).value_or("<error>"), server_content(mega_, p));
  struct timespec ts[2] = {{1000000000, 0}, {1234567890, 500}};
  ASSERT_EQ(::utimensat(AT_FDCWD, mnt(q).c_str(), ts, 0), 0) << strerror(errno);
  EXPECT_EQ(must_lstat(mnt(q)).st_mtim.tv_sec, 1234567890);
  EXPECT_EQ(must_lstat(mnt(q)).st_mtim.tv_nsec, 500);
  EXPECT_EQ(must_lstat(upper(q)).st_mtim.tv_sec, 1234567890);
  EXPECT_EQ(testing::read_whole(mnt(q)).value_or("<error>"), server_content(mega_, q));
}

TEST_F(UnionE2E, UserXattrs) {
  const std::string up = mnt("/xattr_file");
  ASSERT_TRUE(write_file(up, "x"));
  for (auto& p : {up, mnt(spare_[1])}) {
    ASSERT_EQ(::setxattr(p.c_str(), "user.antares", "value", 5, 0), 0) << p << ": " << strerror(errno);
    char buf[64];
    ssize_t n = ::getxattr(p.c_str(), "user.antares", buf, sizeof buf);
    ASSERT_EQ(n, 5) << strerror(errno);
    EXPECT_EQ(std::string(buf, 5), "value");
    char names[1024];
    n = ::listxattr(p.c_str(), names, sizeof names);
    ASSERT_GT(n, 0) << strerror(errno);
    bool found = false;
    for (ssize_t i = 0; i < n; i += ssize_t(strlen(names + i)) + 1) found |= std::string(names + i) == "user.antares";
    EXPECT_TRUE(found);
    EXPECT_EQ(::setxattr(p.c_str(), "user.antares", "v", 1, XATTR_CREATE), -1);
    EXPECT_EQ(errno, EEXIST);
    ASSERT_EQ(::removexattr(p.c_str(), "user.antares"), 0) << strerror(errno);
    EXPECT_EQ(::getxattr(p.c_str(), "user.antares", buf, sizeof buf), -1);
    EXPECT_EQ(errno, ENODATA);
  }
}

TEST_F(UnionE2E, Statfs) {
  struct statvfs sv {};
  ASSERT_EQ(::statvfs(m_->mnt().c_str(), &sv), 0) << strerror(errno);
  EXPECT_GT(sv.f_bsize, 0u);
  EXPECT_GT(sv.f_blocks, 0u);
  EXPECT_GT(sv.f_namemax, 0u);
}

TEST_F(UnionE2E, DirectoryLinkCountAfterReaddir) {
  std::vector<std::string> dirs = {"/", merge_dir_, split_repo_path(spare_[0]).first};
  auto top = listing(mega_, "/");
  for (auto& e : top)
    if (e["content_type"] == "directory") dirs.push_back("/" + e["name"].get<std::string>());
  for (auto& d : dirs) {
    std::vector<unsigned char> types;
    std::string path = d == "/" ? m_->mnt() : mnt(d);
    auto names = list_dir(path, nullptr, &types);
    ASSERT_TRUE(names) << d;
    nlink_t subdirs = nlink_t(std::count(types.begin(), types.end(), DT_DIR));
    struct statx stx {};
    ASSERT_EQ(::statx(AT_FDCWD, path.c_str(), AT_STATX_FORCE_SYNC, STATX_NLINK, &stx), 0) << strerror(errno);
    EXPECT_EQ(stx.stx_nlink, 2 + subdirs) << d;
  }
}

// A walk lists a directory and lstats what it lists. With READDIRPLUS the
// listing carries every entry's attributes and node, so the lstats are
// answered by the kernel: no LOOKUP per entry. The attributes are the
// objects' own, and the kernel's references are counted: when it forgets
// the entries, the union drops their nodes.
TEST_F(UnionE2E, ListingCarriesAttributesSoLstatNeedsNoLookup) {
  constexpr int kFiles = 200;
  // Made behind the mount, so the kernel has never seen these names.
  const std::string dir = m_->upper() + "/rdplus";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << strerror(errno);
  for (int i = 0; i < kFiles; ++i) {
    std::ofstream(dir + "/f" + std::to_string(i)) << std::string(size_t(i), 'x');
  }
  const std::string path = m_->path("rdplus");
  struct stat dst = must_lstat(path);
  ASSERT_TRUE(S_ISDIR(dst.st_mode));
  const uint64_t nodes_before = counter(*m_, "nodes");
  const uint64_t lookups_before = fuse_requests(*m_, "lookup");
  auto names = list_dir(path);
  ASSERT_TRUE(names);
  ASSERT_EQ(names->size(), size_t(kFiles));
  for (const auto& name : *names) {
    struct stat st = must_lstat(path + "/" + name);
    EXPECT_TRUE(S_ISREG(st.st_mode)) << name;
    EXPECT_EQ(st.st_size, std::stol(name.substr(1))) << name;
  }
  const uint64_t lookups = fuse_requests(*m_, "lookup") - lookups_before;
  EXPECT_GT(fuse_requests(*m_, "readdirplus"), 0u);
  EXPECT_LT(lookups, uint64_t(kFiles / 10)) << "lstat after a listing still sends a LOOKUP per entry";
  EXPECT_GE(counter(*m_, "nodes"), nodes_before + kFiles);

  // The kernel forgets unused entries when its caches are dropped; each
  // reference the listing handed out is returned, so the nodes go.
  auto deadline = std::chrono::steady_clock::now() + 20s;
  uint64_t nodes = 0;
  do {
    std::ofstream("/proc/sys/vm/drop_caches") << "2\n";
    nodes = counter(*m_, "nodes");
    if (nodes < nodes_before + kFiles / 2) break;
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_LT(nodes, nodes_before + kFiles / 2) << "the kernel forgot the entries, the union kept their nodes";
  // And what is forgotten is found again.
  EXPECT_EQ(must_lstat(path + "/f7").st_size, 7);
}

TEST_F(UnionE2E, NewFilesBelongToTheCaller) {
  ASSERT_TRUE(write_file(mnt("/root_file"), "r"));
  ASSERT_EQ(::mkdir(mnt("/root_dir").c_str(), 0755), 0);
  for (auto& p : {std::string("/root_file"), std::string("/root_dir")}) {
    struct stat st = must_lstat(mnt(p));
    EXPECT_EQ(st.st_uid, 0u);
    EXPECT_EQ(st.st_gid, 0u);
    EXPECT_EQ(must_lstat(upper(p)).st_uid, 0u);
  }
  if (::access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "no setpriv";
  // Another user must reach the mountpoint: the temp dir is 0700.
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(mnt("/shared").c_str(), 0777), 0);
  ASSERT_EQ(::chmod(mnt("/shared").c_str(), 0777), 0);
  std::string err;
  ASSERT_EQ(testing::run({"/usr/bin/setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "/usr/bin/touch",
                          mnt("/shared/by_1000")},
                         nullptr, &err),
            0)
      << err;
  ASSERT_EQ(testing::run({"/usr/bin/setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "/usr/bin/mkdir",
                          mnt("/shared/dir_by_1000")},
                         nullptr, &err),
            0)
      << err;
  for (auto& p : {std::string("/shared/by_1000"), std::string("/shared/dir_by_1000")}) {
    struct stat st = must_lstat(mnt(p));
    EXPECT_EQ(st.st_uid, 1000u) << p;
    EXPECT_EQ(st.st_gid, 1000u) << p;
    EXPECT_EQ(must_lstat(upper(p)).st_uid, 1000u) << p;
  }
  // default_permissions: uid 1000 cannot write a root-owned 0644 file.
  EXPECT_NE(testing::run({"/usr/bin/setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "/usr/bin/touch",
                          mnt("/root_file")}),
            0);
}

TEST_F(UnionE2E, InodeNumbersAreStablePerPath) {
  const std::string a = mnt(spare_[0]), b = mnt("/ino_b");
  struct stat s1 = must_lstat(a), s2 = must_lstat(a);
  EXPECT_EQ(s1.st_ino, s2.st_ino);
  ASSERT_TRUE(write_file(b, "b"));
  ino_t b1 = must_lstat(b).st_ino;
  EXPECT_NE(b1, s1.st_ino);
  ASSERT_EQ(::unlink(b.c_str()), 0);
  ASSERT_TRUE(write_file(b, "b again"));
  EXPECT_EQ(must_lstat(b).st_ino, b1) << "a path keeps its inode number";
  EXPECT_EQ(must_lstat(a).st_ino, s1.st_ino);
  // Copy-up does not change the inode number either.
  ASSERT_EQ(::chmod(a.c_str(), 0640), 0);
  EXPECT_EQ(must_lstat(a).st_ino, s1.st_ino);
  // readdir reports the same numbers as stat.
  DIR* d = ::opendir(mnt(split_repo_path(spare_[0]).first).c_str());
  ASSERT_TRUE(d);
  bool seen = false;
  while (auto* e = ::readdir(d))
    if (split_repo_path(spare_[0]).second == e->d_name) {
      seen = true;
      EXPECT_EQ(e->d_ino, s1.st_ino);
    }
  ::closedir(d);
  EXPECT_TRUE(seen);
}

TEST_F(UnionE2E, RenameNoreplaceAndExchange) {
  const std::string a = mnt("/rn_a"), b = mnt("/rn_b");
  ASSERT_TRUE(write_file(a, "AAA"));
  ASSERT_TRUE(write_file(b, "BBB"));
  EXPECT_EQ(renameat2_errno(a, b, RENAME_NOREPLACE), EEXIST);
  EXPECT_EQ(testing::read_whole(a).value_or("<error>"), "AAA");
  EXPECT_EQ(testing::read_whole(b).value_or("<error>"), "BBB");
  // Onto a lower name as well.
  EXPECT_EQ(renameat2_errno(a, mnt(spare_[1]), RENAME_NOREPLACE), EEXIST);
  ASSERT_EQ(renameat2_errno(a, b, RENAME_EXCHANGE), 0);
  EXPECT_EQ(testing::read_whole(a).value_or("<error>"), "BBB");
  EXPECT_EQ(testing::read_whole(b).value_or("<error>"), "AAA");
  EXPECT_EQ(testing::read_file(m_->upper() + "/rn_a"), "BBB");
  EXPECT_EQ(testing::read_file(m_->upper() + "/rn_b"), "AAA");
  EXPECT_EQ(renameat2_errno(a, mnt("/rn_missing"), RENAME_EXCHANGE), ENOENT);
  // NOREPLACE onto a free name works.
  EXPECT_EQ(renameat2_errno(a, mnt("/rn_c"), RENAME_NOREPLACE), 0);
  EXPECT_EQ(testing::read_whole(mnt("/rn_c")).value_or("<error>"), "BBB");
}

}  // namespace
}  // namespace antares::e2e
