// DilatedAttention<Original | Improved>::backward on every backend: double gradients against
// central finite differences of the double oracles (through the longnet branch weights, detached,
// and with dropout), float gradients against double ones, the dropout contract, and the
// Original's vendor-GEMM path (the host BLAS) against its team kernel.
#include <DilatedAttention.hpp>
#include <Dilated_FloatingPointTraps.hpp>
#include <Dilated_Allclose.hpp>
#include <Dilated_AttentionTestUtils.hpp>
#include <Dilated_BranchwiseReference.hpp>
#include <Dilated_TestData.hpp>
#include <Dilated_Tolerances.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <array>
#include <cfenv>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using dilated::Semantics;
using dilated::testing::HostView4;

struct GradCase {
  Semantics semantics;
  std::vector<int> segs, dils;
  int b, n, h, d;
  bool causal;
  bool detach;
  double dropout;
  // out as a strided view whose rows the tensor cores cannot read (head stride d + 1, so rows
  // are not 16-byte aligned): the backward then computes D_t in its own pass instead of inside
  // the dq kernel.
  bool strided_out = false;
  // lse in float for half/bf16 storage (as the benchmarks and the layer keep it): the backward
  // reads it in place instead of converting a copy.
  bool float_lse = false;
  // The Original's workspace bound (0: the default). 1 byte: one (segment, head) item per chunk
  // of the backward (several launches, items from an offset), one team slice in the forward.
  std::size_t workspace_bytes = 0;
};

// sum(out * r) for the forward the case describes, in double on the host. Without dropout and
// with gradients through the weights this is the exact reference; otherwise the branchwise
// oracle with the library's dropout mask, and for detached weights the branch weights of
// the unperturbed inputs (`base`).
double loss(const GradCase& c, const dilated::Geometry& g, const HostView4& q, const HostView4& k,
            const HostView4& v, const HostView4& r, const dilated::testing::Branchwise* base,
            std::uint64_t seed) {
  HostView4 out("out", q.extent(0), q.extent(1), q.extent(2), q.extent(3));
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  if (c.dropout == 0 && !c.detach) {
    dilated::reference(g, q, k, v, out, {c.causal, std::nullopt});
  } else {
    auto bw = dilated::testing::branchwise(
        g, q, k, v, c.causal, scale,
        c.dropout > 0 ? dilated::Impl::Dropout(c.dropout, seed) : dilated::Impl::Dropout());
    dilated::testing::merge(g, bw, c.detach ? *base : bw);
    out = bw.out;
  }
  double sum = 0;
  for (std::size_t i = 0; i < out.size(); ++i)
    sum += out.data()[i] * r.data()[i];
  return sum;
}

// Central differences of `loss` with respect to every element of `x` (one of q, k, v).
HostView4 finite_difference(const GradCase& c, const dilated::Geometry& g, HostView4 q, HostView4 k,
                            HostView4 v, const HostView4& r, HostView4 x,
                            const dilated::testing::Branchwise* base, std::uint64_t seed) {
  const double eps = 1e-6;
  HostView4 grad("fd", x.extent(0), x.extent(1), x.extent(2), x.extent(3));
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x.data()[i];
    x.data()[i] = x0 + eps;
    const double up = loss(c, g, q, k, v, r, base, seed);
    x.data()[i] = x0 - eps;
    const double down = loss(c, g, q, k, v, r, base, seed);
    x.data()[i] = x0;
    grad.data()[i] = (up - down) / (2 * eps);
  }
  return grad;
}

struct Gradients {
  dilated::testing::Device4<double, MemSpace> dq, dk, dv, out;
};

