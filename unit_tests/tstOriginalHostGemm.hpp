// The Original's vendor-GEMM path (on the host: the BLAS products per block of query rows,
// impl/Dilated_OriginalHostGemmPath.hpp; on CUDA: cuBLAS) against its team kernel, forward and
// backward, and both against the exact reference where it applies. The other attention tests
// run the Original with its default (vendor_gemm on), so on the host the team kernel is covered
// here: float and double, both semantics, causal and not, dropout (the same mask on both paths),
// the lse passed to the backward or not, segments of several row blocks with a partial last
// segment, head dims off the vector width.
#include <DilatedAttention.hpp>
#include <Dilated_Allclose.hpp>
#include <Dilated_AttentionTestUtils.hpp>
#include <Dilated_BranchwiseReference.hpp>
#include <Dilated_TestData.hpp>
#include <Dilated_Tolerances.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using dilated::Semantics;
using dilated::testing::HostView4;

struct HostGemmCase {
  Semantics semantics;
  std::vector<int> segs, dils;
  int b, n, h, d;
  bool detach;
  double dropout;
};

// Forward blocks are 256 query rows, backward blocks 128: a segment of 512 kept positions makes
// two forward and four backward blocks, 256 two backward ones; n not a multiple of the segments
// leaves partial last segments (600 = 512 + 88; 700 = 2 x 256 + 188, whose dilated branch keeps
// 94).
const HostGemmCase host_gemm_cases[] = {
    {Semantics::grouped, {256, 512}, {1, 2}, 1, 700, 2, 8, false, 0.0},
    {Semantics::longnet, {128, 512}, {1, 1}, 1, 600, 1, 40, false, 0.0},
    {Semantics::grouped, {64, 128, 256}, {1, 2, 4}, 2, 300, 3, 16, false, 0.1},
    {Semantics::longnet, {128, 256}, {1, 2}, 1, 350, 2, 32, true, 0.1},
};

struct Result {
  HostView4 out, dq, dk, dv;
  Kokkos::View<double***, Kokkos::HostSpace> lse;
};

template <class T>
Result run(const HostGemmCase& c, bool vendor_gemm, bool causal, bool pass_lse, const HostView4& qh,
           const HostView4& kh, const HostView4& vh, const HostView4& gh) {
  const auto options = dilated::AttentionOptions()
                           .set_semantics(c.semantics)
                           .set_detach_branch_weights(c.detach)
                           .set_attention_dropout(c.dropout)
                           .set_vendor_gemm(vendor_gemm);
  const dilated::DilatedAttention<dilated::Original> attention(c.segs, c.dils, options);
  const auto q = dilated::testing::to_storage<T, MemSpace>(qh, "q");
  const auto k = dilated::testing::to_storage<T, MemSpace>(kh, "k");
  const auto v = dilated::testing::to_storage<T, MemSpace>(vh, "v");
  const auto dout = dilated::testing::to_storage<T, MemSpace>(gh, "dout");
  using View = dilated::testing::Device4<T, MemSpace>;
  View out("out", c.b, c.n, c.h, c.d), dq("dq", c.b, c.n, c.h, c.d), dk("dk", c.b, c.n, c.h, c.d),
      dv("dv", c.b, c.n, c.h, c.d);
  Kokkos::View<T***, MemSpace> lse("lse", c.b, c.n, c.h);
  // Stale values: every row must be written.
  for (const auto& x : {out, dq, dk, dv})
    Kokkos::deep_copy(x, T(7));
  Kokkos::deep_copy(lse, T(7));
  const dilated::ForwardOptions call{causal, true, 4242};
  attention.forward(ExecSpace(), q, k, v, out, lse, call);
  if (pass_lse) {
    attention.backward(ExecSpace(), q, k, v, out, lse, dout, dq, dk, dv, call);
  } else {
    attention.backward(ExecSpace(), q, k, v, out, dout, dq, dk, dv, call);
  }
  ExecSpace().fence();
  const auto host = [](const auto& x) { return dilated::testing::to_host_double(x); };
  Kokkos::View<double***, Kokkos::HostSpace> lse_h("lse", c.b, c.n, c.h);
  const auto lse_mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), lse);
  for (int b = 0; b < c.b; ++b)
    for (int t = 0; t < c.n; ++t)
      for (int h = 0; h < c.h; ++h)
        lse_h(b, t, h) = static_cast<double>(lse_mirror(b, t, h));
  return {host(out), host(dq), host(dk), host(dv), lse_h};
}

}  // namespace

