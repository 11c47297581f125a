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
#include <impl/Dilated_ImprovedHostFusedBackward.hpp>
#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_ImprovedMmaBackward.hpp>
#include <impl/Dilated_ImprovedMmaForward.hpp>
#include <impl/Dilated_ImprovedWgmmaBackward.hpp>
#include <impl/Dilated_ImprovedWgmmaForward.hpp>
#include <impl/Dilated_RowPieces.hpp>
#include <impl/Dilated_OriginalDriver.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::Impl {

// Launches `kernel` (its `launch` member filled in here) over every tile of every item of
// `plan`: tiles of `tile_rows` kept positions, scratch of Kernel::scratch_entries; the host
// micro-kernels where they apply unless DILATED_DISABLE_HOST_TILES (host_tile::allowed).
template <class ExecSpace, class Kernel>
void launch_tiles(const ExecSpace& space, const char* label, Kernel kernel, int tile_rows) {
  using Acc = typename Kernel::Acc;
  using Tiles = ImprovedTiles<ExecSpace>;
  auto& launch = kernel.launch;
  launch.tile_by(Tiles::query_rows, Tiles::key_rows, tile_rows);
  launch.ld = launch.branch.d + Tiles::pad;
  if constexpr (Kernel::use_host_tile) kernel.host_tiles = host_tile::allowed();
  const std::size_t bytes =
      sizeof(Acc) * Kernel::scratch_entries(launch.query_rows, launch.key_rows, launch.ld,
                                            kernel.host_tiles) +
      64;
  // Host threads take teams one at a time (Kokkos' work stealing), not a contiguous run each:
  // a causal tile's work grows (query tiles) or shrinks (key tiles) with its index, and a branch
  // of few (segment, head) items gives each of 16 threads part of one item. The training
  // shape's third branch (4 items of 32 tiles) left 16 threads' runs 1.7x apart in work; over a
  // layer's launches the static split's slowest thread took 1.24x the mean (model of the
  // tiles' work), 1.35-1.45x measured in thread CPU time (dilated_train --profile, 16 threads,
  // OMP_WAIT_POLICY=passive). CUDA schedules blocks itself: its policy is unchanged.
  constexpr bool host = std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>;
  using Policy =
      std::conditional_t<host, Kokkos::TeamPolicy<ExecSpace, Kokkos::Schedule<Kokkos::Dynamic>>,
                         Kokkos::TeamPolicy<ExecSpace>>;
  launch.scratch_level = bytes <= static_cast<std::size_t>(Policy::scratch_size_max(0)) ? 0 : 1;
  const long teams = launch.branch.plan.num_items() * launch.tiles;
  constexpr long max_league = 1L << 30;
  for (long begin = 0; begin < teams; begin += max_league) {
    launch.branch.item_begin = begin;
    const int league = static_cast<int>(std::min(max_league, teams - begin));
    Policy policy(space, league, Tiles::team_size, LaunchPolicy<ExecSpace>::vector_length);
    if constexpr (host) policy.set_chunk_size(1);
    policy.set_scratch_size(launch.scratch_level, Kokkos::PerTeam(bytes));
    Kokkos::parallel_for(label, policy, kernel);
  }
}

// Row kernels over (b, n, h, d) views. With rows contiguous and 16-byte aligned (the usual
// case) a row moves in 16-byte pieces, one per vector lane: consecutive team threads take
// consecutive rows, so a warp covers whole rows of contiguous memory (coalesced, full sectors);
// otherwise a row per thread, element by element. Measured on the H100 (64K tokens, 12 heads,
// d = 64, fp16): D_t = dout . out took 507 us with 2-byte loads and a thread per row, 230-370
// us with a row's columns over a warp's lanes (index arithmetic on every lane, a thread's rows
// one after the other), 149 us with a thread per row in 16-byte pieces (DRAM 77 % busy but
// twice the bytes: half-sector accesses); zeroing one gradient's unkept rows 36-150 us.
// Calls f(team, b, p, h) for every row of (batch, n, heads) rows: a team thread per row, its
// vector lanes (up to `lanes`, a power of two) for the row's pieces.
template <class ExecSpace, class RowFunctor>
void for_each_row(const ExecSpace& space, const char* label, int batch, int n, int heads, int lanes,
                  const RowFunctor& f) {
  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  using Member = typename Policy::member_type;
  constexpr int rows_per_team = 64;
  const long rows = static_cast<long>(batch) * n * heads;
  if (rows > static_cast<long>(std::numeric_limits<int>::max()))
    throw std::length_error(std::string(label) + ": batch x sequence x heads exceeds one launch");
  const int vector = std::min(lanes, LaunchPolicy<ExecSpace>::vector_length);
  const int league = static_cast<int>((rows + rows_per_team - 1) / rows_per_team);
  Kokkos::parallel_for(
      label, Policy(space, league, Kokkos::AUTO, vector), KOKKOS_LAMBDA(const Member& team) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows_per_team), [&](int i) {
          const int r = team.league_rank() * rows_per_team + i;
          if (r >= rows) return;
          const int h = r % heads, position = r / heads;
          f(team, position / n, position % n, h);
        });
      });
}

