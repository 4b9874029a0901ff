#include "repro/buck_parse.h"

#include <cctype>

namespace antares::repro {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::vector<std::string> split_list(std::string_view v) {
  std::vector<std::string> out;
  while (!v.empty()) {
    size_t c = v.find(',');
    std::string_view item = trim(v.substr(0, c));
    if (!item.empty()) out.emplace_back(item);
    if (c == std::string_view::npos) break;
    v.remove_prefix(c + 1);
  }
  return out;
}

bool is_ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; }

bool valid_relative(std::string_view p) {
  if (p.empty() || p.front() == '/') return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    std::string_view comp = p.substr(start, end - start);
    if (comp.empty() || comp == "." || comp == "..") return false;
    start = end + 1;
  }
  return true;
}

}  // namespace

BuckConfig parse_buckconfig(std::string_view text) {
  BuckConfig cfg;
  std::string section;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = trim(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    if (line.front() == '[') {
      size_t close = line.find(']');
      section = std::string(trim(line.substr(1, close == std::string_view::npos ? line.size() - 1 : close - 1)));
      continue;
    }
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view key = trim(line.substr(0, eq));
    std::string_view value = trim(line.substr(eq + 1));
    if (section == "buildfile" && key == "name") {
      auto names = split_list(value);
      if (!names.empty()) cfg.buildfile_names = std::move(names);
    } else if (section == "project" && key == "ignore") {
      cfg.ignore = split_list(value);
    }
  }
  return cfg;
}

std::vector<std::string> parse_loads(std::string_view text) {
  std::vector<std::string> out;
  bool in_comment = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n') {
      in_comment = false;
      continue;
    }
    if (in_comment) continue;
    if (c == '#') {
      in_comment = true;
      continue;
    }
    if (c == '"' || c == '\'') {  // skip string literals: load( inside a string is no call
      size_t j = i + 1;
      while (j < text.size() && text[j] != c && text[j] != '\n') j += text[j] == '\\' ? 2 : 1;
      i = j < text.size() ? j : text.size();
      continue;
    }
    if (text.compare(i, 5, "load(") != 0 || (i > 0 && is_ident_char(text[i - 1]))) continue;
    size_t j = i + 5;
    while (j < text.size() && std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    if (j >= text.size() || (text[j] != '"' && text[j] != '\'')) {
      i += 4;
      continue;
    }
    char q = text[j];
    size_t end = text.find(q, j + 1);
    if (end == std::string_view::npos) break;
    std::string_view label = text.substr(j + 1, end - j - 1);
    if (label.find('\n') == std::string_view::npos) out.emplace_back(label);
    // Continue after the label; the rest of the call holds only symbol names.
    i = end;
  }
  return out;
}

std::optional<std::string> label_to_path(std::string_view label, std::string_view package_dir) {
  std::string pkg;
  std::string_view file;
  if (label.substr(0, 2) == "//") {
    std::string_view rest = label.substr(2);
    size_t colon = rest.find(':');
    if (colon == std::string_view::npos) return std::nullopt;
    pkg = std::string(rest.substr(0, colon));
    file = rest.substr(colon + 1);
  } else if (!label.empty() && label.front() == ':') {
    pkg = std::string(package_dir);
    file = label.substr(1);
  } else {
    return std::nullopt;  // another cell (prelude//...) or a malformed label
  }
  while (!pkg.empty() && pkg.back() == '/') pkg.pop_back();
  if (file.empty()) return std::nullopt;
  std::string path = pkg.empty() ? std::string(file) : pkg + "/" + std::string(file);
  if (!valid_relative(path)) return std::nullopt;
  return path;
}

}  // namespace antares::repro
