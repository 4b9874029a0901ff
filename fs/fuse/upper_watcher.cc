// inotify-based watch of the upper layer; see upper_watcher.h.
#include "fs/fuse/upper_watcher.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstring>

#include "common/log.h"

namespace antares::fs {

namespace {
constexpr uint32_t kMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB |
                           IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK;
}

Status UpperWatcher::start(std::string upper_root, LayerChangeListener listener) {
  root_ = std::move(upper_root);
  listener_ = std::move(listener);
  int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, "inotify_init1");
  inotify_.reset(fd);
  int ev = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ev < 0) return Error::from_errno(errno, "eventfd");
  wake_.reset(ev);
  thread_ = std::thread([this] { run(); });
  return {};
}

void UpperWatcher::stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  thread_.join();
}

size_t UpperWatcher::watches() const {
  std::lock_guard lk(mu_);
  return by_wd_.size();
}

void UpperWatcher::watch(const std::string& rel) {
  if (!inotify_.valid()) return;
  std::lock_guard lk(mu_);
  if (by_path_.count(rel)) return;
  std::string abs = rel.empty() ? root_ : root_ + "/" + rel;
  int wd = ::inotify_add_watch(inotify_.get(), abs.c_str(), kMask);
  if (wd < 0) {
    if (!warned_) log::warn("upper_watch_failed", {{"path", abs}, {"error", std::strerror(errno)}});
    warned_ = true;
    return;
  }
  // The same directory under a new name (renamed) keeps its wd: re-point it.
  if (auto old = by_wd_.find(wd); old != by_wd_.end()) by_path_.erase(old->second);
  by_wd_[wd] = rel;
  by_path_[rel] = wd;
}

void UpperWatcher::run() {
  while (!stopping_) {
    struct pollfd fds[2] = {{inotify_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
    if (stopping_) break;
    drain();
  }
}

void UpperWatcher::drain() {
  if (!inotify_.valid()) return;
  // One reader at a time, so events are dispatched in the order they happened.
  std::lock_guard dl(drain_mu_);
  alignas(struct inotify_event) char buf[16384];
  for (;;) {
    ssize_t n = ::read(inotify_.get(), buf, sizeof buf);
    if (n <= 0) return;  // EAGAIN: nothing pending
    std::vector<LayerChange> changes;
    {
      std::lock_guard lk(mu_);
      for (ssize_t off = 0; off < n;) {
        auto* e = reinterpret_cast<struct inotify_event*>(buf + off);
        off += ssize_t(sizeof(struct inotify_event) + e->len);
        auto it = by_wd_.find(e->wd);
        if (it == by_wd_.end()) continue;
        if (e->mask & IN_IGNORED) {
          by_path_.erase(it->second);
          by_wd_.erase(it);
          continue;
        }
        if (e->len == 0) continue;  // *_SELF: the parent's watch reports the name
        std::string name(e->name);
        if (name.rfind(".antares-", 0) == 0) continue;  // our own temporaries
        std::string path = it->second.empty() ? name : it->second + "/" + name;
        LayerChange::Kind kind = LayerChange::Kind::replaced;
        if (e->mask & (IN_DELETE | IN_MOVED_FROM)) kind = LayerChange::Kind::removed;
        else if (e->mask & IN_CREATE) kind = LayerChange::Kind::added;
        changes.push_back({kind, std::move(path)});
      }
    }
    if (!changes.empty()) {
      events_ += changes.size();
      listener_.end(changes);
    }
  }
}

}  // namespace antares::fs
