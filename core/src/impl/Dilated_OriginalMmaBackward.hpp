// The CUDA tensor-core backward of the Original algorithm (half/bf16, head_dim 64, aligned
// contiguous rows): each segment's probability and score-gradient matrices are computed once,
// stored, and read back, as the seed's Original keeps its per-segment matrices, instead of
// recomputed in a second pass (FlashAttention-2, the Improved backward):
//   rows pass (mma::DqKernel with Store): 4 warps own 16 query rows each; K/V tiles stream;
//     S = Q K^T, dP = dO V^T, P~ = output_scale 2^(scale_log2 S - L), dS = P~ (Z dP - D_t),
//     dQ += dS K, and P~Z and dS are written to the item's matrices (StoredMatrices);
//   keys pass (OriginalDkDvKernel, here): 4 warps own 16 key rows each; query tiles of Q, dO
//     and of the two stored matrices stream through shared memory; dV += (P~Z)^T dO and
//     dK += dS^T Q, the transposes taken by ldmatrix.trans.
// The keys pass needs every query row of its item, so the matrices of all items of a launch are
// held at once: items are processed in chunks that fit the caller's workspace budget (at least
// one item), each chunk a rows launch then a keys launch. Both matrices round like the Improved
// backward's operands (P~Z and dS packed to half/bf16 for the products), so both algorithms
// compute the same products from the same rounded values.
#ifndef DILATED_IMPL_ORIGINAL_MMA_BACKWARD_HPP
#define DILATED_IMPL_ORIGINAL_MMA_BACKWARD_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_TensorCoreTilePolicies.hpp>
#include <impl/Dilated_ScratchPool.hpp>
#include <impl/Dilated_ImprovedDriver.hpp>
#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_ImprovedMmaBackward.hpp>
#include <impl/Dilated_MmaPrimitives.hpp>
#include <impl/Dilated_RowPieces.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace dilated::Impl::mma {

template <int D, class QV, class GV, class DKV, class DVV>
struct OriginalDkDvKernel {
  using Tiles = OriginalMmaBackwardTiles<D>;
  static constexpr unsigned min_blocks = Tiles::keys_min_blocks;
  using T = typename QV::non_const_value_type;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  TiledLaunch<Kokkos::CudaSpace, float> launch;  // key tiles of Tiles::rows
  QV q;
  GV dout;
  DKV dk;
  DVV dv;
  StoredMatrices stored;
  bool accumulate = false;
  bool in_pieces = false;  // rows_in_pieces(dk) and (dv): rows written as 4-byte pairs

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(__CUDA_ARCH__)
    const long rank = team.league_rank();
    const auto tile = launch.tile_at(rank + stored.first_item * launch.tiles, Tiles::rows);
    if (tile.count == 0) return;
    const auto& br = launch.branch;
    constexpr int BR = Tiles::rows, LD = Tiles::ld;
    const int b = tile.item.b, h = tile.item.head, cols = tile.count, u0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int m = kept.count;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4, mi = lane / 8;
    using Half = std::uint16_t;
    Half* Qs = aligned_scratch(team, Tiles::scratch_bytes);
    Half* Gs = Qs + Tiles::tile_halves;
    Half* Ps = Gs + Tiles::tile_halves;
    Half* Ss = Ps + Tiles::tile_halves;
    const TileLoader<D, LD, BR> q_loader(q, b, h, kept, tid), g_loader(dout, b, h, kept, tid);
    // This thread's 16-byte pieces of the stored matrices' tiles: rows t0 + row0 + 16 i,
    // columns u0 + 8 piece .. + 7 (BR columns = 8 pieces per row, 16 rows per pass).
    const int row0 = tid / 8, piece = tid % 8;
    const long slot = rank / launch.tiles;
    const auto load_matrix = [&](const std::uint32_t* base, int t0, int rows, Half* dst) {
#pragma unroll
      for (int i = 0; i < BR / 16; ++i) {
        const int r = row0 + 16 * i;
        const bool valid = r < rows;
        const std::uint32_t* src =
            base + stored.pair_offset(slot, valid ? t0 + r : t0, u0 + 8 * piece);
        copy16(dst + r * LD + 8 * piece, src, valid);
      }
    };

    const int my_u[2] = {u0 + warp * 16 + g, u0 + warp * 16 + g + 8};
    const int warp_first = u0 + warp * 16;
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dk_acc[n][e] = dv_acc[n][e] = 0.f;

