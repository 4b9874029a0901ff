// Parsing of human durations on command lines: "5s", "500ms", "2m", "1.5s".
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace antares {

// Accepts a non-negative number followed by ms, s, m or h; a bare number is
// seconds. Returns nullopt for anything else (empty, negative, unknown unit).
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

}  // namespace antares
