// The CUDA tensor-core backward of the Improved algorithm (half/bf16, head_dim 64 or 128): the two
// passes of ImprovedDqKernel / ImprovedDkDvKernel with every tile product on mma.sync.
// Probabilities are recomputed from the merged log-sum-exp L (FlashAttention-2):
//   P~ = output_scale exp(scale q.k - L),  dS = P~ (Z dP - D),  dP = dout . v.
//   dq pass  : 4 warps own 16 query rows each; first D = dO . out of those rows (written for
//              the dk/dv pass) where out suits the tensor cores; K/V tiles stream through two
//              cp.async stages; S = Q K^T, dP = dO V^T, dQ += dS K, all in registers.
//   dkdv pass: 4 warps (2 at head_dim 128) own 16 key rows each (K, V tile resident in shared
//              memory); query tiles (Q, dO, L, D) stream; S^T = K Q^T, dP^T = V dO^T,
//              dV += (P~Z)^T dO, dK += dS^T Q in registers (MmaBackwardTiles).
// Every dq (dk, dv) row of a branch is one warp's: no atomics.
#ifndef DILATED_IMPL_IMPROVED_MMA_BACKWARD_HPP
#define DILATED_IMPL_IMPROVED_MMA_BACKWARD_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_TensorCoreTilePolicies.hpp>
#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_MmaPrimitives.hpp>
#include <impl/Dilated_RowPieces.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace dilated::Impl::mma {

// The P~Z and dS matrices of the items of one launch of the Original algorithm's backward
// (Dilated_OriginalMmaBackward.hpp): per item two ld x ld matrices of half/bf16 (rows: kept
// query index, columns: kept key index), held as pairs; items from first_item on, one after the
// other (slot = item - first_item).
struct StoredMatrices {
  std::uint32_t* p = nullptr;
  std::uint32_t* ds = nullptr;
  long first_item = 0;
  int ld = 0;  // entries per row and rows per matrix: the longest item's, a multiple of 64
  // The pair holding entries (t, u), (t, u + 1) (u even) of slot `slot`.
  KOKKOS_INLINE_FUNCTION long pair_offset(long slot, int t, int u) const {
    return (slot * ld + t) * (ld / 2) + u / 2;
  }
};

// Dropout is a compile-time choice in both passes, as in the forward: its hashing lives only in
// the kernels that apply it.
#if defined(__CUDA_ARCH__)
// Gradient rows of a backward pass's lane from its accumulator (rows rows[r] of the pass's tile,
// those below `end`, columns n * 8 + 2 t4, +1), times `scale`: written as 4-byte pairs into
// half/bf16 rows of the storage type T (same rounding as a conversion), else element by element,
// added to what is there when `accumulate`. dq, dk and dv are all written this way.
template <int D, bool Bf16, class T, class GradV>
__device__ __forceinline__ void write_grad_rows(const GradV& grad, const float (&acc)[D / 8][4],
                                                float scale, const KeptPositions& kept, int b,
                                                int h, const int (&rows)[2], int end, int t4,
                                                bool accumulate, bool in_pieces) {
  using TG = typename GradV::value_type;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= end) continue;
    const int p = kept.position(rows[r]);
    if constexpr (std::is_same_v<TG, T>) {
      if (!accumulate && in_pieces) {
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
          store_pair<Bf16>(grad, b, p, h, n * 8 + 2 * t4, scale * acc[n][2 * r],
                           scale * acc[n][2 * r + 1]);
        continue;
      }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = n * 8 + 2 * t4 + e;
        const float x = scale * acc[n][2 * r + e];
        grad(b, p, h, c) = static_cast<TG>(accumulate ? float(grad(b, p, h, c)) + x : x);
      }
  }
}
#endif  // __CUDA_ARCH__

// Store (the Original algorithm's backward, Dilated_OriginalMmaBackward.hpp): the pass also
// writes the P~Z and dS of every tile it computes into the matrices of its item (StoredMatrices),
// for the key-side pass to read instead of recomputing them.
template <int D, bool Dropout, class QV, class KV, class VV, class GV, class OV, class LseV,
          class DeltaV, class GradV, bool Store = false>
