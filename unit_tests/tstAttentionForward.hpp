// DilatedAttention<Original | Improved>::forward on every backend and storage type, against the
// exact double reference (on the same rounded inputs), the golden peer outputs, and each other.
#include <DilatedAttention.hpp>
#include <Dilated_FloatingPointTraps.hpp>
#include <Dilated_Allclose.hpp>
#include <Dilated_AttentionTestUtils.hpp>
#include <Dilated_TestData.hpp>
#include <Dilated_Tolerances.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cfenv>
#include <cmath>
#include <fstream>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using dilated::Semantics;

struct ForwardCase {
  Semantics semantics;
  std::vector<int> segs, dils;
  int b, n, h, d;
};

// Each runs causal and not: every semantics; n not divisible by the segments; h not divisible
// by the branch count; r > h; b > 1; d in {8, 24, 64, 128}; n = 1; a longer sequence; a last
// segment too short to keep any position (n = 129: the dilated branch's segment [128, 129)
// starts at offset 1), whose row must still be zero (d = 64: the tensor-core forward zeroes
// such rows itself).
const std::vector<ForwardCase> forward_cases = {
    {Semantics::grouped, {64, 128}, {1, 2}, 1, 129, 2, 64},
    {Semantics::grouped, {16, 32}, {1, 2}, 2, 64, 4, 8},
    {Semantics::grouped, {16, 32, 64}, {1, 2, 4}, 1, 100, 5, 24},
    {Semantics::longnet, {16, 64}, {1, 4}, 2, 77, 3, 64},
    {Semantics::longnet, {32, 64, 128}, {1, 2, 4}, 1, 130, 6, 128},
    {Semantics::grouped, {4, 8}, {1, 2}, 1, 1, 2, 8},
    {Semantics::longnet, {128, 256}, {1, 2}, 1, 600, 2, 8},
};

// Runs forward for T and compares out and lse with the double reference of the T-rounded
// inputs, to the tolerance of T.
template <class T, class Attention, class HostView>
void check_forward_of(const Attention& attention, const ForwardCase& c, bool causal,
                      const HostView& q0, const HostView& k0, const HostView& v0) {
  CAPTURE(dilated::to_string(c.semantics), c.b, c.n, c.h, c.d, causal);
  const auto options = attention.options();
  const auto q = dilated::testing::to_storage<T, MemSpace>(q0, "q");
  const auto k = dilated::testing::to_storage<T, MemSpace>(k0, "k");
  const auto v = dilated::testing::to_storage<T, MemSpace>(v0, "v");
  dilated::testing::Device4<T, MemSpace> out("out", c.b, c.n, c.h, c.d);
  Kokkos::View<float***, MemSpace> lse("lse", c.b, c.n, c.h);
  // Stale values, not Kokkos' zeros: every row (kept by no branch too) must be written.
  Kokkos::deep_copy(out, T(7));
  Kokkos::deep_copy(lse, 7.f);
  attention.forward(ExecSpace(), q, k, v, out, lse, {causal, false, 0});

  const auto qh = dilated::testing::to_host_double(q), kh = dilated::testing::to_host_double(k),
             vh = dilated::testing::to_host_double(v);
  Kokkos::View<double****, Kokkos::HostSpace> expected("expected", c.b, c.n, c.h, c.d);
  Kokkos::View<double***, Kokkos::HostSpace> expected_lse("expected_lse", c.b, c.n, c.h);
  dilated::reference(attention.geometry(c.h), qh, kh, vh, expected, expected_lse,
                     {causal, options.softmax_scale()});
  using Tol = dilated::testing::Tolerance<T>;
  DILATED_CHECK_ALLCLOSE(out, expected, Tol::rtol, Tol::atol);
  // lse is stored as float: its own rounding (u = 6e-8 relative) adds to T's.
  DILATED_CHECK_ALLCLOSE(lse, expected_lse, std::max(Tol::rtol, 1e-6), Tol::atol);
}

