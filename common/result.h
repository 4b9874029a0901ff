// Result<T>: a value or an Error that keeps the raw errno (and, for remote
// calls, the HTTP status). Errors are values, never exceptions, so that ESTALE
// and ETIMEDOUT survive every layer unchanged and can be counted.
#pragma once

#include <cerrno>
#include <exception>
#include <string>
#include <utility>
#include <variant>

namespace antares {

struct Error {
  int err = EIO;        // positive errno; never 0 in an Error
  int http_status = 0;  // the HTTP status that caused it, 0 if none
  std::string message;  // human-readable context for logs and CLI output

  static Error from_errno(int e, std::string msg = {}) { return Error{e, 0, std::move(msg)}; }
  std::string describe() const;  // "message (errno NAME, http N)"
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  // By value on temporaries, so `for (auto& x : *f())` cannot dangle.
  T operator*() && { return std::move(value()); }

  const Error& error() const { return std::get<1>(v_); }
  int err() const { return ok() ? 0 : error().err; }

 private:
  std::variant<T, Error> v_;
};

// Result<void>: success or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }
  int err() const { return ok_ ? 0 : error_.err; }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Result<void>;

// "what()" of an exception caught at a boundary (an HTTP handler), for the
// error reply: exceptions never escape, their text is kept.
std::string exception_message(std::exception_ptr ep);

}  // namespace antares
