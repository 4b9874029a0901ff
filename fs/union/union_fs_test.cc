// UnionFs over three local directories (no FUSE, no network): the union rules,
// copy-up, whiteouts, the handle cache, and what each strategy does when a
// backing file is replaced behind the union.
#include "fs/union/union_fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <map>
#include <set>
#include <thread>
#include <fstream>

#include <gtest/gtest.h>

#include "testing/subprocess.h"

namespace antares::fs {
namespace {

void write_file(const std::string& path, const std::string& data) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

// Replaces a file the way upstream's rebuilds do: a new inode renamed over.
void replace_file(const std::string& path, const std::string& data) {
  write_file(path + ".new", data);
  ASSERT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
}

std::string read_fd(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::pread(fd, buf, sizeof buf, off_t(out.size()))) > 0) out.append(buf, size_t(n));
  return out;
}

class UnionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto d : {"upper", "cl", "lower"}) std::filesystem::create_directories(tmp_ / d);
    write_file(tmp_ / "lower/a/BUCK", "lower buck");
    write_file(tmp_ / "lower/a/src.c", "lower src");
    write_file(tmp_ / "lower/a/gone.c", "deleted by the CL");
    write_file(tmp_ / "lower/b/x", "x");
    write_file(tmp_ / "cl/a/BUCK", "cl buck");
    write_file(tmp_ / "cl/a/new.c", "cl new");
    ASSERT_EQ(::mknod((tmp_ / "cl/a/gone.c").c_str(), S_IFCHR | 0, makedev(0, 0)), 0);
  }

  void mount(const char* strategy, LayerHooks* lower_hooks = nullptr) {
    std::vector<std::unique_ptr<Layer>> layers;
    layers.push_back(std::move(*Layer::open("upper", tmp_ / "upper", true)));
    layers.push_back(std::move(*Layer::open("cl", tmp_ / "cl", false)));
    layers.push_back(std::move(*Layer::open("lower", tmp_ / "lower", false, lower_hooks)));
    slot_ = std::make_unique<StrategySlot>(set_.find(strategy));
    fs_ = std::make_unique<UnionFs>(std::move(layers), *slot_);
    ASSERT_TRUE(fs_->init().ok());
  }

  NodeId lookup(NodeId parent, const std::string& name) {
    auto e = fs_->lookup(parent, name);
    EXPECT_TRUE(e.ok()) << name << ": " << (e.ok() ? "" : e.error().describe());
    return e.ok() ? e->node : NodeId{0};
  }

  std::string read(NodeId n) {
    auto fd = fs_->open(n, O_RDONLY);
    EXPECT_TRUE(fd.ok()) << (fd.ok() ? "" : fd.error().describe());
    return fd.ok() ? read_fd(fd->get()) : "";
  }

  std::vector<std::string> names(NodeId dir) {
    std::vector<std::string> out;
    auto entries = fs_->readdir(dir);
    EXPECT_TRUE(entries.ok());
    if (entries.ok())
      for (auto& e : *entries) out.push_back(e.name);
    return out;
  }

  testing::TempDir tmp_;
  StrategySet set_;
  std::unique_ptr<StrategySlot> slot_;
  std::unique_ptr<UnionFs> fs_;
};

TEST_F(UnionTest, UpperWinsAndWhiteoutsHideAndReaddirMerges) {
  mount("none");
  write_file(tmp_ / "upper/a/src.c", "upper src");
  NodeId a = lookup(kRootNode, "a");
  EXPECT_EQ(read(lookup(a, "BUCK")), "cl buck");
  EXPECT_EQ(read(lookup(a, "src.c")), "upper src");
  EXPECT_EQ(fs_->lookup(a, "gone.c").err(), ENOENT);
  EXPECT_EQ(names(a), (std::vector<std::string>{".", "..", "BUCK", "new.c", "src.c"}));
  EXPECT_EQ(names(kRootNode), (std::vector<std::string>{".", "..", "a", "b"}));
  auto st = fs_->getattr(a);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_nlink, 2u);  // loaded, no subdirectories
  auto root = fs_->getattr(kRootNode);
  EXPECT_EQ(root->st_nlink, 4u);
}

TEST_F(UnionTest, InodeNumbersAreStablePerPathAndNodeZeroIsNeverUsed) {
  mount("none");
  NodeId a = lookup(kRootNode, "a");
  NodeId buck = lookup(a, "BUCK");
  EXPECT_NE(raw(buck), 0u);
  auto ino = fs_->getattr(buck)->st_ino;
  fs_->forget(buck, 1);
  EXPECT_EQ(fs_->getattr(lookup(a, "BUCK"))->st_ino, ino);
  EXPECT_NE(fs_->getattr(lookup(a, "src.c"))->st_ino, ino);
}

