#include "mock-mega/repo.h"

#include <algorithm>
#include <atomic>
#include <thread>

namespace antares::mock {
namespace {

constexpr const char* kWords[] = {"alpha", "beta", "gamma", "delta", "cache", "index", "store",
                                  "fetch", "parse", "build", "graph", "node",  "edge",  "query",
                                  "layer", "merge", "union", "token", "blob",  "tree"};
constexpr size_t kWordCount = sizeof(kWords) / sizeof(kWords[0]);
constexpr const char* kTopLevel[] = {"apps", "libs", "services", "infra", "web",
                                     "mobile", "data", "platform", "toolchains", "experimental"};
constexpr const char* kExts[] = {".rs", ".cpp", ".h", ".py", ".java", ".go", ".ts", ".md", ".json", ".txt"};
constexpr const char* kBzlNames[] = {"rules.bzl", "rust.bzl", "cxx.bzl", "python.bzl", "java.bzl", "go.bzl"};

std::string_view dirname_of(std::string_view path) {
  auto slash = path.rfind('/');
  return slash == 0 ? std::string_view("/") : path.substr(0, slash);
}
std::string_view basename_of(std::string_view path) { return path.substr(path.rfind('/') + 1); }
std::string join(std::string_view dir, std::string_view name) {
  std::string p(dir);
  if (p.empty() || p.back() != '/') p += '/';
  p += name;
  return p;
}

template <size_t N>
size_t weighted_pick(Rng& rng, const std::array<uint32_t, N>& w) {
  uint64_t total = 0;
  for (auto x : w) total += x;
  if (total == 0) return N;
  uint64_t r = rng.below(total);
  for (size_t i = 0; i < N; ++i) {
    if (r < w[i]) return i;
    r -= w[i];
  }
  return N;
}

template <size_t N>
bool parse_weights(std::string_view text, std::array<uint32_t, N>* out,
                   const std::function<bool(std::string_view, size_t*)>& index_of) {
  auto w = *out;
  while (!text.empty()) {
    auto comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    auto eq = item.find('=');
    if (eq == std::string_view::npos) return false;
    size_t idx;
    if (!index_of(item.substr(0, eq), &idx)) return false;
    std::string_view num = item.substr(eq + 1);
    if (num.empty() || num.size() > 9 || num.find_first_not_of("0123456789") != std::string_view::npos) return false;
    w[idx] = static_cast<uint32_t>(std::stoul(std::string(num)));
  }
  *out = w;
  return true;
}

Error err(int e, std::string msg) { return Error::from_errno(e, std::move(msg)); }

}  // namespace

const char* mutation_kind_name(MutationKind k) {
  static constexpr const char* kNames[] = {"modify", "replace", "delete", "add", "rename", "rename_dir", "cl"};
  return kNames[static_cast<int>(k)];
}

bool parse_mutation_kind(std::string_view s, MutationKind* out) {
  for (int i = 0; i < kMutationKindCount; ++i)
    if (s == mutation_kind_name(static_cast<MutationKind>(i))) {
      *out = static_cast<MutationKind>(i);
      return true;
    }
  return false;
}

const char* cl_action_name(ClAction a) {
  switch (a) {
    case ClAction::added: return "new";
    case ClAction::modified: return "modified";
    case ClAction::deleted: return "deleted";
  }
  return "modified";
}

bool parse_cl_action(std::string_view s, ClAction* out) {
  if (s == "new") *out = ClAction::added;
  else if (s == "modified") *out = ClAction::modified;
  else if (s == "deleted") *out = ClAction::deleted;
  else return false;
  return true;
}

bool parse_kind_weights(std::string_view text, Weights* w) {
  return parse_weights<kMutationKindCount>(text, &w->kind, [](std::string_view n, size_t* i) {
    MutationKind k;
    if (!parse_mutation_kind(n, &k)) return false;
    *i = static_cast<size_t>(k);
    return true;
  });
}

bool parse_class_weights(std::string_view text, Weights* w) {
  return parse_weights<kFileClassCount>(text, &w->cls, [](std::string_view n, size_t* i) {
    FileClass c;
    if (!parse_file_class(n, &c)) return false;
    *i = static_cast<size_t>(c);
    return true;
  });
}

Result<std::vector<std::string_view>> split_repo_path(std::string_view path) {
  if (path.empty() || path.front() != '/') return err(EINVAL, "path must be absolute: '" + std::string(path) + "'");
  if (path.find('\0') != std::string_view::npos) return err(EINVAL, "path contains NUL");
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  std::vector<std::string_view> parts;
  size_t i = 1;
  while (i <= path.size() && path.size() > 1) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view c = path.substr(i, j - i);
    if (c.empty()) return err(EINVAL, "empty path component in '" + std::string(path) + "'");
    if (c == "." || c == "..") return err(EINVAL, "'.' and '..' are not allowed in paths");
    if (c.size() > 255) return err(EINVAL, "path component longer than 255 bytes");
    parts.push_back(c);
    i = j + 1;
  }
  return parts;
}

