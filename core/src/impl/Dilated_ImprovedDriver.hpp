// Host side of the Improved algorithm: which views the fused kernels write into, the launches
// branch by branch, and the little row kernels around them (zeroing rows no branch keeps, the
// D_t = g . out row products of the backward pass).
//
// Extra device memory (docs/algorithms.md): grouped writes the caller's out/lse (and dq, dk, dv)
// directly, each row belonging to one branch: nothing in the forward, and a float (b, n, h)
// log-sum-exp L and row term D in the backward. longnet merges branches in place: in the
// caller's views when they are float/double, else in a float accumulator of the output's
// shape, plus a float (b, n, h) log-sum-exp.
#ifndef DILATED_IMPL_IMPROVED_DRIVER_HPP
#define DILATED_IMPL_IMPROVED_DRIVER_HPP

#include <Dilated_Geometry.hpp>
#include <Dilated_LaunchPolicies.hpp>
#include <Dilated_Options.hpp>
#include <Dilated_TilePolicies.hpp>
#include <impl/Dilated_BranchPlan.hpp>
#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_ImprovedMmaBackward.hpp>
#include <impl/Dilated_ImprovedMmaForward.hpp>
#include <impl/Dilated_OriginalDriver.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace dilated::Impl {

// Launches `kernel` (its `launch` member filled in here) over every tile of every item of
// `plan`: tiles of `tile_rows` kept positions, scratch of Kernel::scratch_entries.
template <class ExecSpace, class Kernel>
void launch_tiles(const ExecSpace& space, const char* label, Kernel kernel, int tile_rows) {
  using Acc = typename Kernel::Acc;
  using Tiles = ImprovedTiles<ExecSpace>;
  auto& launch = kernel.launch;
  launch.query_rows = Tiles::query_rows;
  launch.key_rows = Tiles::key_rows;
  launch.ld = launch.branch.d + Tiles::pad;
  launch.tiles = (launch.branch.plan.max_kept + tile_rows - 1) / tile_rows;
  const std::size_t bytes =
      sizeof(Acc) * Kernel::scratch_entries(launch.query_rows, launch.key_rows, launch.ld) + 64;
  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  launch.scratch_level = bytes <= static_cast<std::size_t>(Policy::scratch_size_max(0)) ? 0 : 1;
  const long teams = launch.branch.plan.num_items() * launch.tiles;
  constexpr long max_league = 1L << 30;
  for (long begin = 0; begin < teams; begin += max_league) {
    launch.branch.item_begin = begin;
    const int league = static_cast<int>(std::min(max_league, teams - begin));
    Policy policy(space, league, Tiles::team_size, LaunchPolicy<ExecSpace>::vector_length);
    policy.set_scratch_size(launch.scratch_level, Kokkos::PerTeam(bytes));
    Kokkos::parallel_for(label, policy, kernel);
  }
}

// grouped: rows (b, p, h) that the head's branch does not keep get 0 in `view` ((b, n, h, d))
// and -inf in `lse` when there is one. Kept rows are left to the kernels. One launch per
// branch over its heads, one element per thread with the last index fastest (coalesced).
template <class ExecSpace, class L, class View>
void zero_unkept_rows(const ExecSpace& space, const Geometry& g, const L* lse, const View& view) {
  const int n = view.extent(1), d = view.extent(3);
  const bool with_lse = lse != nullptr;
  const L lse_view = lse ? *lse : L();
  for (int i = 0; i < g.num_branches(); ++i) {
    const auto group = g.group_heads(i);  // (no structured binding: lambdas capture it)
    const int begin = group.first, heads = group.second - group.first, window = g.window(i, n),
              rate = g.dilation_rate(i);
    const int offset = g.offset(i, begin);
    if (rate == 1) continue;  // every row is kept
    Kokkos::parallel_for(
        "dilated::improved::zero_unkept_rows",
        Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<long>(view.extent(0)) * n * heads * d),
        KOKKOS_LAMBDA(long e) {
          const int c = static_cast<int>(e % d);
          const long row = e / d;
          const int h = begin + static_cast<int>(row % heads);
          const int p = static_cast<int>((row / heads) % n);
          if ((p % window) % rate == offset) return;
          const int b = static_cast<int>(row / (static_cast<long>(heads) * n));
          view(b, p, h, c) = 0;
          if (with_lse && c == 0) {
            using T = typename L::value_type;
            lse_view(b, p, h) = static_cast<T>(-math::infinity<accumulation_t<T>>());
          }
        });
  }
}

