// dilated::Impl::gemm (cuBLAS, Kokkos Kernels or the team kernel, whichever this backend has) and
// the team kernel itself, on every backend and storage type, against plain loops in double; which
// of them ran, through Kokkos Tools.
#include <Dilated_Allclose.hpp>
#include <Dilated_AttentionTestUtils.hpp>
#include <Dilated_FeedForward.hpp>
#include <Dilated_Gelu.hpp>
#include <Dilated_Gemm.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

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

namespace {

// What gemm() must run, written out here rather than read from the library: Kokkos Kernels for
// float and double where it is linked (on CUDA where it has its cuBLAS TPL, which the CUDA build of
// scripts/setup.sh has), cuBLAS for everything else on CUDA, the team kernel for the rest on the
// host. With `tf32` (float on CUDA) and with rows that are not dense, Kokkos Kernels is passed
// over: cuBLAS on CUDA, the team kernel on the host.
template <class T>
std::string expected_gemm_backend(bool dense, bool tf32) {
  constexpr bool blas_type = std::is_same_v<T, float> || std::is_same_v<T, double>;
  bool cuda = false, kokkos_kernels = DILATED_HAVE_KOKKOSKERNELS;
#if defined(KOKKOS_ENABLE_CUDA)
  cuda = std::is_same_v<ExecSpace, Kokkos::Cuda>;
#if !defined(KOKKOSKERNELS_ENABLE_TPL_CUBLAS)
  if (cuda) kokkos_kernels = false;
#endif
#endif
  const bool passed_over = !dense || (cuda && tf32 && std::is_same_v<T, float>);
  if (blas_type && kokkos_kernels && !passed_over) return "KokkosBlas";
  return cuda ? "cuBLAS" : "team kernel";
}

// The Kokkos regions and kernels of one call, seen through Kokkos Tools.
struct GemmTrace {
  static inline bool recording = false;
  static inline std::vector<std::string> regions, kernels;
  static void on_push_region(const char* name) {
    if (recording) regions.emplace_back(name);
  }
  static void on_begin_parallel_for(const char* name, std::uint32_t, std::uint64_t*) {
    if (recording) kernels.emplace_back(name);
  }
  static bool any_starts_with(const std::vector<std::string>& names, const std::string& prefix) {
    for (const auto& n : names)
      if (n.rfind(prefix, 0) == 0) return true;
    return false;
  }
};

// Which implementation ran `call`, from what it left in Kokkos Tools: Kokkos Kernels pushes a
// "KokkosBlas::gemm[...]" region (on CUDA "[TPL_CUBLAS,...]" when it hands the product to cuBLAS;
// its own kernel would say otherwise), the team kernel launches "dilated::gemm::team_kernel", and
// a direct cuBLAS call shows neither (no Kokkos kernel at all).
template <class Call>
std::string observed_gemm_backend(const Call& call) {
  ExecSpace().fence();
  GemmTrace::regions.clear();
  GemmTrace::kernels.clear();
  Kokkos::Tools::Experimental::set_push_region_callback(&GemmTrace::on_push_region);
  Kokkos::Tools::Experimental::set_begin_parallel_for_callback(&GemmTrace::on_begin_parallel_for);
  GemmTrace::recording = true;
  call();
  ExecSpace().fence();
  GemmTrace::recording = false;
  Kokkos::Tools::Experimental::set_push_region_callback(nullptr);
  Kokkos::Tools::Experimental::set_begin_parallel_for_callback(nullptr);
  const bool kokkos_blas = GemmTrace::any_starts_with(GemmTrace::regions, "KokkosBlas::gemm");
  const bool team = GemmTrace::any_starts_with(GemmTrace::kernels, "dilated::gemm::team_kernel");
  if (kokkos_blas && !team) {
    bool cuda = false;
#if defined(KOKKOS_ENABLE_CUDA)
    cuda = std::is_same_v<ExecSpace, Kokkos::Cuda>;
#endif
    if (cuda && !GemmTrace::any_starts_with(GemmTrace::regions, "KokkosBlas::gemm[TPL_CUBLAS,"))
      return "KokkosBlas without cuBLAS";
    return "KokkosBlas";
  }
  if (team && !kokkos_blas) return "team kernel";
  if (!team && !kokkos_blas && GemmTrace::kernels.empty()) return "cuBLAS";
  return "unclear";
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("gemm runs the implementation gemm_backend names", "[gemm]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  // Issue 18: on CUDA, float and double go through Kokkos Kernels (to cuBLAS, on the caller's
  // stream), half and bf16 to cuBLAS directly; on the host Kokkos Kernels (the BLAS) or the team
  // kernel. Seen from what ran, not only from the name.
  using T = TestType;
  CHECK(std::string(dilated::Impl::gemm_backend<ExecSpace, T>()) ==
        expected_gemm_backend<T>(true, false));
  // 40 x 48 x 32: dense rows, no one-column or small-product shortcut inside Kokkos Kernels.
  const auto a = random_matrix<T>(40, 32, 90).first;
  const auto b = random_matrix<T>(32, 48, 91).first;
  const auto [wide, wide_h] = random_matrix<T>(40, 64, 92);
  const Matrix<T> c("c", 40, 48);
  // The same product on a column slice of `wide` (row stride 64, 48 columns): rows not dense.
  const auto strided = Kokkos::subview(wide, Kokkos::ALL, std::pair<int, int>(0, 48));
  static_assert(std::is_same_v<typename decltype(strided)::array_layout, Kokkos::LayoutRight>);
  REQUIRE(strided.stride(0) == 64);
  dilated::Impl::GemmOptions tf32;
  tf32.use_tf32 = true;
  CHECK(observed_gemm_backend([&] {
          dilated::Impl::gemm(ExecSpace(), Op::N, Op::N, 1.0, a, b, 0.0, c);
        }) == expected_gemm_backend<T>(true, false));
  CHECK(observed_gemm_backend([&] {
          dilated::Impl::gemm(ExecSpace(), Op::N, Op::N, 1.0, a, b, 0.0, c, tf32);
        }) == expected_gemm_backend<T>(true, true));
  CHECK(observed_gemm_backend([&] {
          dilated::Impl::gemm(ExecSpace(), Op::N, Op::N, 1.0, a, b, 0.0, strided);
        }) == expected_gemm_backend<T>(false, false));
  // The strided product is right and left the other columns alone.
  const Host2 ah = as_host(a), bh = as_host(b), zero("zero", 40, 48);
  const auto expected = expected_product(Op::N, Op::N, 1.0, ah, bh, 0.0, zero);
  const auto got = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), wide);
  Host2 got_slice("got_slice", 40, 48);
  long untouched = 0;
  for (int i = 0; i < 40; ++i) {
    for (int j = 0; j < 48; ++j)
      got_slice(i, j) = dilated::Impl::to_double(got(i, j));
    for (int j = 48; j < 64; ++j)
      untouched += dilated::Impl::to_double(got(i, j)) == wide_h(i, j);
  }
  const double tol = gemm_tolerance<T>() * std::sqrt(32.0);
  DILATED_CHECK_ALLCLOSE(got_slice, expected, tol, tol);
  CHECK(untouched == 40 * 16);
}

