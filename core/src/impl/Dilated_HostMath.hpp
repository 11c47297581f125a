// Float functions for host loops that must vectorise (the host micro-kernels' softmax, the
// Original's host rows, the host GELU): straight-line arithmetic, no branch and no libm call.
// glibc's erff and expf are scalar calls unless the build asks for fast math (its vector variants
// are declared only under __FAST_MATH__, and the library sets no flags), and one erff a value made
// the host GELU cost 27 ns an element on one core of this project's 2-core machine (a loop over 4
// Mi floats), where the loop below takes 1.4-2 ns.
//
// Selections are made on the bits (integer masks): a float compare in a ternary makes GCC
// branch around the arithmetic and the loop does not vectorise ("control flow in loop").
#ifndef DILATED_IMPL_HOST_MATH_HPP
#define DILATED_IMPL_HOST_MATH_HPP

#include <cstdint>
#include <cstring>

namespace dilated::Impl::host_math {

inline std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof(float));
  return b;
}
inline float float_of(std::uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof(float));
  return x;
}
// All ones where `condition`, else zero.
inline std::uint32_t mask_of(bool condition) {
  return 0u - static_cast<std::uint32_t>(condition);
}

// exp(x) for x <= 0 (-inf included) in straight-line arithmetic, so that loops over it
// vectorise (no branch, no libm call): x is clamped at -88 (below which the result is 0),
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes' expf polynomial (about 1 ulp), 2^n in
// the exponent bits; n = -127 (x < -87.68) gives exactly 0. The clamp compares the bits as
// unsigned integers (for x <= 0 a more negative x has larger bits): an integer min, where a
// float compare would make the compiler branch around the arithmetic and not vectorise.
// A NaN x (a NaN or infinite input makes NaN scores) gives NaN: n is rounded in the float
// domain (adding 1.5 * 2^23 leaves round(t) in the low mantissa bits) and the exponent is
// built in unsigned arithmetic, because a float -> int conversion of NaN is undefined behaviour
// (found by fuzz/fuzz_cli.cpp under UBSan: a float16 q holding a NaN).
inline float exp_nonpositive(float x) {
  constexpr std::uint32_t floor_bits = 0xC2B00000u;  // -88.0f
  std::uint32_t xb;
  std::memcpy(&xb, &x, sizeof(float));
  xb = xb < floor_bits ? xb : floor_bits;
  std::memcpy(&x, &xb, sizeof(float));
  const float t = x * 1.44269504088896341f;
  constexpr float round_shift = 12582912.0f;  // 1.5 * 2^23, bits 0x4B400000
  const float shifted = t + round_shift;      // t in [-127, 0]: round(t) + 1.5 * 2^23, exact
  std::uint32_t shifted_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(float));
  const std::uint32_t n_plus_127 = shifted_bits - 0x4B400000u + 127u;  // wraps for NaN only
  // round(t) from the integer, not as shifted - 1.5 * 2^23 (-ffast-math may fold that to t).
  const float fn = static_cast<float>(static_cast<std::int32_t>(n_plus_127) - 127);
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::uint32_t bits = n_plus_127 << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return p * scale;
}

// erf(x) in float, absolute error <= 1.5e-7 (measured: 1.14e-7 without FMA, 1.03e-7 with;
// std::erf rounded to float: 4.9e-8; unit_tests/tstHostMath.cpp checks [-6, 6] in steps of
// 1e-5 against the double erf). Two pieces, both computed and one kept:
//   |x| < 1       : x P(x^2), P of degree 5 (relative error 4.2e-8 before rounding);
//   1 <= |x|      : 1 - exp(Q(t)), Q of degree 8 fitting log erfc on [1, 4] in t = |x| - 1
//                   (error 1.3e-8 in the log), so that at |x| = 1, where erfc is largest, Q is
//                   its constant term and not a sum that cancels; |x| is clamped at 4, where
//                   erfc(4) = 1.5e-8 already rounds 1 - erfc to 1.
// The coefficients are weighted least-squares fits (reweighted towards the worst error) of
// SciPy's erf and erfc. erf(+-inf) = +-1, erf(-0) = -0, NaN stays NaN.
inline float erf(float x) {
  const std::uint32_t xb = bits_of(x), sign = xb & 0x80000000u, ab = xb & 0x7FFFFFFFu;
  const float a = float_of(ab), s = a * a;
  float p = -5.624663693e-04f;
  p = p * s + 4.915789429e-03f;
  p = p * s + -2.670967561e-02f;
  p = p * s + 1.128011613e-01f;
  p = p * s + -3.761231676e-01f;
  p = p * s + 1.128379119e+00f;
  const float small = a * p;
  const float t = float_of(ab < 0x40800000u ? ab : 0x40800000u) - 1.f;  // min(|x|, 4) - 1
  float q = 1.597997131e-06f;
  q = q * t + -3.247656352e-05f;
  q = q * t + 3.177925860e-04f;
  q = q * t + -2.047814248e-03f;
  q = q * t + 1.006818283e-02f;
  q = q * t + -4.156786646e-02f;
  q = q * t + -8.431079816e-01f;
  q = q * t + -2.638967169e+00f;
  q = q * t + -1.849605523e+00f;
  const float large = 1.f - exp_nonpositive(q);
  const std::uint32_t in_small = mask_of(ab < 0x3F800000u), is_nan = mask_of(ab > 0x7F800000u);
  const std::uint32_t yb = (bits_of(small) & in_small) | (bits_of(large) & ~in_small) | sign;
  return float_of((xb & is_nan) | (yb & ~is_nan));
}

// 1 + tanh(u) and 1 - tanh(u) (= 1 + tanh(-u)) from one exp: with e = exp(-2 |u|) <= 1 they
// are 2 / (1 + e) and 2 e / (1 + e), the first for the sign of u, no overflow, and each keeps
// its relative accuracy where it is small, which 1 +- a rounded tanh loses (the tanh GELU's
// derivative needs 1 - tanh^2 = (1 + tanh)(1 - tanh) near u >> 0). NaN stays NaN.
struct OnePlusMinusTanh {
  float plus, minus;
};
inline OnePlusMinusTanh one_plus_minus_tanh(float u) {
  const std::uint32_t ub = bits_of(u);
  const float e = exp_nonpositive(-2.f * float_of(ub & 0x7FFFFFFFu));
  const float big = 2.f / (1.f + e), small = 2.f * e / (1.f + e);
  const std::uint32_t negative = mask_of(ub > 0x80000000u);  // u < 0 (not -0); a NaN either way
  return {float_of((bits_of(small) & negative) | (bits_of(big) & ~negative)),
          float_of((bits_of(big) & negative) | (bits_of(small) & ~negative))};
}
inline float one_plus_tanh(float u) {
  return one_plus_minus_tanh(u).plus;
}

}  // namespace dilated::Impl::host_math

#endif  // DILATED_IMPL_HOST_MATH_HPP
