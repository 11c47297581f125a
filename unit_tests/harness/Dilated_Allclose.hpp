// allclose(actual, expected, rtol, atol): copies both views to the host, counts the elements
// with |actual - expected| > atol + rtol * |expected| (NumPy's rule; NaN never matches, equal
// infinities do), and keeps the worst ones with their indices for the failure message.
#ifndef DILATED_ALLCLOSE_HPP
#define DILATED_ALLCLOSE_HPP

#include <Dilated_Compat.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace dilated::testing {

struct Mismatch {
  std::array<std::size_t, 4> index;
  double actual;
  double expected;
  double excess;  // |actual - expected| - (atol + rtol |expected|); inf for NaN or inf errors
};

struct AllcloseResult {
  std::size_t total = 0;
  std::size_t mismatches = 0;
  int rank = 0;
  double max_abs_error = 0;  // over the elements where both are finite
  double rtol = 0, atol = 0;
  std::vector<Mismatch> worst;  // largest excess first
  std::string shape_error;      // non-empty when the extents differ

  bool ok() const { return shape_error.empty() && mismatches == 0; }

  std::string describe() const {
    std::ostringstream out;
    out.precision(17);
    if (!shape_error.empty()) return "allclose: " + shape_error;
    out << "allclose(rtol=" << rtol << ", atol=" << atol << "): " << mismatches << " of " << total
        << " elements differ; max |actual - expected| = " << max_abs_error;
    for (const auto& m : worst) {
      out << "\n  at (";
      for (int i = 0; i < rank; ++i)
        out << (i ? ", " : "") << m.index[i];
      out << "): actual " << m.actual << ", expected " << m.expected;
    }
    return out.str();
  }
};

namespace Impl {

template <class HostView>
double element(const HostView& v, const std::array<std::size_t, 4>& i) {
  constexpr int rank = dilated::Impl::view_rank_v<HostView>;
  if constexpr (rank == 1) return dilated::Impl::to_double(v(i[0]));
  if constexpr (rank == 2) return dilated::Impl::to_double(v(i[0], i[1]));
  if constexpr (rank == 3) return dilated::Impl::to_double(v(i[0], i[1], i[2]));
  if constexpr (rank == 4) return dilated::Impl::to_double(v(i[0], i[1], i[2], i[3]));
}

}  // namespace Impl

template <class ActualView, class ExpectedView>
AllcloseResult allclose(const ActualView& actual, const ExpectedView& expected, double rtol,
                        double atol, std::size_t max_reported = 5) {
  constexpr int rank = dilated::Impl::view_rank_v<ActualView>;
  static_assert(rank == dilated::Impl::view_rank_v<ExpectedView>,
                "dilated::testing::allclose: actual and expected must have the same rank");
  static_assert(rank >= 1 && rank <= 4, "dilated::testing::allclose: supports ranks 1 to 4");
  AllcloseResult result;
  result.rank = rank;
  result.rtol = rtol;
  result.atol = atol;
  for (int i = 0; i < rank; ++i) {
    if (actual.extent(i) != expected.extent(i)) {
      result.shape_error = "extent(" + std::to_string(i) + ") differs: actual " +
                           std::to_string(actual.extent(i)) + ", expected " +
                           std::to_string(expected.extent(i));
      return result;
    }
  }
  const auto a = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), actual);
  const auto e = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), expected);

  std::array<std::size_t, 4> extent{1, 1, 1, 1}, index{0, 0, 0, 0};
  for (int i = 0; i < rank; ++i)
    extent[i] = actual.extent(i);
  result.total = extent[0] * extent[1] * extent[2] * extent[3];
  for (std::size_t flat = 0; flat < result.total; ++flat) {
    std::size_t rest = flat;
    for (int i = rank - 1; i >= 0; --i) {
      index[i] = rest % extent[i];
      rest /= extent[i];
    }
    const double x = Impl::element(a, index), y = Impl::element(e, index);
    double excess;
    if (std::isnan(x) || std::isnan(y)) {
      excess = std::numeric_limits<double>::infinity();
    } else if (std::isinf(x) || std::isinf(y)) {
      excess = x == y ? -1.0 : std::numeric_limits<double>::infinity();
    } else {
      const double error = std::abs(x - y);
      result.max_abs_error = std::max(result.max_abs_error, error);
      excess = error - (atol + rtol * std::abs(y));
    }
    if (excess <= 0) continue;
    ++result.mismatches;
    result.worst.push_back({index, x, y, excess});
    std::sort(result.worst.begin(), result.worst.end(),
              [](const Mismatch& l, const Mismatch& r) { return l.excess > r.excess; });
    if (result.worst.size() > max_reported) result.worst.pop_back();
  }
  return result;
}

}  // namespace dilated::testing

// Checks allclose and prints the worst elements when it fails.
#define DILATED_CHECK_ALLCLOSE(actual, expected, rtol, atol)                \
  do {                                                                      \
    const auto dilated_allclose_result_ =                                   \
        ::dilated::testing::allclose((actual), (expected), (rtol), (atol)); \
    INFO(dilated_allclose_result_.describe());                              \
    CHECK(dilated_allclose_result_.ok());                                   \
  } while (false)

#endif  // DILATED_ALLCLOSE_HPP