TEST_F(UnionTest, WriteCopiesUpContentModeAndXattrs) {
  ASSERT_EQ(::chmod((tmp_ / "lower/a/src.c").c_str(), 0640), 0);
  ASSERT_EQ(::setxattr((tmp_ / "lower/a/src.c").c_str(), "user.k", "v", 1, 0), 0);
  mount("none");
  NodeId src = lookup(lookup(kRootNode, "a"), "src.c");
  auto fd = fs_->open(src, O_WRONLY | O_APPEND);
  ASSERT_TRUE(fd.ok()) << fd.error().describe();
  ASSERT_EQ(::write(fd->get(), "+", 1), 1);
  EXPECT_EQ(testing::read_file(tmp_ / "upper/a/src.c"), "lower src+");
  EXPECT_EQ(testing::read_file(tmp_ / "lower/a/src.c"), "lower src");
  struct stat st;
  ASSERT_EQ(::stat((tmp_ / "upper/a/src.c").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  char v[4] = {};
  EXPECT_EQ(::getxattr((tmp_ / "upper/a/src.c").c_str(), "user.k", v, sizeof v), 1);
  EXPECT_EQ(fs_->stats().copy_ups.load(), 2u);  // the directory a, then the file
  EXPECT_EQ(read(src), "lower src+");
}

TEST_F(UnionTest, SetattrCopiesUp) {
  mount("none");
  NodeId x = lookup(lookup(kRootNode, "b"), "x");
  struct stat attr {};
  attr.st_mode = 0600;
  attr.st_size = 0;
  auto st = fs_->setattr(x, attr, 1 /*mode*/ | 8 /*size*/, -1);
  ASSERT_TRUE(st.ok()) << st.error().describe();
  EXPECT_EQ(st->st_mode & 07777, 0600u);
  EXPECT_EQ(st->st_size, 0);
  EXPECT_EQ(testing::read_file(tmp_ / "lower/b/x"), "x");
}

TEST_F(UnionTest, UnlinkOfALowerFileLeavesAWhiteout) {
  mount("none");
  NodeId b = lookup(kRootNode, "b");
  ASSERT_TRUE(fs_->unlink(b, "x").ok());
  struct stat st;
  ASSERT_EQ(::lstat((tmp_ / "upper/b/x").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
  EXPECT_EQ(fs_->lookup(b, "x").err(), ENOENT);
  EXPECT_EQ(names(b), (std::vector<std::string>{".", ".."}));
  // The directory is now empty in the merged view: rmdir removes it and whiteouts it too.
  ASSERT_TRUE(fs_->rmdir(kRootNode, "b").ok());
  EXPECT_EQ(fs_->lookup(kRootNode, "b").err(), ENOENT);
  // mkdir over the whiteout gives an opaque directory: lower's b stays hidden.
  Caller me{0, 0, 022, nullptr};
  auto nb = fs_->mkdir(kRootNode, "b", 0755, me);
  ASSERT_TRUE(nb.ok()) << nb.error().describe();
  EXPECT_EQ(names(nb->node), (std::vector<std::string>{".", ".."}));
}

TEST_F(UnionTest, RmdirOfANonEmptyMergedDirectoryFails) {
  mount("none");
  EXPECT_EQ(fs_->rmdir(kRootNode, "a").err(), ENOTEMPTY);
}

TEST_F(UnionTest, CreateRenameAcrossLayersAndExchange) {
  mount("none");
  Caller me{0, 0, 022, nullptr};
  NodeId a = lookup(kRootNode, "a");
  auto created = fs_->create(a, "made.txt", 0644, O_WRONLY, me);
  ASSERT_TRUE(created.ok()) << created.error().describe();
  ASSERT_EQ(::write(created->second.get(), "made", 4), 4);
  // A lower file renamed: copied up, old name whited out.
  ASSERT_TRUE(fs_->rename(a, "src.c", kRootNode, "moved.c", 0).ok());
  EXPECT_EQ(read(lookup(kRootNode, "moved.c")), "lower src");
  EXPECT_EQ(fs_->lookup(a, "src.c").err(), ENOENT);
  EXPECT_EQ(fs_->rename(a, "made.txt", kRootNode, "moved.c", RENAME_NOREPLACE).err(), EEXIST);
  ASSERT_TRUE(fs_->rename(a, "made.txt", kRootNode, "moved.c", RENAME_EXCHANGE).ok());
  EXPECT_EQ(read(lookup(kRootNode, "moved.c")), "made");
  EXPECT_EQ(read(lookup(a, "made.txt")), "lower src");
  // A directory that lives in a read-only layer cannot be renamed (as overlayfs).
  EXPECT_EQ(fs_->rename(kRootNode, "b", kRootNode, "b2", 0).err(), EXDEV);
}

TEST_F(UnionTest, HostileNamesAreRefused) {
  mount("none");
  EXPECT_EQ(fs_->lookup(kRootNode, std::string(300, 'n')).err(), ENAMETOOLONG);
}

TEST_F(UnionTest, NoneGivesEstaleAgainAndAgainAfterABackingFileIsReplaced) {
  mount("none");
  NodeId a = lookup(kRootNode, "a");
  NodeId buck = lookup(a, "BUCK");
  EXPECT_EQ(read(buck), "cl buck");
  replace_file(tmp_ / "cl/a/BUCK", "cl buck v2");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(fs_->getattr(buck).err(), ESTALE);
    EXPECT_EQ(fs_->open(buck, O_RDONLY).err(), ESTALE);
    // The kernel's LOOKUP_REVAL retry gets the same node from the cache: still stale.
    auto again = fs_->lookup(a, "BUCK");
    EXPECT_EQ(again.err(), ESTALE);
  }
  EXPECT_GE(fs_->stats().estale[1][int(Op::getattr)].load(), 3u);
}

// What the kernel does with an ESTALE from a path-based call: it walks the
// path again with LOOKUP_REVAL (a LOOKUP per component) and repeats the call
// on the node it gets. Under the fixes that node is new; callers never see it.
Result<std::string> kernel_read(UnionFs& fs, NodeId dir, const std::string& name, NodeId node) {
  auto once = [&](NodeId n) -> Result<std::string> {
    auto fd = fs.open(n, O_RDONLY);
    if (!fd.ok()) return fd.error();
    return read_fd(fd->get());
  };
  auto r = once(node);
  if (r.err() != ESTALE) return r;
  auto e = fs.lookup(dir, name);
  if (!e.ok()) return e.error();
  return once(e->node);
}

TEST_F(UnionTest, RecoverStrategyRetiresAReplacedFileAndTheRewalkFindsItsNewNode) {
  mount("A");
  NodeId a = lookup(kRootNode, "a");
  NodeId buck = lookup(a, "BUCK");
  replace_file(tmp_ / "cl/a/BUCK", "cl buck v2");
  // The old node denotes the old object: it is retired, not re-pointed, so
  // the kernel's pages and sizes for it never mix two objects.
  EXPECT_EQ(fs_->getattr(buck).err(), ESTALE);
  EXPECT_EQ(fs_->stats().retired_nodes.load(), 1u);
  EXPECT_EQ(fs_->stats().estale[1][int(Op::getattr)].load(), 0u) << "a retirement is not the bug's ESTALE";
  auto e = fs_->lookup(a, "BUCK");
  ASSERT_TRUE(e.ok());
  EXPECT_NE(raw(e->node), raw(buck));
  EXPECT_EQ(read(e->node), "cl buck v2");
  EXPECT_EQ(*kernel_read(*fs_, a, "BUCK", buck), "cl buck v2");
  // A file deleted behind the union: the re-walk answers ENOENT.
  NodeId gone = lookup(a, "new.c");
  ASSERT_EQ(::unlink((tmp_ / "cl/a/new.c").c_str()), 0);
  EXPECT_EQ(fs_->getattr(gone).err(), ESTALE);
  EXPECT_EQ(fs_->lookup(a, "new.c").err(), ENOENT);
  // A directory replaced behind the union is followed in place.
  NodeId b = lookup(kRootNode, "b");
  write_file(tmp_ / "lower/b.new/y", "y");
  std::filesystem::rename(tmp_ / "lower/b", tmp_ / "lower/b.old");
  std::filesystem::rename(tmp_ / "lower/b.new", tmp_ / "lower/b");
  std::filesystem::remove_all(tmp_ / "lower/b.old");
  EXPECT_TRUE(fs_->getattr(b).ok());
  EXPECT_EQ(names(b), (std::vector<std::string>{".", "..", "y"}));
  EXPECT_EQ(set_.stats().recovered.load(), 1u);
}

TEST_F(UnionTest, AnOpenFileKeepsReadingWhatItOpenedAcrossAReplacement) {
  for (const char* s : {"A", "B", "C", "auto"}) {
    SCOPED_TRACE(s);
    replace_file(tmp_ / "cl/a/BUCK", "cl buck");
    mount(s);
    NodeId a = lookup(kRootNode, "a");
    NodeId buck = lookup(a, "BUCK");
    auto fd = fs_->open(buck, O_RDONLY);
    ASSERT_TRUE(fd.ok());
    replace_file(tmp_ / "cl/a/BUCK", "cl buck, second version");
    // B learns of changes from their owner (here, the CL builder's event).
    if (slot_->get().invalidates()) (void)fs_->on_layer_change(1, {{LayerChange::Kind::replaced, "a/BUCK"}});
    auto fresh = fs_->lookup(a, "BUCK");
    ASSERT_TRUE(fresh.ok());
    EXPECT_NE(raw(fresh->node), raw(buck));
    EXPECT_EQ(read(fresh->node), "cl buck, second version");
    EXPECT_EQ(read_fd(fd->get()), "cl buck");
    auto st = fs_->fgetattr(buck, fd->get(), OpenDetails{true});
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->st_size, off_t(std::string("cl buck").size()));
    EXPECT_EQ(st->st_ctim.tv_nsec, st->st_mtim.tv_nsec) << "read-only layers report ctime = mtime";
  }
}

TEST_F(UnionTest, PathStrategyAlwaysReachesTheCurrentFile) {
  mount("C");
  NodeId a = lookup(kRootNode, "a");
  NodeId buck = lookup(a, "BUCK");
  for (int v = 2; v < 5; ++v) {
    std::string content = "cl buck v" + std::to_string(v);
    replace_file(tmp_ / "cl/a/BUCK", content);
    EXPECT_EQ(*kernel_read(*fs_, a, "BUCK", buck), content);
    buck = lookup(a, "BUCK");
    EXPECT_TRUE(fs_->getattr(buck).ok());
  }
}

TEST_F(UnionTest, InvalidationDropsHandlesAndChildrenAndNamesWhatTheKernelMustForget) {
  mount("B");
  NodeId a = lookup(kRootNode, "a");
  NodeId buck = lookup(a, "BUCK");
  replace_file(tmp_ / "cl/a/BUCK", "cl buck v2");
  write_file(tmp_ / "cl/a/added.c", "added");
  auto inv = fs_->on_layer_change(1, {{LayerChange::Kind::replaced, "a/BUCK"}, {LayerChange::Kind::added, "a/added.c"}});
  bool entry = false, inode = false;
  for (auto& i : inv) {
    entry |= i.kind == KernelInvalidation::Kind::entry && i.node == a && i.name == "BUCK";
    inode |= i.kind == KernelInvalidation::Kind::inode && i.node == buck;
  }
  EXPECT_TRUE(entry);
  EXPECT_TRUE(inode);
  EXPECT_EQ(fs_->getattr(buck).err(), ESTALE);  // retired: one node, one object
  auto e = fs_->lookup(a, "BUCK");
  ASSERT_TRUE(e.ok());
  EXPECT_NE(raw(e->node), raw(buck));
  EXPECT_EQ(read(e->node), "cl buck v2");
  EXPECT_TRUE(fs_->lookup(a, "added.c").ok());
}

// A walker opened a directory; the server then removed it (a lower refresh
// deletes the mirror directory and announces it) before the first READDIR.
// READDIR works on an open directory and the kernel never retries it, so the
// answer must be what a local filesystem gives for a removed directory
// (ENOENT), never ESTALE, under every fix. Found by a 30 s soak under B.
TEST_F(UnionTest, ReaddirOfADirectoryRemovedAfterOpendirIsEnoentUnderEveryFix) {
  for (const char* strategy : {"A", "B", "C", "auto"}) {
    SCOPED_TRACE(strategy);
    std::filesystem::remove_all(tmp_ / "lower/gone");
    write_file(tmp_ / "lower/gone/sub/BUCK", "b");
    write_file(tmp_ / "lower/gone/f", "f");
    mount(strategy);
    NodeId gone = lookup(kRootNode, "gone");
    ASSERT_TRUE(fs_->opendir(gone).ok());
    std::filesystem::remove_all(tmp_ / "lower/gone");
    (void)fs_->on_layer_change(2, {{LayerChange::Kind::removed, "gone"}});
    auto r = fs_->readdir(gone);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err(), ENOENT) << r.error().describe();
    // The same when the listing must be read again and the directory's
    // handle meets the removal first (its event not yet applied).
    write_file(tmp_ / "lower/gone2/f", "f");
    NodeId gone2 = lookup(kRootNode, "gone2");
    ASSERT_TRUE(fs_->opendir(gone2).ok());
    replace_file(tmp_ / "lower/gone2/f", "f2");
    (void)fs_->on_layer_change(2, {{LayerChange::Kind::replaced, "gone2/f"}});
    std::filesystem::remove_all(tmp_ / "lower/gone2");
    r = fs_->readdir(gone2);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err(), ENOENT) << r.error().describe();
    std::filesystem::remove_all(tmp_ / "lower/gone2");
  }
}