// delta(b, p, h) = (dout . out) / output_scale: D_t of every branch when gradients flow
// through the longnet weights (output_scale 1), and G (dout . out) = dout . o_i for grouped.
template <class ExecSpace, class G, class O, class Delta>
void row_deltas(const ExecSpace& space, const G& dout, const O& out, const Delta& delta,
                double output_scale) {
  using Acc = typename Delta::value_type;
  const int n = out.extent(1), heads = out.extent(2), d = out.extent(3);
  const Acc inv = static_cast<Acc>(1.0 / output_scale);
  Kokkos::parallel_for(
      "dilated::improved::row_deltas",
      Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<long>(out.extent(0)) * n * heads),
      KOKKOS_LAMBDA(long r) {
        const int h = static_cast<int>(r % heads), p = static_cast<int>((r / heads) % n);
        const int b = static_cast<int>(r / (static_cast<long>(heads) * n));
        Acc s = 0;
        for (int c = 0; c < d; ++c)
          s += Acc(dout(b, p, h, c)) * Acc(out(b, p, h, c));
        delta(b, p, h) = s * inv;
      });
}

// Runs the fused forward of every branch into `out` / `lse` (see ImprovedForwardKernel): for
// longnet these must hold 0 / -inf on entry; grouped writes only the rows its branches keep.
template <class ExecSpace, class Q, class K, class V, class OutV, class LseV>
void improved_forward_branches(const ExecSpace& space, const Geometry& g,
                               const BranchLaunch<typename ExecSpace::memory_space,
                                                  accumulation_t<typename Q::value_type>>& base,
                               const Q& q, const K& k, const V& v, const OutV& out, const LseV& lse,
                               bool with_output, bool with_lse) {
#if defined(KOKKOS_ENABLE_CUDA)
  // Tensor cores where the storage and layout allow (half/bf16, d = 64 or 128, aligned rows).
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda> &&
                mma::is_mma_type_v<typename Q::non_const_value_type>) {
    const int d = q.extent(3);
    if (with_output && base.scale > 0 && mma::applies(d, q, k, v)) {
      if (d == 64) {
        mma::forward_branches<64>(space, g, base, q, k, v, out, lse, with_lse);
      } else {
        mma::forward_branches<128>(space, g, base, q, k, v, out, lse, with_lse);
      }
      return;
    }
  }
#endif
  using Kernel = ImprovedForwardKernel<ExecSpace, Q, K, V, OutV, LseV>;
  for (int i = 0; i < g.num_branches(); ++i) {
    Kernel kernel{
        tiled_launch<ExecSpace>(g, i, base, q.extent(0)), q, k, v, out, lse, with_output, with_lse};
    launch_tiles(space, "dilated::improved::forward", kernel, ImprovedTiles<ExecSpace>::query_rows);
  }
}

// The backward of every branch: dq (and, for detached longnet weights, first the branch's D_t)
// then dk/dv. `lse` is the merged log-sum-exp; `delta` holds D_t unless `branch_deltas`.
template <class ExecSpace, class Q, class K, class V, class G, class LseV, class DeltaV, class DQ,
          class DK, class DV>
void improved_backward_branches(const ExecSpace& space, const Geometry& g,
                                const BranchLaunch<typename ExecSpace::memory_space,
                                                   accumulation_t<typename Q::value_type>>& base,
                                const Q& q, const K& k, const V& v, const G& dout, const LseV& lse,
                                const DeltaV& delta, bool branch_deltas, const DQ& dq, const DK& dk,
                                const DV& dv, bool accumulate) {
  using Tiles = ImprovedTiles<ExecSpace>;
  using DqKernel = ImprovedDqKernel<ExecSpace, Q, K, V, G, LseV, DeltaV, DQ>;
  using DkDvKernel = ImprovedDkDvKernel<ExecSpace, Q, K, V, G, LseV, DeltaV, DK, DV>;
  const auto branch_delta = [&](const auto& launch) {
    launch_tiles(space, "dilated::improved::branch_deltas",
                 DqKernel{launch, q, k, v, dout, lse, delta, dq, accumulate, true},
                 Tiles::query_rows);
  };
#if defined(KOKKOS_ENABLE_CUDA)
  // Tensor cores where the storage and layout allow (half/bf16, d = 64, aligned rows).
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda> &&
                mma::is_mma_type_v<typename Q::non_const_value_type>) {
    if (q.extent(3) == 64 && mma::applies(64, q, k, v, dout)) {
      for (int i = 0; i < g.num_branches(); ++i) {
        const auto launch = tiled_launch<ExecSpace>(g, i, base, q.extent(0));
        if (branch_deltas) branch_delta(launch);
        mma::backward_branch<64>(space, launch, q, k, v, dout, lse, delta, dq, dk, dv, accumulate);
      }
      return;
    }
  }
#endif
  for (int i = 0; i < g.num_branches(); ++i) {
    const auto launch = tiled_launch<ExecSpace>(g, i, base, q.extent(0));
    if (branch_deltas) branch_delta(launch);
    launch_tiles(space, "dilated::improved::dq",
                 DqKernel{launch, q, k, v, dout, lse, delta, dq, accumulate, false},
                 Tiles::query_rows);
    launch_tiles(space, "dilated::improved::dkdv",
                 DkDvKernel{launch, q, k, v, dout, lse, delta, dk, dv, accumulate},
                 Tiles::key_rows);
  }
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_IMPROVED_DRIVER_HPP
