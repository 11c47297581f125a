// Tolerances per storage precision, for comparing a kernel with the double reference.
//
// A result accumulated in float (or better) from inputs rounded to T carries the input
// rounding of T times a modest condition factor of softmax attention (the output is a convex
// combination of v rows; scores move by about |q||k| eps). With unit roundoff u(T):
//   double: u = 1.1e-16 -> 1e-10 covers any summation order over the lengths we test;
//   float : u = 6.0e-8  -> 2e-5 relative (the float target);
//   half  : u = 4.9e-4  -> 8 u ~= 4e-3 relative, 4e-3 absolute for O(1) data;
//   bf16  : u = 3.9e-3  -> 8 u ~= 3e-2 relative, 3e-2 absolute for O(1) data.
#ifndef DILATED_TOLERANCES_HPP
#define DILATED_TOLERANCES_HPP

#include <Dilated_Compat.hpp>

namespace dilated::testing {

template <class T>
struct Tolerance;

template <>
struct Tolerance<double> {
  static constexpr double rtol = 1e-10, atol = 1e-10;
};
template <>
struct Tolerance<float> {
  static constexpr double rtol = 2e-5, atol = 2e-5;
};
// On a host-only Kokkos the half types are float (see Dilated_Compat.hpp) and use float's.
#if !DILATED_HALF_IS_FLOAT
template <>
struct Tolerance<Kokkos::Experimental::half_t> {
  static constexpr double rtol = 4e-3, atol = 4e-3;
};
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
template <>
struct Tolerance<Kokkos::Experimental::bhalf_t> {
  static constexpr double rtol = 3e-2, atol = 3e-2;
};
#endif

}  // namespace dilated::testing

#endif  // DILATED_TOLERANCES_HPP
