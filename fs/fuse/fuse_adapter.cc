// FUSE low-level callbacks over UnionFs. Each callback replies exactly once;
// open files and directory snapshots live in fuse_file_info::fh.
#include "fs/fuse/fuse_adapter.h"

#include <fcntl.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include "common/log.h"

namespace antares::fs {

namespace {

// Every callback starts here: the union learns whose request this thread
// serves (the kernel retries an ESTALE in the caller's task).
FuseAdapter& self(fuse_req_t req) {
  UnionFs::set_request_caller(fuse_req_ctx(req)->pid);
  return *static_cast<FuseAdapter*>(fuse_req_userdata(req));
}
// For requests that use a node's backing object.
FuseAdapter& prepared(fuse_req_t req) {
  FuseAdapter& a = self(req);
  a.before_request();
  return a;
}
NodeId node(fuse_ino_t ino) { return NodeId{ino}; }

Caller caller(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  Caller c{ctx->uid, ctx->gid, ctx->umask, nullptr};
  c.in_group = [req](gid_t g) {
    gid_t groups[256];
    int n = fuse_req_getgroups(req, 256, groups);
    for (int i = 0; i < n && i < 256; ++i)
      if (groups[i] == g) return true;
    return false;
  };
  return c;
}

// An open directory: its listing, taken at the first READDIR (offset 0) and
// served from this snapshot for the rest of that pass.
struct DirHandle {
  UniqueFd fd;  // O_PATH, tracked: answers fstat if the directory is removed while open
  DirSnapshots::Listing entries;  // from the last READDIR at offset 0
};

// What fuse_file_info::fh points to for an open file.
struct OpenFile {
  UniqueFd fd;
  OpenDetails details;
};
OpenFile& file_of(const fuse_file_info* fi) { return *reinterpret_cast<OpenFile*>(fi->fh); }
int fd_of(const fuse_file_info* fi) { return file_of(fi).fd.get(); }

void reply_entry(fuse_req_t req, FuseOp op, const Result<Entry>& e) {
  auto& a = self(req);
  if (!e.ok()) return a.reply_error(req, op, e.error());
  fuse_entry_param ep;
  a.fill_entry(*e, &ep);
  a.count(op, 0);
  fuse_reply_entry(req, &ep);
}

void reply_status(fuse_req_t req, FuseOp op, const Status& st) {
  auto& a = self(req);
  if (!st.ok()) return a.reply_error(req, op, st.error());
  a.count(op, 0);
  fuse_reply_err(req, 0);
}

void reply_attr(fuse_req_t req, FuseOp op, const Result<struct stat>& st) {
  auto& a = self(req);
  if (!st.ok()) return a.reply_error(req, op, st.error());
  a.count(op, 0);
  fuse_reply_attr(req, &*st, a.timeouts().attr.load());
}

void op_init(void* userdata, fuse_conn_info* conn) { static_cast<FuseAdapter*>(userdata)->init(conn); }

}  // namespace

void FuseAdapter::init(fuse_conn_info* conn) {
  // READDIRPLUS, adaptive (the kernel asks for it while lookups follow its
  // listings): a walk that lstats what it lists then sends one request per
  // directory chunk instead of a LOOKUP per entry.
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_SPLICE_READ) conn->want |= FUSE_CAP_SPLICE_READ;
  // The caller's umask arrives with each create and is applied by the union
  // (and only it): the daemon's own umask must not mask modes a second time.
  if (conn->capable & FUSE_CAP_DONT_MASK) conn->want |= FUSE_CAP_DONT_MASK;
  auto decide = [&](KernelOpen& k, uint64_t cap, const char* unsupported) {
    if (!k.wanted) return false;
    (conn->capable & cap ? k.granted : k.declined) = true;
    if (k.declined) log::warn(unsupported, {{"fallback", "daemon"}});
    return k.on();
  };
  decide(kernel_dirs_, FUSE_CAP_NO_OPENDIR_SUPPORT, "dir_open_kernel_unsupported");
  if (decide(kernel_files_, FUSE_CAP_NO_OPEN_SUPPORT, "file_open_kernel_unsupported")) {
    // An O_TRUNC the kernel keeps to itself would never reach the file.
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
    fs_.set_unopened_files(true);
  }
}