TEST_F(UnionTest, SwitchingFromNoneHealsStaleNodes) {
  mount("none");
  NodeId buck = lookup(lookup(kRootNode, "a"), "BUCK");
  replace_file(tmp_ / "cl/a/BUCK", "v2");
  EXPECT_EQ(fs_->getattr(buck).err(), ESTALE);
  slot_->set(set_.find("B"));
  fs_->drop_caches();
  // The kernel's re-walk now meets a new node instead of the stale one.
  EXPECT_EQ(*kernel_read(*fs_, lookup(kRootNode, "a"), "BUCK", buck), "v2");
}

// A lower layer whose owner keeps each file it replaces for a while (as the
// lower store does under the fixes): hard-linked into an attic by inode.
class KeepingHooks : public LayerHooks {
 public:
  explicit KeepingHooks(std::string attic) : attic_(std::move(attic)) {}
  void replace(const std::string& path, const std::string& data) {
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    ASSERT_EQ(::link(path.c_str(), (attic_ + "/" + std::to_string(st.st_ino)).c_str()), 0);
    kept_.insert(st.st_ino);
    replace_file(path, data);
  }
  Result<UniqueFd> open_kept(uint64_t ino, int flags) override {
    if (!kept_.count(ino)) return Error::from_errno(ENOENT, "not kept");
    UniqueFd fd(::open((attic_ + "/" + std::to_string(ino)).c_str(), flags | O_CLOEXEC));
    if (!fd.valid()) return Error::from_errno(errno, "open kept");
    return fd;
  }
  bool is_kept(uint64_t ino) override { return kept_.count(ino) > 0; }

