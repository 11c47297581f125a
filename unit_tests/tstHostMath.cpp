// The host float functions that vectorised loops use (impl/Dilated_HostMath.hpp) against libm
// in double: erf over [-6, 6] (both pieces and the clamp), 1 +- tanh over [-20, 20] (relative,
// where small), exp over [-87, 0], and their special values.
#include <impl/Dilated_HostMath.hpp>

#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace {
namespace host_math = dilated::Impl::host_math;
}  // namespace

TEST_CASE("host_math::erf is within 1.5e-7 of the exact erf", "[host_math]") {
  // Every float in steps of 1e-5 over [-6, 6]: the polynomial piece (|x| < 1), the erfc piece
  // and the clamp at 4. The bound is 3x what std::erf rounded to float reaches (4.9e-8).
  double worst = 0, worst_x = 0;
  for (long i = -600000; i <= 600000; ++i) {
    const float x = static_cast<float>(i * 1e-5);
    const double error = std::fabs(host_math::erf(x) - std::erf(static_cast<double>(x)));
    if (error > worst) {
      worst = error;
      worst_x = x;
    }
  }
  CAPTURE(worst, worst_x);
  CHECK(worst <= 1.5e-7);
  // Relative near zero: erf(x) ~ 2x / sqrt(pi) keeps its significant digits.
  for (const float x : {1e-30f, 1e-10f, -3e-5f, 0.25f}) {
    CAPTURE(x);
    CHECK(std::fabs(host_math::erf(x) / std::erf(double(x)) - 1) <= 2e-7);
  }
}

TEST_CASE("host_math::erf keeps signs, limits and NaN", "[host_math]") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(host_math::erf(inf) == 1.f);
  CHECK(host_math::erf(-inf) == -1.f);
  CHECK(host_math::erf(1e30f) == 1.f);
  CHECK(host_math::erf(0.f) == 0.f);
  CHECK(std::signbit(host_math::erf(-0.f)));
  CHECK(std::isnan(host_math::erf(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(host_math::erf(-std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("host_math::one_plus_minus_tanh is relatively accurate, also where small",
          "[host_math]") {
  // 1 + tanh(u) down to 2 exp(-40) ~ 8e-18 at u = -20: a float 1 + tanh(u) would be 0 there.
  double worst = 0, worst_u = 0;
  for (long i = -200000; i <= 200000; ++i) {
    const float u = static_cast<float>(i * 1e-4);
    // 2 / (1 + exp(-2u)): 1 + tanh(u) in double would itself cancel to 0 below u ~ -19.
    const double exact = 2.0 / (1.0 + std::exp(-2.0 * static_cast<double>(u)));
    const auto pieces = host_math::one_plus_minus_tanh(u);
    const double exact_minus = 2.0 / (1.0 + std::exp(2.0 * static_cast<double>(u)));
    const double error =
        std::max(std::fabs(pieces.plus / exact - 1), std::fabs(pieces.minus / exact_minus - 1));
    if (error > worst) {
      worst = error;
      worst_u = u;
    }
  }
  CAPTURE(worst, worst_u);
  CHECK(worst <= 4e-7);  // exp's ~1 ulp and one division's rounding, a few float ulps
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(host_math::one_plus_tanh(inf) == 2.f);
  CHECK(host_math::one_plus_tanh(-inf) == 0.f);
  CHECK(host_math::one_plus_tanh(0.f) == 1.f);
  CHECK(host_math::one_plus_minus_tanh(0.f).minus == 1.f);
  CHECK(host_math::one_plus_minus_tanh(inf).minus == 0.f);
  CHECK(host_math::one_plus_minus_tanh(-inf).minus == 2.f);
  CHECK(std::isnan(host_math::one_plus_tanh(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("host_math::exp_nonpositive is within 2 float ulps of exp, 0 below -88", "[host_math]") {
  double worst = 0, worst_x = 0;
  for (long i = -870000; i <= 0; ++i) {  // [-87, 0] in steps of 1e-4
    const float x = static_cast<float>(i * 1e-4);
    const double error = std::fabs(host_math::exp_nonpositive(x) / std::exp(double(x)) - 1);
    if (error > worst) {
      worst = error;
      worst_x = x;
    }
  }
  CAPTURE(worst, worst_x);
  CHECK(worst <= 2.4e-7);  // 2 ulps of float (2^-23 each)
  CHECK(host_math::exp_nonpositive(0.f) == 1.f);
  CHECK(host_math::exp_nonpositive(-90.f) == 0.f);
  CHECK(host_math::exp_nonpositive(-std::numeric_limits<float>::infinity()) == 0.f);
  CHECK(std::isnan(host_math::exp_nonpositive(std::numeric_limits<float>::quiet_NaN())));
}