// The smallest power of two >= x (vector lengths).
inline int power_of_two_at_least(int x) {
  int p = 1;
  while (p < x)
    p *= 2;
  return p;
}

// Row (b, p, h) of x set to zero 16 bytes per vector lane (rows_in_pieces(x) holds).
template <class Member, class View>
KOKKOS_INLINE_FUNCTION void zero_row_pieces(const Member& team, const View& x, int b, int p, int h,
                                            int d) {
  using T = typename View::non_const_value_type;
  constexpr int per = 16 / sizeof(T);
  auto* row = reinterpret_cast<Piece16<T>*>(&x(b, p, h, 0));
  Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d / per), [&](int i) {
    Piece16<T> zeros;
    for (int e = 0; e < per; ++e)
      zeros.v[e] = T(0);
    row[i] = zeros;
  });
}

// Several (b, n, h, d) views as one value that a device lambda can capture (extended lambdas
// cannot capture the elements of a parameter pack).
template <class View, class... More>
struct ViewPack {
  View first;
  ViewPack<More...> rest;
  KOKKOS_INLINE_FUNCTION void zero(int b, int p, int h, int c) const {
    first(b, p, h, c) = 0;
    rest.zero(b, p, h, c);
  }
  template <class Member>
  KOKKOS_INLINE_FUNCTION void zero_pieces(const Member& team, int b, int p, int h, int d) const {
    zero_row_pieces(team, first, b, p, h, d);
    rest.zero_pieces(team, b, p, h, d);
  }
};
template <class View>
struct ViewPack<View> {
  View first;
  KOKKOS_INLINE_FUNCTION void zero(int b, int p, int h, int c) const { first(b, p, h, c) = 0; }
  template <class Member>
  KOKKOS_INLINE_FUNCTION void zero_pieces(const Member& team, int b, int p, int h, int d) const {
    zero_row_pieces(team, first, b, p, h, d);
  }
};
template <class View, class... More>
ViewPack<View, More...> make_view_pack(const View& view, const More&... more) {
  if constexpr (sizeof...(More) == 0) {
    return {view};
  } else {
    return {view, make_view_pack(more...)};
  }
}

// grouped: rows (b, p, h) that the head's branch does not keep get 0 in every view ((b, n, h,
// d), e.g. dq, dk and dv in one launch) and -inf in `lse` when there is one. Kept rows are left
// to the kernels. One launch per branch with dilation > 1, over its heads.
template <class ExecSpace, class L, class View, class... More>
void zero_unkept_rows(const ExecSpace& space, const Geometry& g, const L* lse, const View& view,
                      const More&... more) {
  const int n = view.extent(1), d = view.extent(3);
  const bool with_lse = lse != nullptr;
  const L lse_view = lse ? *lse : L();
  const auto views = make_view_pack(view, more...);
  const bool pieces = (rows_in_pieces(view) && ... && rows_in_pieces(more));
  for (int i = 0; i < g.num_branches(); ++i) {
    const auto group = g.group_heads(i);  // (no structured binding: lambdas capture it)
    const int begin = group.first, heads = group.second - group.first, window = g.window(i, n),
              rate = g.dilation_rate(i);
    const int offset = g.offset(i, begin);
    if (rate == 1) continue;  // every row is kept
    using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
    using T = typename View::non_const_value_type;
    const int lanes = pieces ? power_of_two_at_least(d * int(sizeof(T)) / 16) : 1;
    for_each_row(
        space, "dilated::improved::zero_unkept_rows", view.extent(0), n, heads, lanes,
        KOKKOS_LAMBDA(const Member& team, int b, int p, int hh) {
          if ((p % window) % rate == offset) return;
          const int h = begin + hh;
          if (pieces) {
            views.zero_pieces(team, b, p, h, d);
          } else {
            Kokkos::single(Kokkos::PerThread(team), [&] {
              for (int c = 0; c < d; ++c)
                views.zero(b, p, h, c);
            });
          }
          if (with_lse) {
            Kokkos::single(Kokkos::PerThread(team), [&] {
              using TL = typename L::value_type;
              lse_view(b, p, h) = static_cast<TL>(-math::infinity<accumulation_t<TL>>());
            });
          }
        });
  }
}

