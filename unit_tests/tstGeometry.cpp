// The dilated geometry against the spec (../shared/golden/README.md), written out again here
// from its sentences, and the rejection of invalid configurations.
#include <DilatedAttention.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <set>
#include <utility>
#include <vector>

using Catch::Matchers::ContainsSubstring;
using dilated::Geometry;
using dilated::Semantics;

namespace {

// The spec, sentence by sentence.
struct Spec {
  std::vector<int> segs, dils;
  int h;
  Semantics semantics;

  int G() const { return static_cast<int>(segs.size()); }
  // grouped: sizes h//G, the first h%G groups get one more head.
  int group_of(int head) const {
    int begin = 0;
    for (int i = 0; i < G(); ++i) {
      const int size = h / G() + (i < h % G() ? 1 : 0);
      if (head < begin + size) return i;
      begin += size;
    }
    return -1;
  }
  // -1: the head does not take part in branch i.
  int offset(int i, int head) const {
    if (semantics == Semantics::grouped) return group_of(head) == i ? i % dils[i] : -1;
    const int per = (h + dils[i] - 1) / dils[i];  // ceil(h / r_i)
    return head / per;
  }
  // Kept positions of segment j of branch i for head, with w_i = min(s_i, n).
  std::vector<int> kept(int i, int j, int head, int n) const {
    std::vector<int> out;
    const int w = std::min(segs[i], n), o = offset(i, head);
    if (o < 0) return out;
    for (int p = j * w; p < std::min((j + 1) * w, n); ++p) {
      if ((p - j * w) % dils[i] == o) out.push_back(p);
    }
    return out;
  }
};

void check_against_spec(const Spec& spec, int n) {
  const Geometry g(spec.segs, spec.dils, spec.h, spec.semantics);
  CAPTURE(spec.h, n, dilated::to_string(spec.semantics));
  REQUIRE(g.num_branches() == spec.G());
  for (int i = 0; i < spec.G(); ++i) {
    const int w = std::min(spec.segs[i], n);
    REQUIRE(g.window(i, n) == w);
    REQUIRE(g.num_segments(i, n) == (n + w - 1) / w);
    for (int head = 0; head < spec.h; ++head) {
      CAPTURE(i, head);
      REQUIRE(g.offset(i, head) == spec.offset(i, head));
      for (int j = 0; j < g.num_segments(i, n); ++j) {
        const auto expected = spec.kept(i, j, head, n);
        for (int p = j * w; p < std::min((j + 1) * w, n); ++p) {
          const bool in = std::find(expected.begin(), expected.end(), p) != expected.end();
          REQUIRE(g.keeps(i, head, p, n) == in);
          if (in) REQUIRE(g.segment_of(i, p, n) == j);
        }
        if (spec.offset(i, head) < 0) continue;
        const auto kept = g.kept(i, j, g.offset(i, head), n);
        REQUIRE(kept.count == static_cast<int>(expected.size()));
        for (int t = 0; t < kept.count; ++t)
          REQUIRE(kept.position(t) == expected[t]);
      }
    }
  }
  // The head blocks: per branch, disjoint ranges of heads sharing their offset, covering
  // exactly the heads that take part.
  for (int i = 0; i < spec.G(); ++i) {
    std::set<int> covered;
    for (const auto& block : g.head_blocks()) {
      if (block.branch != i) continue;
      REQUIRE(block.num_heads() >= 1);
      for (int head = block.head_begin; head < block.head_end; ++head) {
        REQUIRE(spec.offset(i, head) == block.offset);
        REQUIRE(covered.insert(head).second);
      }
    }
    for (int head = 0; head < spec.h; ++head) {
      REQUIRE(covered.count(head) == (spec.offset(i, head) >= 0 ? 1u : 0u));
    }
  }
}

}  // namespace

