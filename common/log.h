// Structured log lines: "ts=... level=info event=name key=value ...".
// Values with spaces or quotes are quoted. Thread-safe; a line is written with
// one write(2) (or one datagram) so concurrent lines never interleave. Lines
// go to stderr unless a daemon sends them to a file or to syslog at startup.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace antares::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

void set_level(Level level);
Level level();
// Parses "debug", "info", "warn", "error", "off".
bool parse_level(std::string_view text, Level* out);

using Field = std::pair<std::string_view, std::string>;
void write(Level level, std::string_view event, std::initializer_list<Field> fields = {});

// Sinks. Choose one at startup, before other threads log.
void to_stderr();
// Appends to `path` (created 0640). Error text if it cannot be opened; the
// sink is unchanged then.
std::string to_file(const std::string& path);
// RFC 3164 datagrams "<PRI>Mmm dd hh:mm:ss ident[pid]: <line>" to the unix
// socket `socket_path` (normally /dev/log), facility daemon, severity from
// the level. A line that cannot be sent is dropped.
void to_syslog(const std::string& ident, const std::string& socket_path);

inline bool enabled(Level l) { return l >= level(); }
inline void debug(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::debug)) write(Level::debug, e, f); }
inline void info(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::info)) write(Level::info, e, f); }
inline void warn(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::warn)) write(Level::warn, e, f); }
inline void error(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::error)) write(Level::error, e, f); }

}  // namespace antares::log
