// Host side of the Original algorithm: accumulators, the bounded score-matrix workspace,
// chunked launches branch by branch, and the final conversion to the caller's storage type.
#ifndef DILATED_IMPL_ORIGINAL_DRIVER_HPP
#define DILATED_IMPL_ORIGINAL_DRIVER_HPP

#include <Dilated_Geometry.hpp>
#include <Dilated_LaunchPolicies.hpp>
#include <Dilated_Options.hpp>
#include <impl/Dilated_ScratchPool.hpp>
#include <impl/Dilated_BranchPlan.hpp>
#include <impl/Dilated_IndexRange.hpp>
#include <impl/Dilated_OriginalKernels.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dilated::Impl {

template <class ExecSpace, class Acc>
using Accumulator4 = Kokkos::View<Acc****, Kokkos::LayoutRight, typename ExecSpace::memory_space>;
template <class ExecSpace, class Acc>
using Accumulator3 = Kokkos::View<Acc***, Kokkos::LayoutRight, typename ExecSpace::memory_space>;

// The launches of every branch, in order: for each, its plan, the number of teams that fit the
// workspace budget together (at least one), and the workspace entries per team.
template <class ExecSpace>
struct LaunchSchedule {
  using Space = typename ExecSpace::memory_space;
  std::vector<BranchPlan<Space>> plans;
  std::vector<long> teams_per_launch;
  std::vector<long> entries_per_team;
  std::size_t workspace_entries = 0;  // the largest launch's need

  LaunchSchedule(const Geometry& g, int batch, int n, int matrices, std::size_t entry_bytes,
                 std::size_t budget_bytes) {
    for (int i = 0; i < g.num_branches(); ++i) {
      plans.push_back(make_branch_plan<Space>(g, i, batch, n));
      const long m = plans.back().max_kept;
      const long per_team = matrices * m * m + m;
      const long fit = static_cast<long>(budget_bytes / (per_team * entry_bytes));
      const long teams = std::max(1L, std::min(fit, std::max(1L, plans.back().num_items())));
      teams_per_launch.push_back(teams);
      entries_per_team.push_back(per_team);
      workspace_entries = std::max(workspace_entries, static_cast<std::size_t>(teams * per_team));
    }
  }
};

// Runs `make_kernel(launch, work)` for every chunk of every branch of `schedule`.
template <class ExecSpace, class Acc, class MakeKernel>
void launch_branches(const ExecSpace& space, const char* label,
                     const LaunchSchedule<ExecSpace>& schedule,
                     BranchLaunch<typename ExecSpace::memory_space, Acc> launch,
                     MakeKernel&& make_kernel) {
  using Space = typename ExecSpace::memory_space;
  const auto workspace = scratch_view<Kokkos::View<Acc*, Space>>(
      space, "dilated::original::workspace", false, schedule.workspace_entries);
  for (std::size_t i = 0; i < schedule.plans.size(); ++i) {
    launch.plan = schedule.plans[i];
    const long items = launch.plan.num_items();
    const long teams = schedule.teams_per_launch[i];
    Kokkos::View<Acc**, Kokkos::LayoutRight, Space> work(workspace.data(), teams,
                                                         schedule.entries_per_team[i]);
    for (long begin = 0; begin < items; begin += teams) {
      launch.item_begin = begin;
      const int league = static_cast<int>(std::min(teams, items - begin));
      const Kokkos::TeamPolicy<ExecSpace> policy(space, league, Kokkos::AUTO,
                                                 LaunchPolicy<ExecSpace>::vector_length);
      Kokkos::parallel_for(label, policy, make_kernel(launch, work));
    }
  }
}

template <class ExecSpace, class Acc>
BranchLaunch<typename ExecSpace::memory_space, Acc> make_launch(const Geometry& g,
                                                                const AttentionOptions& options,
                                                                const ForwardOptions& call, int n,
                                                                int d) {
  BranchLaunch<typename ExecSpace::memory_space, Acc> launch;
  launch.n = n;
  launch.d = d;
  launch.scale = static_cast<Acc>(options.softmax_scale().value_or(1.0 / std::sqrt(double(d))));
  launch.output_scale = static_cast<Acc>(g.output_scale());
  launch.causal = call.is_causal;
  launch.longnet = g.semantics() == Semantics::longnet;
  if (call.training && options.attention_dropout() > 0) {
    launch.dropout = Dropout(options.attention_dropout(), call.seed);
  }
  return launch;
}

