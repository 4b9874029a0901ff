#include "repro/path_ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace antares::repro {

void PathOps::record(Op op, const std::string& rel, int64_t t0, int err, uint64_t bytes, std::optional<Oid> oid,
                     std::string head) const {
  if (!rec_) return;
  OpEvent e;
  e.t_us = t0;
  e.end_us = wall_us();
  e.op = op;
  e.err = err;
  e.bytes = bytes;
  e.path = rel;
  e.oid = oid;
  e.head = std::move(head);
  rec_->add(std::move(e));
}

std::optional<std::vector<DirEntry>> PathOps::list(const std::string& rel) const {
  int64_t t0 = wall_us();
  std::string dir = full(rel);
  DIR* d = opendir(dir.c_str());
  if (!d) {
    record(Op::readdir, rel, t0, errno, 0);
    return std::nullopt;
  }
  std::vector<DirEntry> out;
  int err = 0;
  while (true) {
    errno = 0;
    struct dirent* de = readdir(d);
    if (!de) {
      err = errno;
      break;
    }
    std::string name = de->d_name;
    if (name == "." || name == "..") continue;
    unsigned char type = de->d_type;
    if (type == DT_UNKNOWN) {
      struct stat st;
      if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : S_ISLNK(st.st_mode) ? DT_LNK : DT_UNKNOWN;
    }
    out.push_back({std::move(name), type});
  }
  closedir(d);
  record(Op::readdir, rel, t0, err, out.size());
  if (err) return std::nullopt;
  return out;
}

std::optional<std::string> PathOps::read(const std::string& rel) const {
  int64_t t0 = wall_us();
  int fd = ::open(full(rel).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    record(Op::open, rel, t0, errno, 0);
    return std::nullopt;
  }
  std::string data;
  char buf[65536];
  int err = 0;
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (err) {
    record(Op::read, rel, t0, err, data.size());
    return std::nullopt;
  }
  Oid oid = git_blob_oid(data);
  std::string head;
  if (rec_ && !rec_->keep_content(oid, data)) head = data.substr(0, kHeadBytes);
  record(Op::read, rel, t0, 0, data.size(), oid, std::move(head));
  return data;
}

int PathOps::lstat(const std::string& rel, struct stat* st) const {
  struct stat local;
  int64_t t0 = wall_us();
  int err = ::lstat(full(rel).c_str(), st ? st : &local) == 0 ? 0 : errno;
  record(Op::lstat, rel, t0, err, 0);
  return err;
}

int PathOps::stat(const std::string& rel, struct stat* st) const {
  struct stat local;
  int64_t t0 = wall_us();
  int err = ::stat(full(rel).c_str(), st ? st : &local) == 0 ? 0 : errno;
  record(Op::stat, rel, t0, err, 0);
  return err;
}

int PathOps::write(const std::string& rel, const std::string& content) const {
  int64_t t0 = wall_us();
  int fd = ::open(full(rel).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int err = errno;
    record(Op::write, rel, t0, err, 0);
    return err;
  }
  size_t off = 0;
  int err = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd) != 0 && !err) err = errno;
  record(Op::write, rel, t0, err, off);
  return err;
}

int PathOps::rename(const std::string& from, const std::string& to) const {
  int64_t t0 = wall_us();
  int err = ::rename(full(from).c_str(), full(to).c_str()) == 0 ? 0 : errno;
  record(Op::rename, to, t0, err, 0);
  return err;
}

int PathOps::mkdirs(const std::string& rel) const {
  size_t pos = 0;
  while (pos <= rel.size()) {
    size_t slash = rel.find('/', pos);
    if (slash == std::string::npos) slash = rel.size();
    std::string prefix = rel.substr(0, slash);
    int64_t t0 = wall_us();
    if (::mkdir(full(prefix).c_str(), 0755) == 0) {
      record(Op::mkdir, prefix, t0, 0, 0);
    } else if (errno != EEXIST) {
      int err = errno;
      record(Op::mkdir, prefix, t0, err, 0);
      return err;
    }
    pos = slash + 1;
  }
  return 0;
}

}  // namespace antares::repro
