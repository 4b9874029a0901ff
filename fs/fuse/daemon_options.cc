#include "fs/fuse/daemon_options.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>

#include "common/duration.h"
#include "common/mountinfo.h"
#include "fs/layers/strategy.h"
#include "fs/lower/blob_cache.h"

namespace antares::fs {
namespace {

constexpr const char* kUsage = R"(usage: antares-fs URL MOUNTPOINT -o upper=DIR,cache=DIR[,OPTION...]
       antares-fs --mega URL --mountpoint DIR --upper DIR --cache DIR [options]

Mounts the union of an upper directory (read-write), an optional changelist
layer and the Mega monorepo at URL (lower, fetched lazily and refreshed after
the TTL). Both spellings take the same options: --name VALUE, or name=VALUE in
a -o list (as mount(8), mount.fuse3 and /etc/fstab pass them; '-' and '_' are
interchangeable there). By default antares-fs detaches once the mount answers
and its control endpoint is in place; it exits non-zero with the reason if
either does not happen.

Options:
  --mega URL              Mega server base URL, e.g. http://127.0.0.1:8000
  --mountpoint DIR        an existing, empty directory that is not a mount point
  --upper DIR             the writable upper layer
  --cache DIR             where fetched files are kept; antares-fs owns DIR/lower (the
                          mirror, kept across restarts and revalidated by oid; wiped
                          after a crash) and DIR/blobs (the blob cache), each marked
                          by a .antares-tmp-owner file
  --cl ID --cl-dir DIR    also mount changelist ID, built into DIR, which must be
                          empty or earlier built by antares-fs (it is wiped)
  --ttl D                 directory listing TTL (default 5s; accepts 300ms)
  --refresh M             how listings are refreshed after the TTL: merkle (default;
                          one dir-hash of / per TTL, then only directories whose
                          oid changed are listed again) or per-dir (each directory
                          listed again once its own listing is older than the TTL)
  --cache-size N          bound of the blob cache DIR/blobs, least recently used
                          blobs evicted beyond it (default 10G; K, M, G, T; 0 = no
                          blob cache)
  --prefetch N            threads listing the subdirectories and fetching the
                          BUCK/PACKAGE files of a directory when it is first read
                          (default 8; 0 = off)
  --strategy S            stale-handle strategy: none, A, B, C, auto (default auto)
  --entry-timeout S       kernel entry cache timeout in seconds (default 1)
  --attr-timeout S        kernel attribute cache timeout in seconds (default 1)
  --long-timeout S        attribute timeout under B and auto, which invalidate
                          (default 60); their entry timeout is the TTL
  --threads N             FUSE worker threads (default 16)
  --dir-open M            daemon (default): each directory open asks the daemon
                          (OPENDIR, RELEASEDIR); kernel: the kernel opens
                          directories without asking and keeps every listing
                          until the daemon invalidates it: half the requests of
                          a walk. Needs --strategy B or auto and --refresh
                          merkle, and the mount then refuses a switch to none,
                          A or C (the kernel decides this once per mount)
  --file-open M           daemon (default): each file open asks the daemon (OPEN,
                          RELEASE); kernel: the kernel opens files without
                          asking and keeps their pages until invalidated, and
                          reads and writes open the file per request: a walk
                          that reads what it read before sends no request for
                          it. Same conditions as --dir-open kernel
  --startup-timeout D     Mega must answer the first listing within D, connect
                          included, or antares-fs exits 4 (default 10s)
  --run-dir DIR           control endpoint directory (default $ANTARES_RUN_DIR
                          or /run/antares)
  --log-level L           debug, info, warn, error (default info)
  --log-file PATH         append log lines to PATH (default: stderr in the
                          foreground, syslog (daemon facility) when detached)
  -f, --foreground        stay in the foreground
  -o OPT[,OPT...]         options as name=value; also FUSE mount options
  -h, --help              this text
  -V, --version           print the version

FUSE mount options (-o), passed to the kernel:
  allow_other             let other users in (default when run as root; turn
                          off with no_allow_other); as a user it needs
                          user_allow_other in /etc/fuse.conf
  default_permissions     the kernel checks permissions by mode bits (always on
                          unless no_default_permissions: antares-fs does no
                          checks of its own)
  allow_root, auto_unmount, debug, ro, rw, suid, nosuid, dev, nodev, exec,
  noexec, sync, async, dirsync, atime, noatime, max_read=N, context=,
  fscontext=, defcontext=, rootcontext=
  fsname=NAME             the source shown in /proc/mounts (default URL)
  subtype=NAME            type fuse.NAME (default antares-fs)
Ignored (they are for mount(8) and systemd): _netdev, nofail, auto, noauto,
user, users, nouser, owner, group, defaults, comment=..., x-*, X-*.

Examples:
  mount -t fuse.antares-fs http://mega:8000 /mnt/mega -o upper=/var/lib/antares/upper,cache=/var/cache/antares
  fstab: http://mega:8000 /mnt/mega fuse.antares-fs upper=/var/lib/antares/upper,cache=/var/cache/antares,_netdev 0 0

Exit codes: 0 unmounted cleanly; 1 runtime failure; 2 bad usage (also
overlapping or nested directories); 3 mountpoint unusable (missing, busy, not
empty, or left over from a crashed daemon); 4 Mega server unreachable or
silent at start (--startup-timeout); 5 a layer directory is unusable or holds
data antares-fs did not create.
)";

std::optional<double> parse_seconds(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (!s.empty() && !errno && end != s.c_str() && !*end && std::isfinite(v) && v >= 0 && v <= 86400 * 365) return v;
  if (auto d = parse_duration(s); d && d->count() <= int64_t(86400) * 365 * 1000) return double(d->count()) / 1000;
  return std::nullopt;
}

// Sets one antares option from its value; the error message if the value is bad.
using Setter = std::function<std::optional<std::string>(DaemonOptions&, const std::string&)>;

struct OptionDef {
  const char* name;  // long-option spelling; in -o '-' may be '_'
  bool takes_value;
  Setter set;
};

std::optional<std::string> set_string(std::string DaemonOptions::*field, DaemonOptions& o, const std::string& v,
                                      const char* name) {
  if (v.empty()) return std::string("--") + name + " needs a non-empty value";
  o.*field = v;
  return std::nullopt;
}

// The strategies by name, and what each does (the one place that says).
const StrategySet& strategies() {
  static const StrategySet set;
  return set;
}

const std::vector<OptionDef>& option_defs() {
  static const std::vector<OptionDef> defs = [] {
    std::vector<OptionDef> d;
    auto str = [&](const char* name, std::string DaemonOptions::*field) {
      d.push_back({name, true, [field, name](DaemonOptions& o, const std::string& v) {
                     return set_string(field, o, v, name);
                   }});
    };
    str("mega", &DaemonOptions::mega);
    str("mountpoint", &DaemonOptions::mountpoint);
    str("upper", &DaemonOptions::upper);
    str("cache", &DaemonOptions::cache);
    str("cl", &DaemonOptions::cl);
    str("cl-dir", &DaemonOptions::cl_dir);
    str("run-dir", &DaemonOptions::run_dir);
    str("log-file", &DaemonOptions::log_file);
    d.push_back({"ttl", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   auto t = parse_duration(v);
                   if (!t || t->count() <= 0) return "--ttl: not a duration: '" + v + "' (try 5s or 300ms)";
                   o.ttl = *t;
                   return std::nullopt;
                 }});
    d.push_back({"startup-timeout", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   auto t = parse_duration(v);
                   if (!t || t->count() < 100 || t->count() > 3'600'000)
                     return "--startup-timeout: expected a duration from 100ms to 1h, got '" + v + "'";
                   o.startup_timeout = *t;
                   return std::nullopt;
                 }});
    d.push_back({"refresh", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   if (v != "merkle" && v != "per-dir" && v != "per_dir")
                     return "--refresh: unknown mode '" + v + "' (merkle, per-dir)";
                   o.refresh = v == "merkle" ? "merkle" : "per-dir";
                   return std::nullopt;
                 }});
    auto opener = [&](const char* name, std::string DaemonOptions::*field) {
      d.push_back({name, true, [field, name](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                     if (v != "daemon" && v != "kernel")
                       return std::string("--") + name + ": expected daemon or kernel, got '" + v + "'";
                     o.*field = v;
                     return std::nullopt;
                   }});
    };
    opener("dir-open", &DaemonOptions::dir_open);
    opener("file-open", &DaemonOptions::file_open);
    d.push_back({"cache-size", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   auto n = parse_size(v);
                   if (!n) return "--cache-size: not a size: '" + v + "' (try 10G, 512M or 0 for none)";
                   if (*n != 0 && *n < (1u << 20)) return "--cache-size: at least 1M (or 0 for none), got '" + v + "'";
                   o.cache_size = *n;
                   return std::nullopt;
                 }});
    d.push_back({"prefetch", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   char* end = nullptr;
                   long n = std::strtol(v.c_str(), &end, 10);
                   if (v.empty() || *end || n < 0 || n > 64) return "--prefetch: expected 0..64 threads, got '" + v + "'";
                   o.prefetch = int(n);
                   return std::nullopt;
                 }});
    d.push_back({"strategy", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   const HandleStrategy* s = strategies().find(v);
                   if (!s) return "--strategy: unknown strategy '" + v + "' (none, A, B, C, auto)";
                   o.strategy = std::string(s->name());
                   return std::nullopt;
                 }});
    auto secs = [&](const char* name, double DaemonOptions::*field) {
      d.push_back({name, true, [field, name](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                     auto s = parse_seconds(v);
                     if (!s) return std::string("--") + name + ": bad seconds '" + v + "'";
                     o.*field = *s;
                     return std::nullopt;
                   }});
    };
    secs("entry-timeout", &DaemonOptions::entry_timeout);
    secs("attr-timeout", &DaemonOptions::attr_timeout);
    secs("long-timeout", &DaemonOptions::long_timeout);
    d.push_back({"threads", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   char* end = nullptr;
                   long n = std::strtol(v.c_str(), &end, 10);
                   if (v.empty() || *end || n < 1 || n > 256) return "--threads: expected 1..256, got '" + v + "'";
                   o.threads = int(n);
                   return std::nullopt;
                 }});
    d.push_back({"log-level", true, [](DaemonOptions& o, const std::string& v) -> std::optional<std::string> {
                   log::Level l;
                   if (!log::parse_level(v, &l)) return "--log-level: unknown level '" + v + "' (debug, info, warn, error)";
                   o.log_level = l;
                   return std::nullopt;
                 }});
    return d;
  }();
  return defs;
}