 private:
  std::string attic_;
  std::set<uint64_t> kept_;
};

// The kernel's retry: a/src.c (v1) in a lower layer whose owner keeps what
// it replaces, mounted once per fix strategy that serves kept objects.
class UnionRetryTest : public UnionTest {
 protected:
  void TearDown() override {
    fs_.reset();  // before the hooks it uses
    UnionFs::set_request_caller(0);
  }
  void mount_keeping(const std::string& strategy) {
    fs_.reset();
    const std::string attic = tmp_ / ("attic-" + strategy);
    std::filesystem::create_directories(attic);
    replace_file(src_, "v1");
    keeper_ = std::make_unique<KeepingHooks>(attic);
    mount(strategy.c_str(), keeper_.get());
    events_ = strategy == "auto";
  }
  // The owner replaces a/src.c; under auto the daemon passes on its change
  // event (B's half).
  void replace_src(const std::string& data) {
    keeper_->replace(src_, data);
    if (events_) fs_->on_layer_change(2, {{LayerChange::Kind::replaced, "a/src.c"}});
  }
  // A cached node of a/src.c, the file replaced (v2), an open of the node
  // answered ESTALE and the kernel's retry looking the name up again: the
  // retry's node.
  NodeId retried_after_estale(NodeId a) {
    NodeId n1 = lookup(a, "src.c");
    replace_src("v2");
    EXPECT_EQ(fs_->open(n1, O_RDONLY).err(), ESTALE) << "a cached node of a replaced file: the kernel re-walks";
    NodeId n2 = lookup(a, "src.c");
    EXPECT_NE(raw(n2), raw(n1));
    return n2;
  }
  static constexpr std::array<const char*, 3> kStrategies{"A", "C", "auto"};
  const std::string src_ = tmp_ / "lower/a/src.c";
  std::unique_ptr<KeepingHooks> keeper_;
  bool events_ = false;
};

