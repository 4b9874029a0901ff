#include "common/oid.h"

#include <openssl/evp.h>

#include <algorithm>
#include <stdexcept>

namespace antares {

std::string Oid::hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(40, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    s[2 * i] = kDigits[bytes[i] >> 4];
    s[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return s;
}

std::optional<Oid> Oid::from_hex(std::string_view hex) {
  if (hex.size() != 40) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Oid o;
  for (size_t i = 0; i < 20; ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    o.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return o;
}

GitHasher::GitHasher(std::string_view type, uint64_t size) : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha1(), nullptr) != 1)
    throw std::runtime_error("OpenSSL SHA-1 unavailable");
  std::string header(type);
  header += ' ';
  header += std::to_string(size);
  header.push_back('\0');
  update(header);
}

GitHasher::~GitHasher() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void GitHasher::update(std::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}

Oid GitHasher::finish() {
  Oid o;
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), o.bytes.data(), &len);
  return o;
}

Oid git_blob_oid(std::string_view content) {
  GitHasher h("blob", content.size());
  h.update(content);
  return h.finish();
}

Oid git_tree_oid(std::vector<TreeEntry> entries) {
  // git sorts tree entries by name, comparing a directory as "name/".
  auto key = [](const TreeEntry& e) { return e.is_dir ? e.name + '/' : e.name; };
  std::sort(entries.begin(), entries.end(),
            [&](const TreeEntry& a, const TreeEntry& b) { return key(a) < key(b); });
  std::string payload;
  for (const auto& e : entries) {
    payload += e.is_dir ? "40000 " : "100644 ";
    payload += e.name;
    payload.push_back('\0');
    payload.append(reinterpret_cast<const char*>(e.oid.bytes.data()), e.oid.bytes.size());
  }
  GitHasher h("tree", payload.size());
  h.update(payload);
  return h.finish();
}

}  // namespace antares