template <class T>
Gradients run_backward(const GradCase& c, const HostView4& qh, const HostView4& kh,
                       const HostView4& vh, const HostView4& rh, std::uint64_t seed, bool pass_lse,
                       const dilated::testing::Variant& variant) {
  auto options = dilated::AttentionOptions()
                     .set_semantics(c.semantics)
                     .set_detach_branch_weights(c.detach)
                     .set_attention_dropout(c.dropout);
  if (c.workspace_bytes > 0) options.set_workspace_bytes(c.workspace_bytes);
  const auto q = dilated::testing::to_storage<T, MemSpace>(qh, "q");
  const auto k = dilated::testing::to_storage<T, MemSpace>(kh, "k");
  const auto v = dilated::testing::to_storage<T, MemSpace>(vh, "v");
  const auto dout = dilated::testing::to_storage<T, MemSpace>(rh, "dout");
  dilated::testing::Device4<T, MemSpace> dq("dq", c.b, c.n, c.h, c.d), dk("dk", c.b, c.n, c.h, c.d),
      dv("dv", c.b, c.n, c.h, c.d);
  dilated::testing::Device4<T, MemSpace> out_rows("out", c.b, c.n, c.h,
                                                  c.strided_out ? c.d + 1 : c.d);
  const auto strided_out =
      Kokkos::subview(out_rows, Kokkos::ALL, Kokkos::ALL, Kokkos::ALL, std::make_pair(0, c.d));
  Kokkos::View<T***, MemSpace> lse_storage("lse", c.b, c.n, c.h);
  Kokkos::View<dilated::Impl::accumulation_t<T>***, MemSpace> lse_float("lse", c.b, c.n, c.h);
  const dilated::ForwardOptions call{c.causal, true, seed};
  const auto as_double = [](const auto& x) {
    return dilated::testing::to_storage<double, MemSpace>(dilated::testing::to_host_double(x), "g");
  };
  const auto run = [&](const auto& out, const auto& lse) {
    dilated::testing::with_attention(variant, c.segs, c.dils, options, [&](const auto& attention) {
      // Stale values, not Kokkos' zeros: every row of the outputs must be written.
      Kokkos::deep_copy(out, T(7));
      for (const auto& x : {dq, dk, dv})
        Kokkos::deep_copy(x, T(7));
      attention.forward(ExecSpace(), q, k, v, out, lse, call);
      if (pass_lse) {
        attention.backward(ExecSpace(), q, k, v, out, lse, dout, dq, dk, dv, call);
      } else {
        attention.backward(ExecSpace(), q, k, v, out, dout, dq, dk, dv, call);
      }
    });
    // Contiguous first: Kokkos copies a non-contiguous view to the host only through one.
    dilated::testing::Device4<T, MemSpace> out_copy("out", c.b, c.n, c.h, c.d);
    Kokkos::deep_copy(out_copy, out);
    return Gradients{as_double(dq), as_double(dk), as_double(dv), as_double(out_copy)};
  };
  if (c.float_lse) return c.strided_out ? run(strided_out, lse_float) : run(out_rows, lse_float);
  return c.strided_out ? run(strided_out, lse_storage) : run(out_rows, lse_storage);
}

const std::vector<GradCase> grad_cases = {
    // semantics, segs, dils, b, n, h, d, causal, detach, dropout
    {Semantics::grouped, {4, 8}, {1, 2}, 1, 12, 2, 3, false, false, 0.0},
    {Semantics::grouped, {4, 8}, {1, 2}, 2, 10, 3, 2, true, false, 0.0},
    {Semantics::longnet, {4, 8}, {1, 2}, 1, 10, 3, 3, false, false, 0.0},
    {Semantics::longnet, {4, 8}, {1, 2}, 1, 11, 2, 3, true, false, 0.0},
    {Semantics::longnet, {4, 8}, {1, 2}, 1, 10, 3, 3, false, true, 0.0},
    {Semantics::longnet, {4, 8}, {1, 2}, 1, 10, 3, 3, true, true, 0.0},
    {Semantics::longnet, {4, 8}, {1, 4}, 1, 9, 2, 2, false, false, 0.3},  // r > h, dropout
    {Semantics::longnet, {4, 8}, {1, 2}, 1, 10, 3, 3, true, true, 0.3},
    {Semantics::grouped, {4, 8}, {1, 2}, 1, 12, 2, 3, false, false, 0.3},
};

}  // namespace