TEST_CASE("grouped head groups: h // G heads each, the first h % G one more", "[geometry]") {
  const Geometry g({16, 32, 64, 128, 256}, {1, 2, 4, 8, 16}, 12, Semantics::grouped);
  const std::vector<std::pair<int, int>> expected = {{0, 3}, {3, 6}, {6, 8}, {8, 10}, {10, 12}};
  for (int i = 0; i < 5; ++i)
    REQUIRE(g.group_heads(i) == expected[i]);
  // offset i mod r_i: 0, 1, 2, 3, 4
  for (int i = 0; i < 5; ++i)
    REQUIRE(g.offset(i, expected[i].first) == i);
  REQUIRE(g.offset(0, 3) == -1);
  REQUIRE(g.output_scale() == 1.0 / 5);
}

TEST_CASE("longnet head offsets: head // ceil(h / r)", "[geometry]") {
  const Geometry g({64, 128, 256}, {1, 2, 4}, 6, Semantics::longnet);
  const std::vector<std::vector<int>> expected = {
      {0, 0, 0, 0, 0, 0}, {0, 0, 0, 1, 1, 1}, {0, 0, 1, 1, 2, 2}};
  for (int i = 0; i < 3; ++i)
    for (int head = 0; head < 6; ++head)
      REQUIRE(g.offset(i, head) == expected[i][head]);
  REQUIRE(g.output_scale() == 1.0);
  // r > h: h = 3, r = 8 -> ceil(3/8) = 1 head per offset; offsets 3..7 are not covered.
  const Geometry wide({16, 64}, {1, 8}, 3, Semantics::longnet);
  int blocks_in_branch1 = 0;
  for (const auto& b : wide.head_blocks())
    blocks_in_branch1 += b.branch == 1;
  REQUIRE(blocks_in_branch1 == 3);
}

TEST_CASE("geometry matches the spec element by element", "[geometry]") {
  const std::vector<Spec> specs = {
      {{16, 32, 64, 128, 256}, {1, 2, 4, 8, 16}, 12, Semantics::grouped},  // uneven groups
      {{16, 32, 64, 128, 256}, {1, 2, 4, 8, 16}, 12, Semantics::longnet},
      {{16, 64}, {1, 4}, 3, Semantics::longnet},  // r > h
      {{8, 16}, {1, 8}, 3, Semantics::longnet},   // r > h, r == s
      {{32, 64, 128}, {1, 2, 4}, 8, Semantics::grouped},
      {{6, 10}, {4, 3}, 5, Semantics::grouped},  // s not divisible by r
      {{1}, {1}, 1, Semantics::grouped},         // the smallest case
  };
  for (const auto& spec : specs) {
    for (int n : {1, 7, 64, 100, 256, 301})
      check_against_spec(spec, n);  // partial segments
  }
}

TEST_CASE("invalid configurations throw naming the argument and value", "[geometry][errors]") {
  const auto grouped = Semantics::grouped;
  REQUIRE_THROWS_WITH(Geometry({}, {}, 4, grouped),
                      ContainsSubstring("segment_lengths must not be empty"));
  REQUIRE_THROWS_WITH(Geometry({16, 32}, {1}, 4, grouped),
                      ContainsSubstring("segment_lengths has 2 entries but dilation_rates has 1"));
  REQUIRE_THROWS_WITH(Geometry({16, 0}, {1, 2}, 4, grouped),
                      ContainsSubstring("segment_lengths[1] = 0 must be >= 1"));
  REQUIRE_THROWS_WITH(Geometry({16, -8}, {1, 2}, 4, grouped),
                      ContainsSubstring("segment_lengths[1] = -8"));
  REQUIRE_THROWS_WITH(Geometry({16, 32}, {1, 0}, 4, grouped),
                      ContainsSubstring("dilation_rates[1] = 0 must be >= 1"));
  REQUIRE_THROWS_WITH(Geometry({16, 32}, {-1, 2}, 4, grouped),
                      ContainsSubstring("dilation_rates[0] = -1"));
  REQUIRE_THROWS_WITH(Geometry({16}, {1}, 0, grouped), ContainsSubstring("num_heads = 0"));
  REQUIRE_THROWS_WITH(Geometry({16, 32, 64}, {1, 2, 4}, 2, grouped),
                      ContainsSubstring("num_heads = 2 is less than the number of groups"));
  // longnet has no groups: fewer heads than branches is fine.
  REQUIRE_NOTHROW(Geometry({16, 32, 64}, {1, 2, 4}, 2, Semantics::longnet));
  REQUIRE_THROWS_WITH(dilated::semantics_from_string("dense"),
                      ContainsSubstring("semantics = 'dense'"));
  REQUIRE(dilated::semantics_from_string("longnet") == Semantics::longnet);
}