namespace {

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto& a = prepared(req);
  auto e = a.fs().lookup(node(parent), name);
  if (!e.ok() && e.err() == ENOENT) {
    // A negative entry the kernel may cache for the entry timeout.
    fuse_entry_param ep;
    std::memset(&ep, 0, sizeof ep);
    ep.entry_timeout = a.timeouts().entry.load();
    a.count(FuseOp::lookup, ENOENT);
    fuse_reply_entry(req, &ep);
    return;
  }
  reply_entry(req, FuseOp::lookup, e);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  self(req).fs().forget(node(ino), nlookup);
  self(req).count(FuseOp::forget, 0);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) self(req).fs().forget(node(forgets[i].ino), forgets[i].nlookup);
  self(req).count(FuseOp::forget, 0);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  // fstat of an open file: the object it opened, whatever its name holds now.
  if (fi && fi->fh) return reply_attr(req, FuseOp::getattr, self(req).fs().fgetattr(node(ino), fd_of(fi), file_of(fi).details));
  reply_attr(req, FuseOp::getattr, prepared(req).fs().getattr(node(ino)));
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  int fd = fi && fi->fh ? fd_of(fi) : -1;
  reply_attr(req, FuseOp::setattr, self(req).fs().setattr(node(ino), *attr, to_set, fd));
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  auto& a = prepared(req);
  auto t = a.fs().readlink(node(ino));
  if (!t.ok()) return a.reply_error(req, FuseOp::readlink, t.error());
  a.count(FuseOp::readlink, 0);
  fuse_reply_readlink(req, t->c_str());
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  reply_entry(req, FuseOp::mknod, self(req).fs().mknod(node(parent), name, mode, rdev, caller(req)));
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  reply_entry(req, FuseOp::mkdir, self(req).fs().mkdir(node(parent), name, mode, caller(req)));
}

void op_symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  reply_entry(req, FuseOp::symlink, self(req).fs().symlink(node(parent), name, link, caller(req)));
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char* name) {
  reply_entry(req, FuseOp::link, self(req).fs().link(node(ino), node(parent), name));
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, FuseOp::unlink, self(req).fs().unlink(node(parent), name));
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, FuseOp::rmdir, self(req).fs().rmdir(node(parent), name));
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname,
               unsigned flags) {
  reply_status(req, FuseOp::rename, self(req).fs().rename(node(parent), name, node(newparent), newname, flags));
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (self(req).kernel_files().on()) {
    // As for directories: the kernel opens files itself from now on.
    self(req).count(FuseOp::open, ENOSYS);
    fuse_reply_err(req, ENOSYS);
    return;
  }
  auto& a = prepared(req);
  auto f = std::make_unique<OpenFile>();
  auto fd = a.fs().open(node(ino), fi->flags, &f->details);
  if (!fd.ok()) return a.reply_error(req, FuseOp::open, fd.error());
  f->fd = std::move(*fd);
  // A node's pages only ever come from its one object (union_fs.h), so the
  // kernel may keep them across opens wherever it is told of changes.
  fi->keep_cache = a.timeouts().keep_cache.load() && !(fi->flags & (O_WRONLY | O_RDWR));
  fi->noflush = 1;
  fi->fh = reinterpret_cast<uint64_t>(f.get());
  a.count(FuseOp::open, 0);
  a.fs().track_open(node(ino), f->fd.get(), f->details);
  if (fuse_reply_open(req, fi) == 0) f.release();
  else a.fs().track_close(node(ino), f->fd.get());
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  auto& a = self(req);
  auto r = a.fs().create(node(parent), name, mode, fi->flags, caller(req));
  if (!r.ok()) return a.reply_error(req, FuseOp::create, r.error());
  fuse_entry_param ep;
  a.fill_entry(r->first, &ep);
  auto f = std::make_unique<OpenFile>();
  f->fd = std::move(r->second);
  fi->fh = reinterpret_cast<uint64_t>(f.get());
  fi->noflush = 1;
  a.count(FuseOp::create, 0);
  a.fs().track_open(r->first.node, f->fd.get(), f->details);
  if (fuse_reply_create(req, &ep, fi) == 0) f.release();
  else a.fs().track_close(r->first.node, f->fd.get());
}

