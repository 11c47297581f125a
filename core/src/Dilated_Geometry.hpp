// The dilated geometry: for a (segment lengths, dilation rates, heads, semantics) configuration,
// which heads take part in which branch with which offset, how a sequence of n tokens splits
// into segments, and which positions each segment keeps. This is the only place that knows
// the pattern; the reference and the kernels both ask it.
//
// Sequences of any length are accepted (an extension over the peers, which need n to be a
// multiple of every segment length): a branch's segment length is min(s_i, n), and a final
// partial segment keeps only the positions that exist. Nothing is padded, so nothing leaks.
#ifndef DILATED_GEOMETRY_HPP
#define DILATED_GEOMETRY_HPP

#include <Dilated_Semantics.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Macros.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace dilated {

// A set of heads [head_begin, head_end) that keep the same positions in one branch (they share
// one offset), so a single strided subview covers all of them.
struct HeadBlock {
  int branch;
  int head_begin;
  int head_end;
  int offset;

  int num_heads() const { return head_end - head_begin; }
};

// The kept positions of one segment: first, first + stride, ... (count of them).
struct KeptPositions {
  int first;
  int count;
  int stride;

  KOKKOS_INLINE_FUNCTION int position(int t) const { return first + t * stride; }
};

// The kept positions of segment `segment` at `offset`, for segments of `window` positions and
// dilation `rate` on n tokens. Callable in kernels; Geometry::kept is the host entry point.
KOKKOS_INLINE_FUNCTION KeptPositions kept_positions(int window, int rate, int segment, int offset,
                                                    int n) {
  const int begin = segment * window, end = begin + window < n ? begin + window : n;
  const int first = begin + offset;
  return {first, first < end ? (end - first + rate - 1) / rate : 0, rate};
}

class Geometry {
 public:
  // Throws std::invalid_argument naming the argument and its value when the lists are empty or
  // of different lengths, an entry is < 1, num_heads < 1, or (grouped) num_heads is smaller
  // than the number of branches.
  Geometry(std::vector<int> segment_lengths, std::vector<int> dilation_rates, int num_heads,
           Semantics semantics)
      : segments_(std::move(segment_lengths)),
        dilations_(std::move(dilation_rates)),
        num_heads_(num_heads),
        semantics_(semantics) {
    constexpr const char* fn = "dilated::Geometry";
    validate_branches(fn, segments_, dilations_);
    Impl::require(num_heads_ >= 1, fn, "num_heads = ", num_heads_, " must be >= 1");
    if (semantics_ == Semantics::grouped) {
      Impl::require(num_heads_ >= num_branches(), fn, "num_heads = ", num_heads_,
                    " is less than the number of groups (len(segment_lengths)) = ", num_branches(),
                    "; grouped semantics needs at least one head per group");
    }
    build_blocks();
  }

  // The checks of the (segment_lengths, dilation_rates) lists alone, for callers that know
  // the lists before the number of heads: non-empty, equally long, every entry >= 1.
  static void validate_branches(const char* fn, const std::vector<int>& segment_lengths,
                                const std::vector<int>& dilation_rates) {
    Impl::require(!segment_lengths.empty(), fn, "segment_lengths must not be empty");
    Impl::require(segment_lengths.size() == dilation_rates.size(), fn, "segment_lengths has ",
                  segment_lengths.size(), " entries but dilation_rates has ",
                  dilation_rates.size());
    for (std::size_t i = 0; i < segment_lengths.size(); ++i) {
      Impl::require(segment_lengths[i] >= 1, fn, "segment_lengths[", i, "] = ", segment_lengths[i],
                    " must be >= 1");
      Impl::require(dilation_rates[i] >= 1, fn, "dilation_rates[", i, "] = ", dilation_rates[i],
                    " must be >= 1");
    }
  }

  int num_branches() const { return static_cast<int>(segments_.size()); }
  int num_heads() const { return num_heads_; }
  Semantics semantics() const { return semantics_; }
  const std::vector<int>& segment_lengths() const { return segments_; }
  const std::vector<int>& dilation_rates() const { return dilations_; }
  int segment_length(int branch) const { return segments_.at(branch); }
  int dilation_rate(int branch) const { return dilations_.at(branch); }

  // What the merged output is multiplied by: 1/G for grouped (the peers divide every group's
  // output by the number of groups), 1 for longnet (the log-sum-exp merge is normalised).
  double output_scale() const {
    return semantics_ == Semantics::grouped ? 1.0 / num_branches() : 1.0;
  }

  // Segment length of a branch on a sequence of n tokens: min(s_i, n).
  int window(int branch, int n) const { return std::min(segment_length(branch), n); }

  // Number of segments of a branch on n tokens, the last one possibly partial.
  int num_segments(int branch, int n) const {
    const int w = window(branch, n);
    return (n + w - 1) / w;
  }

  // Heads [begin, end) of group `branch` in grouped semantics: h // G heads each, and the
  // first h % G groups one more.
  std::pair<int, int> group_heads(int branch) const {
    const int g = num_branches();
    const int base = num_heads_ / g, extra = num_heads_ % g;
    const int begin = branch * base + std::min(branch, extra);
    return {begin, begin + base + (branch < extra ? 1 : 0)};
  }

  // Offset of `head` in `branch`, or -1 when the head does not take part in the branch.
  //   grouped: offset i mod r_i for the heads of group i;
  //   longnet: head // ceil(h / r_i) for every head.
  int offset(int branch, int head) const {
    const int r = dilation_rate(branch);
    if (semantics_ == Semantics::grouped) {
      const auto [begin, end] = group_heads(branch);
      return (head >= begin && head < end) ? branch % r : -1;
    }
    const int heads_per_offset = (num_heads_ + r - 1) / r;
    return head / heads_per_offset;
  }

  // Every (branch, head range, offset) whose heads keep the same positions, branch by branch.
  // grouped: one block per branch; longnet: one per offset that some head gets (offsets no head
  // gets, as when r_i > h, are simply not covered).
  const std::vector<HeadBlock>& head_blocks() const { return blocks_; }

  // The positions kept in segment `segment` of `branch` at `offset` on n tokens.
  KeptPositions kept(int branch, int segment, int offset, int n) const {
    return kept_positions(window(branch, n), dilation_rate(branch), segment, offset, n);
  }

  // The spec's predicate, straight from the definition: does `head` keep `position` in
  // `branch` on n tokens?
  bool keeps(int branch, int head, int position, int n) const {
    const int o = offset(branch, head);
    if (o < 0 || position < 0 || position >= n) return false;
    return (position % window(branch, n)) % dilation_rate(branch) == o;
  }

  // Index of the segment that holds `position` in `branch` on n tokens.
  int segment_of(int branch, int position, int n) const { return position / window(branch, n); }

 private:
  void build_blocks() {
    for (int i = 0; i < num_branches(); ++i) {
      if (semantics_ == Semantics::grouped) {
        const auto [begin, end] = group_heads(i);
        blocks_.push_back({i, begin, end, i % dilation_rate(i)});
        continue;
      }
      const int r = dilation_rate(i);
      const int heads_per_offset = (num_heads_ + r - 1) / r;
      for (int o = 0; o < r; ++o) {
        const int begin = o * heads_per_offset;
        const int end = std::min(begin + heads_per_offset, num_heads_);
        if (begin < end) blocks_.push_back({i, begin, end, o});
      }
    }
  }

  std::vector<int> segments_;
  std::vector<int> dilations_;
  int num_heads_;
  Semantics semantics_;
  std::vector<HeadBlock> blocks_;
};

}  // namespace dilated

#endif  // DILATED_GEOMETRY_HPP