// q, k, v and the output gradient r of a case, drawn in double from seed .. seed + 3 and
// rounded to float, so that float and double runs see the same numbers.
struct FloatInputs {
  HostView4 q, k, v, r;
};
FloatInputs float_inputs(const GradCase& c, std::uint64_t seed) {
  const auto draw = [&](const char* name, std::uint64_t s) {
    HostView4 y = dilated::testing::random_bnhd<double>(name, c.b, c.n, c.h, c.d, s);
    for (std::size_t i = 0; i < y.size(); ++i)
      y.data()[i] = static_cast<float>(y.data()[i]);
    return y;
  };
  return {draw("q", seed), draw("k", seed + 1), draw("v", seed + 2), draw("r", seed + 3)};
}

TEST_CASE("Backward equals finite differences (double)", "[backward]" TEST_CATEGORY) {
  std::uint64_t seed = 500;
  for (const auto& c : grad_cases) {
    CAPTURE(dilated::to_string(c.semantics), c.n, c.h, c.d, c.causal, c.detach, c.dropout);
    seed += 10;
    const dilated::Geometry g(c.segs, c.dils, c.h, c.semantics);
    auto q = dilated::testing::random_bnhd<double>("q", c.b, c.n, c.h, c.d, seed);
    auto k = dilated::testing::random_bnhd<double>("k", c.b, c.n, c.h, c.d, seed + 1);
    auto v = dilated::testing::random_bnhd<double>("v", c.b, c.n, c.h, c.d, seed + 2);
    const auto r = dilated::testing::random_bnhd<double>("r", c.b, c.n, c.h, c.d, seed + 3);
    const auto base = dilated::testing::branchwise(
        g, q, k, v, c.causal, 1.0 / std::sqrt(double(c.d)),
        c.dropout > 0 ? dilated::Impl::Dropout(c.dropout, seed) : dilated::Impl::Dropout());
    for (const auto& variant : dilated::testing::variants<ExecSpace>())
      for (bool pass_lse : {true, false}) {
        CAPTURE(pass_lse, variant.name());
        const auto grads = run_backward<double>(c, q, k, v, r, seed, pass_lse, variant);
        // Central differences with eps = 1e-6: truncation ~eps^2, rounding ~1e-16/eps = 1e-10.
        const double rtol = 1e-6, atol = 1e-7;
        DILATED_CHECK_ALLCLOSE(grads.dq, finite_difference(c, g, q, k, v, r, q, &base, seed), rtol,
                               atol);
        DILATED_CHECK_ALLCLOSE(grads.dk, finite_difference(c, g, q, k, v, r, k, &base, seed), rtol,
                               atol);
        DILATED_CHECK_ALLCLOSE(grads.dv, finite_difference(c, g, q, k, v, r, v, &base, seed), rtol,
                               atol);
      }
  }
}