// The fd an I/O request works on: its handle's, or for a file the kernel
// opened itself (fh 0) one opened for this request into `owned`.
Result<int> io_fd(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, int flags, UniqueFd* owned) {
  if (fi->fh) return fd_of(fi);
  auto fd = prepared(req).fs().open_unopened(node(ino), flags);
  if (!fd.ok()) return fd.error();
  *owned = std::move(*fd);
  return owned->get();
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  UniqueFd owned;
  auto fd = io_fd(req, ino, fi, O_RDONLY, &owned);
  if (!fd.ok()) return self(req).reply_error(req, FuseOp::read, fd.error());
  fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
  buf.buf[0].flags = fuse_buf_flags(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  buf.buf[0].fd = *fd;
  buf.buf[0].pos = off;
  self(req).count(FuseOp::read, 0);
  fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char* data, size_t size, off_t off, fuse_file_info* fi) {
  auto& a = self(req);
  UniqueFd owned;
  auto fd = io_fd(req, ino, fi, O_WRONLY, &owned);
  if (!fd.ok()) return a.reply_error(req, FuseOp::write, fd.error());
  ssize_t n = ::pwrite(*fd, data, size, off);
  if (n < 0) return a.reply_error(req, FuseOp::write, Error::from_errno(errno, "write"));
  a.count(FuseOp::write, 0);
  fuse_reply_write(req, size_t(n));
}

void op_flush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  // Opened by the kernel: nothing of ours to flush, and ENOSYS stops FLUSH
  // for the connection (handles of ours say noflush).
  int err = fi->fh ? 0 : ENOSYS;
  self(req).count(FuseOp::flush, err);
  fuse_reply_err(req, err);
}

void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (!fi->fh) {  // the open answered ENOSYS
    self(req).count(FuseOp::release, 0);
    fuse_reply_err(req, 0);
    return;
  }
  self(req).fs().track_close(node(ino), fd_of(fi));
  delete &file_of(fi);
  self(req).count(FuseOp::release, 0);
  fuse_reply_err(req, 0);
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  UniqueFd owned;
  auto fd = io_fd(req, ino, fi, O_RDONLY, &owned);
  if (!fd.ok()) return self(req).reply_error(req, FuseOp::fsync, fd.error());
  int r = datasync ? ::fdatasync(*fd) : ::fsync(*fd);
  if (r != 0) return self(req).reply_error(req, FuseOp::fsync, Error::from_errno(errno, "fsync"));
  self(req).count(FuseOp::fsync, 0);
  fuse_reply_err(req, 0);
}

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (self(req).kernel_dirs().on()) {
    // "Open it yourself, from now on": the kernel sends no more OPENDIR or
    // RELEASEDIR on this connection; READDIR then comes without a handle.
    self(req).count(FuseOp::opendir, ENOSYS);
    fuse_reply_err(req, ENOSYS);
    return;
  }
  auto& a = prepared(req);
  OpenDetails details;
  auto fd = a.fs().opendir(node(ino), &details);
  if (!fd.ok()) return a.reply_error(req, FuseOp::opendir, fd.error());
  auto* h = new DirHandle;
  h->fd = std::move(*fd);
  a.fs().track_open(node(ino), h->fd.get(), details);
  fi->fh = reinterpret_cast<uint64_t>(h);
  // Where every change is invalidated, the kernel may keep the listing
  // across opens (notify_inval_inode of the directory drops it).
  fi->cache_readdir = a.timeouts().keep_cache.load();
  fi->keep_cache = fi->cache_readdir;
  a.count(FuseOp::opendir, 0);
  if (fuse_reply_open(req, fi) != 0) {
    a.fs().track_close(node(ino), h->fd.get());
    delete h;
  }
}

