// The exact reference: tiny cases whose values are worked out by hand in the comments, and the
// second, segment-by-segment formulation (Dilated_BranchwiseReference.hpp: attention per branch,
// then the log-sum-exp merge of the spec) that must agree with the full-length masked reference
// everywhere, including partial segments, causal masks and r > h.
#include <DilatedAttention.hpp>
#include <Dilated_Allclose.hpp>
#include <Dilated_BranchwiseReference.hpp>
#include <Dilated_TestData.hpp>

#include <catch2/catch_test_macros.hpp>

#include <cmath>
#include <limits>
#include <vector>

using dilated::Geometry;
using dilated::Semantics;
using HostView4 = Kokkos::View<double****, Kokkos::HostSpace>;
using HostView3 = Kokkos::View<double***, Kokkos::HostSpace>;

namespace {

const double inf = std::numeric_limits<double>::infinity();

struct Result {
  HostView4 out;
  HostView3 lse;
};

Result run_reference(const Geometry& g, const HostView4& q, const HostView4& k, const HostView4& v,
                     dilated::ReferenceOptions options = {}) {
  Result r{HostView4("out", q.extent(0), q.extent(1), q.extent(2), q.extent(3)),
           HostView3("lse", q.extent(0), q.extent(1), q.extent(2))};
  dilated::reference(Kokkos::DefaultHostExecutionSpace{}, g, q, k, v, r.out, r.lse, options);
  return r;
}

// (1, n, h, 1) view from per-head columns.
HostView4 column(const std::vector<std::vector<double>>& per_head) {
  const int h = per_head.size(), n = per_head[0].size();
  HostView4 v("v", 1, n, h, 1);
  for (int j = 0; j < h; ++j)
    for (int p = 0; p < n; ++p)
      v(0, p, j, 0) = per_head[j][p];
  return v;
}

void require_column(const HostView4& out, int head, const std::vector<double>& expected) {
  for (std::size_t p = 0; p < expected.size(); ++p) {
    CAPTURE(head, p);
    REQUIRE(std::abs(out(0, p, head, 0) - expected[p]) < 1e-14);
  }
}

void require_lse(const HostView3& lse, int head, const std::vector<double>& expected) {
  for (std::size_t p = 0; p < expected.size(); ++p) {
    CAPTURE(head, p);
    if (std::isinf(expected[p])) {
      REQUIRE(lse(0, p, head) == expected[p]);
    } else {
      REQUIRE(std::abs(lse(0, p, head) - expected[p]) < 1e-14);
    }
  }
}

}  // namespace

TEST_CASE("reference: hand-checked grouped cases, n = 4, one head", "[reference]") {
  // d = 1, scale 1, q = 1, k = (0, ln 3, 0, ln 3): within a pair the weights are 1/4 and 3/4.
  const auto q = column({{1, 1, 1, 1}});
  const auto k = column({{0, std::log(3.0), 0, std::log(3.0)}});
  const auto v = column({{1, 2, 3, 4}});
  const dilated::ReferenceOptions scale1{false, 1.0};

  SECTION("segments of 2, dilation 1") {
    // out = 1/4 v0 + 3/4 v1 = 1.75 in {0, 1}; 1/4 v2 + 3/4 v3 = 3.75 in {2, 3}; lse = ln 4.
    const auto r = run_reference(Geometry({2}, {1}, 1, Semantics::grouped), q, k, v, scale1);
    require_column(r.out, 0, {1.75, 1.75, 3.75, 3.75});
    require_lse(r.lse, 0, {std::log(4.0), std::log(4.0), std::log(4.0), std::log(4.0)});
  }
  SECTION("segments of 2, causal") {
    // Position 0 sees only itself (v0 = 1, lse = 0); position 2 likewise (v2 = 3).
    const auto r = run_reference(Geometry({2}, {1}, 1, Semantics::grouped), q, k, v, {true, 1.0});
    require_column(r.out, 0, {1, 1.75, 3, 3.75});
    require_lse(r.lse, 0, {0, std::log(4.0), 0, std::log(4.0)});
  }
  SECTION("one segment of 4, dilation 2: positions 0 and 2 only") {
    // k0 = 0, k2 = 0 -> equal weights: (v0 + v2) / 2 = 2; positions 1, 3 are not kept.
    const auto r = run_reference(Geometry({4}, {2}, 1, Semantics::grouped), q, k, v, scale1);
    require_column(r.out, 0, {2, 0, 2, 0});
    require_lse(r.lse, 0, {std::log(2.0), -inf, std::log(2.0), -inf});
  }
  SECTION("default scale is 1/sqrt(d)") {
    // d = 4, q = k = (1, 1, 1, 1) everywhere: scores all equal to 4 / sqrt(4) = 2, so
    // lse = 2 + ln 2 in segments of 2.
    HostView4 ones("ones", 1, 4, 1, 4);
    Kokkos::deep_copy(ones, 1.0);
    const auto r = run_reference(Geometry({2}, {1}, 1, Semantics::grouped), ones, ones, ones);
    for (int p = 0; p < 4; ++p)
      REQUIRE(std::abs(r.lse(0, p, 0) - (2 + std::log(2.0))) < 1e-14);
  }
}