TEST_CASE("Backward in float agrees with double", "[backward]" TEST_CATEGORY) {
  // On the host, float runs the register-blocked dq and dk/dv micro-kernels against the
  // generic kernel in double: head dims off the 16-float vectors (copied, zero-padded operands)
  // and on them (read in place), kept counts that leave partial 64-row tiles and partial
  // register blocks (e.g. 200 / 2 = 100 = 64 + 36, 170 - 160 = 10), causal and not, both
  // semantics, dropout, detached longnet weights (the dq pass's delta mode), with and without
  // dropout together.
  const GradCase cases[] = {
      {Semantics::longnet, {32, 64, 128}, {1, 2, 4}, 1, 150, 6, 32, true, false, 0.0},
      {Semantics::grouped, {32, 64, 128}, {1, 2, 4}, 2, 128, 4, 16, false, false, 0.1},
      {Semantics::grouped, {40, 80, 160}, {1, 2, 4}, 1, 170, 3, 20, true, false, 0.0},
      {Semantics::grouped, {100, 200}, {1, 2}, 2, 200, 2, 33, true, false, 0.15},
      {Semantics::grouped, {70, 140}, {1, 2}, 1, 140, 2, 48, false, false, 0.0},
      {Semantics::longnet, {48, 96, 200}, {1, 2, 4}, 1, 210, 3, 7, false, false, 0.0},
      {Semantics::longnet, {72, 144}, {1, 2}, 1, 150, 2, 40, false, true, 0.0},
      {Semantics::longnet, {72, 144}, {1, 2}, 1, 150, 2, 24, true, true, 0.2},
  };
  std::uint64_t seed = 900;
  for (const auto& c : cases) {
    CAPTURE(dilated::to_string(c.semantics));
    seed += 10;
    const FloatInputs inputs = float_inputs(c, seed);
    const HostView4 &q = inputs.q, &k = inputs.k, &v = inputs.v, &r = inputs.r;
    for (const auto& variant : dilated::testing::variants<ExecSpace>())
      for (bool pass_lse : {true, false}) {
        CAPTURE(variant.name(), pass_lse, c.d, c.causal, c.detach, c.dropout);
        const auto exact = run_backward<double>(c, q, k, v, r, seed, pass_lse, variant);
        const auto single = run_backward<float>(c, q, k, v, r, seed, pass_lse, variant);
        // float accumulation over <= 200 keys of O(1) terms, twice (P, then dS): ~1e-5
        // relative per gradient entry; 1e-4 leaves a margin without hiding an O(1) error.
        DILATED_CHECK_ALLCLOSE(single.dq, exact.dq, 1e-4, 1e-4);
        DILATED_CHECK_ALLCLOSE(single.dk, exact.dk, 1e-4, 1e-4);
        DILATED_CHECK_ALLCLOSE(single.dv, exact.dv, 1e-4, 1e-4);
      }
  }
}

TEST_CASE("Host backward: the one pass equals the two passes and double",
          "[backward]" TEST_CATEGORY) {
  // On the host in float, improved_backward_branches runs one pass over the key tiles
  // (Dilated_ImprovedHostFusedBackward.hpp) unless DILATED_HOST_BACKWARD=two_pass asks for the
  // dq and dk/dv passes. Both against each other and against double: items split into several
  // tasks whose dQ rows are summed after them (few items per thread) and one task per item (many:
  // 2 x 16 x 4 items in the third case), partial tiles and register blocks, head dims on and off
  // the vectors, dropout, longnet (a launch a branch, accumulating); the first and fourth cases
  // split their items on 1 and 2 threads. Elsewhere the variable changes nothing and the two
  // runs are the same.
  const GradCase cases[] = {
      {Semantics::grouped, {256, 512, 1024}, {1, 2, 4}, 1, 1024, 3, 64, true, false, 0.0},
      {Semantics::grouped, {100, 200}, {1, 2}, 2, 200, 2, 33, true, false, 0.15},
      {Semantics::grouped, {64, 128}, {1, 2}, 2, 1024, 8, 16, false, false, 0.0},
      {Semantics::longnet, {256, 512}, {1, 2}, 1, 512, 2, 24, true, false, 0.1},
      {Semantics::longnet, {96, 192}, {1, 2}, 1, 300, 4, 40, false, false, 0.2},
  };
  std::uint64_t seed = 1700;
  for (const auto& c : cases) {
    CAPTURE(dilated::to_string(c.semantics), c.b, c.n, c.h, c.d, c.causal, c.dropout);
    seed += 10;
    const FloatInputs inputs = float_inputs(c, seed);
    const HostView4 &q = inputs.q, &k = inputs.k, &v = inputs.v, &r = inputs.r;
    const dilated::testing::Variant improved{true, false};
    const auto exact = run_backward<double>(c, q, k, v, r, seed, true, improved);
    const auto one = run_backward<float>(c, q, k, v, r, seed, true, improved);
    const auto two = [&]() {
      const dilated::testing::ScopedEnvironment two_pass("DILATED_HOST_BACKWARD", "two_pass");
      return run_backward<float>(c, q, k, v, r, seed, true, improved);
    }();
    // The same products summed in another order (dQ over key tiles in tasks, then the tasks):
    // float rounding only, well below the 1e-4 of float against double.
    DILATED_CHECK_ALLCLOSE(one.dq, two.dq, 2e-5, 2e-5);
    DILATED_CHECK_ALLCLOSE(one.dk, two.dk, 2e-5, 2e-5);
    DILATED_CHECK_ALLCLOSE(one.dv, two.dv, 2e-5, 2e-5);
    DILATED_CHECK_ALLCLOSE(one.dq, exact.dq, 1e-4, 1e-4);
    DILATED_CHECK_ALLCLOSE(one.dk, exact.dk, 1e-4, 1e-4);
    DILATED_CHECK_ALLCLOSE(one.dv, exact.dv, 1e-4, 1e-4);
  }
}

