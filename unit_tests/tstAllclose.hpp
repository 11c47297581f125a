// The test oracle's comparison itself: allclose must find every mismatch, rank the worst
// first with their indices, and treat NaN and infinities as documented.
#include <Dilated_Allclose.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
#include <limits>

namespace {
using MemSpace = TEST_MEMSPACE;

// A device view holding `host`'s values.
template <class HostView>
auto to_device(const HostView& host) {
  auto device = Kokkos::create_mirror_view_and_copy(MemSpace(), host);
  return device;
}
}  // namespace

TEST_CASE("allclose counts mismatches and reports the worst with indices",
          "[allclose]" TEST_CATEGORY) {
  using Catch::Matchers::ContainsSubstring;
  Kokkos::View<double***, Kokkos::HostSpace> expected("dilated::test::expected", 2, 3, 4);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k)
        expected(i, j, k) = 1.0 + i + 0.1 * j - 0.01 * k;
  Kokkos::View<double***, Kokkos::HostSpace> actual("dilated::test::actual", 2, 3, 4);
  Kokkos::deep_copy(actual, expected);

  auto same = dilated::testing::allclose(to_device(actual), to_device(expected), 1e-12, 0.0);
  REQUIRE(same.ok());
  REQUIRE(same.total == 24);

  actual(1, 2, 3) += 1e-3;  // the worst
  actual(0, 1, 0) += 1e-6;
  actual(0, 0, 1) += 1e-14;  // within rtol 1e-12 * |1|
  const auto r = dilated::testing::allclose(to_device(actual), to_device(expected), 1e-12, 0.0);
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.mismatches == 2);
  REQUIRE(r.worst.size() == 2);
  REQUIRE(r.worst[0].index == std::array<std::size_t, 4>{1, 2, 3, 0});
  REQUIRE(r.worst[1].index == std::array<std::size_t, 4>{0, 1, 0, 0});
  REQUIRE(std::abs(r.max_abs_error - 1e-3) < 1e-12);
  REQUIRE_THAT(r.describe(), ContainsSubstring("2 of 24 elements differ"));
  REQUIRE_THAT(r.describe(), ContainsSubstring("at (1, 2, 3)"));
  // A looser tolerance accepts both.
  REQUIRE(dilated::testing::allclose(actual, expected, 0.0, 2e-3).ok());
}

TEST_CASE("allclose: NaN never matches, equal infinities do, shapes must agree",
          "[allclose]" TEST_CATEGORY) {
  const double inf = std::numeric_limits<double>::infinity();
  Kokkos::View<double*, Kokkos::HostSpace> a("dilated::test::a", 3), e("dilated::test::e", 3);
  a(0) = -inf;
  e(0) = -inf;
  a(1) = 1;
  e(1) = 1;
  a(2) = 2;
  e(2) = 2;
  REQUIRE(dilated::testing::allclose(to_device(a), to_device(e), 0, 0).ok());
  a(2) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE(dilated::testing::allclose(to_device(a), to_device(e), 1, 1).mismatches == 1);
  a(2) = 2;
  a(0) = inf;
  REQUIRE(dilated::testing::allclose(to_device(a), to_device(e), 1, 1).mismatches == 1);
  Kokkos::View<double*, Kokkos::HostSpace> shorter("dilated::test::shorter", 2);
  const auto r = dilated::testing::allclose(to_device(shorter), to_device(e), 1, 1);
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.shape_error == "extent(0) differs: actual 2, expected 3");
}