TEST_CASE("reference: hand-checked grouped case with two groups", "[reference]") {
  // h = 2, segs (2, 4), dils (1, 2): head 0 is group 0 (pairs), head 1 is group 1 with offset
  // 1 mod 2 = 1, so it keeps positions 1 and 3. q = 0: uniform weights. Output divided by G = 2.
  const auto zeros = column({{0, 0, 0, 0}, {0, 0, 0, 0}});
  const auto v = column({{1, 2, 3, 4}, {10, 20, 30, 40}});
  const auto r = run_reference(Geometry({2, 4}, {1, 2}, 2, Semantics::grouped), zeros, zeros, v);
  require_column(r.out, 0, {0.75, 0.75, 1.75, 1.75});  // (v0 + v1) / 2 / 2, (v2 + v3) / 2 / 2
  require_column(r.out, 1, {0, 15, 0, 15});            // (20 + 40) / 2 / 2
  const double l2 = std::log(2.0);
  require_lse(r.lse, 0, {l2, l2, l2, l2});
  require_lse(r.lse, 1, {-inf, l2, -inf, l2});
}

TEST_CASE("reference: hand-checked longnet cases, n = 4, one head", "[reference]") {
  const auto zeros = column({{0, 0, 0, 0}});
  const auto v = column({{1, 2, 3, 4}});
  SECTION("segs (2, 4), dils (1, 2): keys are the multiset union of the branches") {
    // p0: {0,1} + {0,2} -> (2 v0 + v1 + v2) / 4 = 1.75, lse ln 4;  p1: {0,1} -> 1.5, ln 2;
    // p2: {2,3} + {0,2} -> (v0 + 2 v2 + v3) / 4 = 2.75, ln 4;       p3: {2,3} -> 3.5, ln 2.
    const auto r = run_reference(Geometry({2, 4}, {1, 2}, 1, Semantics::longnet), zeros, zeros, v);
    require_column(r.out, 0, {1.75, 1.5, 2.75, 3.5});
    require_lse(r.lse, 0, {std::log(4.0), std::log(2.0), std::log(4.0), std::log(2.0)});
  }
  SECTION("r > h: offsets no head gets are not covered") {
    // h = 1, r = 2: ceil(1/2) = 1 head per offset, the head gets offset 0; 1 and 3 are empty.
    const auto r = run_reference(Geometry({4}, {2}, 1, Semantics::longnet), zeros, zeros, v);
    require_column(r.out, 0, {2, 0, 2, 0});
    require_lse(r.lse, 0, {std::log(2.0), -inf, std::log(2.0), -inf});
  }
}

TEST_CASE("reference: partial segments take only the positions that exist", "[reference]") {
  // n = 5, segments of 2: {0,1}, {2,3}, {4}. Uniform weights.
  const auto zeros = column({{0, 0, 0, 0, 0}});
  const auto v = column({{1, 2, 3, 4, 5}});
  const auto r = run_reference(Geometry({2}, {1}, 1, Semantics::grouped), zeros, zeros, v);
  require_column(r.out, 0, {1.5, 1.5, 3.5, 3.5, 5});
  const double l2 = std::log(2.0);
  require_lse(r.lse, 0, {l2, l2, l2, l2, 0});
  // A segment longer than the sequence is the whole sequence: mean of 1..5 = 3.
  const auto whole = run_reference(Geometry({8}, {1}, 1, Semantics::grouped), zeros, zeros, v);
  require_column(whole.out, 0, {3, 3, 3, 3, 3});
}

TEST_CASE("reference equals the segment-by-segment log-sum-exp merge", "[reference]") {
  struct Case {
    std::vector<int> segs, dils;
    int h, n, d;
    Semantics semantics;
  };
  const std::vector<Case> cases = {
      {{16, 32}, {1, 2}, 4, 64, 8, Semantics::grouped},
      {{16, 32, 64, 128, 256}, {1, 2, 4, 8, 16}, 12, 200, 4, Semantics::grouped},  // partial
      {{16, 32}, {1, 2}, 4, 64, 8, Semantics::longnet},
      {{32, 64, 128}, {1, 2, 4}, 6, 100, 16, Semantics::longnet},  // partial, h not div by r
      {{16, 64}, {1, 4}, 3, 77, 8, Semantics::longnet},            // r > h, odd n
      {{6, 10}, {4, 3}, 5, 31, 24, Semantics::grouped},            // s not divisible by r
      {{8}, {1}, 1, 1, 1, Semantics::longnet},                     // n = 1
  };
  std::uint64_t seed = 100;
  for (const auto& c : cases) {
    for (bool causal : {false, true}) {
      CAPTURE(c.h, c.n, c.d, causal, dilated::to_string(c.semantics));
      const Geometry g(c.segs, c.dils, c.h, c.semantics);
      const auto q = dilated::testing::random_bnhd<double>("q", 2, c.n, c.h, c.d, seed++);
      const auto k = dilated::testing::random_bnhd<double>("k", 2, c.n, c.h, c.d, seed++);
      const auto v = dilated::testing::random_bnhd<double>("v", 2, c.n, c.h, c.d, seed++);
      auto expected = dilated::testing::branchwise(g, q, k, v, causal, 1.0 / std::sqrt(c.d));
      dilated::testing::merge(g, expected);
      const auto actual = run_reference(g, q, k, v, {causal, std::nullopt});
      DILATED_CHECK_ALLCLOSE(actual.out, expected.out, 1e-12, 1e-12);
      DILATED_CHECK_ALLCLOSE(actual.lse, expected.merged_lse, 1e-12, 1e-12);
    }
  }
}