struct DqKernel {
  using Tiles = MmaBackwardTiles<D>;
  // 3 teams (12 warps) per multiprocessor at d = 64: caps registers at 168 per thread.
  static constexpr unsigned min_blocks = Tiles::dq_min_blocks;
  using T = typename QV::non_const_value_type;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  BranchSet<TiledLaunch<Kokkos::CudaSpace, float>> set;  // see backward_branches
  QV q;
  KV k;
  VV v;
  GV dout;
  OV out;  // read only when write_delta
  LseV lse;
  DeltaV delta;
  GradV dq;
  bool accumulate = false;
  bool in_pieces = false;  // rows_in_pieces(dq): rows written as 4-byte pairs
  // D_t = (dout . out) * delta_scale computed here for the team's rows and written to `delta`
  // for the dk/dv pass (no separate pass over every row); else read from `delta`.
  bool write_delta = false;
  float delta_scale = 1.f;
  StoredMatrices stored;  // Store only

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(__CUDA_ARCH__)
    const int rank = team.league_rank();
    const int which = set.find(rank);
    // Scale, mask and dropout are the same for every launch of a set (backward_branches checks),
    // so they are read from launch 0 at fixed offsets: with launches[which] the hot loops spent
    // registers on the dynamic offset (and the dk/dv pass spilled).
    const auto& br = set.launches[0].branch;
    const int branch_index = set.launches[which].branch.plan.branch;
    const long in_launch = rank - set.first_team[which];
    const auto tile = set.launches[which].tile_at(
        in_launch + (Store ? stored.first_item * set.launches[which].tiles : 0L), Tiles::rows);
    if (tile.count == 0) return;
    constexpr int BC = Tiles::dq_key_rows, LD = Tiles::ld;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count, t0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;
    using Half = std::uint16_t;
    Half* smem =
        aligned_scratch(team, Store ? Tiles::dq_store_scratch_bytes : Tiles::dq_scratch_bytes);
    // Store: this warp's staging of its 16 rows x BC keys of P~Z, then of dS (rows of
    // Tiles::store_ld halves), after the K/V stages.
    Half* staged = smem + Tiles::dq_scratch_bytes / 2 + warp * 2 * 16 * Tiles::store_ld;
    const auto K_stage = [&](int s) { return smem + 2 * s * BC * LD; };
    const auto V_stage = [&](int s) { return smem + (2 * s + 1) * BC * LD; };

