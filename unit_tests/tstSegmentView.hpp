// Strided segment subviews on every backend: for each head block and segment, every element
// of the subview must be the very element (same address) of the full view at the position the
// spec defines, for contiguous, LayoutLeft and packed-QKV (LayoutStride) views.
#include <DilatedAttention.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <string>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;

// Spec positions of segment j of branch i at offset o, independent of Geometry::kept.
std::vector<int> spec_positions(int s, int r, int o, int j, int n) {
  const int w = std::min(s, n);
  std::vector<int> out;
  for (int p = j * w; p < std::min((j + 1) * w, n); ++p)
    if ((p - j * w) % r == o) out.push_back(p);
  return out;
}

// Number of elements of `sub` whose address differs from full(b, positions[t], h0 + j, c),
// counted by a kernel on ExecSpace; also checks Impl::strided_rows called inside the kernel.
template <class Full, class Sub>
int count_address_mismatches(const Full& full, const Sub& sub, const std::vector<int>& positions,
                             int head_begin, int stride) {
  Kokkos::View<int*, MemSpace> pos("dilated::test::positions", positions.size());
  auto pos_host = Kokkos::create_mirror_view(pos);
  for (std::size_t t = 0; t < positions.size(); ++t)
    pos_host(t) = positions[t];
  Kokkos::deep_copy(pos, pos_host);
  const int first = positions.empty() ? 0 : positions[0], count = positions.size();
  const int head_end = head_begin + static_cast<int>(sub.extent(2));
  int mismatches = 0;
  Kokkos::parallel_reduce(
      "dilated::test::segment_view_addresses",
      Kokkos::RangePolicy<ExecSpace>(0, static_cast<int>(sub.extent(0)) * count),
      KOKKOS_LAMBDA(int bt, int& bad) {
        const int b = bt / count, t = bt % count;
        const auto in_kernel =
            dilated::Impl::strided_rows(full, first, count, stride, head_begin, head_end);
        for (std::size_t j = 0; j < sub.extent(2); ++j)
          for (std::size_t c = 0; c < sub.extent(3); ++c) {
            const auto* expected = &full(b, pos(t), head_begin + j, c);
            if (&sub(b, t, j, c) != expected) ++bad;
            if (&in_kernel(b, t, j, c) != expected) ++bad;
          }
      },
      mismatches);
  return mismatches;
}

template <class FullView>
void check_all_segments(const FullView& full, const dilated::Geometry& g) {
  const int n = full.extent(1);
  int checked = 0;
  for (const auto& block : g.head_blocks()) {
    const int s = g.segment_length(block.branch), r = g.dilation_rate(block.branch);
    for (int j = 0; j < g.num_segments(block.branch, n); ++j) {
      CAPTURE(n, block.branch, block.head_begin, block.head_end, block.offset, j);
      const auto sub = dilated::segment_view(full, g, block, j);
      const auto positions = spec_positions(s, r, block.offset, j, n);
      REQUIRE(sub.extent(0) == full.extent(0));
      REQUIRE(sub.extent(1) == positions.size());
      REQUIRE(sub.extent(2) == static_cast<std::size_t>(block.num_heads()));
      REQUIRE(sub.extent(3) == full.extent(3));
      if (positions.empty()) continue;
      REQUIRE(count_address_mismatches(full, sub, positions, block.head_begin, r) == 0);
      ++checked;
    }
  }
  REQUIRE(checked > 0);
}

struct Case {
  std::vector<int> segs, dils;
  int h;
  dilated::Semantics semantics;
};

const std::vector<Case> cases = {
    {{16, 32, 64, 128, 256}, {1, 2, 4, 8, 16}, 12, dilated::Semantics::grouped},
    {{16, 32, 64, 128, 256}, {1, 2, 4, 8, 16}, 12, dilated::Semantics::longnet},
    {{16, 64}, {1, 4}, 3, dilated::Semantics::longnet},  // r > h
    {{6, 10}, {4, 3}, 5, dilated::Semantics::grouped},   // s not divisible by r
};

}  // namespace

TEST_CASE("segment_view is the spec's kept positions, no copy (LayoutRight)",
          "[segment_view]" TEST_CATEGORY) {
  for (const auto& c : cases) {
    const dilated::Geometry g(c.segs, c.dils, c.h, c.semantics);
    for (int n : {1, 61, 100, 256}) {  // 61, 100: partial last segments; 1: every window is 1
      Kokkos::View<float****, Kokkos::LayoutRight, MemSpace> q("dilated::test::q", 2, n, c.h, 3);
      check_all_segments(q, g);
    }
  }
}

TEST_CASE("segment_view follows the strides of LayoutLeft and packed QKV views",
          "[segment_view]" TEST_CATEGORY) {
  const auto& c = cases[0];
  const dilated::Geometry g(c.segs, c.dils, c.h, c.semantics);
  const int n = 100;
  Kokkos::View<double****, Kokkos::LayoutLeft, MemSpace> left("dilated::test::left", 2, n, c.h, 5);
  check_all_segments(left, g);
  // q, k, v packed along the head axis as one (b, n, 3h, d) buffer: k is a LayoutStride view.
  Kokkos::View<double****, Kokkos::LayoutRight, MemSpace> packed("dilated::test::qkv", 2, n,
                                                                 3 * c.h, 4);
  const auto k = Kokkos::subview(packed, Kokkos::ALL, Kokkos::ALL, Kokkos::make_pair(c.h, 2 * c.h),
                                 Kokkos::ALL);
  check_all_segments(k, g);
}

TEST_CASE("segment_view rejects blocks and segments outside the geometry",
          "[segment_view][errors]" TEST_CATEGORY) {
  using Catch::Matchers::ContainsSubstring;
  const dilated::Geometry g({16, 32}, {1, 2}, 4, dilated::Semantics::grouped);
  Kokkos::View<float****, MemSpace> q("dilated::test::q", 1, 40, 4, 8);
  const auto block = g.head_blocks()[1];
  REQUIRE_THROWS_WITH(dilated::segment_view(q, g, block, 2),
                      ContainsSubstring("segment = 2 is not in [0, 2)"));
  REQUIRE_THROWS_WITH(dilated::segment_view(q, g, dilated::HeadBlock{1, 0, 4, 1}, 0),
                      ContainsSubstring("head 0 has offset -1 in branch 1"));
  REQUIRE_THROWS_WITH(dilated::segment_view(q, g, dilated::HeadBlock{2, 0, 1, 0}, 0),
                      ContainsSubstring("block.branch = 2"));
  Kokkos::View<float****, MemSpace> wrong_heads("dilated::test::q", 1, 40, 3, 8);
  REQUIRE_THROWS_WITH(dilated::segment_view(wrong_heads, g, block, 0),
                      ContainsSubstring("view.extent(2) (heads) = 3 does not match num_heads = 4"));
}