const OptionDef* find_def(std::string name) {
  std::replace(name.begin(), name.end(), '_', '-');
  for (const auto& d : option_defs())
    if (name == d.name) return &d;
  return nullptr;
}

// FUSE and kernel mount options antares-fs passes through to libfuse.
bool is_fuse_flag(const std::string& o) {
  static const char* kFlags[] = {"allow_other", "allow_root", "default_permissions", "auto_unmount", "debug",
                                 "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync",
                                 "dirsync", "atime", "noatime"};
  return std::any_of(std::begin(kFlags), std::end(kFlags), [&](const char* f) { return o == f; });
}
bool is_fuse_valued(const std::string& key) {
  static const char* kKeys[] = {"fsname", "subtype", "max_read", "context", "fscontext", "defcontext", "rootcontext"};
  return std::any_of(std::begin(kKeys), std::end(kKeys), [&](const char* k) { return key == k; });
}
// Options meant for mount(8), fstab and systemd, not for the filesystem.
bool is_ignored(const std::string& o) {
  static const char* kIgnored[] = {"_netdev", "nofail", "auto", "noauto", "user", "users", "nouser",
                                   "owner", "group", "defaults", ""};
  if (std::any_of(std::begin(kIgnored), std::end(kIgnored), [&](const char* i) { return o == i; })) return true;
  return o.rfind("x-", 0) == 0 || o.rfind("X-", 0) == 0 || o.rfind("comment=", 0) == 0;
}