    // Q and dO tiles first (through both stages), into registers, then the K/V pipeline.
    const TileLoader<D, LD, Tiles::rows> q_loader(q, b, h, kept, tid),
        g_loader(dout, b, h, kept, tid);
    const TileLoader<D, LD, BC> k_loader(k, b, h, kept, tid), v_loader(v, b, h, kept, tid);
    Half* Qs = smem;
    Half* Gs = smem + Tiles::tile_halves;
    q_loader.load(t0, rows, Qs);
    g_loader.load(t0, rows, Gs);
    commit();
    wait_groups<0>();
    __syncthreads();
    // This lane's ldmatrix address in a 64-row tile, for the A fragments of the warp's 16 rows
    // at k-step kk (the same for Q, dO and out, so their registers pair element by element).
    const int a_offset = (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8;
    std::uint32_t qf[D / 16][4], gf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      ldmatrix_x4(qf[kk], Qs + a_offset + kk * 16);
      ldmatrix_x4(gf[kk], Gs + a_offset + kk * 16);
    }
    __syncthreads();
    // D_t of this warp's rows: out's tile through the Q stage, in dO's fragment layout (register
    // i holds row g for even i, g + 8 for odd i), each quad summing one row.
    float d_part[2] = {0.f, 0.f};
    if (write_delta) {
      TileLoader<D, LD, Tiles::rows>(out, b, h, kept, tid).load(t0, rows, Qs);
      commit();
      wait_groups<0>();
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t of[4];
        ldmatrix_x4(of, Qs + a_offset + kk * 16);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float x[2], y[2];
          unpack2<bf16>(of[i], x);
          unpack2<bf16>(gf[kk][i], y);
          d_part[i & 1] = fmaf(x[0], y[0], fmaf(x[1], y[1], d_part[i & 1]));
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        d_part[r] += __shfl_xor_sync(0xffffffff, d_part[r], 1);
        d_part[r] += __shfl_xor_sync(0xffffffff, d_part[r], 2);
      }
      __syncthreads();  // the K/V stages overwrite the tile next
    }

    constexpr float log2e = 1.4426950408889634f;
    const float scale_log2 = static_cast<float>(br.scale) * log2e;
    const float log2_os = log2f(static_cast<float>(br.output_scale));
    const int my_t[2] = {t0 + warp * 16 + g, t0 + warp * 16 + g + 8};
    float L2[2], Dt[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool valid = my_t[r] < t0 + rows;
      const int pt = kept.position(valid ? my_t[r] : t0);
      // output_scale folds into the exponent: os 2^(x - L2) = 2^(x - (L2 - log2 os)).
      L2[r] = (valid ? static_cast<float>(lse(b, pt, h)) * log2e : 0.f) - log2_os;
      if (write_delta) {
        Dt[r] = d_part[r] * delta_scale;
        if (valid && t4 == 0) delta(b, pt, h) = Dt[r];
      } else {
        Dt[r] = valid ? static_cast<float>(delta(b, pt, h)) : 0.f;
      }
    }
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    const int key_end = br.causal ? t0 + rows : kept.count;
    const int num_tiles = (key_end + BC - 1) / BC;
    const auto load_kv = [&](int it) {
      const int u0 = it * BC, cnt = key_end - u0 < BC ? key_end - u0 : BC;
      k_loader.load(u0, cnt, K_stage(it & 1));
      v_loader.load(u0, cnt, V_stage(it & 1));
      commit();
    };
    load_kv(0);
    // Causal: a warp skips the key tiles past its last row. Store: only those past the team's
    // last row, so that every entry of the item's matrices a keys pass reads was written (zero
    // where masked) and no stale workspace value can enter dk or dv.
    const int warp_last = Store ? t0 + rows - 1 : t0 + warp * 16 + 15;
    for (int it = 0; it < num_tiles; ++it) {
      const int u0 = it * BC;
      if (it + 1 < num_tiles) {
        load_kv(it + 1);
        wait_groups<1>();
      } else {
        wait_groups<0>();
      }
      __syncthreads();
      if (!(br.causal && u0 > warp_last) && warp * 16 < rows) {
        const Half* Ks = K_stage(it & 1);
        const Half* Vs = V_stage(it & 1);
        float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            s[j][e] = dp[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
          for (int j = 0; j < BC / 8; j += 2) {
            const int mi = lane / 8;
            const int key = j * 8 + (mi / 2) * 8 + lane % 8, c = kk * 16 + (mi % 2) * 8;
            std::uint32_t kf[4], vf[4];
            ldmatrix_x4(kf, Ks + key * LD + c);
            ldmatrix_x4(vf, Vs + key * LD + c);
            mma16816<bf16>(s[j], qf[kk], kf[0], kf[1]);
            mma16816<bf16>(s[j + 1], qf[kk], kf[2], kf[3]);
            mma16816<bf16>(dp[j], gf[kk], vf[0], vf[1]);
            mma16816<bf16>(dp[j + 1], gf[kk], vf[2], vf[3]);
          }
        }
        // dS in place of s.
        const bool masked = u0 + BC > key_end || (br.causal && u0 + BC - 1 > t0 + warp * 16);
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float pz[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int e = 2 * r + c, u = u0 + j * 8 + 2 * t4 + c;
              // Rows past the tile are never written: only keys past the end and (causal)
              // keys after the row need the mask, and only in tiles that reach them.
              const bool visible = !masked || (u < key_end && !(br.causal && u > my_t[r]));
              float ds = 0.f;
              pz[c] = 0.f;
              if (visible) {
                const float p = fast_exp2(fmaf(s[j][e], scale_log2, -L2[r]));
                float z = 1.f;
                if constexpr (Dropout)
                  z = static_cast<float>(br.dropout.factor(
                      branch_index, b, h, kept.position(my_t[r]), kept.position(u)));
                ds = p * (z * dp[j][e] - Dt[r]);
                pz[c] = p * z;
              }
              s[j][e] = ds;
            }
            if constexpr (Store) {
              // Row g + 8 r, keys 8 j + 2 t4, +1 of the warp's staged tiles, as the products
              // round.
              auto* row = reinterpret_cast<std::uint32_t*>(staged + (g + 8 * r) * Tiles::store_ld);
              row[4 * j + t4] = pack2<bf16>(pz[0], pz[1]);
              row[8 * Tiles::store_ld + 4 * j + t4] = pack2<bf16>(s[j][2 * r], s[j][2 * r + 1]);
            }
          }
        if constexpr (Store) {
          // The staged tiles to the item's matrices in 16-byte pieces: each store instruction
          // writes whole rows (BC keys, 64 bytes), where the fragments' own 4-byte pairs would
          // write 16 bytes of 8 rows each.
          __syncwarp();
          constexpr int pieces = BC / 8;  // per row
          const long slot = in_launch / set.launches[which].tiles;
#pragma unroll
          for (int i = 0; i < 16 * pieces / 32; ++i) {
            const int piece = lane + 32 * i, row = piece / pieces, col = (piece % pieces) * 8;
            const long at = stored.pair_offset(slot, t0 + warp * 16 + row, u0 + col);
            const Half* from = staged + row * Tiles::store_ld + col;
            *reinterpret_cast<uint4*>(stored.p + at) = *reinterpret_cast<const uint4*>(from);
            *reinterpret_cast<uint4*>(stored.ds + at) =
                *reinterpret_cast<const uint4*>(from + 16 * Tiles::store_ld);
          }
          __syncwarp();  // the staging is rewritten by the next tile
        }
        // dQ += dS K: dS in the A layout, K as the B operand (k = keys): transposed loads.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
          const std::uint32_t af[4] = {pack2<bf16>(s[2 * kk][0], s[2 * kk][1]),
                                       pack2<bf16>(s[2 * kk][2], s[2 * kk][3]),
                                       pack2<bf16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                       pack2<bf16>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
          for (int n = 0; n < D / 8; n += 2) {
            std::uint32_t kf[4];
            const int mi = lane / 8;
            const int key = kk * 16 + (mi % 2) * 8 + lane % 8, c = n * 8 + (mi / 2) * 8;
            ldmatrix_x4_trans(kf, Ks + key * LD + c);
            mma16816<bf16>(acc[n], af, kf[0], kf[1]);
            mma16816<bf16>(acc[n + 1], af, kf[2], kf[3]);
          }
        }
      }
      __syncthreads();
    }
    write_grad_rows<D, bf16, T>(dq, acc, static_cast<float>(br.scale), kept, b, h, my_t, t0 + rows,
                                t4, accumulate, in_pieces);
