// The CUDA tensor-core forward of the Original algorithm (half/bf16 storage, head_dim 64 or
// 128, aligned contiguous rows): each segment's score matrix is computed and stored, then its
// softmax is taken and multiplied by V, as in the seed's Original, but in one team kernel per
// launch instead of three vendor products and row kernels, and with the score rows kept small
// enough to stay cheap. A team of 4 warps owns 64 query rows of one (batch, segment, head) and
// makes two passes over the segment's kept keys:
//   1. scores: S = Q K^T tile by tile (mma.sync, float accumulation), masked, in log2 units;
//      each row's running maximum is kept, and every score is stored in the team's slice of a
//      workspace in global memory, relative to that running maximum, as a 16-bit float;
//   2. softmax and P V: with each row's maximum now known, the stored scores are read back,
//      exponentiated, summed and (dropout) masked, and O += P V tile by tile (mma.sync).
// The row maximum and sum are thus exact reductions over the stored score row before any
// probability is formed (the Original's order), not FlashAttention's running rescale.
//
// Why 16-bit scores stay accurate: a stored value is x = s - m (log2 units) with m the row's
// maximum up to and including the score's tile, so x <= 0; its rounding error is at most
// |x| 2^-11, and the probability formed from it, p = 2^(x + m - M) <= 2^x, moves by at most
// p |x| ln2 2^-11 <= max(|x| 2^x) ln2 2^-11 = 2^-11 / e ~ 1.8e-4, less than rounding p itself to
// half for the P V product (up to 2^-11 p ~ 4.9e-4) which every tensor-core path does.
// Half (not bf16) is used for any storage type: x needs mantissa, not range (x < -65504, which
// rounds to -inf, has p < 2^-65504 = 0 in float anyway).
//
// The workspace holds one slice per resident team: the launch is persistent (a league of at
// most as many teams as fit the GPU and the caller's workspace budget; each team takes tiles
// rank, rank + league, ...), so its size is bounded however long the sequence. A slice is laid
// out in each lane's fragment order (tile, warp, 16-byte piece, lane): every store and load is
// one coalesced 512-byte access per warp, and each lane reads back exactly what it wrote.
#ifndef DILATED_IMPL_ORIGINAL_MMA_FORWARD_HPP
#define DILATED_IMPL_ORIGINAL_MMA_FORWARD_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_TensorCoreTilePolicies.hpp>
#include <impl/Dilated_ScratchPool.hpp>
#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_MmaPrimitives.hpp>
#include <impl/Dilated_MmaSoftmax.hpp>
#include <impl/Dilated_RowPieces.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace dilated::Impl::mma {

// The bounded workspace of a persistent launch: `slots` teams, each with room for `tiles` key
// tiles of scores and offsets, both carved from one buffer (`buffer`, the pool's score workspace:
// a separate offsets buffer stayed in the pool beside the backward's matrices, 4.125 MiB of a
// training step at E = 768, 12 heads on an H200).
struct ScoreSlots {
  Kokkos::View<uint4*, Kokkos::CudaSpace> buffer;  // owns the memory when no pool is current
  Kokkos::View<uint4*, Kokkos::CudaSpace, Kokkos::MemoryUnmanaged>
      scores;  // slot-major, OriginalMmaForwardTiles layout
  Kokkos::View<float*, Kokkos::CudaSpace, Kokkos::MemoryUnmanaged> offsets;
  int slots = 0, tiles = 0;
};

template <int D, bool Dropout, class QV, class KV, class VV, class OutV, class LseV>
struct OriginalForwardKernel {
  using Tiles = OriginalMmaForwardTiles<D>;
  static constexpr unsigned min_blocks = Tiles::min_blocks;
  using T = typename QV::non_const_value_type;
  using Space = Kokkos::CudaSpace;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;
  // 16-byte pieces per key tile: 4 warps x 4 pieces x 32 lanes.
  static constexpr int tile_pieces = Tiles::tile_score_bytes / 16;

  // Its own members and Q loads rather than mma::ForwardIO and a_fragments (which the Improved
  // forwards share): built that way, this kernel spilled 261 MB instead of 4 MB at 128 registers
  // and took 1.92 instead of 1.70 ms at 64K (H100, Nsight Compute).
  BranchSet<TiledLaunch<Space, float>> set;  // query_rows = Tiles::query_rows, tiles per item
  QV q;
  KV k;
  VV v;
  OutV out;
  LseV lse;
  bool with_lse = true;
  bool zero_unkept = false;  // as in ForwardKernel
  bool out_in_pieces = false;
  ScoreSlots ws;

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(__CUDA_ARCH__)
    const long total = set.teams();
    for (long rank = team.league_rank(); rank < total; rank += team.league_size())
      row_tile(team, static_cast<int>(rank));
#else
    (void)team;
#endif
  }

