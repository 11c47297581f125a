// Conversions between storage types (float, double, half_t, bhalf_t) and the accumulation type.
#ifndef DILATED_IMPL_NUMERIC_HPP
#define DILATED_IMPL_NUMERIC_HPP

#include <Dilated_Compat.hpp>

#include <type_traits>

namespace dilated::Impl {

// The value of x as a double. Kokkos' half types convert to float, which is exact.
template <class T>
KOKKOS_INLINE_FUNCTION double to_double(const T& x) {
  if constexpr (std::is_arithmetic_v<T>) {
    return static_cast<double>(x);
  } else {
    return static_cast<double>(static_cast<float>(x));
  }
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_NUMERIC_HPP