TEMPLATE_TEST_CASE("Dropout: the documented mask, p = 0 is the identity, seeds reproduce",
                   "[dropout]" TEST_CATEGORY, dilated::Original, dilated::Improved) {
  const GradCase c{Semantics::longnet, {16, 32, 64}, {1, 2, 4}, 2, 64, 4, 8, false, false, 0.25};
  const dilated::Geometry g(c.segs, c.dils, c.h, c.semantics);
  const auto qh = dilated::testing::random_bnhd<double>("q", c.b, c.n, c.h, c.d, 1);
  const auto kh = dilated::testing::random_bnhd<double>("k", c.b, c.n, c.h, c.d, 2);
  const auto vh = dilated::testing::random_bnhd<double>("v", c.b, c.n, c.h, c.d, 3);
  const auto q = dilated::testing::to_storage<double, MemSpace>(qh, "q");
  const auto k = dilated::testing::to_storage<double, MemSpace>(kh, "k");
  const auto v = dilated::testing::to_storage<double, MemSpace>(vh, "v");
  const auto run = [&](double p, bool training, std::uint64_t seed) {
    const dilated::DilatedAttention<TestType> attention(
        c.segs, c.dils,
        dilated::AttentionOptions().set_semantics(c.semantics).set_attention_dropout(p));
    dilated::testing::Device4<double, MemSpace> out("out", c.b, c.n, c.h, c.d);
    attention.forward(ExecSpace(), q, k, v, out, {false, training, seed});
    return dilated::testing::to_host_double(out);
  };
  const auto bitwise_equal = [](const HostView4& x, const HostView4& y) {
    return std::memcmp(x.data(), y.data(), x.size() * sizeof(double)) == 0;
  };
  const auto plain = run(0.0, false, 0);
  SECTION("p = 0, or not training, is the identity, bit for bit") {
    REQUIRE(bitwise_equal(run(0.0, true, 42), plain));
    REQUIRE(bitwise_equal(run(0.25, false, 42), plain));
  }
  SECTION("the same seed reproduces bit for bit; another seed differs") {
    const auto a = run(0.25, true, 42);
    REQUIRE(bitwise_equal(run(0.25, true, 42), a));
    REQUIRE_FALSE(bitwise_equal(run(0.25, true, 43), a));
    REQUIRE_FALSE(bitwise_equal(a, plain));
  }
  SECTION("the kernel applies exactly the generator's mask") {
    auto expected = dilated::testing::branchwise(g, qh, kh, vh, false, 1.0 / std::sqrt(8.0),
                                                 dilated::Impl::Dropout(0.25, 42));
    dilated::testing::merge(g, expected);
    DILATED_CHECK_ALLCLOSE(run(0.25, true, 42), expected.out, 1e-12, 1e-12);
  }
  SECTION("the kept fraction is within 3 sigma of 1 - p") {
    // Every (branch, batch, head, query, key) pair the forward weighs.
    const dilated::Impl::Dropout dropout(0.25, 42);
    long kept = 0, total = 0;
    for (const auto& block : g.head_blocks())
      for (int j = 0; j < g.num_segments(block.branch, c.n); ++j) {
        const auto pos = g.kept(block.branch, j, block.offset, c.n);
        for (int b = 0; b < c.b; ++b)
          for (int h = block.head_begin; h < block.head_end; ++h)
            for (int t = 0; t < pos.count; ++t)
              for (int u = 0; u < pos.count; ++u, ++total)
                kept += dropout.factor(block.branch, b, h, pos.position(t), pos.position(u)) != 0;
      }
    const double fraction = double(kept) / total, sigma = std::sqrt(0.25 * 0.75 / total);
    CAPTURE(kept, total, fraction);
    REQUIRE(total > 10000);
    REQUIRE(std::abs(fraction - 0.75) < 3 * sigma);
  }
}