TEST_CASE("mismatched views throw naming the argument", "[geometry][errors]") {
  using V = Kokkos::View<double****, Kokkos::HostSpace>;
  const Geometry g({8}, {1}, 2, Semantics::grouped);
  V q("q", 1, 8, 2, 4), out("out", 1, 8, 2, 4);
  Kokkos::View<double***, Kokkos::HostSpace> lse("lse", 1, 8, 2);
  REQUIRE_THROWS_WITH(dilated::reference(g, q, V("k", 1, 7, 2, 4), q, out),
                      ContainsSubstring("k.extent(1) (sequence length) = 7 does not match q"));
  REQUIRE_THROWS_WITH(dilated::reference(g, q, q, V("v", 1, 8, 2, 3), out),
                      ContainsSubstring("v.extent(3) (head_dim) = 3 does not match q"));
  REQUIRE_THROWS_WITH(dilated::reference(g, q, q, q, V("out", 2, 8, 2, 4)),
                      ContainsSubstring("out.extent(0) (batch) = 2"));
  REQUIRE_THROWS_WITH(dilated::reference(g, V("q", 1, 8, 3, 4), q, q, out),
                      ContainsSubstring("q.extent(2) (heads) = 3 does not match num_heads = 2"));
  REQUIRE_THROWS_WITH(dilated::reference(g, V("q", 1, 0, 2, 4), q, q, out),
                      ContainsSubstring("q.extent(1) (sequence length) = 0 must be >= 1"));
  // Extents the kernels' int indices cannot hold (issue 20): refused before any element is read
  // (unmanaged views of one element), by the oracle and by the class.
  using U = Kokkos::View<double****, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  double one = 0;
  const U long_q(&one, 1, std::size_t(1) << 30, 2, 4), wide_q(&one, 1, 8, 2, std::size_t(1) << 31);
  REQUIRE_THROWS_WITH(
      dilated::reference(g, long_q, long_q, long_q, long_q),
      ContainsSubstring("q.extent(1) (sequence length) = 1073741824 must be < 2^30"));
  REQUIRE_THROWS_WITH(dilated::reference(g, wide_q, wide_q, wide_q, wide_q),
                      ContainsSubstring("q.extent(3) (head_dim) = 2147483648 must be < 2^31"));
  const dilated::DilatedAttention<dilated::Improved> attention({8}, {1});
  REQUIRE_THROWS_WITH(
      attention.forward(Kokkos::DefaultHostExecutionSpace(), long_q, long_q, long_q, long_q),
      ContainsSubstring("forward: q.extent(1) (sequence length) = 1073741824 must be < 2^30"));
  // One less passes the bounds (and stops at the next check, heads).
  const U fits(&one, 1, (std::size_t(1) << 30) - 1, 3, 4);
  REQUIRE_THROWS_WITH(dilated::reference(g, fits, fits, fits, fits),
                      ContainsSubstring("q.extent(2) (heads) = 3 does not match num_heads = 2"));
  REQUIRE_THROWS_WITH(
      dilated::reference(g, q, q, q, out, Kokkos::View<double***, Kokkos::HostSpace>("l", 1, 8, 1)),
      ContainsSubstring("lse.extent(2) (heads) = 1"));
  REQUIRE_THROWS_WITH(dilated::reference(g, q, q, q, out, lse, {false, std::nan("")}),
                      ContainsSubstring("options.softmax_scale = nan must be finite"));
}