#else
    (void)team;
#endif
  }
};

#if defined(__CUDA_ARCH__)
// dV += (P~Z)^T dO and dK += dS^T Q for the 16 queries of k-step kk of a key-side pass: pa and
// da are the A fragments of (P~Z)^T and dS^T (the warp's 16 keys), the dO and Q tiles (query
// rows of LD halves) the B operands, transposed by ldmatrix.
template <int D, int LD, bool Bf16>
__device__ __forceinline__ void key_products(const std::uint32_t (&pa)[4],
                                             const std::uint32_t (&da)[4], const std::uint16_t* Gs,
                                             const std::uint16_t* Qs, int kk, int lane,
                                             float (&dv_acc)[D / 8][4], float (&dk_acc)[D / 8][4]) {
  const int mi = lane / 8;
#pragma unroll
  for (int n = 0; n < D / 8; n += 2) {
    const int row = kk * 16 + (mi % 2) * 8 + lane % 8, c = n * 8 + (mi / 2) * 8;
    std::uint32_t gf[4], qf[4];
    ldmatrix_x4_trans(gf, Gs + row * LD + c);
    ldmatrix_x4_trans(qf, Qs + row * LD + c);
    mma16816<Bf16>(dv_acc[n], pa, gf[0], gf[1]);
    mma16816<Bf16>(dv_acc[n + 1], pa, gf[2], gf[3]);
    mma16816<Bf16>(dk_acc[n], da, qf[0], qf[1]);
    mma16816<Bf16>(dk_acc[n + 1], da, qf[2], qf[3]);
  }
}

#endif  // __CUDA_ARCH__

template <int D, bool Dropout, class QV, class KV, class VV, class GV, class LseV, class DeltaV,
          class DKV, class DVV>
struct DkDvKernel {
  using Tiles = MmaBackwardTiles<D>;
  static constexpr unsigned min_blocks = Tiles::dkdv_min_blocks;
  static constexpr int warps = Tiles::key_warps;
  using T = typename QV::non_const_value_type;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  BranchSet<TiledLaunch<Kokkos::CudaSpace, float>> set;  // see backward_branches
  QV q;
  KV k;
  VV v;
  GV dout;
  LseV lse;
  DeltaV delta;
  DKV dk;
  DVV dv;
  bool accumulate = false;
  bool in_pieces = false;  // rows_in_pieces(dk) and (dv): rows written as 4-byte pairs

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(__CUDA_ARCH__)
    const int rank = team.league_rank();
    const int which = set.find(rank);
    // Scale, mask and dropout are the same for every launch of a set (backward_branches checks),
    // so they are read from launch 0 at fixed offsets: with launches[which] the hot loops spent
    // registers on the dynamic offset (and the dk/dv pass spilled).
    const auto& br = set.launches[0].branch;
    const int branch_index = set.launches[which].branch.plan.branch;
    const auto tile = set.launches[which].tile_at(rank - static_cast<int>(set.first_team[which]),
                                                  Tiles::key_rows);
    if (tile.count == 0) return;
    // KR keys per team (16 per warp), query tiles of BR rows.
    constexpr int KR = Tiles::key_rows, BR = Tiles::key_pass_queries, LD = Tiles::ld;
    const int b = tile.item.b, h = tile.item.head, cols = tile.count, u0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int m = kept.count;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;
    using Half = std::uint16_t;
    Half* Ks = aligned_scratch(team, Tiles::dkdv_scratch_bytes);
    Half* Vs = Ks + KR * LD;
    Half* Qs = Vs + KR * LD;
    Half* Gs = Qs + BR * LD;
    float* L2s = reinterpret_cast<float*>(Gs + BR * LD);
    float* Ds = L2s + BR;