TEMPLATE_LIST_TEST_CASE("Improved backward equals Original backward",
                        "[backward][improved]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  // Segments of 128-256 kept positions: several query and key tiles in both backward passes on
  // every backend (the tensor-core dq and dk/dv passes for half/bf16 at d = 64 and 128 on CUDA),
  // causal tile starts, partial last segments; gradients flow through the longnet weights.
  const GradCase cases[] = {
      {Semantics::grouped, {256, 512, 1024}, {1, 2, 4}, 1, 1500, 6, 64, false, false, 0.0},
      {Semantics::grouped, {256, 512, 1024}, {1, 2, 4}, 1, 1500, 6, 64, true, false, 0.0},
      {Semantics::longnet, {128, 256}, {1, 2}, 2, 600, 4, 64, true, false, 0.0},
      {Semantics::longnet, {128, 256}, {1, 2}, 1, 400, 2, 64, false, true, 0.1},
      // Grouped branches share the tensor-core launches: dropout must still hash each
      // branch's own index.
      {Semantics::grouped, {256, 512, 1024}, {1, 2, 4}, 1, 1500, 6, 64, true, false, 0.1},
      // The same with batch 2 and branches the shared launch reorders (longest kept first:
      // a team's position in the launch is not its branch index).
      {Semantics::grouped, {256, 512, 1024}, {1, 1, 1}, 2, 1100, 6, 64, true, false, 0.1},
      // An out the tensor cores cannot read (D_t in its own pass), grouped and longnet.
      {Semantics::grouped, {256, 512, 1024}, {1, 2, 4}, 1, 700, 3, 64, false, false, 0.0, true},
      {Semantics::longnet, {128, 256}, {1, 2}, 1, 400, 2, 64, true, false, 0.0, true},
      // lse kept in float (read in place by the backward, the benchmarks' and layer's way).
      {Semantics::grouped,
       {256, 512, 1024},
       {1, 2, 4},
       1,
       1500,
       6,
       64,
       false,
       false,
       0.0,
       false,
       true},
      {Semantics::longnet, {128, 256}, {1, 2}, 2, 600, 4, 64, true, false, 0.0, false, true},
      // A workspace of one item: the Original's backward in chunks (grouped with dropout;
      // longnet adding branch after branch), the exact double run's team kernel likewise.
      {Semantics::grouped,
       {256, 512, 1024},
       {1, 2, 4},
       1,
       1500,
       6,
       64,
       true,
       false,
       0.1,
       false,
       false,
       1},
      {Semantics::longnet, {128, 256}, {1, 2}, 2, 600, 4, 64, false, false, 0.0, false, false, 1},
      // head_dim 128 (the tensor-core passes' 2-warp dk/dv teams over 32 keys and 32-query
      // tiles, the Original on cuBLAS): causal and not, dropout, longnet adding branches, an out
      // the dq pass cannot read.
      {Semantics::grouped, {128, 256, 512}, {1, 2, 4}, 1, 700, 3, 128, false, false, 0.0},
      {Semantics::grouped, {128, 256, 512}, {1, 2, 4}, 1, 700, 3, 128, true, false, 0.1},
      {Semantics::longnet, {128, 256}, {1, 2}, 1, 400, 2, 128, true, false, 0.0},
      {Semantics::longnet, {128, 256}, {1, 2}, 1, 400, 2, 128, false, true, 0.0, true},
  };
  std::uint64_t seed = 1300;
  for (const auto& c : cases) {
    CAPTURE(dilated::to_string(c.semantics), c.d, c.causal, c.detach, c.dropout, c.strided_out,
            c.float_lse, c.workspace_bytes);
    seed += 10;
    const auto q = dilated::testing::random_bnhd<double>("q", c.b, c.n, c.h, c.d, seed);
    const auto k = dilated::testing::random_bnhd<double>("k", c.b, c.n, c.h, c.d, seed + 1);
    const auto v = dilated::testing::random_bnhd<double>("v", c.b, c.n, c.h, c.d, seed + 2);
    const auto r = dilated::testing::random_bnhd<double>("r", c.b, c.n, c.h, c.d, seed + 3);
    const auto original = run_backward<TestType>(c, q, k, v, r, seed, true,
                                                 dilated::testing::Variant{false, true, true});
    const auto improved =
        run_backward<TestType>(c, q, k, v, r, seed, true, dilated::testing::Variant{true, false});
    // Each side is within the storage type's error of the exact gradients; gradients sum up to
    // a segment of O(1) terms twice (P, then dS), hence 4x the forward tolerance (the check tool's
    // rule), and float's 1e-4 of the float-vs-double test.
    using Tol = dilated::testing::Tolerance<TestType>;
    const double rtol = std::max(4 * Tol::rtol, std::is_same_v<TestType, double> ? 0.0 : 1e-4);
    const double atol = std::max(4 * Tol::atol, std::is_same_v<TestType, double> ? 0.0 : 1e-4);
    DILATED_CHECK_ALLCLOSE(improved.out, dilated::testing::to_host_double(original.out), rtol,
                           atol);
    if constexpr (!std::is_same_v<TestType, double> && !std::is_same_v<TestType, float>) {
      // The Original's tensor-core kernels (half/bf16 on CUDA) also against the exact gradients:
      // the double run of the team kernel, same inputs and dropout mask.
      const auto exact =
          run_backward<double>(c, q, k, v, r, seed, true, dilated::testing::Variant{false, false});
      const auto host = [](const auto& x) { return dilated::testing::to_host_double(x); };
      DILATED_CHECK_ALLCLOSE(original.dq, host(exact.dq), rtol, atol);
      DILATED_CHECK_ALLCLOSE(original.dk, host(exact.dk), rtol, atol);
      DILATED_CHECK_ALLCLOSE(original.dv, host(exact.dv), rtol, atol);
    }
    DILATED_CHECK_ALLCLOSE(improved.dq, dilated::testing::to_host_double(original.dq), rtol, atol);
    DILATED_CHECK_ALLCLOSE(improved.dk, dilated::testing::to_host_double(original.dk), rtol, atol);
    DILATED_CHECK_ALLCLOSE(improved.dv, dilated::testing::to_host_double(original.dv), rtol, atol);
  }
}