Repository::Repository(RepoOptions opts, Weights weights)
    : opts_(opts), weights_(weights), rng_(mix64(opts.seed ^ 0x6d757461746f72ULL)) {
  generate();
}

// ---------------------------------------------------------------- generation

void Repository::generate() {
  Rng g(mix64(opts_.seed ^ 0x67656e6572617465ULL));
  nodes_.reserve(opts_.files + opts_.files / 4 + 16);
  nodes_.push_back(Node{});
  nodes_[0].is_dir = true;
  uint64_t budget = opts_.files;
  std::vector<std::pair<NodeId, std::string>> files;  // node, full path
  std::vector<std::string> package_dirs;

  auto add_file = [&](NodeId dir, const std::string& dir_path, std::string name) {
    if (budget == 0) return;
    --budget;
    std::string path = join(dir_path, name);
    NodeId n = make_node(std::move(name), false, dir);
    files.emplace_back(n, std::move(path));
  };

  add_file(0, "/", ".buckconfig");
  if (budget > 0) {
    NodeId tools = make_node("tools", true, 0);
    NodeId defs = make_node("build_defs", true, tools);
    uint64_t nbzl = std::clamp<uint64_t>(opts_.files / 500, 1, 64);
    for (uint64_t i = 0; i < nbzl && budget > 0; ++i) {
      std::string name = i < std::size(kBzlNames)
                             ? std::string(kBzlNames[i])
                             : std::string(kWords[g.below(kWordCount)]) + "_" + std::to_string(i) + ".bzl";
      ctx_.bzl_labels.push_back("//tools/build_defs:" + name);
      add_file(defs, "/tools/build_defs", std::move(name));
    }
  }

  // Packages: a directory takes a few files and splits the rest of its budget
  // among 2-6 subdirectories, so depth grows with log(files).
  // `budget` is the number of files the subtree being built must still hold.
  std::function<void(NodeId, const std::string&, int)> build = [&](NodeId dir, const std::string& path, int depth) {
    if (g.chance(depth == 1 ? 0.5 : 0.85) && budget > 0) {
      add_file(dir, path, g.chance(0.1) ? "BUCK.v2" : "BUCK");
      package_dirs.push_back(path);
    }
    if ((depth == 1 || g.chance(0.1)) && budget > 0) add_file(dir, path, "PACKAGE");
    uint64_t k = (budget <= 12 || depth >= 24) ? budget : std::min<uint64_t>(budget, g.between(2, 10));
    size_t lang = g.below(std::size(kExts));
    for (uint64_t i = 0; i < k; ++i) {
      size_t ext = g.chance(0.8) ? lang : g.below(std::size(kExts));
      add_file(dir, path,
               std::string(kWords[g.below(kWordCount)]) + "_" + kWords[g.below(kWordCount)] + std::to_string(i) +
                   kExts[ext]);
    }
    const uint64_t rest = budget;
    if (rest == 0) return;
    uint64_t nsub = std::min<uint64_t>(rest, g.between(2, 6));
    std::vector<uint64_t> w(nsub);
    uint64_t wsum = 0;
    for (auto& x : w) wsum += (x = 1 + g.below(100));
    uint64_t left = rest;
    for (uint64_t i = 0; i < nsub; ++i) {
      uint64_t share = i + 1 == nsub ? left : std::max<uint64_t>(1, rest * w[i] / wsum);
      share = std::min(share, left - (nsub - 1 - i));  // leave at least one file for each sibling
      left -= share;
      std::string name = std::string(kWords[g.below(kWordCount)]) + "_" + std::to_string(i);
      NodeId sub = make_node(name, true, dir);
      budget = share;
      build(sub, join(path, name), depth + 1);
    }
    budget = 0;
  };

  if (budget > 0) {
    uint64_t ntop = std::min<uint64_t>(budget, g.between(3, 8));
    uint64_t left = budget;
    for (uint64_t i = 0; i < ntop; ++i) {
      uint64_t share = i + 1 == ntop ? left : std::max<uint64_t>(1, left / (ntop - i) / 2 + g.below(left / (ntop - i) + 1));
      share = std::min(share, left - (ntop - 1 - i));
      left -= share;
      std::string name = std::string(kTopLevel[i % std::size(kTopLevel)]);
      if (i >= std::size(kTopLevel)) name += "_" + std::to_string(i);
      NodeId top = make_node(name, true, 0);
      budget = share;
      build(top, "/" + name, 1);
    }
    budget = 0;
  }
  for (auto& p : package_dirs) ctx_.package_labels.push_back("/" + p);  // "//apps/foo"

  // Contents and blob oids: the expensive part, spread over threads. Each
  // worker writes only its own nodes.
  unsigned threads = opts_.threads ? opts_.threads : std::max(1u, std::thread::hardware_concurrency());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(256)) < files.size();) {
      for (size_t j = i; j < std::min(files.size(), i + 256); ++j) {
        Node& n = nodes_[files[j].first];
        BlobSpec spec{hash_str(files[j].second, opts_.seed), 0, classify(n.name)};
        if (spec.cls == FileClass::source) spec.size = source_size_for_key(spec.key);
        std::string c = generate_content(spec, ctx_);
        spec.size = static_cast<uint32_t>(c.size());
        n.blob = spec;
        n.oid = git_blob_oid(c);
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  blobs_.reserve(files.size() * 5 / 4);
  for (auto& [n, path] : files) {
    blobs_.emplace(nodes_[n].oid, nodes_[n].blob);
    index_add(n);
  }

  // Open changelists over the generated tree.
  for (uint32_t c = 1; c <= opts_.cls; ++c) {
    std::vector<ClEntry> list;
    Rng cr(mix64(opts_.seed ^ (0x636c0000ULL + c)));
    uint64_t n = cr.between(3, 10);
    for (uint64_t i = 0; i < n; ++i) {
      double roll = cr.unit();
      std::string path;
      ClEntry e;
      if (roll < 0.3 || file_count() <= 1) {
        path = random_cl_path();
        e.action = ClAction::added;
      } else {
        NodeId f = random_file(false);
        if (f == kNone) continue;
        path = path_of_node(f);
        e.action = roll < 0.8 ? ClAction::modified : ClAction::deleted;
      }
      if (std::any_of(list.begin(), list.end(), [&](const ClEntry& x) { return x.path == path; })) continue;
      e.path = path;
      if (e.action != ClAction::deleted) {
        BlobSpec spec = new_blob(classify(basename_of(path)), mix64(hash_str(path, opts_.seed) ^ c));
        e.sha = register_blob(spec);
      }
      list.push_back(std::move(e));
    }
    cls_.push_back(std::move(list));
  }
}

Repository::NodeId Repository::make_node(std::string name, bool is_dir, NodeId parent) {
  NodeId id = static_cast<NodeId>(nodes_.size());
  nodes_.push_back(Node{});
  nodes_[id].is_dir = is_dir;
  attach(id, parent, std::move(name));
  if (is_dir) index_add(id);  // files are indexed once their class is known
  return id;
}

BlobSpec Repository::new_blob(FileClass cls, uint64_t key) {
  BlobSpec spec{key, 0, cls};
  if (cls == FileClass::source) spec.size = source_size_for_key(key);
  else spec.size = static_cast<uint32_t>(generate_content(spec, ctx_).size());
  return spec;
}

Oid Repository::register_blob(const BlobSpec& spec) {
  Oid oid = git_blob_oid(generate_content(spec, ctx_));
  blobs_.emplace(oid, spec);
  return oid;
}

// ---------------------------------------------------------------- queries

Repository::NodeId Repository::child(NodeId dir, std::string_view name) const {
  const auto& ch = nodes_[dir].children;
  auto it = std::lower_bound(ch.begin(), ch.end(), name,
                             [&](NodeId c, std::string_view n) { return nodes_[c].name < n; });
  return it != ch.end() && nodes_[*it].name == name ? *it : kNone;
}

Result<Repository::NodeId> Repository::resolve(std::string_view path) const {
  auto parts = split_repo_path(path);
  if (!parts) return parts.error();
  NodeId cur = 0;
  for (auto c : *parts) {
    if (!nodes_[cur].is_dir) return err(ENOTDIR, "not a directory on the way to " + std::string(path));
    cur = child(cur, c);
    if (cur == kNone) return err(ENOENT, "no such path: " + std::string(path));
  }
  return cur;
}

const Oid& Repository::tree_oid(NodeId dir) {
  Node& d = nodes_[dir];
  if (!d.dirty) return d.oid;
  std::vector<TreeEntry> entries;
  entries.reserve(d.children.size());
  for (NodeId c : nodes_[dir].children)
    entries.push_back({nodes_[c].name, nodes_[c].is_dir, nodes_[c].is_dir ? tree_oid(c) : nodes_[c].oid});
  nodes_[dir].oid = git_tree_oid(std::move(entries));
  nodes_[dir].dirty = false;
  return nodes_[dir].oid;
}

Entry Repository::entry_of(NodeId n) {
  Entry e{nodes_[n].name, nodes_[n].is_dir, {}, 0};
  e.oid = e.is_dir ? tree_oid(n) : nodes_[n].oid;
  if (!e.is_dir) e.size = nodes_[n].blob.size;
  return e;
}

Result<std::vector<Entry>> Repository::list(std::string_view path) {
  auto n = resolve(path);
  if (!n) return n.error();
  if (!nodes_[*n].is_dir) return err(ENOTDIR, "not a directory: " + std::string(path));
  std::vector<Entry> out;
  out.reserve(nodes_[*n].children.size());
  for (NodeId c : nodes_[*n].children) out.push_back(entry_of(c));
  std::stable_partition(out.begin(), out.end(), [](const Entry& e) { return e.is_dir; });
  return out;
}

Result<std::optional<Entry>> Repository::stat(std::string_view path) {
  auto n = resolve(path);
  if (!n) {
    if (n.err() == EINVAL) return n.error();
    return std::optional<Entry>();
  }
  return std::optional<Entry>(entry_of(*n));
}

std::optional<BlobSpec> Repository::find_blob(const Oid& oid) const {
  auto it = blobs_.find(oid);
  if (it == blobs_.end()) return std::nullopt;
  return it->second;
}

Result<std::vector<ClEntry>> Repository::cl_files(uint32_t cl) const {
  if (cl < 1 || cl > cls_.size()) return err(ENOENT, "unknown cl " + std::to_string(cl));
  return cls_[cl - 1];
}

uint64_t Repository::file_count() const {
  uint64_t n = 0;
  for (auto& v : files_by_class_) n += v.size();
  return n;
}

std::string Repository::path_of_node(NodeId n) const {
  std::vector<const std::string*> parts;
  for (NodeId c = n; c != 0 && c != kNone; c = nodes_[c].parent) parts.push_back(&nodes_[c].name);
  if (parts.empty()) return "/";
  std::string p;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    p += '/';
    p += **it;
  }
  return p;
}