// delta(b, p, h) = (dout . out)(b, p, h) / output_scale: the D_t of the backward pass.
template <class ExecSpace, class G, class O, class Delta>
void row_deltas(const ExecSpace& space, const G& dout, const O& out, const Delta& delta,
                double output_scale) {
  using Acc = typename Delta::value_type;
  using TG = typename G::non_const_value_type;
  using TO = typename O::non_const_value_type;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int n = out.extent(1), heads = out.extent(2), d = out.extent(3);
  const Acc inv = static_cast<Acc>(1.0 / output_scale);
  if constexpr (std::is_same_v<TG, TO>) {
    if (rows_in_pieces(dout) && rows_in_pieces(out)) {
      constexpr int per = 16 / sizeof(TO);
      for_each_row(
          space, "dilated::improved::row_deltas", out.extent(0), n, heads,
          power_of_two_at_least(d / per), KOKKOS_LAMBDA(const Member& team, int b, int p, int h) {
            const auto* g = reinterpret_cast<const Piece16<TG>*>(&dout(b, p, h, 0));
            const auto* o = reinterpret_cast<const Piece16<TO>*>(&out(b, p, h, 0));
            Acc s = 0;
            Kokkos::parallel_reduce(
                Kokkos::ThreadVectorRange(team, d / per),
                [&](int i, Acc& sum) {
                  const Piece16<TG> x = g[i];
                  const Piece16<TO> y = o[i];
                  for (int e = 0; e < per; ++e)
                    sum += Acc(x.v[e]) * Acc(y.v[e]);
                },
                s);
            Kokkos::single(Kokkos::PerThread(team), [&] { delta(b, p, h) = s * inv; });
          });
      return;
    }
  }
  for_each_row(
      space, "dilated::improved::row_deltas", out.extent(0), n, heads, 1,
      KOKKOS_LAMBDA(const Member& team, int b, int p, int h) {
        Acc s = 0;
        Kokkos::parallel_reduce(
            Kokkos::ThreadVectorRange(team, d),
            [&](int c, Acc& sum) { sum += Acc(dout(b, p, h, c)) * Acc(out(b, p, h, c)); }, s);
        Kokkos::single(Kokkos::PerThread(team), [&] { delta(b, p, h) = s * inv; });
      });
}

// Runs the fused forward of every branch into `out` / `lse` (see ImprovedForwardKernel): for
// longnet these must hold 0 / -inf on entry; grouped writes only the rows its branches keep.
template <class ExecSpace, class Q, class K, class V, class OutV, class LseV>
void improved_forward_branches(const ExecSpace& space, const Geometry& g,
                               const BranchLaunch<typename ExecSpace::memory_space,
                                                  accumulation_t<typename Q::value_type>>& base,
                               const Q& q, const K& k, const V& v, const OutV& out, const LseV& lse,
                               bool with_output, bool with_lse, bool zero_unkept = false) {
#if defined(KOKKOS_ENABLE_CUDA)
  // Tensor cores where the storage and layout allow (half/bf16, d = 64 or 128, aligned rows).
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda> &&
                mma::is_mma_type_v<typename Q::non_const_value_type>) {
    const int d = q.extent(3);
    if (with_output && base.scale > 0 && mma::applies(d, q, k, v)) {
      if (d == 64 && wgmma::compiled(space)) {
        wgmma::forward_branches(space, g, base, q, k, v, out, lse, with_lse, zero_unkept);
      } else if (d == 64) {
        mma::forward_branches<64>(space, g, base, q, k, v, out, lse, with_lse, zero_unkept);
      } else {
        mma::forward_branches<128>(space, g, base, q, k, v, out, lse, with_lse, zero_unkept);
      }
      return;
    }
  }
#endif
  if (zero_unkept) zero_unkept_rows(space, g, with_lse ? &lse : nullptr, out);
  using Kernel = ImprovedForwardKernel<ExecSpace, Q, K, V, OutV, LseV>;
  for (int i = 0; i < g.num_branches(); ++i) {
    Kernel kernel{
        tiled_launch<ExecSpace>(g, i, base, q.extent(0)), q, k, v, out, lse, with_output, with_lse};
    launch_tiles(space, "dilated::improved::forward", kernel, ImprovedTiles<ExecSpace>::query_rows);
  }
}

