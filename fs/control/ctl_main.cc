// antares-ctl: the command-line client of a mounted antares-fs's control
// endpoint. Exit codes: 0 success, 1 the daemon is unreachable or refused,
// 2 bad usage.
#include <getopt.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "common/version.h"
#include "fs/control/control_client.h"

namespace {

using antares::control::ControlClient;

const char* kUsage =
    "usage: antares-ctl [--run-dir DIR] [--timeout SECONDS] --mountpoint M COMMAND\n"
    "\n"
    "Talks to the control endpoint of a mounted antares-fs.\n"
    "\n"
    "Commands:\n"
    "  status            print the daemon's status as JSON\n"
    "  strategy NAME     switch the stale-handle strategy (none, A, B, C, auto)\n"
    "  refresh [PATH]    drop cached state for PATH (relative to the mount), or everything\n"
    "  metrics           print the Prometheus metrics\n"
    "  help [COMMAND]    this text, or one command's\n"
    "\n"
    "Options:\n"
    "  -m, --mountpoint M   the antares-fs mountpoint (required)\n"
    "  -r, --run-dir DIR    where endpoint files are ($ANTARES_RUN_DIR, else /run/antares)\n"
    "  -t, --timeout S      request timeout in seconds (default 30)\n"
    "  -h, --help           show this help (after a COMMAND: that command's)\n"
    "  -V, --version        print the version\n"
    "\n"
    "Exit status: 0 ok, 1 daemon unreachable or request refused, 2 bad usage.\n";

struct Command {
  const char* name;
  const char* synopsis;
  const char* help;
};
const Command kCommands[] = {
    {"status", "status",
     "Prints the daemon's status as pretty JSON: strategy, TTL, kernel timeouts\n"
     "and counters (ESTALE returned and recovered, invalidations, refreshes,\n"
     "HTTP requests).\n"},
    {"strategy", "strategy NAME",
     "Switches the stale-handle strategy of the live mount, without a remount.\n"
     "NAME is none, A, B, C or auto (any case); prints the name now in force,\n"
     "e.g. {\"strategy\":\"A\"}.\n"},
    {"refresh", "refresh [PATH]",
     "Expires the cached listing of PATH (relative to the mount root; '/' and\n"
     "'.' allowed, '..' refused) so the next access fetches it again, and\n"
     "re-syncs the CL layer. Without PATH: everything.\n"},
    {"metrics", "metrics", "Prints the Prometheus metrics (text format 0.0.4), as scraped from /metrics.\n"},
    {"help", "help [COMMAND]", "Prints the global help, or COMMAND's.\n"},
};

const Command* find_command(const std::string& name) {
  for (const auto& c : kCommands)
    if (name == c.name) return &c;
  return nullptr;
}

int command_help(const Command& c) {
  std::cout << "usage: antares-ctl [--run-dir DIR] [--timeout SECONDS] --mountpoint M " << c.synopsis << "\n\n"
            << c.help << "\nExit status: 0 ok, 1 daemon unreachable or request refused, 2 bad usage.\n";
  return 0;
}

int usage_error(const std::string& msg) {
  std::cerr << "antares-ctl: " << msg << "\n"
            << "usage: antares-ctl [--run-dir DIR] [--timeout SECONDS] --mountpoint M "
               "status|strategy NAME|refresh [PATH]|metrics\n"
            << "Try 'antares-ctl --help' for more.\n";
  return 2;
}

int fail(const antares::Error& e) {
  std::cerr << "antares-ctl: " << e.message << "\n";
  return 1;
}

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

int run(int argc, char** argv) {
  std::string mountpoint, run_dir = antares::control::default_run_dir();
  long timeout_s = 30;
  bool help = false;
  static const option kLong[] = {{"mountpoint", required_argument, nullptr, 'm'},
                                 {"run-dir", required_argument, nullptr, 'r'},
                                 {"timeout", required_argument, nullptr, 't'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {"version", no_argument, nullptr, 'V'},
                                 {nullptr, 0, nullptr, 0}};
  opterr = 0;  // we print our own messages
  int c;
  while ((c = getopt_long(argc, argv, ":m:r:t:hV", kLong, nullptr)) != -1) {
    switch (c) {
      case 'm': mountpoint = optarg; break;
      case 'r': run_dir = optarg; break;
      case 't': {
        char* end = nullptr;
        timeout_s = std::strtol(optarg, &end, 10);
        if (!*optarg || *end || timeout_s <= 0 || timeout_s > 86400)
          return usage_error(std::string("--timeout must be a number of seconds in [1, 86400], got '") + optarg + "'");
        break;
      }
      case 'h': help = true; break;
      case 'V': std::cout << antares::version_text("antares-ctl"); return 0;
      case ':': return usage_error(std::string("option ") + argv[optind - 1] + " needs a value");
      default:
        return usage_error("unknown option " +
                           (optopt ? std::string("-") + static_cast<char>(optopt) : std::string(argv[optind - 1])));
    }
  }
  std::vector<std::string> args(argv + optind, argv + argc);
  // "antares-ctl COMMAND --help" and "antares-ctl help [COMMAND]" need no mount.
  if (!args.empty() && args[0] == "help") {
    if (args.size() == 1) return std::cout << kUsage, 0;
    const Command* cmd = find_command(args[1]);
    if (!cmd || args.size() > 2) return usage_error("help takes one COMMAND: status, strategy, refresh, metrics");
    return command_help(*cmd);
  }
  if (help) {
    if (args.empty()) return std::cout << kUsage, 0;
    const Command* cmd = find_command(args[0]);
    if (!cmd) return usage_error("unknown command '" + args[0] + "'");
    return command_help(*cmd);
  }
  if (mountpoint.empty()) return usage_error("--mountpoint is required");
  if (run_dir.empty()) return usage_error("--run-dir must not be empty");
  if (args.empty()) return usage_error("missing command");
  const std::string& cmd = args[0];
  auto arity = [&](size_t lo, size_t hi) { return args.size() - 1 >= lo && args.size() - 1 <= hi; };
  std::string path;
  if (cmd == "status" || cmd == "metrics") {
    if (!arity(0, 0)) return usage_error(cmd + " takes no arguments");
  } else if (cmd == "strategy") {
    if (!arity(1, 1) || args[1].empty()) return usage_error("strategy needs exactly one NAME");
  } else if (cmd == "refresh") {
    if (!arity(0, 1)) return usage_error("refresh takes at most one PATH");
    auto p = antares::control::normalize_refresh_path(args.size() > 1 ? args[1] : "");
    if (!p) return usage_error(p.error().message);
    path = *p;
  } else {
    return usage_error("unknown command '" + cmd + "'");
  }

  auto client = ControlClient::for_mountpoint(mountpoint, run_dir);
  if (!client) return fail(client.error());
  client->set_timeout(std::chrono::seconds(timeout_s));

  if (cmd == "status") {
    auto st = client->status();
    if (!st) return fail(st.error());
    std::cout << st->dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (cmd == "strategy") {
    auto now = client->set_strategy(args[1]);
    if (!now) return fail(now.error());
    std::cout << dump(nlohmann::json{{"strategy", *now}}) << "\n";
  } else if (cmd == "refresh") {
    if (auto st = client->refresh(path); !st) return fail(st.error());
    std::cout << dump(nlohmann::json{{"refreshed", path.empty() ? "everything" : path}}) << "\n";
  } else {
    auto m = client->metrics();
    if (!m) return fail(m.error());
    std::cout << *m;
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // e.g. bad_alloc: report, never abort
    std::cerr << "antares-ctl: internal error: " << e.what() << "\n";
    return 1;
  }
}