// The Original's vendor-GEMM path (on the host: the BLAS products per block of query rows,
// impl/Dilated_OriginalHostGemmPath.hpp; on CUDA: cuBLAS) against its team kernel, forward and
// backward, and both against the exact reference where it applies. The other attention tests
// run the Original with its default (vendor_gemm on), so on the host the team kernel is covered
// here: float and double, both semantics, causal and not, dropout (the same mask on both paths),
// the lse passed to the backward or not, segments of several row blocks with a partial last
// segment, head dims off the vector width.
namespace {

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

struct HostGemmResult {
  HostView4 out, dq, dk, dv;
  Kokkos::View<double***, Kokkos::HostSpace> lse;
};

template <class T>
HostGemmResult run_host_gemm_case(const HostGemmCase& c, bool vendor_gemm, bool causal,
                                  bool pass_lse, const HostView4& qh, const HostView4& kh,
                                  const HostView4& vh, const HostView4& gh) {
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
      const auto gemm = run_host_gemm_case<T>(c, true, causal, pass_lse, q, k, v, g);
      const auto team = run_host_gemm_case<T>(c, false, causal, pass_lse, q, k, v, g);
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
  run_host_gemm_case<float>(c, true, false, true, x, x, x, x);
  CHECK(dilated::Impl::blas_info().threads == before.threads);
}

namespace {

using dilated::testing::NoFloatingPointTraps;

}  // namespace

TEMPLATE_LIST_TEST_CASE("check_finite in the backward names the first NaN or infinity",
                        "[backward][errors][nonfinite]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  using T = TestType;
  using Catch::Matchers::ContainsSubstring;
  using View4 = dilated::testing::Device4<T, MemSpace>;
  const NoFloatingPointTraps no_traps;
  const char* names[] = {"q", "k", "v", "dout"};
  const double bad_values[] = {std::nan(""), INFINITY, -INFINITY};
  const char* bad_names[] = {"nan", "inf", "-inf"};
  constexpr int b = 2, n = 20, h = 2, d = 8;
  for (const auto& variant : dilated::testing::variants<ExecSpace>()) {
    CAPTURE(variant.name());
    dilated::testing::with_attention(
        variant, {8, 16}, {1, 2},
        dilated::AttentionOptions().set_semantics(Semantics::longnet).set_check_finite(true),
        [&](const auto& attention) {
          std::array<View4, 4> in;
          for (int i = 0; i < 4; ++i)
            in[i] = dilated::testing::random_bnhd<T, MemSpace>(names[i], b, n, h, d, 40 + i);
          View4 out("out", b, n, h, d), dq("dq", b, n, h, d), dk("dk", b, n, h, d),
              dv("dv", b, n, h, d);
          Kokkos::View<float***, MemSpace> lse("lse", b, n, h);
          attention.forward(ExecSpace(), in[0], in[1], in[2], out, lse);
          REQUIRE_NOTHROW(
              attention.backward(ExecSpace(), in[0], in[1], in[2], out, lse, in[3], dq, dk, dv));
          for (int which = 0; which < 4; ++which) {
            for (int bad = 0; bad < 3; ++bad) {
              CAPTURE(names[which], bad_names[bad]);
              std::array<View4, 4> x = in;
              x[which] = View4(std::string(names[which]) + "_bad", b, n, h, d);
              Kokkos::deep_copy(x[which], in[which]);
              const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), x[which]);
              host(1, 17, 0, 2) = static_cast<T>(std::nan(""));  // later in flat order
              host(0, 13, 1, 5) = static_cast<T>(bad_values[bad]);
              Kokkos::deep_copy(x[which], host);
              Kokkos::deep_copy(dq, T(7));
              const std::string where = std::string("dilated::DilatedAttention::backward: ") +
                                        names[which] + "(0, 13, 1, 5) = " + bad_names[bad] +
                                        " is not finite";
              REQUIRE_THROWS_WITH(
                  attention.backward(ExecSpace(), x[0], x[1], x[2], out, lse, x[3], dq, dk, dv),
                  ContainsSubstring(where));
              REQUIRE_THROWS_AS(
                  attention.backward(ExecSpace(), x[0], x[1], x[2], out, x[3], dq, dk, dv),
                  dilated::NonFiniteInput);
              // Thrown before any work: the gradients untouched.
              const auto dq_host = dilated::testing::to_host_double(dq);
              CHECK(dq_host(0, 0, 0, 0) == 7.0);
            }
          }
        });
  }
}