// READDIR and READDIRPLUS: entries from offset `off` of the listing the
// read started with (the handle's, or without one the reader's snapshot), as
// many as fit in `size`.
void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, bool plus) {
  const FuseOp op = plus ? FuseOp::readdirplus : FuseOp::readdir;
  auto* h = fi->fh ? reinterpret_cast<DirHandle*>(fi->fh) : nullptr;
  DirSnapshots& snapshots = self(req).dir_snapshots();
  const pid_t caller = fuse_req_ctx(req)->pid;
  DirSnapshots::Listing listing;
  if (off != 0) listing = h ? h->entries : snapshots.find(ino, caller);
  auto& a = !listing || plus ? prepared(req) : self(req);
  if (!listing) {
    // A read starts (or one whose snapshot was forgotten goes on: it meets
    // what a fresh listing has at its offset).
    auto entries = a.fs().readdir(node(ino));
    if (!entries.ok()) return a.reply_error(req, op, entries.error());
    listing = std::make_shared<const std::vector<DirEntry>>(std::move(*entries));
    if (h) h->entries = listing;
    else snapshots.start(ino, caller, listing);
  }
  if (!h && size_t(off) >= listing->size()) snapshots.finish(ino, caller);
  std::string buf(size, '\0');
  size_t used = 0;
  for (size_t i = size_t(off); i < listing->size(); ++i) {
    const DirEntry& e = (*listing)[i];
    size_t len;
    if (!plus) {
      struct stat st {};
      st.st_ino = e.ino;
      st.st_mode = e.type;
      len = fuse_add_direntry(req, buf.data() + used, size - used, e.name.c_str(), &st, off_t(i + 1));
    } else {
      // The kernel takes a lookup reference for every entry of the reply
      // that names a node, so a name is looked up only once it is sure to fit.
      if (fuse_add_direntry_plus(req, nullptr, 0, e.name.c_str(), nullptr, 0) > size - used) break;
      fuse_entry_param ep;
      std::memset(&ep, 0, sizeof ep);
      ep.attr.st_ino = e.ino;
      ep.attr.st_mode = e.type;
      if (e.name != "." && e.name != "..") {
        // A name that does not resolve now (removed since the listing, or a
        // stale handle under `none`) goes out without a node: the kernel
        // then looks it up itself when asked, and meets what LOOKUP answers.
        if (auto r = a.fs().lookup(node(ino), e.name); r.ok()) a.fill_entry(*r, &ep);
      }
      len = fuse_add_direntry_plus(req, buf.data() + used, size - used, e.name.c_str(), &ep, off_t(i + 1));
    }
    if (len > size - used) break;
    used += len;
  }
  a.count(op, 0);
  fuse_reply_buf(req, buf.data(), used);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  list_dir(req, ino, size, off, fi, false);
}

void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  list_dir(req, ino, size, off, fi, true);
}

void op_releasedir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto* h = reinterpret_cast<DirHandle*>(fi->fh);
  self(req).fs().track_close(node(ino), h->fd.get());
  delete h;
  self(req).count(FuseOp::releasedir, 0);
  fuse_reply_err(req, 0);
}

void op_fsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
  self(req).count(FuseOp::fsyncdir, 0);
  fuse_reply_err(req, 0);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  auto& a = self(req);
  auto sv = a.fs().statfs();
  if (!sv.ok()) return a.reply_error(req, FuseOp::statfs, sv.error());
  a.count(FuseOp::statfs, 0);
  fuse_reply_statfs(req, &*sv);
}

void reply_xattr_value(fuse_req_t req, FuseOp op, const Result<std::string>& v, size_t size) {
  auto& a = self(req);
  if (!v.ok()) return a.reply_error(req, op, v.error());
  if (size == 0) {
    a.count(op, 0);
    fuse_reply_xattr(req, v->size());
  } else if (v->size() > size) {
    a.reply_error(req, op, Error::from_errno(ERANGE, "xattr buffer"));
  } else {
    a.count(op, 0);
    fuse_reply_buf(req, v->data(), v->size());
  }
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  reply_xattr_value(req, FuseOp::getxattr, self(req).fs().getxattr(node(ino), name), size);
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  reply_xattr_value(req, FuseOp::listxattr, self(req).fs().listxattr(node(ino)), size);
}

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
  reply_status(req, FuseOp::setxattr, self(req).fs().setxattr(node(ino), name, std::string(value, size), flags));
}

void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  reply_status(req, FuseOp::removexattr, self(req).fs().removexattr(node(ino), name));
}

