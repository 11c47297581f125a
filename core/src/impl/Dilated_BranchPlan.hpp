// How one branch's work is laid out for a kernel launch: the heads that take part with their
// offsets (a small device array), the segment window, and the work items (batch, segment,
// head) numbered 0 .. num_items-1 in that order.
#ifndef DILATED_IMPL_BRANCH_PLAN_HPP
#define DILATED_IMPL_BRANCH_PLAN_HPP

#include <Dilated_Geometry.hpp>

#include <Kokkos_Core.hpp>

#include <string>

namespace dilated::Impl {

template <class MemorySpace>
struct BranchPlan {
  int branch = 0;
  int window = 1;    // min(s_i, n)
  int dilation = 1;  // r_i
  int num_segments = 0;
  int num_heads = 0;  // heads that take part
  int batch = 0;
  int max_kept = 0;                         // most kept positions in one segment: ceil(window / r)
  Kokkos::View<int*, MemorySpace> heads;    // head of each participating slot
  Kokkos::View<int*, MemorySpace> offsets;  // its offset in this branch

  long num_items() const { return static_cast<long>(batch) * num_segments * num_heads; }

  // Decodes item -> (batch, segment, slot) and the kept positions of that segment.
  struct Item {
    int b, segment, head;
    KeptPositions kept;
  };
  KOKKOS_INLINE_FUNCTION Item item(long index, int n) const {
    const int slot = static_cast<int>(index % num_heads);
    const long rest = index / num_heads;
    const int segment = static_cast<int>(rest % num_segments);
    return {static_cast<int>(rest / num_segments), segment, heads(slot),
            kept_positions(window, dilation, segment, offsets(slot), n)};
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
  int count = 0;
  for (int h = 0; h < g.num_heads(); ++h)
    count += g.offset(branch, h) >= 0;
  plan.num_heads = count;
  const std::string label = "dilated::branch" + std::to_string(branch);
  plan.heads = Kokkos::View<int*, MemorySpace>(label + "::heads", count);
  plan.offsets = Kokkos::View<int*, MemorySpace>(label + "::offsets", count);
  auto heads = Kokkos::create_mirror_view(plan.heads);
  auto offsets = Kokkos::create_mirror_view(plan.offsets);
  for (int h = 0, slot = 0; h < g.num_heads(); ++h) {
    if (g.offset(branch, h) < 0) continue;
    heads(slot) = h;
    offsets(slot++) = g.offset(branch, h);
  }
  Kokkos::deep_copy(plan.heads, heads);
  Kokkos::deep_copy(plan.offsets, offsets);
  return plan;
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_BRANCH_PLAN_HPP
