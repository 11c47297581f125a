// How one branch's work is laid out for a kernel launch: the heads that take part with their
// offsets (a small device array), the segment window, and the work items (batch, segment,
// head) numbered 0 .. num_items-1 in that order.
#ifndef DILATED_IMPL_BRANCH_PLAN_HPP
#define DILATED_IMPL_BRANCH_PLAN_HPP

#include <Dilated_Geometry.hpp>

#include <Kokkos_Core.hpp>

#include <stdexcept>

namespace dilated::Impl {

// The heads of a branch and their offsets follow a formula (Geometry::offset), so a plan holds
// a few integers and no device allocation: building one costs no host-device copy.
template <class MemorySpace>
struct BranchPlan {
  int branch = 0;
  int window = 1;    // min(s_i, n)
  int dilation = 1;  // r_i
  int num_segments = 0;
  int num_heads = 0;  // heads that take part: head_begin, head_begin + 1, ...
  int batch = 0;
  int max_kept = 0;          // most kept positions in one segment: ceil(window / r)
  int head_begin = 0;        // first participating head
  int heads_per_offset = 0;  // longnet: offset = head / heads_per_offset; 0: grouped
  int group_offset = 0;      // grouped: the one offset of the branch's heads

  long num_items() const { return static_cast<long>(batch) * num_segments * num_heads; }

  KOKKOS_INLINE_FUNCTION int offset(int head) const {
    return heads_per_offset > 0 ? head / heads_per_offset : group_offset;
  }

  // Decodes item -> (batch, segment, slot) and the kept positions of that segment.
  struct Item {
    int b, segment, head;
    KeptPositions kept;
  };
  // Index: long in general; the tensor-core kernels pass int (their launches stay below 2^31
  // teams), whose divisions cost a fraction of 64-bit ones.
  template <class Index>
  KOKKOS_INLINE_FUNCTION Item item(Index index, int n) const {
    const int slot = static_cast<int>(index % num_heads);
    const Index rest = index / num_heads;
    const int segment = static_cast<int>(rest % num_segments);
    const int head = head_begin + slot;
    return {static_cast<int>(rest / num_segments), segment, head,
            kept_positions(window, dilation, segment, offset(head), n)};
  }
};

template <class MemorySpace>
BranchPlan<MemorySpace> make_branch_plan(const Geometry& g, int branch, int batch, int n) {
  BranchPlan<MemorySpace> plan;
  plan.branch = branch;
  plan.window = g.window(branch, n);
  plan.dilation = g.dilation_rate(branch);
  plan.num_segments = g.num_segments(branch, n);
  plan.batch = batch;
  plan.max_kept = (plan.window + plan.dilation - 1) / plan.dilation;
  if (g.semantics() == Semantics::grouped) {
    const auto [begin, end] = g.group_heads(branch);
    plan.head_begin = begin;
    plan.num_heads = end - begin;
    plan.group_offset = g.offset(branch, begin);
  } else {
    plan.head_begin = 0;
    plan.num_heads = g.num_heads();
    plan.heads_per_offset = (g.num_heads() + plan.dilation - 1) / plan.dilation;
  }
  // The formula must agree with the geometry for every head (checked once per plan).
  for (int h = 0; h < g.num_heads(); ++h) {
    const bool in = h >= plan.head_begin && h < plan.head_begin + plan.num_heads;
    if ((in ? plan.offset(h) : -1) != g.offset(branch, h)) {
      throw std::logic_error("dilated: branch plan disagrees with the geometry");
    }
  }
  return plan;
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_BRANCH_PLAN_HPP