TEMPLATE_TEST_CASE("Original: the vendor-GEMM path equals the team kernel and the reference",
                   "[forward][backward][original]" TEST_CATEGORY, float, double) {
  using T = TestType;
  using Tol = dilated::testing::Tolerance<T>;
  // Gradients sum a segment's O(1) terms twice (P, then dS): the backward tests' 4x, and at
  // least float's 1e-4 there.
  const double grad_tol = std::max(4 * Tol::rtol, std::is_same_v<T, double> ? 0.0 : 1e-4);
  std::uint64_t seed = 5100;
  for (const auto& c : host_gemm_cases) {
    seed += 10;
    const auto q = dilated::testing::random_bnhd<double>("q", c.b, c.n, c.h, c.d, seed);
    const auto k = dilated::testing::random_bnhd<double>("k", c.b, c.n, c.h, c.d, seed + 1);
    const auto v = dilated::testing::random_bnhd<double>("v", c.b, c.n, c.h, c.d, seed + 2);
    const auto g = dilated::testing::random_bnhd<double>("g", c.b, c.n, c.h, c.d, seed + 3);
    for (bool causal : {false, true}) {
      const bool pass_lse = causal;  // both backward entry points, one each
      CAPTURE(dilated::to_string(c.semantics), c.n, c.h, c.d, c.detach, c.dropout, causal,
              pass_lse);
      const auto gemm = run<T>(c, true, causal, pass_lse, q, k, v, g);
      const auto team = run<T>(c, false, causal, pass_lse, q, k, v, g);
      if (c.dropout == 0) {
        // Both against the exact reference of the T-rounded inputs.
        const auto qh =
            dilated::testing::to_host_double(dilated::testing::to_storage<T, MemSpace>(q, "q"));
        const auto kh =
            dilated::testing::to_host_double(dilated::testing::to_storage<T, MemSpace>(k, "k"));
        const auto vh =
            dilated::testing::to_host_double(dilated::testing::to_storage<T, MemSpace>(v, "v"));
        HostView4 expected("expected", c.b, c.n, c.h, c.d);
        Kokkos::View<double***, Kokkos::HostSpace> expected_lse("expected_lse", c.b, c.n, c.h);
        const dilated::Geometry geometry(c.segs, c.dils, c.h, c.semantics);
        dilated::reference(geometry, qh, kh, vh, expected, expected_lse, {causal, std::nullopt});
        DILATED_CHECK_ALLCLOSE(gemm.out, expected, Tol::rtol, Tol::atol);
        DILATED_CHECK_ALLCLOSE(team.out, expected, Tol::rtol, Tol::atol);
        DILATED_CHECK_ALLCLOSE(gemm.lse, expected_lse, std::max(Tol::rtol, 1e-6), Tol::atol);
      }
      // The two paths against each other (with dropout: the same mask).
      DILATED_CHECK_ALLCLOSE(gemm.out, team.out, 2 * Tol::rtol, 2 * Tol::atol);
      DILATED_CHECK_ALLCLOSE(gemm.lse, team.lse, std::max(2 * Tol::rtol, 1e-6), 2 * Tol::atol);
      DILATED_CHECK_ALLCLOSE(gemm.dq, team.dq, grad_tol, grad_tol);
      DILATED_CHECK_ALLCLOSE(gemm.dk, team.dk, grad_tol, grad_tol);
      DILATED_CHECK_ALLCLOSE(gemm.dv, team.dv, grad_tol, grad_tol);
    }
  }
}

TEST_CASE("Original on the host leaves OpenBLAS' thread count as it was",
          "[original][blas]" TEST_CATEGORY) {
  // The host path runs the BLAS single-threaded inside its parallel loop and restores the
  // count after the call (Dilated_HostBlas.hpp: SingleThreadedBlas).
  const auto before = dilated::Impl::blas_info();
  const HostGemmCase c{Semantics::grouped, {64, 128}, {1, 2}, 1, 256, 2, 16, false, 0.0};
  const auto x = dilated::testing::random_bnhd<double>("x", c.b, c.n, c.h, c.d, 7);
  run<float>(c, true, false, true, x, x, x, x);
  CHECK(dilated::Impl::blas_info().threads == before.threads);
}