std::vector<std::string> Repository::paths_of(FileClass cls) const {
  std::vector<std::string> out;
  for (NodeId n : files_by_class_[static_cast<int>(cls)]) out.push_back(path_of_node(n));
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<LogEntry> Repository::log_since(uint64_t id) const {
  if (id >= log_.size()) return {};
  return std::vector<LogEntry>(log_.begin() + static_cast<ptrdiff_t>(id), log_.end());
}

// ---------------------------------------------------------------- primitives

void Repository::mark_dirty(NodeId from) {
  for (NodeId d = from; d != kNone && !nodes_[d].dirty; d = nodes_[d].parent) nodes_[d].dirty = true;
}

void Repository::attach(NodeId n, NodeId parent, std::string name) {
  nodes_[n].name = std::move(name);
  nodes_[n].parent = parent;
  if (parent == kNone) return;  // the root
  auto& ch = nodes_[parent].children;
  auto it = std::lower_bound(ch.begin(), ch.end(), nodes_[n].name,
                             [&](NodeId c, const std::string& nm) { return nodes_[c].name < nm; });
  ch.insert(it, n);
  mark_dirty(parent);
  if (undo_) undo_->push_back([this, n] { detach(n); });
}

void Repository::detach(NodeId n) {
  NodeId parent = nodes_[n].parent;
  auto& ch = nodes_[parent].children;
  auto it = std::lower_bound(ch.begin(), ch.end(), nodes_[n].name,
                             [&](NodeId c, const std::string& nm) { return nodes_[c].name < nm; });
  ch.erase(it);
  mark_dirty(parent);
  nodes_[n].parent = kNone;
  if (undo_) {
    std::string name = nodes_[n].name;
    undo_->push_back([this, n, parent, name] { attach(n, parent, name); });
  }
}

void Repository::index_add(NodeId n) {
  auto& vec = nodes_[n].is_dir ? dirs_ : files_by_class_[static_cast<int>(nodes_[n].blob.cls)];
  nodes_[n].index_pos = static_cast<uint32_t>(vec.size());
  vec.push_back(n);
  if (undo_) undo_->push_back([&vec, this] { nodes_[vec.back()].index_pos = 0; vec.pop_back(); });
}

void Repository::index_remove(NodeId n) {
  auto& vec = nodes_[n].is_dir ? dirs_ : files_by_class_[static_cast<int>(nodes_[n].blob.cls)];
  uint32_t pos = nodes_[n].index_pos;
  NodeId last = vec.back();
  vec[pos] = last;
  nodes_[last].index_pos = pos;
  vec.pop_back();
  if (undo_)  // exact inverse, so index order (and later random picks) is as if nothing happened
    undo_->push_back([&vec, this, n, last, pos] {
      vec.push_back(last);
      nodes_[last].index_pos = static_cast<uint32_t>(vec.size() - 1);
      vec[pos] = n;
      nodes_[n].index_pos = pos;
    });
}

void Repository::set_blob(NodeId n, const BlobSpec& spec, const Oid& oid) {
  if (undo_) undo_->push_back([this, n, old = nodes_[n].blob, old_oid = nodes_[n].oid] {
    nodes_[n].blob = old;
    nodes_[n].oid = old_oid;
    mark_dirty(nodes_[n].parent);
  });
  nodes_[n].blob = spec;
  nodes_[n].oid = oid;
  mark_dirty(nodes_[n].parent);
}

void Repository::remove_subtree_from_index(NodeId n) {
  index_remove(n);
  if (nodes_[n].is_dir)
    for (NodeId c : std::vector<NodeId>(nodes_[n].children)) remove_subtree_from_index(c);
}

Result<Repository::NodeId> Repository::ensure_dir(std::string_view path) {
  auto parts = split_repo_path(path);
  if (!parts) return parts.error();
  NodeId cur = 0;
  for (auto c : *parts) {
    NodeId next = child(cur, c);
    if (next == kNone) next = make_node(std::string(c), true, cur);
    else if (!nodes_[next].is_dir) return err(ENOTDIR, "not a directory: " + std::string(c) + " in " + std::string(path));
    cur = next;
  }
  return cur;
}

// ---------------------------------------------------------------- mutations

Result<std::vector<LogEntry>> Repository::apply(const std::vector<MutationRequest>& muts, int64_t now_ms) {
  std::vector<std::function<void()>> undo;
  undo_ = &undo;
  const uint64_t saved_version = version_, saved_counter = content_counter_;
  const size_t saved_log = log_.size();
  auto rng_saved = rng_;
  std::vector<LogEntry> out;
  for (size_t i = 0; i < muts.size(); ++i) {
    auto r = apply_one(muts[i], now_ms);
    if (!r) {
      undo_ = nullptr;  // the inverses must not record inverses of their own
      for (auto it = undo.rbegin(); it != undo.rend(); ++it) (*it)();
      version_ = saved_version;
      content_counter_ = saved_counter;
      rng_ = rng_saved;
      log_.resize(saved_log);
      Error e = r.error();
      e.message = "mutation " + std::to_string(i) + " (" + mutation_kind_name(muts[i].kind) + " " +
                  muts[i].path + "): " + e.message + "; nothing applied";
      return e;
    }
    out.push_back(std::move(*r));
  }
  undo_ = nullptr;
  return out;
}

std::vector<LogEntry> Repository::apply_random(uint32_t count, int64_t now_ms) {
  std::vector<LogEntry> out;
  for (uint32_t i = 0; i < count; ++i) {
    MutationRequest m = random_mutation();
    auto r = apply_one(m, now_ms);
    if (r) out.push_back(std::move(*r));  // random mutations are built to apply
  }
  return out;
}

Result<LogEntry> Repository::apply_one(const MutationRequest& m, int64_t now_ms) {
  LogEntry e;
  e.kind = m.kind;
  e.path = m.path;
  auto fresh_key = [&](std::string_view path) { return mix64(hash_str(path, opts_.seed) ^ mix64(++content_counter_)); };
  auto must_be_absent = [&](const std::string& p) -> Result<void> {
    auto t = resolve(p);
    if (t) return err(EEXIST, "target exists: " + p);
    if (t.err() != ENOENT) return t.error();
    return {};
  };

  switch (m.kind) {
    case MutationKind::modify:
    case MutationKind::replace: {
      auto n = resolve(m.path);
      if (!n) return n.error();
      if (nodes_[*n].is_dir) return err(EISDIR, "is a directory: " + m.path);
      e.old_oid = nodes_[*n].oid;
      BlobSpec spec = new_blob(nodes_[*n].blob.cls, fresh_key(m.path));
      Oid oid = register_blob(spec);
      set_blob(*n, spec, oid);
      e.new_oid = oid;
      break;
    }
    case MutationKind::remove: {
      auto n = resolve(m.path);
      if (!n) return n.error();
      if (*n == 0) return err(EINVAL, "cannot delete the root");
      e.old_oid = nodes_[*n].is_dir ? tree_oid(*n) : nodes_[*n].oid;
      remove_subtree_from_index(*n);
      detach(*n);
      break;
    }
    case MutationKind::add: {
      auto parts = split_repo_path(m.path);
      if (!parts) return parts.error();
      if (parts->empty()) return err(EEXIST, "target exists: /");
      if (auto a = must_be_absent(m.path); !a) return a.error();
      auto parent = ensure_dir(dirname_of(m.path));
      if (!parent) return parent.error();
      std::string name(basename_of(m.path));
      BlobSpec spec = new_blob(classify(name), fresh_key(m.path));
      Oid oid = register_blob(spec);
      NodeId n = make_node(name, false, *parent);
      nodes_[n].blob = spec;
      nodes_[n].oid = oid;
      index_add(n);
      e.new_oid = oid;
      break;
    }
    case MutationKind::rename:
    case MutationKind::rename_dir: {
      bool dir = m.kind == MutationKind::rename_dir;
      auto n = resolve(m.path);
      if (!n) return n.error();
      if (*n == 0) return err(EINVAL, "cannot rename the root");
      if (nodes_[*n].is_dir != dir)
        return err(dir ? ENOTDIR : EISDIR, std::string(dir ? "not a directory: " : "is a directory: ") + m.path);
      auto to_parts = split_repo_path(m.to);
      if (!to_parts) return to_parts.error();
      if (to_parts->empty()) return err(EEXIST, "target exists: /");
      if (auto a = must_be_absent(m.to); !a) return a.error();
      if (dir && m.to.compare(0, m.path.size() + 1, m.path + "/") == 0)
        return err(EINVAL, "cannot move a directory into itself: " + m.to);
      auto parent = ensure_dir(dirname_of(m.to));
      if (!parent) return parent.error();
      e.old_oid = dir ? tree_oid(*n) : nodes_[*n].oid;
      detach(*n);
      attach(*n, *parent, std::string(basename_of(m.to)));
      e.new_oid = e.old_oid;
      e.to = m.to;
      break;
    }
    case MutationKind::cl: {
      if (auto r = apply_cl(m, &e); !r) return r.error();
      break;
    }
  }
  ++version_;
  e.id = log_.size() + 1;
  e.version = version_;
  e.time_ms = now_ms;
  log_.push_back(e);
  return e;
}

Result<void> Repository::apply_cl(const MutationRequest& m, LogEntry* e) {
  if (m.cl < 1 || m.cl > cls_.size()) return err(ENOENT, "unknown cl " + std::to_string(m.cl));
  auto& list = cls_[m.cl - 1];
  if (undo_) undo_->push_back([this, cl = m.cl, copy = list] { cls_[cl - 1] = copy; });
  e->cl = m.cl;
  auto find = [&](const std::string& p) {
    return std::find_if(list.begin(), list.end(), [&](const ClEntry& x) { return x.path == p; });
  };
  auto set_entry = [&](const std::string& path, ClAction action) {
    ClEntry ne{path, std::nullopt, action};
    if (action != ClAction::deleted)
      ne.sha = register_blob(new_blob(classify(basename_of(path)),
                                      mix64(hash_str(path, opts_.seed) ^ mix64(++content_counter_) ^ m.cl)));
    auto it = find(path);
    if (it != list.end()) {
      e->old_oid = it->sha;
      *it = ne;
    } else {
      list.push_back(ne);
    }
    e->path = path;
    e->new_oid = ne.sha;
    e->cl_action = cl_action_name(action);
  };

  if (!m.path.empty()) {
    auto parts = split_repo_path(m.path);
    if (!parts) return parts.error();
    if (parts->empty()) return err(EINVAL, "a cl entry must name a file");
    std::string action = m.cl_action.empty() ? "modified" : m.cl_action;
    if (action == "remove") {
      auto it = find(m.path);
      if (it == list.end()) return err(ENOENT, "cl " + std::to_string(m.cl) + " has no entry " + m.path);
      e->old_oid = it->sha;
      list.erase(it);
      e->path = m.path;
      e->cl_action = "remove";
      return {};
    }
    ClAction a;
    if (!parse_cl_action(action, &a))
      return err(EINVAL, "unknown cl action '" + action + "' (new, modified, deleted, remove)");
    set_entry(m.path, a);
    return {};
  }

  // Seeded random change: gain an entry, change one, or drop one.
  uint64_t roll = rng_.below(3);
  if (list.empty() || roll == 0) {
    double r = rng_.unit();
    NodeId f = random_file(false);
    if (r < 0.3 || f == kNone) set_entry(random_cl_path(), ClAction::added);
    else set_entry(path_of_node(f), r < 0.8 ? ClAction::modified : ClAction::deleted);
  } else if (roll == 1 || list.size() == 1) {
    ClEntry& x = list[rng_.below(list.size())];
    set_entry(std::string(x.path), x.action == ClAction::deleted ? ClAction::modified : x.action);
  } else {
    size_t i = rng_.below(list.size());
    e->path = list[i].path;
    e->old_oid = list[i].sha;
    e->cl_action = "remove";
    list.erase(list.begin() + static_cast<ptrdiff_t>(i));
  }
  return {};
}

Repository::NodeId Repository::random_file(bool allow_buckconfig) {
  auto w = weights_.cls;
  if (!allow_buckconfig) w[static_cast<int>(FileClass::buckconfig)] = 0;
  for (int c = 0; c < kFileClassCount; ++c)
    if (files_by_class_[c].empty()) w[c] = 0;
  size_t c = weighted_pick(rng_, w);
  if (c == kFileClassCount) {  // weights exclude every non-empty class: any file will do
    for (int k = 0; k < kFileClassCount; ++k)
      if (!files_by_class_[k].empty() && (allow_buckconfig || k != static_cast<int>(FileClass::buckconfig)))
        return files_by_class_[k][rng_.below(files_by_class_[k].size())];
    return kNone;
  }
  return files_by_class_[c][rng_.below(files_by_class_[c].size())];
}

std::string Repository::random_cl_path() {
  std::string dir = dirs_.empty() ? "/" : path_of_node(dirs_[rng_.below(dirs_.size())]);
  return join(dir, "cl_" + std::string(kWords[rng_.below(kWordCount)]) + "_" + std::to_string(++content_counter_) + ".rs");
}

MutationRequest Repository::random_mutation() {
  auto w = weights_.kind;
  if (cls_.empty()) w[static_cast<int>(MutationKind::cl)] = 0;
  if (dirs_.empty()) w[static_cast<int>(MutationKind::rename_dir)] = 0;
  if (file_count() <= files_by_class_[0].size()) {  // only .buckconfig left: nothing else to touch
    w[static_cast<int>(MutationKind::remove)] = w[static_cast<int>(MutationKind::rename)] = 0;
  }
  size_t k = weighted_pick(rng_, w);
  MutationRequest m;
  m.kind = k == kMutationKindCount ? MutationKind::add : static_cast<MutationKind>(k);
  const std::string id = std::to_string(log_.size() + 1);
  auto unique = [&](std::string p) {  // a taken name gets "_<id>" before its extension
    while (resolve(p)) {
      auto dot = p.rfind('.');
      p.insert(dot == std::string::npos || dot <= p.rfind('/') + 1 ? p.size() : dot, "_" + id);
    }
    return p;
  };
  switch (m.kind) {
    case MutationKind::modify:
    case MutationKind::replace: {
      NodeId f = random_file(true);
      if (f == kNone) break;
      m.path = path_of_node(f);
      return m;
    }
    case MutationKind::remove:
    case MutationKind::rename: {
      NodeId f = random_file(false);
      if (f == kNone) break;
      m.path = path_of_node(f);
      if (m.kind == MutationKind::rename) {
        std::string name(basename_of(m.path));
        auto dot = name.rfind('.');
        std::string stem = dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
        std::string ext = dot == std::string::npos || dot == 0 ? "" : name.substr(dot);
        m.to = unique(join(dirname_of(m.path), stem + "_r" + id + ext));
      }
      return m;
    }
    case MutationKind::rename_dir: {
      NodeId d = dirs_[rng_.below(dirs_.size())];
      m.path = path_of_node(d);
      m.to = unique(m.path + "_r" + id);
      return m;
    }
    case MutationKind::cl:
      m.cl = 1 + static_cast<uint32_t>(rng_.below(cls_.size()));
      return m;
    case MutationKind::add:
      break;
  }
  // add: a new file of a weighted class in a random directory.
  m.kind = MutationKind::add;
  std::array<uint32_t, kFileClassCount> cw = weights_.cls;
  cw[static_cast<int>(FileClass::buckconfig)] = 0;
  size_t c = weighted_pick(rng_, cw);
  NodeId dir = dirs_.empty() || rng_.below(dirs_.size() + 1) == 0 ? 0 : dirs_[rng_.below(dirs_.size())];
  std::string dpath = path_of_node(dir);
  std::string name;
  if (c == static_cast<size_t>(FileClass::buck) && child(dir, "BUCK") == kNone) name = "BUCK";
  else if (c == static_cast<size_t>(FileClass::package) && child(dir, "PACKAGE") == kNone) name = "PACKAGE";
  else if (c == static_cast<size_t>(FileClass::bzl)) name = std::string(kWords[rng_.below(kWordCount)]) + "_" + id + ".bzl";
  else name = std::string(kWords[rng_.below(kWordCount)]) + "_new" + id + kExts[rng_.below(std::size(kExts))];
  m.path = unique(join(dpath, name));
  return m;
}

}  // namespace antares::mock
