#include "repro/event.h"

#include <cerrno>

namespace antares::repro {

namespace {
constexpr const char* kOpNames[kOpCount] = {"readdir", "read", "open", "lstat", "stat",
                                            "write",   "rename", "mkdir", "unlink"};
}

const char* op_name(Op op) { return kOpNames[static_cast<int>(op)]; }

bool parse_op(std::string_view s, Op* out) {
  for (int i = 0; i < kOpCount; ++i)
    if (s == kOpNames[i]) {
      *out = static_cast<Op>(i);
      return true;
    }
  return false;
}

void Recorder::add(OpEvent e) {
  ops_.fetch_add(1, std::memory_order_relaxed);
  if (e.err) errors_.fetch_add(1, std::memory_order_relaxed);
  if (e.err == ESTALE) estale_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  events_.push_back(std::move(e));
}

std::vector<OpEvent> Recorder::take() {
  std::lock_guard lock(mu_);
  std::vector<OpEvent> out;
  out.swap(events_);
  return out;
}

bool Recorder::keep_content(const Oid& oid, const std::string& bytes) {
  std::lock_guard lock(mu_);
  if (contents_.count(oid)) return true;
  if (content_bytes_ + bytes.size() > kMaxContentBytes) return false;
  content_bytes_ += bytes.size();
  contents_.emplace(oid, bytes);
  return true;
}

}  // namespace antares::repro