// The backward of every branch: dq (and, for detached longnet weights, first the branch's D_t)
// then dk/dv. `lse` is the merged log-sum-exp; `delta` is the D_t workspace: filled here from
// dout . out (by the tensor-core dq passes themselves where they run) unless `branch_deltas`.
template <class ExecSpace, class Q, class K, class V, class O, class G, class LseV, class DeltaV,
          class DQ, class DK, class DV>
void improved_backward_branches(const ExecSpace& space, const Geometry& g,
                                const BranchLaunch<typename ExecSpace::memory_space,
                                                   accumulation_t<typename Q::value_type>>& base,
                                const Q& q, const K& k, const V& v, const O& out, const G& dout,
                                const LseV& lse, const DeltaV& delta, bool branch_deltas,
                                const DQ& dq, const DK& dk, const DV& dv, bool accumulate) {
  using Tiles = ImprovedTiles<ExecSpace>;
  using DqKernel = ImprovedDqKernel<ExecSpace, Q, K, V, G, LseV, DeltaV, DQ>;
  using DkDvKernel = ImprovedDkDvKernel<ExecSpace, Q, K, V, G, LseV, DeltaV, DK, DV>;
  const auto branch_delta = [&](const auto& launch) {
    launch_tiles(space, "dilated::improved::branch_deltas",
                 DqKernel{launch, q, k, v, dout, lse, delta, dq, accumulate, true},
                 Tiles::query_rows);
  };
#if defined(KOKKOS_ENABLE_CUDA)
  // Tensor cores where the storage and layout allow (half/bf16, d = 64 or 128, aligned rows).
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda> &&
                mma::is_mma_type_v<typename Q::non_const_value_type>) {
    const int d = q.extent(3);
    if ((d == 64 || d == 128) && mma::applies(d, q, k, v, dout)) {
      std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches;
      for (int i = 0; i < g.num_branches(); ++i)
        launches.push_back(tiled_launch<ExecSpace>(g, i, base, q.extent(0)));
      const auto run = [&](auto head_dim) {
        constexpr int D = decltype(head_dim)::value;
        // wgmma on sm_90a builds at head_dim 64 (Dilated_ImprovedWgmmaBackward.hpp), else
        // mma.sync.
        const auto passes = [&](const auto& these, bool together, const O* with_out) {
          if constexpr (D == 64) {
            if (wgmma::compiled(space)) {
              wgmma::backward_branches(space, these, together, q, k, v, dout, with_out, lse, delta,
                                       dq, dk, dv, accumulate);
              return;
            }
          }
          mma::backward_branches<D>(space, these, together, q, k, v, dout, with_out, lse, delta, dq,
                                    dk, dv, accumulate);
        };
        if (branch_deltas) {
          for (const auto& launch : launches) {
            branch_delta(launch);
            passes(std::vector<TiledLaunch<Kokkos::CudaSpace, float>>{launch}, false, nullptr);
          }
          return;
        }
        // The dq passes write the D_t of the rows their dk/dv passes read (longnet branches
        // rewrite the same values for rows they share).
        const bool fused_deltas = mma::applies(D, out);
        if (!fused_deltas) row_deltas(space, dout, out, delta, g.output_scale());
        passes(launches, !base.longnet, fused_deltas ? &out : nullptr);
      };
      if (d == 64) {
        run(std::integral_constant<int, 64>{});
      } else {
        run(std::integral_constant<int, 128>{});
      }
      return;
    }
  }
#endif
  if (!branch_deltas) row_deltas(space, dout, out, delta, g.output_scale());
  // Host float: one pass over the key tiles (five products a tile pair, not seven) unless a
  // branch needs its own D_t first or the environment asks for the two passes.
  using Acc = accumulation_t<typename Q::value_type>;
  if constexpr (host_tile::enabled_v<ExecSpace, Acc>) {
    if (host_tile::fused_backward_applies(branch_deltas)) {
      std::vector<TiledLaunch<typename ExecSpace::memory_space, Acc>> launches;
      for (int i = 0; i < g.num_branches(); ++i)
        launches.push_back(tiled_launch<ExecSpace>(g, i, base, q.extent(0)));
      host_tile::fused_backward_branches(space, launches, base.longnet, q, k, v, dout, lse, delta,
                                         dq, dk, dv, accumulate);
      return;
    }
  }
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