template <class T, class Attention>
void check_forward(const Attention& attention, const ForwardCase& c, bool causal,
                   std::uint64_t seed) {
  check_forward_of<T>(attention, c, causal,
                      dilated::testing::random_bnhd<double>("q", c.b, c.n, c.h, c.d, seed),
                      dilated::testing::random_bnhd<double>("k", c.b, c.n, c.h, c.d, seed + 1),
                      dilated::testing::random_bnhd<double>("v", c.b, c.n, c.h, c.d, seed + 2));
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("Forward equals the exact reference", "[forward]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  for (const auto& variant : dilated::testing::variants<ExecSpace>()) {
    CAPTURE(variant.name());
    std::uint64_t seed = 1000;
    for (const auto& c : forward_cases) {
      for (bool causal : {false, true}) {
        dilated::testing::with_attention(
            variant, c.segs, c.dils, dilated::AttentionOptions().set_semantics(c.semantics),
            [&](const auto& attention) {
              check_forward<TestType>(attention, c, causal, seed += 10);
            });
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("Forward: softmax scale and a small workspace", "[forward]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  // A workspace of one score matrix forces one team per launch (Original; on the tensor-core
  // path one persistent team takes every row tile in turn): chunking must not change anything.
  // d = 64: the tensor-core path, with segments of several key tiles.
  const ForwardCase cases[] = {{Semantics::longnet, {32, 64, 128}, {1, 2, 4}, 2, 130, 6, 24},
                               {Semantics::grouped, {64, 128, 256}, {1, 2, 4}, 2, 300, 3, 64}};
  for (const auto& variant : dilated::testing::variants<ExecSpace>()) {
    CAPTURE(variant.name());
    for (const auto& c : cases) {
      for (bool causal : {false, true}) {
        dilated::testing::with_attention(
            variant, c.segs, c.dils,
            dilated::AttentionOptions()
                .set_semantics(c.semantics)
                .set_softmax_scale(0.3)
                .set_workspace_bytes(1),
            [&](const auto& attention) { check_forward<TestType>(attention, c, causal, 77); });
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("Improved equals Original within the precision's tolerance",
                        "[forward][improved]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  // Both algorithms on identical inputs, outputs and log-sum-exp compared with each other
  // (not only each with the reference): same function, only the order of summation differs.
  // Segments keep 128-256 positions, several query and key tiles on every backend (host 64,
  // CUDA generic 32, tensor cores 128 x 64 or 64 x 64 (wgmma) at d = 64 and 64 x 32 at d = 128),
  // with partial last segments: the streaming, the online rescaling and the tile-edge masks all
  // run. The last case is longnet (merged branches, dilation > 1) on the d = 64 kernels.
  const ForwardCase cases[] = {
      {Semantics::grouped, {256, 512, 1024}, {1, 2, 4}, 1, 1500, 6, 64},
      {Semantics::longnet, {128, 256, 512}, {1, 2, 4}, 2, 600, 4, 128},
      {Semantics::longnet, {64, 128, 256}, {1, 2, 4}, 2, 333, 4, 32},
      {Semantics::longnet, {128, 256, 512}, {1, 2, 4}, 2, 700, 3, 64},
  };
  for (const auto& c : cases) {
    for (bool causal : {false, true}) {
      CAPTURE(dilated::to_string(c.semantics), causal);
      const auto opts = dilated::AttentionOptions().set_semantics(c.semantics);
      const dilated::DilatedAttention<dilated::Original> original(c.segs, c.dils, opts);
      const dilated::DilatedAttention<dilated::Improved> improved(c.segs, c.dils, opts);
      const auto make = [&](const char* name, std::uint64_t seed) {
        return dilated::testing::to_storage<TestType, MemSpace>(
            dilated::testing::random_bnhd<double>(name, c.b, c.n, c.h, c.d, seed), name);
      };
      const auto q = make("q", 7), k = make("k", 8), v = make("v", 9);
      dilated::testing::Device4<TestType, MemSpace> out_o("out_o", c.b, c.n, c.h, c.d),
          out_i("out_i", c.b, c.n, c.h, c.d);
      Kokkos::View<float***, MemSpace> lse_o("lse_o", c.b, c.n, c.h), lse_i("lse_i", c.b, c.n, c.h);
      for (const auto& x : {out_o, out_i})
        Kokkos::deep_copy(x, TestType(7));  // stale values: every row must be written
      for (const auto& x : {lse_o, lse_i})
        Kokkos::deep_copy(x, 7.f);
      original.forward(ExecSpace(), q, k, v, out_o, lse_o, {causal, false, 0});
      improved.forward(ExecSpace(), q, k, v, out_i, lse_i, {causal, false, 0});
      using Tol = dilated::testing::Tolerance<TestType>;
      DILATED_CHECK_ALLCLOSE(out_i, dilated::testing::to_host_double(out_o), 2 * Tol::rtol,
                             2 * Tol::atol);
      DILATED_CHECK_ALLCLOSE(lse_i, Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), lse_o),
                             std::max(2 * Tol::rtol, 2e-6), 2 * Tol::atol);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("Forward: scores that grow or shrink along the keys",
                        "[forward]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  // Keys carry a ramp along the sequence (rising for even heads, falling for odd ones) and
  // queries a positive mean, so a row's scores span `range` (natural units) across the longest
  // segment. The online softmax then meets a running maximum that keeps moving: by less than the
  // tensor-core kernels' rescaling threshold (range 3: they keep their first bias and sum
  // probabilities up to e^3) and by far more (range 120: the bias moves again and again, and
  // whole tiles underflow beside a row's new maximum).
  // Scores this large amplify any rounding of the scores themselves (a relative error u of a
  // score of 100 is an error 100 u in every probability), which no kernel can avoid and the
  // precision's tolerance does not cover. So the inputs are exact in every storage type and
  // their products and sums exact in float: q in multiples of 1/2 (0..2), k in multiples of
  // 1/4 (|k| < 64: at most 8 significant bits, bf16's), scale 1/16.
  const ForwardCase cases[] = {
      {Semantics::grouped, {256, 512, 1024}, {1, 2, 4}, 1, 1500, 6, 64},
      {Semantics::longnet, {128, 256, 512}, {1, 2, 4}, 1, 600, 4, 128},
  };
  constexpr double scale = 1.0 / 16;
  for (const auto& variant : dilated::testing::variants<ExecSpace>()) {
    CAPTURE(variant.name());
    for (const auto& c : cases) {
      for (const double range : {3.0, 120.0}) {
        CAPTURE(range);
        auto q = dilated::testing::random_bnhd<double>("q", c.b, c.n, c.h, c.d, 31);
        auto k = dilated::testing::random_bnhd<double>("k", c.b, c.n, c.h, c.d, 32);
        const auto v = dilated::testing::random_bnhd<double>("v", c.b, c.n, c.h, c.d, 33);
        // score ~ scale * d * mean(q) * ramp difference: range over the longest segment.
        const double slope = range / (scale * c.d * c.segs.back());
        for (int b = 0; b < c.b; ++b)
          for (int p = 0; p < c.n; ++p)
            for (int h = 0; h < c.h; ++h)
              for (int x = 0; x < c.d; ++x) {
                const double ramp = slope * (h % 2 == 0 ? 1 : -1) * (p - c.n / 2);
                q(b, p, h, x) = 0.5 * std::clamp(std::round(2 + 1.2 * q(b, p, h, x)), 0.0, 4.0);
                k(b, p, h, x) = 0.25 * std::round(4 * (0.3 * k(b, p, h, x) + ramp));
              }
        const auto options =
            dilated::AttentionOptions().set_semantics(c.semantics).set_softmax_scale(scale);
        for (bool causal : {false, true}) {
          dilated::testing::with_attention(
              variant, c.segs, c.dils, options, [&](const auto& attention) {
                check_forward_of<TestType>(attention, c, causal, q, k, v);
              });
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("Forward reproduces the golden peer outputs", "[forward][golden]" TEST_CATEGORY,
                   double, float) {
  const std::string dir = dilated::testing::golden_dir();
  std::ifstream manifest_file(dir + "/manifest.json");
  if (!manifest_file.good()) SKIP("no golden files at '" << dir << "'");
  const auto manifest = nlohmann::json::parse(manifest_file);
  int cases = 0;
  for (const auto& variant : dilated::testing::variants<ExecSpace>())
    for (const auto& c : manifest) {
      const std::string name = c.at("name");
      CAPTURE(variant.name(), name);
      const auto load = [&](const char* file) {
        return dilated::testing::load_bnhd(dir + "/" + name + "/" + file);
      };
      const auto q = dilated::testing::to_storage<TestType, MemSpace>(load("q.npy"), "q");
      const auto k = dilated::testing::to_storage<TestType, MemSpace>(load("k.npy"), "k");
      const auto v = dilated::testing::to_storage<TestType, MemSpace>(load("v.npy"), "v");
      const auto expected = load("out.npy");
      dilated::testing::Device4<TestType, MemSpace> out("out", q.extent(0), q.extent(1),
                                                        q.extent(2), q.extent(3));
      dilated::testing::with_attention(
          variant, c.at("segs").get<std::vector<int>>(), c.at("dils").get<std::vector<int>>(),
          dilated::AttentionOptions().set_semantics(
              dilated::semantics_from_string(c.at("semantics").get<std::string>())),
          [&](const auto& attention) {
            attention.forward(ExecSpace(), q, k, v, out, {c.at("causal").get<bool>(), false, 0});
          });
      // double: the golden README's 1e-10. float: the inputs are rounded to float too, so the
      // error is the input rounding (u = 6e-8 times |q||k| ~ 10 for these d) plus accumulation.
      if constexpr (std::is_same_v<TestType, double>) {
        DILATED_CHECK_ALLCLOSE(out, expected, 0.0, 1e-10);
      } else {
        DILATED_CHECK_ALLCLOSE(out, expected, 2e-5, 2e-5);
      }
      ++cases;
    }
  REQUIRE(cases >= 9 * static_cast<int>(dilated::testing::variants<ExecSpace>().size()));
}

TEMPLATE_TEST_CASE("DilatedAttention rejects bad arguments, naming them", "[errors]" TEST_CATEGORY,
                   dilated::Original, dilated::Improved) {
  using Catch::Matchers::ContainsSubstring;
  using dilated::AttentionOptions;
  using Attention = dilated::DilatedAttention<TestType>;
  REQUIRE_THROWS_WITH(Attention({16, 32}, {1}),
                      ContainsSubstring("segment_lengths has 2 entries but dilation_rates has 1"));
  REQUIRE_THROWS_WITH(Attention({16, 32}, {1, 0}), ContainsSubstring("dilation_rates[1] = 0"));
  REQUIRE_THROWS_WITH(Attention({16}, {1}, AttentionOptions().set_attention_dropout(1.0)),
                      ContainsSubstring("attention_dropout = 1 must be in [0, 1)"));
  REQUIRE_THROWS_WITH(Attention({16}, {1}, AttentionOptions().set_attention_dropout(-0.1)),
                      ContainsSubstring("attention_dropout = -0.1"));
  REQUIRE_THROWS_WITH(Attention({16}, {1}, AttentionOptions().set_softmax_scale(INFINITY)),
                      ContainsSubstring("softmax_scale = inf must be finite"));

  const Attention grouped({8, 16, 32}, {1, 2, 4});
  dilated::testing::Device4<float, MemSpace> q("q", 1, 32, 2, 8), out("out", 1, 32, 2, 8);
  REQUIRE_THROWS_WITH(grouped.forward(ExecSpace(), q, q, q, out),
                      ContainsSubstring("num_heads = 2 is less than the number of groups"));
  const Attention attention({8}, {1});
  dilated::testing::Device4<float, MemSpace> k_short("k", 1, 31, 2, 8), v_wide("v", 1, 32, 2, 16);
  REQUIRE_THROWS_WITH(attention.forward(ExecSpace(), q, k_short, q, out),
                      ContainsSubstring("k.extent(1) (sequence length) = 31 does not match"));
  REQUIRE_THROWS_WITH(attention.forward(ExecSpace(), q, q, v_wide, out),
                      ContainsSubstring("v.extent(3) (head_dim) = 16 does not match"));
  Kokkos::View<float***, MemSpace> lse("lse", 1, 32, 3);
  REQUIRE_THROWS_WITH(attention.forward(ExecSpace(), q, q, q, out, lse),
                      ContainsSubstring("lse.extent(2) (heads) = 3"));
  REQUIRE_THROWS_WITH(attention.backward(ExecSpace(), q, q, q, out, out, q, q, v_wide),
                      ContainsSubstring("dv.extent(3) (head_dim) = 16 does not match"));
  // Outputs that alias inputs: a race, not an in-place update. Partial overlaps count too.
  REQUIRE_THROWS_WITH(attention.forward(ExecSpace(), q, q, q, q),
                      ContainsSubstring("out shares memory with q"));
  dilated::testing::Device4<float, MemSpace> buffer("buffer", 2, 32, 2, 8);
  const auto first = Kokkos::subview(buffer, 0, Kokkos::ALL, Kokkos::ALL, Kokkos::ALL);
  const auto second = Kokkos::subview(buffer, 1, Kokkos::ALL, Kokkos::ALL, Kokkos::ALL);
  const auto view4 = [](const auto& x) {
    return Kokkos::View<float****, Kokkos::LayoutRight, MemSpace, Kokkos::MemoryUnmanaged>(
        x.data(), 1, 32, 2, 8);
  };
  REQUIRE_NOTHROW(
      attention.forward(ExecSpace(), view4(first), view4(first), view4(first), view4(second)));
  Kokkos::View<float***, MemSpace> lse_ok("lse_ok", 1, 32, 2);
  const Kokkos::View<float***, Kokkos::LayoutRight, MemSpace, Kokkos::MemoryUnmanaged> lse_in_out(
      reinterpret_cast<float*>(out.data()) + 8, 1, 32, 2);
  REQUIRE_THROWS_WITH(attention.forward(ExecSpace(), q, q, q, out, lse_in_out),
                      ContainsSubstring("lse shares memory with out"));
  dilated::testing::Device4<float, MemSpace> dout("dout", 1, 32, 2, 8), dq("dq", 1, 32, 2, 8),
      dk("dk", 1, 32, 2, 8);
  attention.forward(ExecSpace(), q, q, q, out, lse_ok);
  REQUIRE_THROWS_WITH(attention.backward(ExecSpace(), q, q, q, out, lse_ok, dout, dq, dk, out),
                      ContainsSubstring("dv shares memory with out"));
  REQUIRE_THROWS_WITH(attention.backward(ExecSpace(), q, q, q, out, lse_ok, dout, dout, dk, dq),
                      ContainsSubstring("dq shares memory with dout"));
  REQUIRE_NOTHROW(
      attention.backward(ExecSpace(), q, q, q, out, lse_ok, dout, dq, dk, view4(second)));
}

TEMPLATE_TEST_CASE("Forward reads q, k, v in place from a packed QKV buffer",
                   "[forward][layout]" TEST_CATEGORY, double, float) {
  // One (b, n, 3h, d) buffer holds q, k and v side by side along the head axis, as a fused
  // projection writes them: the three inputs are LayoutStride subviews (row stride 3 h d).
  const int b = 2, n = 100, h = 5, d = 16;
  const auto packed_host = dilated::testing::random_bnhd<double>("qkv", b, n, 3 * h, d, 4242);
  const auto packed = dilated::testing::to_storage<TestType, MemSpace>(packed_host, "qkv");
  const auto part = [&](int i) {
    return Kokkos::subview(packed, Kokkos::ALL, Kokkos::ALL, Kokkos::make_pair(i * h, (i + 1) * h),
                           Kokkos::ALL);
  };
  const auto q = part(0), k = part(1), v = part(2);
  // The oracle's inputs: the same (rounded) values, sliced on the host.
  const auto packed_rounded = dilated::testing::to_host_double(packed);
  const auto host_part = [&](int i) {
    return Kokkos::subview(packed_rounded, Kokkos::ALL, Kokkos::ALL,
                           Kokkos::make_pair(i * h, (i + 1) * h), Kokkos::ALL);
  };
  for (const auto& variant : dilated::testing::variants<ExecSpace>()) {
    for (auto semantics : {Semantics::grouped, Semantics::longnet}) {
      CAPTURE(variant.name(), dilated::to_string(semantics));
      dilated::testing::with_attention(
          variant, {16, 32, 64}, {1, 2, 4}, dilated::AttentionOptions().set_semantics(semantics),
          [&](const auto& attention) {
            dilated::testing::Device4<TestType, MemSpace> out("out", b, n, h, d);
            attention.forward(ExecSpace(), q, k, v, out, {true, false, 0});
            Kokkos::View<double****, Kokkos::HostSpace> expected("expected", b, n, h, d);
            dilated::reference(attention.geometry(h), host_part(0), host_part(1), host_part(2),
                               expected, {true, std::nullopt});
            using Tol = dilated::testing::Tolerance<TestType>;
            DILATED_CHECK_ALLCLOSE(out, expected, Tol::rtol, Tol::atol);
          });
    }
  }
}

// Dropout checked without the library's own mask (Dropout::factor), which every other dropout
// oracle shares with the kernels: each output entry is one probability, 0 when dropped and
// exactly 1 / (1 - p) times the same entry without dropout when kept; about p of them are
// dropped; and over many seeds the output averages to the output without dropout. Run for every
// storage type, so each host Improved path sees it: the float micro-kernels
// (Dilated_ImprovedHostTile.hpp) and the generic team kernel (double, and float with
// DILATED_DISABLE_HOST_TILES). Checked against the mutation that drops the rescale
// (keep_scale = 1 in Dilated_Dropout.hpp): both sections fail, for every storage type.
template <class Algorithm, class T>
void check_dropout_without_the_mask(const char* path) {
  using Attention = dilated::DilatedAttention<Algorithm>;
  using View = dilated::testing::Device4<T, MemSpace>;
  CAPTURE(path);
  const double p = 0.25;
  const Attention attention({8}, {1}, dilated::AttentionOptions().set_attention_dropout(p));
  dilated::ForwardOptions training;
  training.training = true;
  // Relative rounding between a kept entry and 1 / (1 - p) times the undropped one: both are
  // P v / l, rounded to T, with the factor applied to P before the sum (the other terms of
  // the sum are exact zeros); a few units of T's roundoff, 16 u allows any order.
  const double u = std::is_same_v<T, double>  ? 1.1e-16
                   : std::is_same_v<T, float> ? 6.0e-8
                                              : dilated::testing::Tolerance<T>::rtol / 8;

  SECTION("each kept entry is exactly 1 / (1 - p) times the undropped one, the rest 0") {
    // v(t) is the unit vector t mod 8 and d = 8 = the segment: out(t, j) is the probability of
    // (t, the segment's key j), after dropout or not. q and k random: the probabilities differ.
    const int n = 256, h = 2, d = 8;
    const auto q = dilated::testing::to_storage<T, MemSpace>(
        dilated::testing::random_bnhd<double>("q", 1, n, h, d, 21), "q");
    const auto k = dilated::testing::to_storage<T, MemSpace>(
        dilated::testing::random_bnhd<double>("k", 1, n, h, d, 22), "k");
    View v("v", 1, n, h, d), out("out", 1, n, h, d);
    auto hv = Kokkos::create_mirror_view(v);
    for (int t = 0; t < n; ++t)
      for (int head = 0; head < h; ++head)
        hv(0, t, head, t % 8) = T(1);
    Kokkos::deep_copy(v, hv);
    attention.forward(ExecSpace(), q, k, v, out);  // not training: no dropout
    const auto plain = dilated::testing::to_host_double(out);
    training.seed = 11;
    attention.forward(ExecSpace(), q, k, v, out, training);
    const auto o = dilated::testing::to_host_double(out);
    long zeros = 0, bad = 0;
    double worst = 0;
    for (int t = 0; t < n; ++t)
      for (int head = 0; head < h; ++head)
        for (int j = 0; j < d; ++j) {
          const double x = o(0, t, head, j), kept = plain(0, t, head, j) / (1 - p);
          REQUIRE(plain(0, t, head, j) > 0);
          if (x == 0) {
            ++zeros;
          } else {
            worst = std::max(worst, std::abs(x - kept) / kept);
            if (std::abs(x - kept) > 16 * u * kept) ++bad;
          }
        }
    CAPTURE(worst);
    CHECK(bad == 0);
    // The dropped fraction: binomial, N = 4096 draws, sigma = sqrt(p (1 - p) / N) = 0.0068.
    const double fraction = double(zeros) / (n * h * d),
                 sigma = std::sqrt(p * (1 - p) / (n * h * d));
    CAPTURE(fraction, sigma);
    CHECK(std::abs(fraction - p) < 5 * sigma);
  }

  SECTION("the mean over seeds is the output without dropout") {
    // out_s(t) = sum_j P_j m_j v_j / (1 - p) with m_j ~ Bernoulli(1 - p) independent over j and
    // seeds: E[m_j / (1 - p)] = 1, so E out_s = sum_j P_j v_j (the output without dropout), and
    // Var[m_j / (1 - p)] = (1 - p) / (1 - p)^2 - 1 = p / (1 - p), so Var out_s =
    // sum_j P_j^2 v_j^2 p / (1 - p). The mean of S = 400 seeds has sigma = sqrt(Var / S); it
    // must lie within 5 sigma of the expectation for every one of the 64 entries (a false
    // alarm per entry has probability 6e-7, for the 64 about 4e-5). P is computed here from q
    // and k in double. Without the rescale the mean is (1 - p) E = 0.75 E: with E ~ 1 and
    // sigma ~ 0.01-0.03 that is 8-25 sigma away. T's rounding (relative u, <= 2e-5 for half)
    // adds to sigma.
    const int n = 16, h = 1, d = 4, seeds = 400;
    const auto q0 = dilated::testing::random_bnhd<double>("q", 1, n, h, d, 1);
    const auto k0 = dilated::testing::random_bnhd<double>("k", 1, n, h, d, 2);
    auto v0 = dilated::testing::random_bnhd<double>("v", 1, n, h, d, 3);
    for (std::size_t i = 0; i < v0.size(); ++i)
      v0.data()[i] = 1.0 + 0.5 * v0.data()[i];  // mostly positive: the mean is far from 0
    const auto q = dilated::testing::to_storage<T, MemSpace>(q0, "q");
    const auto k = dilated::testing::to_storage<T, MemSpace>(k0, "k");
    const auto v = dilated::testing::to_storage<T, MemSpace>(v0, "v");
    // The rounded inputs, as the kernels see them.
    const auto qr = dilated::testing::to_host_double(q), kr = dilated::testing::to_host_double(k),
               vr = dilated::testing::to_host_double(v);
    View out("out", 1, n, h, d);
    attention.forward(ExecSpace(), q, k, v, out);  // not training: no dropout
    const auto plain = dilated::testing::to_host_double(out);
    std::vector<double> sum(n * d, 0.0);
    for (int s = 0; s < seeds; ++s) {
      training.seed = 1000 + s;
      attention.forward(ExecSpace(), q, k, v, out, training);
      const auto o = dilated::testing::to_host_double(out);
      for (int t = 0; t < n; ++t)
        for (int j = 0; j < d; ++j)
          sum[t * d + j] += o(0, t, 0, j);
    }
    const double scale = 1 / std::sqrt(double(d));
    long outside = 0;
    for (int t = 0; t < n; ++t) {
      const int start = t / 8 * 8;
      std::vector<double> prob(8);
      double top = -1e300, total = 0;
      for (int j = 0; j < 8; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c)
          dot += qr(0, t, 0, c) * kr(0, start + j, 0, c);
        prob[j] = dot * scale;
        top = std::max(top, prob[j]);
      }
      for (auto& x : prob)
        total += (x = std::exp(x - top));
      for (int c = 0; c < d; ++c) {
        double expected = 0, variance = 0;
        for (int j = 0; j < 8; ++j) {
          const double pv = prob[j] / total * vr(0, start + j, 0, c);
          expected += pv;
          variance += pv * pv * p / (1 - p);
        }
        const double mean = sum[t * d + c] / seeds,
                     sigma = std::sqrt(variance / seeds) + 64 * u * std::abs(expected);
        CHECK(std::abs(expected - plain(0, t, 0, c)) < 64 * u * (1 + std::abs(expected)));
        if (std::abs(mean - expected) > 5 * sigma) ++outside;
      }
    }
    CHECK(outside == 0);
  }
}

TEMPLATE_LIST_TEST_CASE("Dropout rescales what it keeps by 1 / (1 - p) and is unbiased",
                        "[forward][dropout]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  SECTION("Original") {
    check_dropout_without_the_mask<dilated::Original, TestType>("default");
  }
  SECTION("Improved") {
    check_dropout_without_the_mask<dilated::Improved, TestType>("default");
  }
}

// The host Improved forward has two paths: the register-blocked micro-kernels
// (Dilated_ImprovedHostTile.hpp) for float accumulation -- float, and half / bf16 where they
// are 16-bit types (a CUDA build's host backends; a host-only Kokkos makes them float) -- and
// the generic team kernel (Dilated_ImprovedKernels.hpp) for double. So on a host-only build
// each path saw one storage type. DILATED_DISABLE_HOST_TILES=1 runs float through the generic
// kernel too: here it is checked against the exact reference and for dropout, beside double.
TEST_CASE("Improved forward: the host's generic team kernel in float", "[forward]" TEST_CATEGORY) {
  if constexpr (!dilated::Impl::host_tile::enabled_v<ExecSpace, float>) {
    SKIP("no host micro-kernels on this backend: float runs the generic kernel already");
  } else {
    const dilated::testing::ScopedEnvironment generic("DILATED_DISABLE_HOST_TILES", "1");
    REQUIRE_FALSE(dilated::Impl::host_tile::allowed());
    SECTION("against the exact reference") {
      std::uint64_t seed = 5000;
      for (const auto& c : forward_cases) {
        for (bool causal : {false, true}) {
          const dilated::DilatedAttention<dilated::Improved> attention(
              c.segs, c.dils, dilated::AttentionOptions().set_semantics(c.semantics));
          check_forward<float>(attention, c, causal, seed += 10);
        }
      }
    }
    SECTION("dropout") {
      check_dropout_without_the_mask<dilated::Improved, float>("generic team kernel");
    }
  }
}

namespace {

using dilated::testing::NoFloatingPointTraps;

// Where the non-finite tests plant their bad values: (b, n, h, d) in a (2, 20, 2, 8) input.
constexpr int nf_b = 2, nf_n = 20, nf_h = 2, nf_d = 8;
constexpr std::array<int, 4> nf_at = {1, 8, 0, 3};

}  // namespace

TEMPLATE_LIST_TEST_CASE("check_finite names the first NaN or infinity in q, k, v",
                        "[forward][errors][nonfinite]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  using T = TestType;
  using Catch::Matchers::ContainsSubstring;
  const NoFloatingPointTraps no_traps;
  const char* names[] = {"q", "k", "v"};
  const double bad_values[] = {std::nan(""), INFINITY, -INFINITY};
  const char* bad_names[] = {"nan", "inf", "-inf"};
  for (const auto& variant : dilated::testing::variants<ExecSpace>()) {
    CAPTURE(variant.name());
    dilated::testing::with_attention(
        variant, {8, 16}, {1, 2}, dilated::AttentionOptions().set_check_finite(true),
        [&](const auto& attention) {
          for (int which = 0; which < 3; ++which) {
            for (int bad = 0; bad < 3; ++bad) {
              CAPTURE(names[which], bad_names[bad]);
              std::array<Kokkos::View<double****, Kokkos::LayoutRight, Kokkos::HostSpace>, 3> in;
              for (int i = 0; i < 3; ++i)
                in[i] = dilated::testing::random_bnhd<double>(names[i], nf_b, nf_n, nf_h, nf_d,
                                                              500 + i);
              in[which](nf_at[0], nf_at[1], nf_at[2], nf_at[3]) = bad_values[bad];
              in[which](1, 17, 0, 2) = std::nan("");  // later in flat order: not the first
              const auto q = dilated::testing::to_storage<T, MemSpace>(in[0], "q");
              const auto k = dilated::testing::to_storage<T, MemSpace>(in[1], "k");
              const auto v = dilated::testing::to_storage<T, MemSpace>(in[2], "v");
              dilated::testing::Device4<T, MemSpace> out("out", nf_b, nf_n, nf_h, nf_d);
              Kokkos::deep_copy(out, T(7));
              const std::string where =
                  std::string(names[which]) + "(1, 8, 0, 3) = " + bad_names[bad] + " is not finite";
              REQUIRE_THROWS_WITH(
                  attention.forward(ExecSpace(), q, k, v, out),
                  ContainsSubstring("dilated::DilatedAttention::forward: " + where));
              try {
                attention.forward(ExecSpace(), q, k, v, out);
              } catch (const dilated::NonFiniteInput& e) {
                CHECK(e.argument() == names[which]);
                CHECK(e.index() == std::array<std::size_t, 4>{1, 8, 0, 3});
                CHECK(dilated::NonFiniteInput::value_string(e.value()) == bad_names[bad]);
              }
              // Thrown before any work: out still holds what the caller left there.
              const auto out_host = dilated::testing::to_host_double(out);
              CHECK(out_host(0, 0, 0, 0) == 7.0);
              CHECK(out_host(1, 19, 1, 7) == 7.0);
            }
          }
          // Finite inputs pass the check.
          const auto q = dilated::testing::random_bnhd<T, MemSpace>("q", nf_b, nf_n, nf_h, nf_d, 9);
          dilated::testing::Device4<T, MemSpace> out("out", nf_b, nf_n, nf_h, nf_d);
          REQUIRE_NOTHROW(attention.forward(ExecSpace(), q, q, q, out));
        });
  }
  // Off (the default): no check, no throw.
  const dilated::DilatedAttention<dilated::Improved> unchecked({8}, {1});
  CHECK_FALSE(unchecked.options().check_finite());
  auto q0 = dilated::testing::random_bnhd<double>("q", 1, 8, 1, 8, 3);
  q0(0, 2, 0, 1) = std::nan("");
  const auto q = dilated::testing::to_storage<T, MemSpace>(q0, "q");
  dilated::testing::Device4<T, MemSpace> out("out", 1, 8, 1, 8);
  REQUIRE_NOTHROW(unchecked.forward(ExecSpace(), q, q, q, out));
  Kokkos::fence();
}

// Without check_finite a NaN propagates exactly as in the reference (docs/api.md): a NaN in
// q(b, p, h, c) makes row (b, p, h) of out and lse NaN when some branch keeps p for head h; in
// k(b, m, h, c) the rows (b, p, h) of every query p whose attended keys (the reference's mask row
// of p) include m; in v(b, m, h, c) only column c of those rows of out (lse stays finite), and,
// causal, maybe column c of the rows before m in a segment holding m (0 x NaN in P V). Rows no
// branch keeps stay 0 with lse -inf. Checked on every path, both semantics, causal and not:
// NaN positions exactly (against the reference and the rule), the rest to the usual tolerance.
TEMPLATE_LIST_TEST_CASE("A NaN input propagates to the rows the reference says, no further",
                        "[forward][nonfinite]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  using T = TestType;
  using Tol = dilated::testing::Tolerance<T>;
  const NoFloatingPointTraps no_traps;
  const char* names[] = {"q", "k", "v"};
  // Dilations 2 and 4 leave positions no branch keeps (odd ones for head 0, in both semantics).
  const std::vector<int> segs = {8, 16}, dils = {2, 4};
  const int b0 = nf_at[0], m = nf_at[1], h0 = nf_at[2], c0 = nf_at[3];
  for (const auto& variant : dilated::testing::variants<ExecSpace>()) {
    for (const Semantics semantics : {Semantics::grouped, Semantics::longnet}) {
      dilated::testing::with_attention(
          variant, segs, dils, dilated::AttentionOptions().set_semantics(semantics),
          [&](const auto& attention) {
            const dilated::Geometry g = attention.geometry(nf_h);
            for (const bool causal : {false, true}) {
              for (int which = 0; which < 3; ++which) {
                CAPTURE(variant.name(), dilated::to_string(semantics), causal, names[which]);
                std::array<Kokkos::View<double****, Kokkos::LayoutRight, Kokkos::HostSpace>, 3> in;
                for (int i = 0; i < 3; ++i)
                  in[i] = dilated::testing::random_bnhd<double>(names[i], nf_b, nf_n, nf_h, nf_d,
                                                                700 + i);
                in[which](b0, m, h0, c0) = std::nan("");
                const auto q = dilated::testing::to_storage<T, MemSpace>(in[0], "q");
                const auto k = dilated::testing::to_storage<T, MemSpace>(in[1], "k");
                const auto v = dilated::testing::to_storage<T, MemSpace>(in[2], "v");
                dilated::testing::Device4<T, MemSpace> out("out", nf_b, nf_n, nf_h, nf_d);
                Kokkos::View<float***, MemSpace> lse("lse", nf_b, nf_n, nf_h);
                Kokkos::deep_copy(out, T(7));
                Kokkos::deep_copy(lse, 7.f);
                attention.forward(ExecSpace(), q, k, v, out, lse, {causal, false, 0});
                const auto got = dilated::testing::to_host_double(out);
                const auto got_lse = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), lse);

                const auto qh = dilated::testing::to_host_double(q),
                           kh = dilated::testing::to_host_double(k),
                           vh = dilated::testing::to_host_double(v);
                Kokkos::View<double****, Kokkos::HostSpace> want("want", nf_b, nf_n, nf_h, nf_d);
                Kokkos::View<double***, Kokkos::HostSpace> want_lse("want_lse", nf_b, nf_n, nf_h);
                dilated::reference(g, qh, kh, vh, want, want_lse, {causal, std::nullopt});

                // The rule, the reference and the kernels agree on every NaN; NaNs then set to 0
                // on both sides for the tolerance check of the rest.
                Kokkos::View<double***, Kokkos::HostSpace> got_lse_d("got_lse", nf_b, nf_n, nf_h);
                int rule_mismatch = 0, reference_mismatch = 0, nan_rows = 0, unkept_rows = 0,
                    unkept_wrong = 0;
                std::vector<int> row, row_all;
                for (int i = 0; i < nf_b; ++i) {
                  for (int t = 0; t < nf_n; ++t) {
                    for (int j = 0; j < nf_h; ++j) {
                      dilated::reference_mask_row(g, j, t, nf_n, causal, row);
                      dilated::reference_mask_row(g, j, t, nf_n, false, row_all);
                      const bool kept =
                          std::any_of(row.begin(), row.end(), [](int x) { return x != 0; });
                      const bool mine = i == b0 && j == h0;
                      const bool hit = mine && (which == 0 ? t == m && kept : row[m] != 0);
                      nan_rows += hit;
                      const bool lse_nan = hit && which != 2;
                      const double l = got_lse(i, t, j);
                      reference_mismatch += std::isnan(l) != std::isnan(want_lse(i, t, j));
                      rule_mismatch += std::isnan(l) != lse_nan;
                      got_lse_d(i, t, j) = std::isnan(l) ? 0.0 : l;
                      if (std::isnan(want_lse(i, t, j))) want_lse(i, t, j) = 0.0;
                      if (!kept) {
                        ++unkept_rows;
                        unkept_wrong += !(l == -INFINITY);
                      }
                      for (int c = 0; c < nf_d; ++c) {
                        const bool nan = hit && (which != 2 || c == c0);
                        // v: a row before m in a segment holding m (causal) multiplies its
                        // masked probability 0 by v's NaN in the paths' P V products: NaN or not.
                        const bool may = mine && which == 2 && c == c0 && row_all[m] != 0;
                        const bool got_nan = std::isnan(got(i, t, j, c)),
                                   want_nan = std::isnan(want(i, t, j, c));
                        if (may && !nan) {
                          (void)got_nan;  // either is right
                        } else {
                          reference_mismatch += got_nan != want_nan;
                          rule_mismatch += got_nan != nan;
                        }
                        if (!kept) unkept_wrong += got(i, t, j, c) != 0.0;
                        if (got_nan || (may && want_nan)) got(i, t, j, c) = 0.0;
                        if (want_nan || (may && got_nan)) want(i, t, j, c) = 0.0;
                      }
                    }
                  }
                }
                CHECK(nan_rows >= 1);
                CHECK(unkept_rows >= 1);
                CHECK(reference_mismatch == 0);
                CHECK(rule_mismatch == 0);
                CHECK(unkept_wrong == 0);  // rows no branch keeps: zeros, lse -inf
                DILATED_CHECK_ALLCLOSE(got, want, Tol::rtol, Tol::atol);
                DILATED_CHECK_ALLCLOSE(got_lse_d, want_lse, std::max(Tol::rtol, 1e-6), Tol::atol);
              }
            }
          });
    }
  }
}