#if defined(__CUDA_ARCH__)
  __device__ void row_tile(const Member& team, int rank) const {
    const auto team_tile = forward_team<D, bf16, T>(team, rank, set, Tiles::query_rows, out, lse,
                                                    with_lse, out_in_pieces, zero_unkept);
    const auto& br = *team_tile.branch;
    const auto& tile = team_tile.tile;
    const auto& writer = team_tile.writer;
    if (tile.count == 0) return;
    constexpr int BC = Tiles::key_rows, LD = Tiles::ld, NJ = BC / 8;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count, t0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;  // mma fragment coordinates
    using Half = std::uint16_t;
    Half* smem = aligned_scratch(team, Tiles::scratch_bytes);
    const auto stage = [&](int s) { return smem + s * Tiles::stage_halves; };
    Half* Qs = stage(1);  // the Q tile borrows stage 1 until its fragments are in registers

    const TileLoader<D, LD, Tiles::query_rows> q_loader(q, b, h, kept, tid);
    const TileLoader<D, LD, BC> k_loader(k, b, h, kept, tid), v_loader(v, b, h, kept, tid);
    const int key_end = br.causal ? t0 + rows : kept.count;
    const int num_tiles = (key_end + BC - 1) / BC;
    const auto tile_keys = [&](int u0) { return key_end - u0 < BC ? key_end - u0 : BC; };
    q_loader.load(t0, rows, Qs);
    k_loader.load(0, tile_keys(0), stage(0));
    commit();
    wait_groups<0>();
    __syncthreads();
    const Half* Qw = Qs + (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8;
    std::uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      ldmatrix_x4(qf[kk], Qw + kk * 16);
    __syncthreads();  // stage 1 is free for the K pipeline
    const int mi = lane / 8;
    const int k_off = ((mi / 2) * 8 + lane % 8) * LD + (mi % 2) * 8;
    const int v_off = ((mi % 2) * 8 + lane % 8) * LD + (mi / 2) * 8;

    const auto my_t = [&](int, int r) { return t0 + warp * 16 + g + 8 * r; };
    const int warp_first = t0 + warp * 16, warp_last = warp_first + 15;
    // The key tiles this warp works on: none when its rows are past the tile's, and (causal)
    // none after its last row's diagonal. The same in both passes.
    const int warp_tiles = warp * 16 >= rows ? 0
                           : br.causal
                               ? (warp_last / BC + 1 < num_tiles ? warp_last / BC + 1 : num_tiles)
                               : num_tiles;
    const std::size_t slot = team.league_rank();
    uint4* my_scores = ws.scores.data() + slot * ws.tiles * tile_pieces + warp * 128 + lane;
    float* my_offsets = ws.offsets.data() + slot * ws.tiles * Tiles::query_rows + warp * 16 + g;
    const float scale_log2 = static_cast<float>(br.scale) * 1.4426950408889634f;

    // Both passes stream key tiles (K, then V) two stages deep: wait for tile it's stage,
    // having started the copy of tile it + 1 into the other.
    const auto pipeline_step = [&](const auto& loader, int it) {
      if (it + 1 < num_tiles) {
        const int next = (it + 1) * BC;
        loader.load(next, tile_keys(next), stage((it + 1) & 1));
        commit();
        wait_groups<1>();
      } else {
        wait_groups<0>();
      }
      __syncthreads();
    };

    // Pass 1: scores, stored relative to each row's running maximum (log2 units).
    float row_max[2] = {-INFINITY, -INFINITY};
    for (int it = 0; it < num_tiles; ++it) {
      const int u0 = it * BC;
      pipeline_step(k_loader, it);
      if (it < warp_tiles) {
        const Half* Ks = stage(it & 1) + k_off;
        float s[1][NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; ++j)
          s[0][j][0] = s[0][j][1] = s[0][j][2] = s[0][j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
          for (int j = 0; j < NJ; j += 2) {
            std::uint32_t kf[4];
            ldmatrix_x4(kf, Ks + j * 8 * LD + kk * 16);
            mma16816<bf16>(s[0][j], qf[kk], kf[0], kf[1]);
            mma16816<bf16>(s[0][j + 1], qf[kk], kf[2], kf[3]);
          }
        if (u0 + BC > key_end || (br.causal && u0 + BC - 1 > warp_first))
          mask_scores<1, BC>(s, u0, key_end, br.causal, t4, my_t);
        float offset[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float m = -INFINITY;
#pragma unroll
          for (int j = 0; j < NJ; ++j)
            m = fmaxf(m, fmaxf(s[0][j][2 * r], s[0][j][2 * r + 1]));
          m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 2));
          row_max[r] = fmaxf(row_max[r], m * scale_log2);
          // No score yet (all masked so far): store -inf scores against offset 0, not NaN.
          offset[r] = row_max[r] == -INFINITY ? 0.f : row_max[r];
        }
        std::uint32_t x[NJ][2];
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            x[j][r] = pack2<false>(fmaf(s[0][j][2 * r], scale_log2, -offset[r]),
                                   fmaf(s[0][j][2 * r + 1], scale_log2, -offset[r]));
#pragma unroll
        for (int piece = 0; piece < 4; ++piece)
          __stcg(my_scores + it * tile_pieces + piece * 32,
                 make_uint4(x[2 * piece][0], x[2 * piece][1], x[2 * piece + 1][0],
                            x[2 * piece + 1][1]));
        if (t4 == 0) {
          __stcg(my_offsets + it * Tiles::query_rows, offset[0]);
          __stcg(my_offsets + it * Tiles::query_rows + 8, offset[1]);
        }
      }
      __syncthreads();  // the stage read here is refilled in the next iteration
    }
    __syncwarp();  // the quad's offsets, stored by its lane t4 == 0, are visible to all four

    // Pass 2: p = 2^(x + offset - max), row sums, dropout, O += P V.
    float o[1][D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      o[0][n][0] = o[0][n][1] = o[0][n][2] = o[0][n][3] = 0.f;
    float row_sum[2] = {0.f, 0.f};
    const auto load_scores = [&](int it, uint4(&xs)[4], float(&off)[2]) {
#pragma unroll
      for (int piece = 0; piece < 4; ++piece)
        xs[piece] = __ldcs(my_scores + it * tile_pieces + piece * 32);
      off[0] = __ldcs(my_offsets + it * Tiles::query_rows);
      off[1] = __ldcs(my_offsets + it * Tiles::query_rows + 8);
    };
    uint4 xs[4];
    float off[2];
    if (warp_tiles > 0) load_scores(0, xs, off);
    v_loader.load(0, tile_keys(0), stage(0));
    commit();
    for (int it = 0; it < num_tiles; ++it) {
      const int u0 = it * BC;
      pipeline_step(v_loader, it);
      if (it < warp_tiles) {
        // The next tile's scores are loaded while this one is multiplied.
        uint4 next_xs[4];
        float next_off[2];
        if (it + 1 < warp_tiles) load_scores(it + 1, next_xs, next_off);
        std::uint32_t p[1][NJ][2];
        static_assert(NJ == 8, "a lane's scores of a 64-key tile are 4 pieces of 16 bytes");
        const std::uint32_t words[NJ][2] = {
            {xs[0].x, xs[0].y}, {xs[0].z, xs[0].w}, {xs[1].x, xs[1].y}, {xs[1].z, xs[1].w},
            {xs[2].x, xs[2].y}, {xs[2].z, xs[2].w}, {xs[3].x, xs[3].y}, {xs[3].z, xs[3].w}};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float shift = off[r] - row_max[r];
#pragma unroll
          for (int j = 0; j < NJ; ++j) {
            float pair[2];
            unpack2<false>(words[j][r], pair);
            pair[0] = fast_exp2(pair[0] + shift);
            pair[1] = fast_exp2(pair[1] + shift);
            row_sum[r] += pair[0] + pair[1];
            p[0][j][r] = pack2<bf16>(pair[0], pair[1]);
          }
        }
        // With dropout the sums stay those of the undropped probabilities (as in Improved).
        if constexpr (Dropout) drop<bf16, 1, BC>(p, br, b, h, kept, u0, t0 + rows, t4, my_t);
        const Half* Vs = stage(it & 1) + v_off;
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk)
#pragma unroll
          for (int n = 0; n < D / 8; n += 2) {
            std::uint32_t vf[4], pf[4];
            ldmatrix_x4_trans(vf, Vs + kk * 16 * LD + n * 8);
            p_fragment(p[0], kk, pf);
            mma16816<bf16>(o[0][n], pf, vf[0], vf[1]);
            mma16816<bf16>(o[0][n + 1], pf, vf[2], vf[3]);
          }
        if (it + 1 < warp_tiles) {
#pragma unroll
          for (int piece = 0; piece < 4; ++piece)
            xs[piece] = next_xs[piece];
          off[0] = next_off[0];
          off[1] = next_off[1];
        }
      }
      __syncthreads();
    }

    // The epilogue of the Improved forward, from the row maxima (bias) and the row sums.
    SoftmaxRows<1, D, bf16> softmax(static_cast<float>(br.scale));
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = row_sum[r];
      sum += __shfl_xor_sync(0xffffffff, sum, 1);
      sum += __shfl_xor_sync(0xffffffff, sum, 2);
      softmax.bias[0][r] = row_max[r];
      softmax.l[0][2 * r] = sum;
    }
    writer.finish(o, softmax, br, kept, t0 + rows, t4, my_t);
    if (team_tile.zero_gaps)
      writer.template zero_gaps<1>(kept, team_tile.seg_end, t0 + rows, t4, my_t);
  }
