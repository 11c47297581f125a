// dilated::NonFiniteInput and Impl::check_finite: the opt-in check of the inputs of an attention
// call (AttentionOptions::set_check_finite). One Kokkos reduction per input ("dilated::
// check_finite") finds the first element (smallest flat index in (b, n, h, d) order) that is NaN
// or +-inf; the call then throws before any other work, naming the function, the argument, the
// coordinates and the value.
//
// A std::invalid_argument, as the library's other rejections of a caller's input (shapes,
// aliasing): a non-finite input is a bad argument value, known before any work, and callers that
// already catch std::invalid_argument (the CLI: exit status 2) treat it as such without change.
// Not a std::domain_error: the standard library uses that for arguments outside a mathematical
// function's domain, and attention is defined (NaN-propagating) on any input.
#ifndef DILATED_CHECK_FINITE_HPP
#define DILATED_CHECK_FINITE_HPP

#include <Dilated_Compat.hpp>
#include <impl/Dilated_IndexRange.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace dilated {

class NonFiniteInput : public std::invalid_argument {
 public:
  NonFiniteInput(const std::string& function, const std::string& argument,
                 std::array<std::size_t, 4> index, double value)
      : std::invalid_argument(message(function, argument, index, value)),
        argument_(argument),
        index_(index),
        value_(value) {}
  // The argument's name ("q", "k", "v", "dout"), the (b, n, h, d) of its first non-finite
  // element (smallest flat index in that order) and its value (NaN, +inf or -inf).
  const std::string& argument() const { return argument_; }
  const std::array<std::size_t, 4>& index() const { return index_; }
  double value() const { return value_; }

  // "nan", "inf" or "-inf".
  static std::string value_string(double value) {
    if (std::isnan(value)) return "nan";
    return value > 0 ? "inf" : "-inf";
  }

 private:
  static std::string message(const std::string& function, const std::string& argument,
                             const std::array<std::size_t, 4>& i, double value) {
    std::ostringstream out;
    out << function << ": " << argument << "(" << i[0] << ", " << i[1] << ", " << i[2] << ", "
        << i[3] << ") = " << value_string(value) << " is not finite (check_finite; b, n, h, d)";
    return out.str();
  }

  std::string argument_;
  std::array<std::size_t, 4> index_;
  double value_;
};

namespace Impl {

// Whether x is finite, by equality comparisons only: they are quiet (no FE_INVALID, which a
// caller may trap, as the tests do), where x - x or x < y on a NaN or infinity would raise it.
// half / bf16 reach here widened to double, exactly.
KOKKOS_INLINE_FUNCTION bool is_finite_quiet(double x) {
  constexpr double inf = math::infinity<double>();
  return x == x && x != inf && x != -inf;
}

// Throws NonFiniteInput(fn, name, ...) when the rank-4 view x holds a NaN or an infinity. One
// parallel_reduce on `space` (a read of x), then, when one is found, a copy of that element.
// Blocks until the reduction is done.
template <class ExecSpace, class View>
void check_finite(const ExecSpace& space, const char* fn, const char* name, const View& x) {
  static_assert(view_rank_v<View> == 4, "dilated::Impl::check_finite: rank-4 views only");
  const std::int64_t n1 = x.extent(1), n2 = x.extent(2), n3 = x.extent(3);
  const std::int64_t size = static_cast<std::int64_t>(x.extent(0)) * n1 * n2 * n3;
  if (size == 0) return;
  constexpr std::int64_t none = std::numeric_limits<std::int64_t>::max();
  std::int64_t first = none;
  Kokkos::parallel_reduce(
      "dilated::check_finite", index_range(space, 0, size),
      KOKKOS_LAMBDA(const std::int64_t flat, std::int64_t& found) {
        std::int64_t r = flat;
        const std::int64_t d = r % n3;
        r /= n3;
        const std::int64_t h = r % n2;
        r /= n2;
        const std::int64_t t = r % n1;
        const std::int64_t b = r / n1;
        if (!is_finite_quiet(to_double(x(b, t, h, d))) && flat < found) found = flat;
      },
      Kokkos::Min<std::int64_t>(first));
  if (first == none) return;
  std::array<std::size_t, 4> index{};
  std::int64_t r = first;
  index[3] = static_cast<std::size_t>(r % n3);
  r /= n3;
  index[2] = static_cast<std::size_t>(r % n2);
  r /= n2;
  index[1] = static_cast<std::size_t>(r % n1);
  index[0] = static_cast<std::size_t>(r / n1);
  const auto element = Kokkos::subview(x, index[0], index[1], index[2], index[3]);
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), element);
  throw NonFiniteInput(fn, name, index, to_double(host()));
}

}  // namespace Impl
}  // namespace dilated

#endif  // DILATED_CHECK_FINITE_HPP