// The kernel retries an ESTALE once: a file replaced again between that
// retry's lookup and its open is served the object the lookup found, if the
// layer still keeps it. Outside a retry, a kept object is never served: a
// node the kernel cached before a change answers ESTALE, so the re-walk finds
// the new version.
TEST_F(UnionRetryTest, AFileReplacedAgainDuringTheKernelsRetryIsServedItsKeptObject) {
  for (const char* strategy : kStrategies) {
    SCOPED_TRACE(strategy);
    mount_keeping(strategy);
    NodeId a = lookup(kRootNode, "a");
    NodeId n2 = retried_after_estale(a);
    replace_src("v3");  // replaced again before the retry's open
    {
      OpenDetails d;
      auto fd = fs_->open(n2, O_RDONLY, &d);
      ASSERT_TRUE(fd.ok()) << fd.error().describe();
      fs_->track_open(n2, fd->get(), d);  // as the adapter does
      auto st = fs_->getattr(n2);  // fstat
      ASSERT_TRUE(st.ok()) << st.error().describe();
      EXPECT_EQ(st->st_size, 2);
      EXPECT_EQ(read_fd(fd->get()), "v2") << "the object the retry's lookup found";
      fs_->track_close(n2, fd->get());
    }
    EXPECT_EQ(fs_->open(n2, O_RDONLY).err(), ESTALE) << "the grace was for the retry's one call";
    // The kernel's next re-walk finds the current version.
    EXPECT_EQ(*kernel_read(*fs_, a, "src.c", n2), "v3");
  }
}

// The retry's grace belongs to the caller whose call met ESTALE: the kernel
// retries in that caller's task, so another process using the new node in
// the meantime (a reader that looked the name up after the change, a stat)
// must not use it up, and must not be served the kept object either.
TEST_F(UnionRetryTest, OnlyTheCallerWhoseRetryItIsMayUseTheGrace) {
  for (const char* strategy : kStrategies) {
    SCOPED_TRACE(strategy);
    mount_keeping(strategy);
    constexpr pid_t kRetrying = 101, kOther = 202;
    NodeId a = lookup(kRootNode, "a");
    UnionFs::set_request_caller(kRetrying);
    NodeId n2 = retried_after_estale(a);  // the kernel's retry runs in the caller's task
    replace_src("v3");
    UnionFs::set_request_caller(kOther);
    EXPECT_EQ(fs_->open(n2, O_RDONLY).err(), ESTALE) << "not this caller's retry: re-walk to v3";
    EXPECT_EQ(fs_->getattr(n2).err(), ESTALE);
    UnionFs::set_request_caller(kRetrying);
    auto fd = fs_->open(n2, O_RDONLY);
    ASSERT_TRUE(fd.ok()) << "the retrying caller's grace was used by others: " << fd.error().describe();
    EXPECT_EQ(read_fd(fd->get()), "v2");
  }
}

// The kernel's retry of an open may ask for the new node's attributes before
// it repeats the open (a permission check): that request is part of the
// retry, answers the object the retry's lookup found, and leaves the grace
// for the open it is for.
TEST_F(UnionRetryTest, TheRetrysGetattrDoesNotEndTheGraceOfItsOpen) {
  for (const char* strategy : kStrategies) {
    SCOPED_TRACE(strategy);
    mount_keeping(strategy);
    NodeId n2 = retried_after_estale(lookup(kRootNode, "a"));
    replace_src("v3!");
    auto st = fs_->getattr(n2);
    ASSERT_TRUE(st.ok()) << st.error().describe();
    EXPECT_EQ(st->st_size, 2) << "the attributes of the object the retry's lookup found";
    {
      auto fd = fs_->open(n2, O_RDONLY);
      ASSERT_TRUE(fd.ok()) << "the retry's getattr used up its open's grace: " << fd.error().describe();
      EXPECT_EQ(read_fd(fd->get()), "v2");
    }
    EXPECT_EQ(fs_->open(n2, O_RDONLY).err(), ESTALE) << "the grace was for the retry's one open";
    EXPECT_EQ(fs_->getattr(n2).err(), ESTALE);
  }
}

// The same gap for a directory: removed between the retry's lookup and its
// opendir (a server-side rename under B's long entry timeouts). The kernel
// would hand a second ESTALE to the caller; a local filesystem says ENOENT.
TEST_F(UnionTest, ADirectoryRemovedDuringTheKernelsRetryIsEnoentNotEstale) {
  mount("B");
  NodeId b1 = lookup(kRootNode, "b");
  std::filesystem::remove_all(tmp_ / "lower/b");  // before B's event for it arrives
  EXPECT_EQ(fs_->opendir(b1).err(), ESTALE) << "the first answer makes the kernel re-walk";
  write_file(tmp_ / "lower/b/x", "x again");  // a new b, for the retry's lookup
  NodeId b2 = lookup(kRootNode, "b");
  std::filesystem::remove_all(tmp_ / "lower/b");  // and gone again
  EXPECT_EQ(fs_->opendir(b2).err(), ENOENT);
  EXPECT_EQ(fs_->getattr(b2).err(), ESTALE) << "a new call: the kernel re-walks and finds no b";
  EXPECT_EQ(fs_->lookup(kRootNode, "b").err(), ENOENT);
}