#endif
};

// The tensor-core Original forward of every branch: all branches in one launch for grouped
// semantics, branch after branch for longnet (as launch_forward). Each launch is persistent,
// with one workspace slice per team (ScoreSlots): at most the teams the GPU holds at once
// (`min_blocks` per multiprocessor) and at most what `workspace_bytes` allows (at least one).
template <int D, class Q, class K, class V, class OutV, class LseV>
void original_forward_branches(const Kokkos::Cuda& space, const Geometry& g,
                               const BranchLaunch<Kokkos::CudaSpace, float>& base, const Q& q,
                               const K& k, const V& v, const OutV& out, const LseV& lse,
                               bool with_lse, bool zero_unkept, std::size_t workspace_bytes) {
  using Tiles = OriginalMmaForwardTiles<D>;
  std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches;
  for (int i = 0; i < g.num_branches(); ++i) {
    auto launch = tiled_launch<Kokkos::Cuda>(g, i, base, q.extent(0));
    launch.tile_by(Tiles::query_rows, Tiles::key_rows, Tiles::query_rows);
    launches.push_back(launch);
  }
  const auto sets = branch_sets(launches, !base.longnet);
  // Key tiles of the longest segment of any launch; teams a slice each.
  int tiles = 1;
  for (const auto& launch : launches)
    tiles = std::max(tiles, (launch.branch.plan.max_kept + Tiles::key_rows - 1) / Tiles::key_rows);
  const std::size_t slot_bytes =
      static_cast<std::size_t>(tiles) * (Tiles::tile_score_bytes + Tiles::tile_offset_bytes);
  // As many slots as teams fit the GPU (min_blocks per multiprocessor). Fewer, so that the
  // scores would stay in L2, was slower (H100, 64K forward: 1.98 / 2.19 / 3.08 ms at 3 / 2 / 1
  // teams per multiprocessor against 1.91 ms at 4).
  const long resident = static_cast<long>(space.cuda_device_prop().multiProcessorCount) *
                        static_cast<long>(Tiles::min_blocks);
  long most_teams = 1;
  for (const auto& set : sets)
    most_teams = std::max(most_teams, set.teams());
  const long budget_slots = static_cast<long>(workspace_bytes / slot_bytes);
  ScoreSlots ws;
  ws.tiles = tiles;
  ws.slots = static_cast<int>(std::max(1L, std::min({resident, most_teams, budget_slots})));
  const std::size_t score_pieces =
      static_cast<std::size_t>(ws.slots) * tiles * (Tiles::tile_score_bytes / 16);
  const std::size_t offset_count = static_cast<std::size_t>(ws.slots) * tiles * Tiles::query_rows;
  ws.buffer = scratch_view<Kokkos::View<uint4*, Kokkos::CudaSpace>>(
      space, score_workspace_label, false, score_pieces + (offset_count * sizeof(float) + 15) / 16);
  ws.scores = decltype(ws.scores)(ws.buffer.data(), score_pieces);
  ws.offsets =
      decltype(ws.offsets)(reinterpret_cast<float*>(ws.buffer.data() + score_pieces), offset_count);
  const bool pieces = rows_in_pieces(out);
  const auto run = [&](auto dropout) {
    using Kernel = OriginalForwardKernel<D, decltype(dropout)::value, Q, K, V, OutV, LseV>;
    for (const auto& set : sets) {
      const int league = static_cast<int>(std::min<long>(ws.slots, set.teams()));
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, Kernel::min_blocks>> policy(
          space, league, 4, 32);
      policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::scratch_bytes + 16));
      Kokkos::parallel_for("dilated::original::forward_mma", policy,
                           Kernel{set, q, k, v, out, lse, with_lse, zero_unkept, pieces, ws});
    }
  };
  if (base.dropout.active()) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

}  // namespace dilated::Impl::mma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_ORIGINAL_MMA_FORWARD_HPP
