// The mock Mega repository: a seeded buck2-style tree, its git oids, open
// changelists, and the mutations that change it, with a log of every change.
//
// Not thread-safe: the server serialises all access under one mutex. Contents
// are not stored; a blob is a BlobSpec from which generate_content() rebuilds
// the exact bytes, and every blob ever served stays fetchable by its oid (as
// in git), so a client holding an old listing can still fetch old content.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/oid.h"
#include "common/result.h"
#include "common/rng.h"
#include "mock-mega/content.h"

namespace antares::mock {

enum class MutationKind : uint8_t { modify, replace, remove, add, rename, rename_dir, cl };
inline constexpr int kMutationKindCount = 7;
const char* mutation_kind_name(MutationKind k);  // "modify", ..., "delete" for remove
bool parse_mutation_kind(std::string_view s, MutationKind* out);

enum class ClAction : uint8_t { added, modified, deleted };
const char* cl_action_name(ClAction a);  // "new", "modified", "deleted"
bool parse_cl_action(std::string_view s, ClAction* out);

struct Entry {
  std::string name;
  bool is_dir = false;
  Oid oid;
  uint64_t size = 0;  // files only
};

struct ClEntry {
  std::string path;
  std::optional<Oid> sha;  // none for deleted entries
  ClAction action = ClAction::modified;
};

struct MutationRequest {
  MutationKind kind = MutationKind::modify;
  std::string path;
  std::string to;    // rename, rename_dir
  uint32_t cl = 0;   // cl
  // cl only: with a path, set that entry to this action ("remove" drops it from
  // the list); without a path, a seeded random change.
  std::string cl_action;
};

struct LogEntry {
  uint64_t id = 0;
  uint64_t version = 0;
  int64_t time_ms = 0;
  MutationKind kind = MutationKind::modify;
  std::string path;
  std::string to;              // renames
  uint32_t cl = 0;             // cl changes
  std::string cl_action;       // cl changes: new, modified, deleted, remove
  std::optional<Oid> old_oid;  // none when the path did not exist before
  std::optional<Oid> new_oid;  // none when it does not exist after
};

struct Weights {
  // Indexed by MutationKind.
  std::array<uint32_t, kMutationKindCount> kind{40, 20, 8, 15, 7, 2, 8};
  // Indexed by FileClass: which files random mutations touch.
  std::array<uint32_t, kFileClassCount> cls{1, 20, 5, 8, 66};
};
// Parses "modify=5,delete=1" (kinds) or "buck=3,source=10" (classes) into w;
// names not mentioned keep their value. Returns false and leaves w unchanged on error.
bool parse_kind_weights(std::string_view text, Weights* w);
bool parse_class_weights(std::string_view text, Weights* w);

struct RepoOptions {
  uint64_t seed = 1;
  uint64_t files = 1000;  // total files, .buckconfig, BUCK, PACKAGE and .bzl included
  uint32_t cls = 3;       // open changelists, ids 1..cls
  unsigned threads = 0;   // generation threads; 0 = hardware concurrency
};

class Repository {
 public:
  explicit Repository(RepoOptions opts, Weights weights = {});
  Repository(const Repository&) = delete;
  Repository& operator=(const Repository&) = delete;

  // Children of the directory at path, directories first then by name.
  // EINVAL bad path, ENOENT missing, ENOTDIR a file.
  Result<std::vector<Entry>> list(std::string_view path);
  // The entry of path itself (root: name ""); nullopt if absent. EINVAL bad path.
  Result<std::optional<Entry>> stat(std::string_view path);
  std::optional<BlobSpec> find_blob(const Oid& oid) const;
  std::string content(const BlobSpec& spec) const { return generate_content(spec, ctx_); }
  // ENOENT for an unknown CL.
  Result<std::vector<ClEntry>> cl_files(uint32_t cl) const;

  // Applies all mutations or none: the Error names the first that cannot apply
  // (EINVAL malformed, ENOENT unknown path, EEXIST target exists, ENOTDIR, EISDIR).
  Result<std::vector<LogEntry>> apply(const std::vector<MutationRequest>& muts, int64_t now_ms);
  // count seeded random mutations, drawn with the weights; always applicable.
  std::vector<LogEntry> apply_random(uint32_t count, int64_t now_ms);
  std::vector<LogEntry> log_since(uint64_t id) const;

  uint64_t seed() const { return opts_.seed; }
  uint64_t version() const { return version_; }
  uint64_t file_count() const;
  uint64_t dir_count() const { return dirs_.size() + 1; }  // root included
  uint32_t cl_count() const { return static_cast<uint32_t>(cls_.size()); }
  const GenContext& context() const { return ctx_; }
  const Weights& weights() const { return weights_; }
  // Every live file path of a class, sorted (tests and tools).
  std::vector<std::string> paths_of(FileClass cls) const;
  std::string path_of_node(uint32_t node) const;

 private:
  using NodeId = uint32_t;
  static constexpr NodeId kNone = UINT32_MAX;
  struct Node {
    std::string name;
    NodeId parent = kNone;
    std::vector<NodeId> children;  // dirs: sorted by name
    Oid oid;                       // files: blob oid; dirs: cached tree oid
    BlobSpec blob;                 // files only
    uint32_t index_pos = 0;        // position in files_by_class_ or dirs_
    bool is_dir = false;
    bool dirty = true;             // dirs: oid must be recomputed
  };

  void generate();
  NodeId make_node(std::string name, bool is_dir, NodeId parent);
  Result<NodeId> resolve(std::string_view path) const;
  NodeId child(NodeId dir, std::string_view name) const;
  const Oid& tree_oid(NodeId dir);
  Entry entry_of(NodeId n);
  BlobSpec new_blob(FileClass cls, uint64_t key);
  Oid register_blob(const BlobSpec& spec);

  // Primitive changes; each pushes its inverse onto undo_ while a request runs.
  void attach(NodeId n, NodeId parent, std::string name);
  void detach(NodeId n);
  void index_add(NodeId n);
  void index_remove(NodeId n);
  void set_blob(NodeId n, const BlobSpec& spec, const Oid& oid);
  void mark_dirty(NodeId from);
  Result<NodeId> ensure_dir(std::string_view path);  // mkdir -p
  void remove_subtree_from_index(NodeId n);

  Result<LogEntry> apply_one(const MutationRequest& m, int64_t now_ms);
  Result<void> apply_cl(const MutationRequest& m, LogEntry* e);
  MutationRequest random_mutation();
  NodeId random_file(bool allow_buckconfig);
  std::string random_cl_path();

  RepoOptions opts_;
  Weights weights_;
  Rng rng_;  // mutation choices; seeded from opts_.seed
  GenContext ctx_;
  std::vector<Node> nodes_;  // nodes_[0] is the root; detached nodes are garbage
  std::array<std::vector<NodeId>, kFileClassCount> files_by_class_;
  std::vector<NodeId> dirs_;  // live non-root directories
  std::unordered_map<Oid, BlobSpec, OidHash> blobs_;
  std::vector<std::vector<ClEntry>> cls_;  // cls_[i] is CL i+1
  std::vector<LogEntry> log_;
  uint64_t version_ = 1;
  uint64_t content_counter_ = 0;  // makes every new content key unique
  std::vector<std::function<void()>>* undo_ = nullptr;
};

// Splits an absolute repository path into components. Rejects a missing
// leading '/', empty components ("//"), ".", "..", NUL and components over
// 255 bytes. "/" gives no components; one trailing '/' is accepted.
Result<std::vector<std::string_view>> split_repo_path(std::string_view path);

}  // namespace antares::mock