    for (int t0 = br.causal ? (u0 / BR) * BR : 0; t0 < m; t0 += BR) {
      const int rows = m - t0 < BR ? m - t0 : BR;
      __syncthreads();  // the previous query tile is no longer read
      q_loader.load(t0, rows, Qs);
      g_loader.load(t0, rows, Gs);
      load_matrix(stored.p, t0, rows, Ps);
      load_matrix(stored.ds, t0, rows, Ss);
      commit();
      wait_groups<0>();
      __syncthreads();
      // Causal: a warp whose keys all follow the tile's last query has nothing to do.
      if (warp * 16 >= cols || (br.causal && warp_first > t0 + rows - 1)) continue;
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) {
        // A of (P~Z)^T and dS^T for this warp's 16 keys and queries 16 kk .. + 15: the stored
        // [query][key] tiles read transposed. Causal entries of keys after their query hold
        // zero: the rows pass writes every key tile up to its team's last row.
        const int a_row = kk * 16 + (mi / 2) * 8 + lane % 8, a_col = warp * 16 + (mi % 2) * 8;
        std::uint32_t pa[4], da[4];
        ldmatrix_x4_trans(pa, Ps + a_row * LD + a_col);
        ldmatrix_x4_trans(da, Ss + a_row * LD + a_col);
        key_products<D, LD, bf16>(pa, da, Gs, Qs, kk, lane, dv_acc, dk_acc);
      }
    }
    write_grad_rows<D, bf16, T>(dk, dk_acc, static_cast<float>(br.scale), kept, b, h, my_u,
                                u0 + cols, t4, accumulate, in_pieces);
    write_grad_rows<D, bf16, T>(dv, dv_acc, 1.f, kept, b, h, my_u, u0 + cols, t4, accumulate,
                                in_pieces);
#else
    (void)team;
#endif
  }
};

// The Original backward of one branch (`launch`) in chunks of items that fit `workspace`
// (StoredMatrices of `chunk_items` items): per chunk the rows pass (dq, and the matrices) then
// the keys pass (dk, dv). `out` (non-null): the rows pass computes D_t from dout . out as the
// Improved one does; else `delta` holds D_t.
template <int D, class Q, class K, class V, class G, class O, class LseV, class DeltaV, class DQ,
          class DK, class DV>
void original_backward_branch(const Kokkos::Cuda& space,
                              TiledLaunch<Kokkos::CudaSpace, float> launch, const Q& q, const K& k,
                              const V& v, const G& dout, const O* out, const LseV& lse,
                              const DeltaV& delta, const DQ& dq, const DK& dk, const DV& dv,
                              bool accumulate,
                              const Kokkos::View<std::uint32_t*, Kokkos::CudaSpace>& workspace,
                              long chunk_items, int ld) {
  using Tiles = OriginalMmaBackwardTiles<D>;
  using BackwardTiles = MmaBackwardTiles<D>;
  launch.tile_by(BackwardTiles::rows, BackwardTiles::rows, BackwardTiles::rows);
  StoredMatrices stored;
  stored.ld = ld;
  stored.p = workspace.data();
  stored.ds = workspace.data() + chunk_items * ld * (ld / 2);
  const bool dq_pieces = rows_in_pieces(dq), dkdv_pieces = rows_in_pieces(dk) && rows_in_pieces(dv);
  const float delta_scale = static_cast<float>(1.0 / launch.branch.output_scale);
  const long items = launch.branch.plan.num_items();
  const auto run = [&](auto dropout) {
    constexpr bool with_dropout = decltype(dropout)::value;
    using Dq = DqKernel<D, with_dropout, Q, K, V, G, O, LseV, DeltaV, DQ, true>;
    using DkDv = OriginalDkDvKernel<D, Q, G, DK, DV>;
    for (long first = 0; first < items; first += chunk_items) {
      const long count = std::min(chunk_items, items - first);
      stored.first_item = first;
      BranchSet<TiledLaunch<Kokkos::CudaSpace, float>> set;
      set.add(launch, count * launch.tiles);
      const int league = static_cast<int>(set.teams());
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, Dq::min_blocks>> rows_policy(
          space, league, 4, 32);
      rows_policy.set_scratch_size(0, Kokkos::PerTeam(BackwardTiles::dq_store_scratch_bytes + 16));
      Kokkos::parallel_for("dilated::original::rows_mma", rows_policy,
                           Dq{set, q, k, v, dout, out ? *out : O(), lse, delta, dq, accumulate,
                              dq_pieces, out != nullptr, delta_scale, stored});
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, DkDv::min_blocks>> keys_policy(
          space, league, 4, 32);
      keys_policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::scratch_bytes + 16));
      Kokkos::parallel_for("dilated::original::keys_mma", keys_policy,
                           DkDv{launch, q, dout, dk, dv, stored, accumulate, dkdv_pieces});
    }
  };
  if (launch.branch.dropout.active()) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