// A lookup answers for a name, and a name always has a current answer: a
// child the directory's cache still holds whose object was replaced (the
// lower store keeps the directory's mtime when a new version lands, so A's
// and C's re-check cannot see it) is looked up again, never ESTALE. An
// ESTALE from LOOKUP would cost the kernel its one retry of the whole walk.
TEST_F(UnionTest, LookupOfANameWhoseCachedObjectWasReplacedFindsTheNewOne) {
  for (const char* strategy : {"A", "B", "C", "auto"}) {
    SCOPED_TRACE(strategy);
    const std::string path = tmp_ / "lower/a/src.c";
    replace_file(path, "v1");
    mount(strategy);
    NodeId a = lookup(kRootNode, "a");
    NodeId n1 = lookup(a, "src.c");
    struct stat dir_before;
    ASSERT_EQ(::stat((tmp_ / "lower/a").c_str(), &dir_before), 0);
    replace_file(path, "v2");
    const struct timespec keep[2] = {dir_before.st_atim, dir_before.st_mtim};
    ASSERT_EQ(::utimensat(AT_FDCWD, (tmp_ / "lower/a").c_str(), keep, 0), 0);
    auto e = fs_->lookup(a, "src.c");
    ASSERT_TRUE(e.ok()) << e.error().describe();
    EXPECT_NE(raw(e->node), raw(n1));
    EXPECT_EQ(e->attr.st_size, 2);
    EXPECT_EQ(read(e->node), "v2");
    fs_.reset();
  }
}

// glibc's opendir() fstat()s the directory it has just opened. A directory
// removed on the server between OPENDIR and that GETATTR (its node retired
// by B's event) must answer as an open, removed directory does on a local
// filesystem; a GETATTR on an open fd is never retried by the kernel, so an
// ESTALE there reached the soak's walker as a failed opendir.
TEST_F(UnionTest, FstatOfAnOpenDirectoryRemovedBehindItAnswers) {
  for (const char* strategy : {"A", "B", "C", "auto"}) {
    SCOPED_TRACE(strategy);
    write_file(tmp_ / "lower/d/x", "x");
    mount(strategy);
    NodeId d = lookup(kRootNode, "d");
    OpenDetails det;
    auto fd = fs_->opendir(d, &det);
    ASSERT_TRUE(fd.ok()) << fd.error().describe();
    fs_->track_open(d, fd->get(), det);  // as the adapter does
    std::filesystem::remove_all(tmp_ / "lower/d");
    fs_->on_layer_change(2, {{LayerChange::Kind::removed, "d"}});
    auto st = fs_->getattr(d);
    ASSERT_TRUE(st.ok()) << st.error().describe();
    EXPECT_TRUE(S_ISDIR(st->st_mode));
    fs_->track_close(d, fd->get());
    fs_.reset();
  }
}

// A layer's owner may know an object's attributes better than its backing
// inode (the lower store keeps an mtime while it writes to an object for
// itself): the union presents what the layer's stat answers, by node and
// through an open fd, for files and directories.
class FixedMtimeHooks : public LayerHooks {
 public:
  Result<struct statx> stat(int fd) override {
    auto stx = LayerHooks::stat(fd);
    if (stx.ok()) stx->stx_mtime = {1234, 5, 0};
    return stx;
  }
};

TEST_F(UnionTest, AttributesAreWhatTheLayersStatAnswers) {
  FixedMtimeHooks hooks;
  for (const char* strategy : {"none", "A", "B", "C", "auto"}) {
    SCOPED_TRACE(strategy);
    mount(strategy, &hooks);
    auto b = fs_->lookup(kRootNode, "b");
    ASSERT_TRUE(b.ok()) << b.error().describe();
    auto x = fs_->lookup(b->node, "x");
    ASSERT_TRUE(x.ok()) << x.error().describe();
    for (const struct stat& st : {b->attr, x->attr, *fs_->getattr(b->node), *fs_->getattr(x->node)}) {
      EXPECT_EQ(st.st_mtim.tv_sec, 1234);
      EXPECT_EQ(st.st_mtim.tv_nsec, 5);
      EXPECT_EQ(st.st_ctim.tv_sec, 1234) << "a read-only layer's ctime is its mtime";
    }
    OpenDetails det;
    auto fd = fs_->open(x->node, O_RDONLY, &det);
    ASSERT_TRUE(fd.ok()) << fd.error().describe();
    auto st = fs_->fgetattr(x->node, fd->get(), det);
    ASSERT_TRUE(st.ok()) << st.error().describe();
    EXPECT_EQ(st->st_mtim.tv_sec, 1234);
    OpenDetails ddet;
    auto dfd = fs_->opendir(b->node, &ddet);
    ASSERT_TRUE(dfd.ok()) << dfd.error().describe();
    st = fs_->fgetattr(b->node, dfd->get(), ddet);
    ASSERT_TRUE(st.ok()) << st.error().describe();
    EXPECT_EQ(st->st_mtim.tv_sec, 1234);
    // Copy-up keeps the mtime the union presented.
    auto w = fs_->open(x->node, O_WRONLY, &det);
    ASSERT_TRUE(w.ok()) << w.error().describe();
    struct stat up;
    ASSERT_EQ(::stat((tmp_ / "upper/b/x").c_str(), &up), 0);
    EXPECT_EQ(up.st_mtim.tv_sec, 1234);
    fs_.reset();
    std::filesystem::remove_all(tmp_ / "upper/b");
  }
}

// A lower layer whose owner's fetches can be held at a gate (a slow server),
// and whose placeholders can be declared unfilled.
class GatedHooks : public LayerHooks {
 public:
  Status before_open(const std::string&) override { return pass(hold_open, in_open); }
  Status before_dir(const std::string&) override { return pass(hold_dir, in_dir); }
  bool content_ready(uint64_t ino) override {
    std::lock_guard l(mu);
    return !pending.count(ino);
  }
  // Waits (bounded) until a caller is held at the gate of `counter`.
  bool wait_entered(const int& counter) {
    std::unique_lock l(mu);
    return cv.wait_for(l, std::chrono::seconds(10), [&] { return counter > 0; });
  }
  void release() {
    std::lock_guard l(mu);
    hold_open = hold_dir = false;
    cv.notify_all();
  }

