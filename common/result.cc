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

std::string exception_message(std::exception_ptr ep) {
  std::string what = "internal error";
  try {
    if (ep) std::rethrow_exception(ep);
  } catch (const std::exception& e) {
    what += std::string(": ") + e.what();
  } catch (...) {
  }
  return what;
}

}  // namespace antares