namespace {

// PyTorch's tanh GELU and its derivative in double (written out here, not the library's).
double tanh_gelu(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
double tanh_gelu_derivative(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  const double t = std::tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x);
}
// PyTorch's exact GELU x Phi(x) and its derivative Phi(x) + x phi(x), in double.
double exact_gelu(double x) {
  return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}
double exact_gelu_derivative(double x) {
  return 0.5 * std::erfc(-x / std::sqrt(2.0)) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("gemm_bias_gelu and gemm_dgelu equal plain loops (tanh GELU)",
                        "[gemm]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  // The feed-forward's two products with the GELU in cuBLASLt's epilogue: on CUDA for half, bf16
  // and float they must take it (for a shape cuBLASLt's rules allow: the auxiliary matrix's
  // columns a multiple of 8); elsewhere, and for double, they decline and change nothing.
  using T = TestType;
  bool expect_epilogue = false;
#if defined(KOKKOS_ENABLE_CUDA)
  expect_epilogue = std::is_same_v<ExecSpace, Kokkos::Cuda> && !std::is_same_v<T, double>;
#endif
  struct Shape {
    int m, n, k;
    bool aligned;  // every leading dimension a multiple of 8: cuBLASLt must take it
  };
  // n: the hidden width (the auxiliary matrix's columns); k: the layer's width. Odd k may or may
  // not have a cuBLASLt algorithm; where it has, the result is checked all the same.
  const Shape shapes[] = {{64, 96, 32, true}, {1, 8, 16, true}, {37, 40, 29, false}};
  std::uint64_t seed = 40;
  for (const auto& s : shapes) {
    CAPTURE(s.m, s.n, s.k);
    const double tol = gemm_tolerance<T>() * std::sqrt(double(s.k));
    // Forward: C = gelu(x w^T + b), aux = x w^T + b.
    const auto [x, xh] = random_matrix<T>(s.m, s.k, ++seed);
    const auto [w, wh] = random_matrix<T>(s.n, s.k, ++seed);
    const auto [bias2, bh] = random_matrix<T>(1, s.n, ++seed);
    const auto bias = Kokkos::subview(bias2, 0, Kokkos::ALL);
    const Matrix<T> c("c", s.m, s.n), aux("aux", s.m, s.n);
    const bool took = dilated::Impl::gemm_bias_gelu(ExecSpace(), Op::N, Op::T, x, w, bias, c, aux);
    if (s.aligned || !expect_epilogue) REQUIRE(took == expect_epilogue);
    if (!took) {
      CHECK(as_host(c)(0, 0) == 0.0);  // declined: nothing written
      continue;
    }
    Host2 zero("zero", s.m, s.n);
    const Host2 h = expected_product(Op::N, Op::T, 1.0, xh, wh, 0.0, zero);
    Host2 pre("pre", s.m, s.n), act("act", s.m, s.n);
    for (int i = 0; i < s.m; ++i)
      for (int j = 0; j < s.n; ++j) {
        pre(i, j) = h(i, j) + bh(0, j);
        act(i, j) = tanh_gelu(pre(i, j));
      }
    DILATED_CHECK_ALLCLOSE(as_host(aux), pre, tol, tol);
    DILATED_CHECK_ALLCLOSE(as_host(c), act, tol, tol);

    // Backward: G = (dy w2) * gelu'(aux), dy (m x e), w2 (e x n), e = k; the derivative taken at
    // the auxiliary values as stored in T.
    const auto [dy, dyh] = random_matrix<T>(s.m, s.k, ++seed);
    const auto [w2, w2h] = random_matrix<T>(s.k, s.n, ++seed);
    const Matrix<T> g("g", s.m, s.n);
    const bool took_dgelu = dilated::Impl::gemm_dgelu(ExecSpace(), Op::N, Op::N, dy, w2, aux, g);
    if (s.aligned) REQUIRE(took_dgelu);
    if (!took_dgelu) continue;
    const Host2 stored = as_host(aux);
    Host2 dg = expected_product(Op::N, Op::N, 1.0, dyh, w2h, 0.0, zero);
    for (int i = 0; i < s.m; ++i)
      for (int j = 0; j < s.n; ++j)
        dg(i, j) *= tanh_gelu_derivative(stored(i, j));
    // cuBLASLt's DGELU epilogue evaluates the derivative to about 2^-11 (absolute; measured on the
    // H200 in float: 5e-5, worst 2.7e-4 on products of magnitude ~sqrt(k)), a hardware tanh's
    // accuracy rather than float's: that error times |dy w2| ~ sqrt(k) bounds the float case
    // (half and bf16 round their results more than that already).
    const double dgelu_tol = std::max(tol, std::ldexp(1.0, -11) * std::sqrt(double(s.k)));
    DILATED_CHECK_ALLCLOSE(as_host(g), dg, dgelu_tol, dgelu_tol);
  }
}

TEMPLATE_LIST_TEST_CASE("gelu_forward and gelu_backward equal the double formulas",
                        "[gemm][gelu]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  // Both GELUs elementwise, out of place and in place, on values over [-12, 12] (both tails and
  // the erf's two pieces on the host, impl/Dilated_HostMath.hpp) and signed zeros. Shapes: more
  // than one host chunk with a remainder (3 x 4099 = 12297 = 3 x 4096 + 9), and 1 x 5 (not a
  // whole number of 16-byte packs).
  using T = TestType;
  // Float: the host erf's absolute error (<= 1.5e-7) times |x| / 2 <= 6 (a GELU value), or times
  // |dg| ~ 1 (a derivative), plus float's rounding of the result; CUDA's erff is closer. Half
  // and bf16: storage rounding (bf16: 2^-8 relative). Double: libm's erf and exp.
  const double rtol = std::is_same_v<T, double> ? 1e-13 : std::is_same_v<T, float> ? 5e-7 : 1e-2;
  const double atol = std::is_same_v<T, double> ? 1e-13 : std::is_same_v<T, float> ? 1e-6 : 1e-2;
  for (const auto approximation :
       {dilated::GeluApproximation::none, dilated::GeluApproximation::tanh}) {
    const auto value = approximation == dilated::GeluApproximation::tanh ? tanh_gelu : exact_gelu;
    const auto derivative = approximation == dilated::GeluApproximation::tanh
                                ? tanh_gelu_derivative
                                : exact_gelu_derivative;
    for (const auto& [rows, cols] : {std::pair{3, 4099}, std::pair{1, 5}}) {
      CAPTURE(dilated::to_string(approximation), rows, cols);
      Matrix<T> h("h", rows, cols);
      auto staged = Kokkos::create_mirror_view(h);
      Host2 hx("hx", rows, cols);
      const long count = static_cast<long>(rows) * cols;
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
          const long e = static_cast<long>(i) * cols + j;
          // Evenly over [-12, 12], the first two entries -0 and +0.
          const double x = e < 2 ? (e == 0 ? -0.0 : 0.0) : -12.0 + 24.0 * e / (count - 1);
          staged(i, j) = static_cast<T>(x);
          hx(i, j) = dilated::Impl::to_double(staged(i, j));
        }
      Kokkos::deep_copy(h, staged);
      const auto [dg, dgh] = random_matrix<T>(rows, cols, 60 + cols);
      Host2 forward("forward", rows, cols), backward("backward", rows, cols);
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
          forward(i, j) = value(hx(i, j));
          backward(i, j) = dgh(i, j) * derivative(hx(i, j));
        }
      const Matrix<T> g("g", rows, cols), dh("dh", rows, cols);
      dilated::Impl::gelu_forward(ExecSpace(), h, g, approximation);
      dilated::Impl::gelu_backward(ExecSpace(), h, dg, dh, approximation);
      DILATED_CHECK_ALLCLOSE(as_host(g), forward, rtol, atol);
      DILATED_CHECK_ALLCLOSE(as_host(dh), backward, rtol, atol);
      // In place: g = gelu(g), dh = dg gelu'(h) into dg.
      Kokkos::deep_copy(g, h);
      dilated::Impl::gelu_forward(ExecSpace(), g, g, approximation);
      dilated::Impl::gelu_backward(ExecSpace(), h, dg, dg, approximation);
      DILATED_CHECK_ALLCLOSE(as_host(g), forward, rtol, atol);
      DILATED_CHECK_ALLCLOSE(as_host(dg), backward, rtol, atol);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("gelu_backward_bias_gradient equals gelu_backward and the column sums",
                        "[gemm][gelu]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  // The feed-forward's backward on the host in float: the derivative's pass also sums the bias
  // gradient (Dilated_FeedForward.hpp). Against the two passes it replaces, bit for bit: dh and
  // db. Rows: one chunk level and a partial chunk (33), several chunks (1000), and more than
  // column_sum_max_chunks chunks of the minimum size (20000 rows: longer chunks); columns a whole
  // number of vectors or not. Elsewhere it declines (false) and leaves g as it was.
  using T = TestType;
  using Vector = Kokkos::View<T*, MemSpace>;
  using Acc = dilated::Impl::linear_accumulation_t<T>;
  constexpr bool fused = std::is_same_v<T, float> &&
                         std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>;
  for (const auto approximation :
       {dilated::GeluApproximation::none, dilated::GeluApproximation::tanh}) {
    for (const auto& [rows, cols] :
         {std::pair{33, 77}, std::pair{1000, 96}, std::pair{20000, 48}}) {
      CAPTURE(dilated::to_string(approximation), rows, cols);
      const auto h = random_matrix<T>(rows, cols, 70 + rows).first;
      const auto dg = random_matrix<T>(rows, cols, 80 + rows).first;
      const Matrix<T> expected("expected", rows, cols), g("g", rows, cols);
      Kokkos::deep_copy(expected, dg);
      Kokkos::deep_copy(g, dg);
      const Vector db_expected("db_expected", cols), db("db", cols);
      dilated::Impl::gelu_backward(ExecSpace(), h, expected, expected, approximation);
      const auto e = expected;
      dilated::Impl::column_sums<Acc, 1>(
          ExecSpace(), "dilated::test::bias_gradient", rows, cols,
          KOKKOS_LAMBDA(long i, long j, Acc(&sums)[1]) { sums[0] += static_cast<Acc>(e(i, j)); },
          dilated::Impl::ColumnPartials<Acc, typename ExecSpace::memory_space>(), db_expected);
      const bool done = dilated::Impl::gelu_backward_bias_gradient(
          ExecSpace(), h, g, db, dilated::Impl::ColumnPartials<Acc, MemSpace>(), approximation);
      CHECK(done == fused);
      const auto got = as_host(g), want = as_host(done ? expected : dg);
      long differ = 0;
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j)
          differ += got(i, j) != want(i, j);
      CHECK(differ == 0);
      if (!done) continue;
      auto db_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), db);
      auto db_want = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), db_expected);
      for (int j = 0; j < cols; ++j) {
        CAPTURE(j);
        CHECK(db_host(j) == db_want(j));
      }
    }
  }
}
