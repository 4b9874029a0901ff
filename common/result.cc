#include "common/result.h"

#include <cstring>

namespace antares {

std::string Error::describe() const {
  std::string s = message.empty() ? std::string("error") : message;
  s += " (";
  const char* name = strerrorname_np(err);
  s += name ? name : std::to_string(err);
  if (http_status != 0) s += ", http " + std::to_string(http_status);
  s += ")";
  return s;
}

}  // namespace antares