// Merged output and log-sum-exp of all branches into out_acc (zeroed) and lse_acc (-inf).
template <class ExecSpace, class Q, class K, class V, class Acc>
void original_forward_branches(const ExecSpace& space, const Geometry& g,
                               const AttentionOptions& options, const ForwardOptions& call,
                               const Q& q, const K& k, const V& v,
                               const Accumulator4<ExecSpace, Acc>& out_acc,
                               const Accumulator3<ExecSpace, Acc>& lse_acc, bool with_output) {
  const int batch = q.extent(0), n = q.extent(1), d = q.extent(3);
  Kokkos::deep_copy(space, lse_acc, -math::infinity<Acc>());
  const LaunchSchedule<ExecSpace> schedule(g, batch, n, 1, sizeof(Acc), options.workspace_bytes());
  using Kernel = OriginalForwardKernel<ExecSpace, Q, K, V, Accumulator4<ExecSpace, Acc>,
                                       Accumulator3<ExecSpace, Acc>>;
  launch_branches(space, "dilated::original::forward", schedule,
                  make_launch<ExecSpace, Acc>(g, options, call, n, d),
                  [&](const auto& launch, const auto& work) {
                    return Kernel{launch, q, k, v, out_acc, lse_acc, work, with_output};
                  });
}

// dst(b, p, h[, c]) = src(b, p, h[, c]) in dst's storage type, one flat index per element
// with the last index fastest, so neighbouring threads touch neighbouring LayoutRight memory.
// (A functor, not a lambda: nvcc's extended lambdas cannot first-capture in `if constexpr`.)
template <class Src, class Dst>
struct ConvertRows {
  Src src;
  Dst dst;
  KOKKOS_FUNCTION void operator()(std::int64_t i) const {
    using T = typename Dst::value_type;
    if constexpr (view_rank_v<Dst> == 4) {
      const long d = dst.extent(3), h = dst.extent(2), n = dst.extent(1);
      const long c = i % d, rest = i / d;
      const long hh = rest % h, rest2 = rest / h;
      dst(rest2 / n, rest2 % n, hh, c) = static_cast<T>(src(rest2 / n, rest2 % n, hh, c));
    } else {
      const long h = dst.extent(2), n = dst.extent(1);
      const long hh = i % h, rest = i / h;
      dst(rest / n, rest % n, hh) = static_cast<T>(src(rest / n, rest % n, hh));
    }
  }
};

// The same on the host: a thread per (batch, position), the heads and head dim in loops. The
// flat index's divisions cost more than the copy there (perf: 8 % of the host Original's 16K
// forward, the store of out through ConvertRows).
template <class Src, class Dst>
struct ConvertRowsHost {
  Src src;
  Dst dst;
  KOKKOS_FUNCTION void operator()(long row) const {
    using T = typename Dst::value_type;
    const long n = dst.extent(1);
    const long b = row / n, p = row % n;
    for (std::size_t h = 0; h < dst.extent(2); ++h) {
      if constexpr (view_rank_v<Dst> == 4) {
        for (std::size_t c = 0; c < dst.extent(3); ++c)
          dst(b, p, h, c) = static_cast<T>(src(b, p, h, c));
      } else {
        dst(b, p, h) = static_cast<T>(src(b, p, h));
      }
    }
  }
};

template <class ExecSpace, class Src, class Dst>
void convert_rows(const ExecSpace& space, const char* label, const Src& src, const Dst& dst) {
  if constexpr (Kokkos::SpaceAccessibility<Kokkos::HostSpace,
                                           typename ExecSpace::memory_space>::accessible) {
    Kokkos::parallel_for(label,
                         Kokkos::RangePolicy<ExecSpace>(space, 0, dst.extent(0) * dst.extent(1)),
                         ConvertRowsHost<Src, Dst>{src, dst});
  } else {
    // A 64-bit index: a RangePolicy's default is the space's size_type, 32-bit unsigned on CUDA,
    // and (1, 8Mi, 12, 64) is 2^32.6 elements: the range's end would wrap and rows go unwritten.
    Kokkos::parallel_for(label, index_range(space, 0, dst.size()), ConvertRows<Src, Dst>{src, dst});
  }
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_ORIGINAL_DRIVER_HPP