// Splits a -o list at unescaped commas; "\," is a literal comma, "\\" a backslash.
std::vector<std::string> split_option_list(const std::string& list) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] == '\\' && i + 1 < list.size()) {
      out.back() += list[++i];
    } else if (list[i] == ',') {
      out.emplace_back();
    } else {
      out.back() += list[i];
    }
  }
  return out;
}

std::string escape_fuse_value(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == ',' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

}  // namespace

const char* daemon_usage() { return kUsage; }

ParsedArgs parse_daemon_args(const std::vector<std::string>& args, bool as_root, const std::string& default_run_dir) {
  ParsedArgs r;
  DaemonOptions& o = r.options;
  o.run_dir = default_run_dir;
  std::vector<std::string> positional, fuse;
  bool no_allow_other = false, no_default_permissions = false, debug = false;
  auto error = [&](std::string msg) {
    r.kind = ParsedArgs::Kind::error;
    r.error = std::move(msg);
    return r;
  };

  // One -o list: antares options, ignored ones, and FUSE options kept in order.
  auto take_list = [&](const std::string& list) -> std::optional<std::string> {
    for (const std::string& opt : split_option_list(list)) {
      if (is_ignored(opt)) continue;
      size_t eq = opt.find('=');
      std::string key = opt.substr(0, eq);
      if (const OptionDef* d = find_def(key)) {
        if (eq == std::string::npos) return "mount option " + key + " needs a value (" + key + "=VALUE)";
        if (auto e = d->set(o, opt.substr(eq + 1))) return e;
      } else if (opt == "no_allow_other" || opt == "no-allow-other") {
        no_allow_other = true;
      } else if (opt == "no_default_permissions" || opt == "no-default-permissions") {
        no_default_permissions = true;
      } else if (is_fuse_flag(opt)) {
        if (opt == "debug") debug = true;
        fuse.push_back(opt);
      } else if (eq != std::string::npos && is_fuse_valued(key)) {
        if (eq + 1 == opt.size()) return "mount option " + key + " needs a value (" + key + "=VALUE)";
        fuse.push_back(key + "=" + escape_fuse_value(opt.substr(eq + 1)));
      } else {
        return "unknown mount option '" + opt + "' (see 'antares-fs --help' for the options)";
      }
    }
    return std::nullopt;
  };

  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      r.kind = ParsedArgs::Kind::help;
      return r;
    }
    if (a == "-V" || a == "--version") {
      r.kind = ParsedArgs::Kind::version;
      return r;
    }
    if (a == "-f" || a == "--foreground") {
      o.foreground = true;
    } else if (a == "-o" || (a.rfind("-o", 0) == 0 && a.size() > 2 && a[2] != '-')) {
      std::string list;
      if (a == "-o") {
        if (i + 1 >= args.size()) return error("option -o needs a value (a list like upper=DIR,cache=DIR)");
        list = args[++i];
      } else {
        list = a.substr(2);
      }
      if (auto e = take_list(list)) return error(*e);
    } else if (a == "--") {
      positional.insert(positional.end(), args.begin() + long(i) + 1, args.end());
      break;
    } else if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      const OptionDef* d = name.find('_') == std::string::npos ? find_def(name) : nullptr;
      if (!d) return error("unknown option " + a.substr(0, eq));
      std::string value;
      if (eq != std::string::npos) {
        value = a.substr(eq + 1);
      } else {
        if (i + 1 >= args.size()) return error("option --" + name + " needs a value");
        value = args[++i];
      }
      if (auto e = d->set(o, value)) return error(*e);
    } else if (a.size() > 1 && a[0] == '-') {
      return error("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }

  if (positional.size() > 2) return error("unexpected argument '" + positional[2] + "'");
  if (!positional.empty()) {
    if (!o.mega.empty() && o.mega != positional[0])
      return error("two Mega URLs: --mega " + o.mega + " and '" + positional[0] + "'");
    o.mega = positional[0];
  }
  if (positional.size() > 1) {
    if (!o.mountpoint.empty() && o.mountpoint != positional[1])
      return error("two mountpoints: --mountpoint " + o.mountpoint + " and '" + positional[1] + "'");
    o.mountpoint = positional[1];
  }
  if (o.mega.empty()) return error("--mega URL is required (or: antares-fs URL MOUNTPOINT -o ...)");
  if (o.mountpoint.empty()) return error("--mountpoint DIR is required (or: antares-fs URL MOUNTPOINT -o ...)");
  if (o.upper.empty()) return error("--upper DIR (-o upper=DIR) is required");
  if (o.cache.empty()) return error("--cache DIR (-o cache=DIR) is required");
  if (o.cl.empty() != o.cl_dir.empty()) return error("--cl and --cl-dir go together");
  if (o.run_dir.empty()) return error("--run-dir must not be empty");
  for (auto [name, value] : {std::pair{"--dir-open", &o.dir_open}, std::pair{"--file-open", &o.file_open}}) {
    if (*value != "kernel") continue;
    // Only invalidations keep what the kernel caches current, and under
    // per-dir refresh it is the opens that drive the refresh.
    if (!strategies().find(o.strategy)->invalidates())
      return error(std::string(name) + " kernel needs --strategy B or auto (got " + o.strategy +
                   "): the kernel keeps what only invalidations refresh");
    if (o.refresh != "merkle") return error(std::string(name) + " kernel needs --refresh merkle (per-dir refreshes on opens)");
  }
  if (debug) o.foreground = true;  // libfuse's debug output goes to stderr

  auto has = [&](const std::string& prefix) {
    return std::any_of(fuse.begin(), fuse.end(), [&](const std::string& f) { return f.rfind(prefix, 0) == 0; });
  };
  std::vector<std::string> defaults;
  if (!no_default_permissions && !has("default_permissions")) defaults.push_back("default_permissions");
  if (as_root && !no_allow_other && !has("allow_other") && !has("allow_root")) defaults.push_back("allow_other");
  if (no_allow_other)
    fuse.erase(std::remove(fuse.begin(), fuse.end(), "allow_other"), fuse.end());
  if (no_default_permissions)
    fuse.erase(std::remove(fuse.begin(), fuse.end(), "default_permissions"), fuse.end());
  if (!has("fsname=")) defaults.push_back("fsname=" + escape_fuse_value(o.mega));
  if (!has("subtype=")) defaults.push_back("subtype=antares-fs");
  o.fuse_options = std::move(defaults);
  o.fuse_options.insert(o.fuse_options.end(), fuse.begin(), fuse.end());
  return r;
}

bool paths_overlap(const std::string& a, const std::string& b) {
  auto inside = [](const std::string& inner, const std::string& outer) {
    if (outer == "/") return true;
    return inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 && inner[outer.size()] == '/';
  };
  return a == b || inside(a, b) || inside(b, a);
}

std::optional<StartupError> validate_paths(DaemonOptions& o) {
  auto fail = [](int code, std::string msg) { return StartupError{code, std::move(msg)}; };
  // The mountpoint first: its errors name the fix.
  struct stat st;
  if (::stat(o.mountpoint.c_str(), &st) != 0) {
    if (errno == ENOTCONN || errno == ECONNABORTED)
      return fail(kExitMountpoint, "mountpoint " + o.mountpoint +
                                       " is a dead FUSE mount left over from a crashed daemon; clear it with: "
                                       "fusermount3 -u " + o.mountpoint);
    return fail(kExitMountpoint, "mountpoint " + o.mountpoint + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) return fail(kExitMountpoint, "mountpoint " + o.mountpoint + " is not a directory");
  const std::pair<const char*, std::string*> layer_dirs[] = {
      {"--upper", &o.upper}, {"--cache", &o.cache}, {"--cl-dir", &o.cl_dir}};
  for (auto [flag, dir] : layer_dirs) {
    if (dir->empty()) continue;
    if (::stat(dir->c_str(), &st) != 0)
      return fail(kExitLayerDir, std::string(flag) + " " + *dir + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode)) return fail(kExitLayerDir, std::string(flag) + " " + *dir + " is not a directory");
  }
  // Absolute, symlink-free paths from here on (the daemon changes to /).
  for (std::string* p : {&o.mountpoint, &o.upper, &o.cache, &o.cl_dir}) {
    if (p->empty()) continue;
    char real[PATH_MAX];
    if (!::realpath(p->c_str(), real))
      return fail(p == &o.mountpoint ? kExitMountpoint : kExitLayerDir, *p + ": " + std::strerror(errno));
    *p = real;
  }
  {
    // The run directory may not exist yet: resolve what exists of it.
    std::error_code ec;
    auto abs = std::filesystem::absolute(o.run_dir, ec);
    auto canon = std::filesystem::weakly_canonical(ec ? std::filesystem::path(o.run_dir) : abs, ec);
    o.run_dir = (ec ? abs.lexically_normal() : canon).string();
    while (o.run_dir.size() > 1 && o.run_dir.back() == '/') o.run_dir.pop_back();
  }
  const std::pair<const char*, const std::string*> dirs[] = {
      {"mountpoint", &o.mountpoint}, {"--upper", &o.upper}, {"--cache", &o.cache},
      {"--cl-dir", &o.cl_dir},       {"--run-dir", &o.run_dir}};
  for (size_t i = 0; i < std::size(dirs); ++i)
    for (size_t j = i + 1; j < std::size(dirs); ++j) {
      const auto& [na, a] = dirs[i];
      const auto& [nb, b] = dirs[j];
      if (a->empty() || b->empty() || !paths_overlap(*a, *b)) continue;
      std::string how = *a == *b ? "are the same directory" : "are nested (one is inside the other)";
      return fail(kExitUsage, std::string(na) + " " + *a + " and " + nb + " " + *b + " " + how +
                                  ": each must be a separate directory, because antares-fs wipes --cache/lower and "
                                  "--cl-dir and mounts over the mountpoint");
    }
  if (auto m = mount_at(o.mountpoint))
    return fail(kExitMountpoint, "mountpoint " + o.mountpoint + " is busy: something (" + m->fstype +
                                     ") is already mounted there");
  std::error_code ec;
  if (!std::filesystem::is_empty(o.mountpoint, ec) || ec)
    return fail(kExitMountpoint, "mountpoint " + o.mountpoint + " is not empty" + (ec ? ": " + ec.message() : ""));
  return std::nullopt;
}

}  // namespace antares::fs