  std::mutex mu;
  std::condition_variable cv;
  bool hold_open = false, hold_dir = false;
  int in_open = 0, in_dir = 0;
  std::set<uint64_t> pending;

 private:
  Status pass(const bool& hold, int& entered) {
    std::unique_lock l(mu);
    if (!hold) return {};
    entered++;
    cv.notify_all();
    cv.wait(l, [&] { return !hold; });
    return {};
  }
};

TEST_F(UnionTest, CopyUpFetchesContentWithoutHoldingTheUnionLock) {
  GatedHooks hooks;
  mount("auto", &hooks);
  NodeId a = lookup(kRootNode, "a");
  NodeId src = lookup(a, "src.c");  // lower only: a write copies it up
  {
    std::lock_guard l(hooks.mu);
    hooks.hold_open = true;
  }
  std::thread writer([&] { EXPECT_TRUE(fs_->open(src, O_RDWR).ok()); });
  ASSERT_TRUE(hooks.wait_entered(hooks.in_open));
  // While the copy-up waits for the server, other requests go on.
  auto other = std::async(std::launch::async, [&] { return fs_->getattr(a).ok(); });
  EXPECT_EQ(other.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  hooks.release();
  writer.join();
  EXPECT_TRUE(other.get());
  EXPECT_EQ(read(src), "lower src");
}

TEST_F(UnionTest, UnderBAnEstaleWaitsOnlyForChangesThatHappen) {
  GatedHooks hooks;
  mount("B", &hooks);
  NodeId a = lookup(kRootNode, "a");
  NodeId added = lookup(a, "new.c");
  {
    std::lock_guard l(hooks.mu);
    hooks.hold_dir = true;
  }
  // A listing in flight (a slow server) is no change of the layer...
  std::thread lister([&] { (void)fs_->lookup(a, "BUCK"); });
  ASSERT_TRUE(hooks.wait_entered(hooks.in_dir));
  // ...so an ESTALE nobody announced comes back at once, not after it.
  replace_file(tmp_ / "cl/a/new.c", "replaced behind the union");
  auto st = std::async(std::launch::async, [&] { return fs_->getattr(added).err(); });
  EXPECT_EQ(st.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  hooks.release();
  lister.join();
  EXPECT_EQ(st.get(), ESTALE);
  EXPECT_EQ(fs_->stats().change_races.load(), 0u);
}

// A directory's reload runs beside its parent's (shared lock, one directory
// lock each). The parent's reload re-reads the child directory's layers;
// while it does, the child directory must keep every layer it is in: a reload
// of the child that read its layers half-way through would list only the
// upper part (lower-only names ENOENT) and leave its merged subdirectories
// without their lower layer. Under A every reload here is triggered by an
// upper directory's mtime, nothing else changes: every lookup must succeed.
TEST_F(UnionTest, ReloadsOfADirectoryAndItsParentSideBySideKeepEveryLayer) {
  for (int i = 0; i < 200; ++i) std::filesystem::create_directories(tmp_ / ("upper/r" + std::to_string(i)));
  for (int i = 0; i < 200; ++i) write_file(tmp_ / ("lower/s" + std::to_string(i) + "/f"), "f");
  for (int k = 0; k < 8; ++k) {
    write_file(tmp_ / ("lower/apps/d" + std::to_string(k) + "/f"), "lower f");
    std::filesystem::create_directories(tmp_ / ("upper/apps/d" + std::to_string(k)));
  }
  write_file(tmp_ / "lower/apps/lower_only/f", "lower f");
  mount("A");
  NodeId apps = lookup(kRootNode, "apps");
  auto touch = [&](const std::string& dir, long ns) {
    const struct timespec ts[2] = {{0, UTIME_OMIT}, {1000000, ns}};
    ::utimensat(AT_FDCWD, (tmp_ / dir).c_str(), ts, 0);
  };
  std::atomic<bool> stop{false};
  std::thread parent_reloads([&] {
    for (long i = 0; !stop; ++i) {
      touch("upper", i % 1000000);
      (void)fs_->lookup(kRootNode, "apps");
    }
  });
  std::vector<std::string> failures;
  for (long i = 0; i < 3000 && failures.size() < 5; ++i) {
    touch("upper/apps", i);
    const std::string d = "d" + std::to_string(i % 8);
    for (const std::string& name : {d, std::string("lower_only")}) {
      auto e = fs_->lookup(apps, name);
      if (!e.ok()) {
        failures.push_back("apps/" + name + ": " + e.error().describe());
        continue;
      }
      if (auto f = fs_->lookup(e->node, "f"); !f.ok()) failures.push_back("apps/" + name + "/f: " + f.error().describe());
    }
  }
  stop = true;
  parent_reloads.join();
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed lookups, first: " << failures.front();
}

TEST_F(UnionTest, UnlinkFailsRatherThanSkipAWhiteoutItCannotCheck) {
  mount("none");
  write_file(tmp_ / "upper/a/src.c", "upper src");
  NodeId a = lookup(kRootNode, "a");
  lookup(a, "src.c");
  // The lower directory is replaced behind the union: its handle is stale.
  write_file(tmp_ / "lower/a.new/src.c", "lower src");
  std::filesystem::rename(tmp_ / "lower/a", tmp_ / "lower/a.old");
  std::filesystem::rename(tmp_ / "lower/a.new", tmp_ / "lower/a");
  std::filesystem::remove_all(tmp_ / "lower/a.old");
  EXPECT_EQ(fs_->unlink(a, "src.c").err(), ESTALE);
  EXPECT_TRUE(std::filesystem::exists(tmp_ / "upper/a/src.c")) << "nothing changes when a layer cannot be read";
}

TEST_F(UnionTest, AnOpenNeverServesAPlaceholderItsOwnerNeverFilled) {
  GatedHooks hooks;
  mount("A", &hooks);
  NodeId src = lookup(lookup(kRootNode, "a"), "src.c");
  struct stat st {};
  ASSERT_EQ(::stat((tmp_ / "lower/a/src.c").c_str(), &st), 0);
  {
    std::lock_guard l(hooks.mu);
    hooks.pending.insert(st.st_ino);  // superseded before its bytes came
  }
  EXPECT_EQ(fs_->open(src, O_RDONLY).err(), ESTALE);
  EXPECT_EQ(fs_->open(src, O_RDWR).err(), ESTALE) << "nor copies it up";
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "upper/a/src.c"));
}