// The Original backward of every branch, one after the other (longnet branches add into the
// gradients; grouped ones own disjoint heads), through one workspace sized for the largest
// chunk: `workspace_bytes` / (two matrices of the longest item) items, at least one.
// `before_branch(launch)` runs first for each branch (the detached longnet weights' D_t).
template <int D, class Q, class K, class V, class G, class O, class LseV, class DeltaV, class DQ,
          class DK, class DV, class BeforeBranch>
void original_backward_branches(const Kokkos::Cuda& space,
                                const std::vector<TiledLaunch<Kokkos::CudaSpace, float>>& launches,
                                const Q& q, const K& k, const V& v, const G& dout, const O* out,
                                const LseV& lse, const DeltaV& delta, const DQ& dq, const DK& dk,
                                const DV& dv, bool accumulate, std::size_t workspace_bytes,
                                const BeforeBranch& before_branch) {
  int ld = 64;
  long most_items = 1;
  for (const auto& launch : launches) {
    ld = std::max(ld, (launch.branch.plan.max_kept + 63) / 64 * 64);
    most_items = std::max(most_items, launch.branch.plan.num_items());
  }
  const std::size_t item_bytes = 2 * sizeof(std::uint16_t) * static_cast<std::size_t>(ld) * ld;
  const long chunk_items =
      std::max(1L, std::min(most_items, static_cast<long>(workspace_bytes / item_bytes)));
  const auto workspace = scratch_view<Kokkos::View<std::uint32_t*, Kokkos::CudaSpace>>(
      space, score_workspace_label, false,
      2 * static_cast<std::size_t>(chunk_items) * ld * (ld / 2));
  for (const auto& launch : launches) {
    before_branch(launch);
    original_backward_branch<D>(space, launch, q, k, v, dout, out, lse, delta, dq, dk, dv,
                                accumulate, workspace, chunk_items, ld);
  }
}

}  // namespace dilated::Impl::mma

namespace dilated::Impl {

// The Original backward of every branch on tensor cores, with improved_backward_branches'
// contract: `lse` the merged log-sum-exp; `delta` the D_t workspace, filled from dout . out (by
// the rows passes where out suits the tensor cores) unless `branch_deltas` (detached longnet
// weights: each branch's own D_t, by the generic kernel, before the branch).
template <class Q, class K, class V, class O, class G, class LseV, class DeltaV, class DQ, class DK,
          class DV>
void original_mma_backward_branches(const Kokkos::Cuda& space, const Geometry& g,
                                    const BranchLaunch<Kokkos::CudaSpace, float>& base, const Q& q,
                                    const K& k, const V& v, const O& out, const G& dout,
                                    const LseV& lse, const DeltaV& delta, bool branch_deltas,
                                    const DQ& dq, const DK& dk, const DV& dv, bool accumulate,
                                    std::size_t workspace_bytes) {
  using DeltaKernel = ImprovedDqKernel<Kokkos::Cuda, Q, K, V, G, LseV, DeltaV, DQ>;
  std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches;
  for (int i = 0; i < g.num_branches(); ++i)
    launches.push_back(tiled_launch<Kokkos::Cuda>(g, i, base, q.extent(0)));
  const bool fused_deltas = !branch_deltas && mma::applies(64, out);
  if (!branch_deltas && !fused_deltas) row_deltas(space, dout, out, delta, g.output_scale());
  mma::original_backward_branches<64>(
      space, launches, q, k, v, dout, fused_deltas ? &out : nullptr, lse, delta, dq, dk, dv,
      accumulate, workspace_bytes, [&](const auto& launch) {
        if (branch_deltas)
          launch_tiles(space, "dilated::original::branch_deltas",
                       DeltaKernel{launch, q, k, v, dout, lse, delta, dq, accumulate, true},
                       ImprovedTiles<Kokkos::Cuda>::query_rows);
      });
}

}  // namespace dilated::Impl

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_ORIGINAL_MMA_BACKWARD_HPP