    const TileLoader<D, LD, KR, false, 32 * warps> k_loader(k, b, h, kept, tid),
        v_loader(v, b, h, kept, tid);
    const TileLoader<D, LD, BR, false, 32 * warps> q_loader(q, b, h, kept, tid),
        g_loader(dout, b, h, kept, tid);
    k_loader.load(u0, cols, Ks);
    v_loader.load(u0, cols, Vs);
    commit();

    constexpr float log2e = 1.4426950408889634f;
    const float scale_log2 = static_cast<float>(br.scale) * log2e;
    const float log2_os = log2f(static_cast<float>(br.output_scale));
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
      commit();
      if (tid < BR) {
        const bool valid = tid < rows;
        const int pt = kept.position(valid ? t0 + tid : t0);
        L2s[tid] = (valid ? static_cast<float>(lse(b, pt, h)) * log2e : 0.f) - log2_os;
        Ds[tid] = valid ? static_cast<float>(delta(b, pt, h)) : 0.f;
      }
      wait_groups<0>();
      __syncthreads();
      // Causal: a warp whose keys all follow the tile's last query has nothing to do.
      if (warp * 16 >= cols || (br.causal && warp_first > t0 + rows - 1)) continue;
      float st[BR / 8][4], dpt[BR / 8][4];  // S^T, dP^T: rows = my keys, columns = queries
#pragma unroll
      for (int j = 0; j < BR / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          st[j][e] = dpt[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t kf[4], vf[4];
        const int r = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8, c = kk * 16 + (lane / 16) * 8;
        ldmatrix_x4(kf, Ks + r * LD + c);
        ldmatrix_x4(vf, Vs + r * LD + c);
#pragma unroll
        for (int j = 0; j < BR / 8; j += 2) {
          const int mi = lane / 8;
          const int row = j * 8 + (mi / 2) * 8 + lane % 8, cc = kk * 16 + (mi % 2) * 8;
          std::uint32_t qf[4], gf[4];
          ldmatrix_x4(qf, Qs + row * LD + cc);
          ldmatrix_x4(gf, Gs + row * LD + cc);
          mma16816<bf16>(st[j], kf, qf[0], qf[1]);
          mma16816<bf16>(st[j + 1], kf, qf[2], qf[3]);
          mma16816<bf16>(dpt[j], vf, gf[0], gf[1]);
          mma16816<bf16>(dpt[j + 1], vf, gf[2], gf[3]);
        }
      }
      // P~ Z into st, dS into dpt.
      const bool masked = br.causal && warp_first + 15 > t0;
#pragma unroll
      for (int j = 0; j < BR / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = j * 8 + 2 * t4 + (e & 1), tq = t0 + i, r = e / 2;
          // Queries past the tile have zero q, dout, L and D: they add nothing to dk or dv.
          // Keys past the tile are never written. Only the causal mask remains.
          const bool visible = !masked || !(my_u[r] > tq);
          float pz = 0.f, ds = 0.f;
          if (visible) {
            const float p = fast_exp2(fmaf(st[j][e], scale_log2, -L2s[i]));
            float z = 1.f;
            if constexpr (Dropout)
              z = static_cast<float>(
                  br.dropout.factor(branch_index, b, h, kept.position(tq), kept.position(my_u[r])));
            pz = p * z;
            ds = p * (z * dpt[j][e] - Ds[i]);
          }
          st[j][e] = pz;
          dpt[j][e] = ds;
        }
        // dV += (P~Z)^T dO, dK += dS^T Q: A from the accumulators, B (k = queries) transposed.
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) {
        const std::uint32_t pa[4] = {pack2<bf16>(st[2 * kk][0], st[2 * kk][1]),
                                     pack2<bf16>(st[2 * kk][2], st[2 * kk][3]),
                                     pack2<bf16>(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                                     pack2<bf16>(st[2 * kk + 1][2], st[2 * kk + 1][3])};
        const std::uint32_t da[4] = {pack2<bf16>(dpt[2 * kk][0], dpt[2 * kk][1]),
                                     pack2<bf16>(dpt[2 * kk][2], dpt[2 * kk][3]),
                                     pack2<bf16>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                                     pack2<bf16>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
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

// The dq and dk/dv passes of the branches in `launches`: for grouped semantics (`together`:
// disjoint heads) all branches share one dq launch and one dk/dv launch, as in the forward;
// longnet branches run one after the other, each adding into the gradients. One launch per pass
// fills the GPU where a branch alone ends in a partial wave, and halves the launches: Kokkos
// waits on the host for each of these kernels (their functors go through constant memory) before
// it launches the next. With `out` (non-null) the dq pass writes D_t = (dout . out) /
// output_scale of its rows into `delta` first (the dk/dv pass reads the same rows); without it
// `delta` holds D_t already.
template <int D, class Q, class K, class V, class G, class O, class LseV, class DeltaV, class DQ,
          class DK, class DV>
void backward_branches(const Kokkos::Cuda& space,
                       std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches, bool together,
                       const Q& q, const K& k, const V& v, const G& dout, const O* out,
                       const LseV& lse, const DeltaV& delta, const DQ& dq, const DK& dk,
                       const DV& dv, bool accumulate) {
  using Tiles = MmaBackwardTiles<D>;
  for (const auto& launch : launches) {
    const auto& a = launch.branch;
    const auto& z = launches.front().branch;
    if (a.scale != z.scale || a.output_scale != z.output_scale || a.causal != z.causal ||
        a.dropout.threshold != z.dropout.threshold || a.dropout.seed != z.dropout.seed)
      throw std::logic_error(
          "dilated::Impl::mma::backward_branches: launches differ in more "
          "than their plans");
  }
  // The dk/dv pass tiles keys by its own team height (32 at d = 128): its own launches.
  auto key_launches = launches;
  for (auto& launch : launches)
    launch.tile_by(Tiles::rows, Tiles::rows, Tiles::rows);
  for (auto& launch : key_launches)
    launch.tile_by(Tiles::key_pass_queries, Tiles::key_rows, Tiles::key_rows);
  const bool dq_pieces = rows_in_pieces(dq), dkdv_pieces = rows_in_pieces(dk) && rows_in_pieces(dv);
  const float delta_scale = static_cast<float>(1.0 / launches.front().branch.output_scale);
  const auto run = [&](auto dropout) {
    constexpr bool with_dropout = decltype(dropout)::value;
    using Dq = DqKernel<D, with_dropout, Q, K, V, G, O, LseV, DeltaV, DQ>;
    using DkDv = DkDvKernel<D, with_dropout, Q, K, V, G, LseV, DeltaV, DK, DV>;
    // Both groupings depend only on the launches' order and count: set i of one holds the
    // branches of set i of the other, and its dq pass writes the D_t its dk/dv pass reads.
    const auto dq_sets = branch_sets(launches, together);
    const auto key_sets = branch_sets(key_launches, together);
    for (std::size_t i = 0; i < dq_sets.size(); ++i) {
      const auto& set = dq_sets[i];
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, Dq::min_blocks>> dq_policy(
          space, static_cast<int>(set.teams()), 4, 32);
      dq_policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::dq_scratch_bytes + 16));
      Kokkos::parallel_for("dilated::improved::dq_mma", dq_policy,
                           Dq{set, q, k, v, dout, out ? *out : O(), lse, delta, dq, accumulate,
                              dq_pieces, out != nullptr, delta_scale});
      constexpr int key_threads = 32 * DkDv::warps;
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<key_threads, DkDv::min_blocks>>
          dkdv_policy(space, static_cast<int>(key_sets[i].teams()), DkDv::warps, 32);
      dkdv_policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::dkdv_scratch_bytes + 16));
      Kokkos::parallel_for(
          "dilated::improved::dkdv_mma", dkdv_policy,
          DkDv{key_sets[i], q, k, v, dout, lse, delta, dk, dv, accumulate, dkdv_pieces});
    }
  };
  if (launches.front().branch.dropout.active()) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

}  // namespace dilated::Impl::mma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_IMPROVED_MMA_BACKWARD_HPP
