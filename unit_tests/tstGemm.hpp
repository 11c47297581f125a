// dilated::Impl::gemm (cuBLAS, Kokkos Kernels or the team kernel, whichever this backend has) and
// the team kernel itself, on every backend and storage type, against plain loops in double.
#include <Dilated_Allclose.hpp>
#include <Dilated_AttentionTestUtils.hpp>
#include <Dilated_Gemm.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using dilated::Impl::Op;
using Host2 = Kokkos::View<double**, Kokkos::LayoutRight, Kokkos::HostSpace>;

template <class T>
using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemSpace>;

// A rows x cols matrix of N(0, 1) values rounded to T, and the same values in double.
template <class T>
std::pair<Matrix<T>, Host2> random_matrix(int rows, int cols, std::uint64_t seed) {
  Matrix<T> device("dilated::test::matrix", rows, cols);
  auto staged = Kokkos::create_mirror_view(device);
  Host2 exact("dilated::test::matrix_double", rows, cols);
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      staged(i, j) = static_cast<T>(normal(engine));
      exact(i, j) = dilated::Impl::to_double(staged(i, j));
    }
  Kokkos::deep_copy(device, staged);
  return {device, exact};
}

Host2 expected_product(Op op_a, Op op_b, double alpha, const Host2& a, const Host2& b, double beta,
                       const Host2& c) {
  Host2 out("dilated::test::expected", c.extent(0), c.extent(1));
  const int k = op_a == Op::N ? a.extent(1) : a.extent(0);
  for (std::size_t i = 0; i < c.extent(0); ++i)
    for (std::size_t j = 0; j < c.extent(1); ++j) {
      double sum = 0;
      for (int l = 0; l < k; ++l)
        sum += (op_a == Op::N ? a(i, l) : a(l, i)) * (op_b == Op::N ? b(l, j) : b(j, l));
      out(i, j) = alpha * sum + (beta != 0 ? beta * c(i, j) : 0.0);
    }
  return out;
}

template <class T>
Host2 as_host(const Matrix<T>& x) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), x);
  Host2 out("dilated::test::as_double", x.extent(0), x.extent(1));
  for (std::size_t i = 0; i < x.extent(0); ++i)
    for (std::size_t j = 0; j < x.extent(1); ++j)
      out(i, j) = dilated::Impl::to_double(host(i, j));
  return out;
}

// Relative accuracy of a length-k dot product accumulated in float (double) and stored as T.
template <class T>
double gemm_tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return 2e-5;
  return 2e-2;  // half, bf16 (CUDA): storage rounding of the result dominates
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("gemm and the team kernel equal plain loops", "[gemm]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  using T = TestType;
  const std::string backend = dilated::Impl::gemm_backend<ExecSpace, T>();
  INFO("gemm() runs " << backend);
  struct Shape {
    int m, n, k;
  };
  // Tiles of 32: partial tiles in every dimension, one row, one column, a longer K.
  const Shape shapes[] = {{37, 45, 29}, {1, 70, 3}, {64, 1, 100}, {33, 32, 65}};
  std::uint64_t seed = 10;
  for (const auto& s : shapes)
    for (Op op_a : {Op::N, Op::T})
      for (Op op_b : {Op::N, Op::T})
        for (double beta : {0.0, -1.5})
          for (bool team : {false, true}) {
            CAPTURE(s.m, s.n, s.k, op_a == Op::T, op_b == Op::T, beta, team);
            const auto [a, ah] = op_a == Op::N ? random_matrix<T>(s.m, s.k, ++seed)
                                               : random_matrix<T>(s.k, s.m, ++seed);
            const auto [b, bh] = op_b == Op::N ? random_matrix<T>(s.k, s.n, ++seed)
                                               : random_matrix<T>(s.n, s.k, ++seed);
            auto [c, ch] = random_matrix<T>(s.m, s.n, ++seed);
            if (beta == 0) {  // C must not be read: NaN there must not reach the result
              Kokkos::deep_copy(c, static_cast<T>(std::numeric_limits<float>::quiet_NaN()));
            }
            const auto expected = expected_product(op_a, op_b, 0.75, ah, bh, beta, ch);
            if (team) {
              dilated::Impl::gemm_team_kernel(ExecSpace(), op_a, op_b, 0.75, a, b, beta, c);
            } else {
              dilated::Impl::gemm(ExecSpace(), op_a, op_b, 0.75, a, b, beta, c);
            }
            ExecSpace().fence();
            const double tol = gemm_tolerance<T>() * std::sqrt(double(s.k));
            DILATED_CHECK_ALLCLOSE(as_host(c), expected, tol, tol);
          }
}

TEST_CASE("gemm: K = 0 scales C, and mismatched extents throw", "[gemm]" TEST_CATEGORY) {
  using Catch::Matchers::ContainsSubstring;
  Matrix<double> a("a", 3, 0), b("b", 0, 4), c("c", 3, 4);
  Kokkos::deep_copy(c, 2.0);
  dilated::Impl::gemm(ExecSpace(), Op::N, Op::N, 1.0, a, b, 0.5, c);
  ExecSpace().fence();
  const auto ch = as_host(c);
  CHECK(ch(2, 3) == 1.0);
  CHECK(ch(0, 0) == 1.0);
  Matrix<double> a2("a", 3, 5), b2("b", 6, 4);
  REQUIRE_THROWS_WITH(dilated::Impl::gemm(ExecSpace(), Op::N, Op::N, 1.0, a2, b2, 0.0, c),
                      ContainsSubstring("op(A) has 5 columns but op(B) has 6 rows"));
  REQUIRE_THROWS_WITH(dilated::Impl::gemm(ExecSpace(), Op::T, Op::N, 1.0, a2, b2, 0.0, c),
                      ContainsSubstring("op(A) has 5 rows but C has 3"));
}
