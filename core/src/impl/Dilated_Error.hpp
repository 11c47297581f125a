// Building the messages of the exceptions that reject bad input: every message starts with the
// public function that was called and names the offending argument and its value.
#ifndef DILATED_IMPL_ERROR_HPP
#define DILATED_IMPL_ERROR_HPP

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dilated::Impl {

template <class... Parts>
[[noreturn]] void throw_invalid_argument(const char* function, Parts&&... parts) {
  std::ostringstream msg;
  msg << function << ": ";
  (msg << ... << std::forward<Parts>(parts));
  throw std::invalid_argument(msg.str());
}

// Throws std::invalid_argument(function + ": " + parts...) unless condition holds.
template <class... Parts>
void require(bool condition, const char* function, Parts&&... parts) {
  if (!condition) throw_invalid_argument(function, std::forward<Parts>(parts)...);
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_ERROR_HPP