// A lower layer whose owner cannot fetch: the error reaches the operation
// that needed the data, nothing empty is cached, and it recovers.
class FailingHooks : public LayerHooks {
 public:
  int err = 0;
  Status before_dir(const std::string&) override {
    if (err) return Error::from_errno(err, "fetch failed");
    return {};
  }
};

TEST(UnionHooksTest, FetchFailuresSurfaceAndNothingEmptyIsCached) {
  testing::TempDir tmp;
  for (auto d : {"upper", "lower/a"}) std::filesystem::create_directories(tmp / d);
  write_file(tmp / "lower/a/f", "f");
  FailingHooks hooks;
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::move(*Layer::open("upper", tmp / "upper", true)));
  layers.push_back(std::move(*Layer::open("lower", tmp / "lower", false, &hooks)));
  StrategySet set;
  StrategySlot slot(set.find("none"));
  UnionFs fs(std::move(layers), slot);
  ASSERT_TRUE(fs.init().ok());
  hooks.err = ETIMEDOUT;
  EXPECT_EQ(fs.lookup(kRootNode, "a").err(), ETIMEDOUT);
  hooks.err = EIO;
  EXPECT_EQ(fs.opendir(kRootNode).err(), EIO);
  hooks.err = 0;
  auto a = fs.lookup(kRootNode, "a");
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(fs.lookup(a->node, "f").ok());
}

TEST(HandleCacheTest, HitsMissesAndBound) {
  HandleCache c(2);
  testing::TempDir d;
  int fd = ::open(d.path().c_str(), O_RDONLY | O_DIRECTORY);
  auto h = FileHandle::of(fd, "");
  ASSERT_TRUE(h.ok());
  Identity i1{1, 2, 3}, i2{4, 5, 6}, i3{7, 8, 9};
  EXPECT_FALSE(c.get(i1).has_value());
  c.put(i1, *h);
  auto hit = c.get(i1);
  ASSERT_TRUE(hit.has_value());
  EXPECT_TRUE(*hit == *h);
  c.put(i2, *h);
  c.put(i3, *h);  // over capacity: cleared, then inserted
  EXPECT_EQ(c.size(), 1u);
  EXPECT_EQ(c.stats().hits.load(), 1u);
  EXPECT_EQ(c.stats().misses.load(), 1u);
  auto opened = h->open(fd, O_RDONLY | O_DIRECTORY);
  EXPECT_TRUE(opened.ok());
  ::close(fd);
}

// A removed file's handle while other files are created beside it: the
// kernel may hand the freed inode number to a new file, and while that inode
// is being set up (I_CREATING) open_by_handle_at fails with ENOMEM, not
// ESTALE (ext4 on Linux 6.x: iget_locked returns NULL for it). A strategy
// that recovers on ESTALE must see ESTALE.
TEST(FileHandleTest, ARemovedFilesHandleIsStaleWhileItsInodeNumberIsReused) {
  testing::TempDir d;
  int mount_fd = ::open(d.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(mount_fd, 0);
  std::atomic<bool> stop{false};
  std::vector<std::thread> creators;
  for (int t = 0; t < 2; ++t)
    creators.emplace_back([&, t] {
      for (long i = 0; !stop; ++i) {
        const std::string p = d / ("c" + std::to_string(t) + "_" + std::to_string(i % 64));
        int fd = ::open(p.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd >= 0) ::close(fd);
        ::unlink(p.c_str());
      }
    });
  std::map<int, int> errors;  // errno -> count
  const std::string victim = d / "victim";
  for (int round = 0; round < 2000; ++round) {
    int fd = ::open(victim.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    auto h = FileHandle::of(fd, "");
    ::close(fd);
    ASSERT_TRUE(h.ok());
    ::unlink(victim.c_str());
    for (int k = 0; k < 20; ++k) {
      auto opened = h->open(mount_fd, O_RDONLY);
      errors[opened.ok() ? 0 : opened.err()]++;
    }
  }
  stop = true;
  for (auto& t : creators) t.join();
  ::close(mount_fd);
  EXPECT_EQ(errors[ESTALE], 2000 * 20) << "ENOMEM " << errors[ENOMEM] << ", opened " << errors[0];
}

TEST(StrategySetTest, NamesAreCaseInsensitiveAndUnknownIsNull) {
  StrategySet s;
  EXPECT_EQ(s.find("none")->name(), "none");
  EXPECT_EQ(s.find("a")->name(), "A");
  EXPECT_EQ(s.find("AUTO")->name(), "auto");
  EXPECT_EQ(s.find("D"), nullptr);
  EXPECT_FALSE(s.find("none")->revalidates());
  EXPECT_TRUE(s.find("auto")->invalidates());
}

}  // namespace
}  // namespace antares::fs