void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  reply_status(req, FuseOp::access, prepared(req).fs().access(node(ino), mask));
}

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops o;
  std::memset(&o, 0, sizeof o);
  o.init = op_init;
  o.lookup = op_lookup;
  o.forget = op_forget;
  o.forget_multi = op_forget_multi;
  o.getattr = op_getattr;
  o.setattr = op_setattr;
  o.readlink = op_readlink;
  o.mknod = op_mknod;
  o.mkdir = op_mkdir;
  o.unlink = op_unlink;
  o.rmdir = op_rmdir;
  o.symlink = op_symlink;
  o.rename = op_rename;
  o.link = op_link;
  o.open = op_open;
  o.read = op_read;
  o.write = op_write;
  o.flush = op_flush;
  o.release = op_release;
  o.fsync = op_fsync;
  o.opendir = op_opendir;
  o.readdir = op_readdir;
  o.readdirplus = op_readdirplus;
  o.releasedir = op_releasedir;
  o.fsyncdir = op_fsyncdir;
  o.statfs = op_statfs;
  o.setxattr = op_setxattr;
  o.getxattr = op_getxattr;
  o.listxattr = op_listxattr;
  o.removexattr = op_removexattr;
  o.access = op_access;
  o.create = op_create;
  return o;
}

}  // namespace

const char* fuse_op_name(FuseOp op) {
  static const char* names[] = {"lookup",  "forget",   "getattr",    "setattr",  "readlink", "mknod",
                                "mkdir",   "unlink",   "rmdir",      "symlink",  "rename",   "link",
                                "open",    "read",     "write",      "flush",    "release",  "fsync",
                                "opendir", "readdir",  "releasedir", "fsyncdir", "statfs",   "setxattr",
                                "getxattr", "listxattr", "removexattr", "access", "create", "readdirplus"};
  static_assert(sizeof names / sizeof names[0] == size_t(FuseOp::kCount));
  return names[int(op)];
}

const fuse_lowlevel_ops& FuseAdapter::ops() {
  static const fuse_lowlevel_ops o = make_ops();
  return o;
}

void FuseAdapter::count(FuseOp op, int err) {
  if (err < 0 || err >= ReplyStats::kMaxErrno) err = EIO;
  stats_.replies[int(op)][err].fetch_add(1, std::memory_order_relaxed);
}

void FuseAdapter::reply_error(fuse_req_t req, FuseOp op, const Error& e) {
  int err = e.err;
  // Unknown failures become EIO; the raw errno (ESTALE above all) is kept otherwise.
  if (err <= 0 || err >= ReplyStats::kMaxErrno) err = EIO;
  count(op, err);
  if (err != ENOENT && err != EEXIST && err != ENODATA && err != ENOTEMPTY)
    log::debug("reply_error", {{"op", fuse_op_name(op)}, {"errno", std::to_string(err)}, {"error", e.describe()}});
  fuse_reply_err(req, err);
}

void FuseAdapter::fill_entry(const Entry& e, fuse_entry_param* out) const {
  std::memset(out, 0, sizeof *out);
  out->ino = raw(e.node);
  out->generation = 0;  // node ids are never reused
  out->attr = e.attr;
  out->attr_timeout = timeouts_.attr.load();
  out->entry_timeout = timeouts_.entry.load();
}

// --- Invalidator ------------------------------------------------------------

void Invalidator::start(fuse_session* se) {
  se_ = se;
  thread_ = std::thread([this] { run(); });
}

void Invalidator::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Invalidator::push(std::vector<KernelInvalidation> items) {
  if (items.empty()) return;
  {
    std::lock_guard lk(mu_);
    for (auto& i : items) queue_.push_back(std::move(i));
  }
  cv_.notify_all();
}

void Invalidator::run() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    KernelInvalidation inv = std::move(queue_.front());
    queue_.pop_front();
    lk.unlock();
    int r;
    if (inv.kind == KernelInvalidation::Kind::inode)
      r = fuse_lowlevel_notify_inval_inode(se_, raw(inv.node), 0, 0);
    else
      r = fuse_lowlevel_notify_inval_entry(se_, raw(inv.node), inv.name.c_str(), inv.name.size());
    // -ENOENT: the kernel no longer knows that inode or name; nothing to drop.
    (r == 0 || r == -ENOENT ? sent_ : failed_)++;
    lk.lock();
  }
}

}  // namespace antares::fs
