// Git object ids: SHA-1 of "<type> <size>\0<payload>", computed exactly as git
// does for blobs and trees, so mock-mega's oids equal `git hash-object` and
// `git mktree`, and clients can verify what they fetched.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace antares {

struct Oid {
  std::array<uint8_t, 20> bytes{};

  std::string hex() const;
  static std::optional<Oid> from_hex(std::string_view hex);  // exactly 40 hex digits
  auto operator<=>(const Oid&) const = default;
};

struct OidHash {
  size_t operator()(const Oid& o) const noexcept {
    size_t h;
    static_assert(sizeof(h) <= sizeof(o.bytes));
    __builtin_memcpy(&h, o.bytes.data(), sizeof(h));
    return h;
  }
};

// Incremental SHA-1 (OpenSSL) of a git object whose payload size is known up
// front. Not thread-safe; one per computation.
class GitHasher {
 public:
  GitHasher(std::string_view type, uint64_t size);
  ~GitHasher();
  GitHasher(const GitHasher&) = delete;
  GitHasher& operator=(const GitHasher&) = delete;
  void update(std::string_view data);
  Oid finish();

 private:
  void* ctx_;  // EVP_MD_CTX*
};

Oid git_blob_oid(std::string_view content);

struct TreeEntry {
  std::string name;
  bool is_dir = false;
  Oid oid;
};

// The oid of a tree with these entries (any order; sorted here by git's rule:
// byte order with directory names compared as if they ended in '/').
Oid git_tree_oid(std::vector<TreeEntry> entries);

}  // namespace antares
