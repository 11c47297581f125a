// The CUDA tensor-core forward of the Improved algorithm: the same team kernel as
// ImprovedForwardKernel (a team owns query rows of one (batch, segment, head) of a branch,
// streams key/value tiles through team scratch, online softmax, writes rows and log-sum-exp),
// with the two tile products done by mma.sync (m16n8k16, half or bf16 in, float accumulation)
// and the tiles moved by cp.async two stages deep. Four warps own 16 query rows each; scores
// and the output accumulator stay in registers (FlashAttention-2's layout), so shared memory
// only holds the K and V tiles (and, before the first step, the Q tile).
//
// Used for half/bf16 storage with head_dim 64 or 128, contiguous 16-byte aligned rows
// (stride(3) == 1, other strides multiples of 8). Everything else takes the generic kernel.
#ifndef DILATED_IMPL_IMPROVED_MMA_FORWARD_HPP
#define DILATED_IMPL_IMPROVED_MMA_FORWARD_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_TilePolicies.hpp>
#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_MmaPrimitives.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace dilated::Impl::mma {

// Per head_dim: key tile rows (two stages of K and V, padded rows, must fit the level-0
// scratch Kokkos grants a team: about 40 KiB).
template <int D>
struct MmaTiles {
  static constexpr int query_rows = 64;  // 4 warps x 16
  static constexpr int key_rows = D <= 64 ? 64 : 32;
  static constexpr int ld = D + 8;  // halves per scratch row: 16 bytes of padding, no conflicts
  static constexpr int stage_halves = 2 * key_rows * ld;  // K and V of one stage
  static constexpr int scratch_bytes = 2 * stage_halves * 2;
  static_assert(query_rows * ld <= stage_halves, "the Q tile is staged in the second stage");
};

// The forward team kernel. OutV/LseV as in ImprovedForwardKernel (grouped: the caller's views,
// written; longnet: merged into).
template <int D, class QV, class KV, class VV, class OutV, class LseV>
struct ForwardKernel {
  // 3 teams (12 warps) per multiprocessor: caps registers at 168 per thread (at 4 teams the
  // 128-register cap spilled: ncu/SASS on the H100 showed local loads in the key loop).
  static constexpr unsigned min_blocks = 3;
  using T = typename QV::non_const_value_type;
  using Acc = float;
  using Space = Kokkos::CudaSpace;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  using Tiles = MmaTiles<D>;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  BranchSet<TiledLaunch<Space, Acc>> set;  // query_rows = 64, tiles per item
  QV q;
  KV k;
  VV v;
  OutV out;
  LseV lse;
  bool with_lse = true;

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(__CUDA_ARCH__)
    const long rank = team.league_rank();
    const int which = set.find(rank);
    const auto& br = set.launches[which].branch;
    const auto tile = set.launches[which].tile_at(rank - set.first_team[which], Tiles::query_rows);
    if (tile.count == 0) return;
    constexpr int BC = Tiles::key_rows, LD = Tiles::ld;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count, t0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;  // mma fragment coordinates
    using Half = std::uint16_t;
    Half* smem = aligned_scratch(team, Tiles::scratch_bytes);
    const auto K_stage = [&](int s) { return smem + s * Tiles::stage_halves; };
    const auto V_stage = [&](int s) { return smem + s * Tiles::stage_halves + BC * LD; };
    Half* Qs = K_stage(1);  // the Q tile borrows stage 1 until its fragments are in registers

    const TileLoader<D, LD, Tiles::query_rows> q_loader(q, b, h, kept, tid);
    const TileLoader<D, LD, BC> k_loader(k, b, h, kept, tid), v_loader(v, b, h, kept, tid);
    const int key_end = br.causal ? t0 + rows : kept.count;
    const int num_tiles = (key_end + BC - 1) / BC;
    q_loader.load(t0, rows, Qs);
    k_loader.load(0, key_end < BC ? key_end : BC, K_stage(0));
    v_loader.load(0, key_end < BC ? key_end : BC, V_stage(0));
    commit();
    wait_groups<0>();
    __syncthreads();
    // Q fragments of this warp's 16 rows: D/16 k-steps of 4 registers.
    std::uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int r = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8, c = kk * 16 + (lane / 16) * 8;
      ldmatrix_x4(qf[kk], Qs + r * LD + c);
    }
    __syncthreads();  // stage 1 is free for the K/V pipeline
    // This lane's ldmatrix offsets: K as B of S = Q K^T, V (transposed) as B of O = P V.
    const int mi = lane / 8;
    const int k_off = ((mi / 2) * 8 + lane % 8) * LD + (mi % 2) * 8;
    const int v_off = ((mi % 2) * 8 + lane % 8) * LD + (mi / 2) * 8;

    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    // Scores stay unscaled (scale > 0 on this path): the scale folds into the exponent's FFMA.
    constexpr float log2e = 1.4426950408889634f;
    const float scale_log2 = static_cast<float>(br.scale) * log2e;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
    const int my_t[2] = {t0 + warp * 16 + g, t0 + warp * 16 + g + 8};  // this lane's rows
    const int warp_last = t0 + warp * 16 + 15;

    for (int it = 0; it < num_tiles; ++it) {
      const int u0 = it * BC;
      if (it + 1 < num_tiles) {
        const int next = u0 + BC, cnt = key_end - next < BC ? key_end - next : BC;
        k_loader.load(next, cnt, K_stage((it + 1) & 1));
        v_loader.load(next, cnt, V_stage((it + 1) & 1));
        commit();
        wait_groups<1>();
      } else {
        wait_groups<0>();
      }
      __syncthreads();
      // Causal: a warp whose rows all precede the tile has nothing to do in it.
      if (!(br.causal && u0 > warp_last) && warp * 16 < rows) {
        const Half* Ks = K_stage(it & 1) + k_off;
        const Half* Vs = V_stage(it & 1) + v_off;
        float s[BC / 8][4];
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
          s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
          for (int j = 0; j < BC / 8; j += 2) {
            std::uint32_t kf[4];
            ldmatrix_x4(kf, Ks + j * 8 * LD + kk * 16);
            mma16816<bf16>(s[j], qf[kk], kf[0], kf[1]);
            mma16816<bf16>(s[j + 1], qf[kk], kf[2], kf[3]);
          }
        }
        // Online softmax over this lane's two rows (a quad of lanes shares each row). Only
        // tiles that reach past the keys or (causal) past the warp's first row need a mask.
        // Reductions run as trees over the lane's columns, not as one dependent chain: with
        // three warps per scheduler a 16-long chain of 4-cycle operations stalls the issue.
        const bool masked = u0 + BC > key_end || (br.causal && u0 + BC - 1 > t0 + warp * 16);
        if (masked) {
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int u = u0 + j * 8 + 2 * t4 + (e & 1);
              if (u >= key_end || (br.causal && u > my_t[e / 2])) s[j][e] = -INFINITY;
            }
        }
        float tile_max[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float m[BC / 8];
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
            m[j] = fmaxf(s[j][2 * r], s[j][2 * r + 1]);
#pragma unroll
          for (int width = BC / 16; width >= 1; width /= 2)
#pragma unroll
            for (int j = 0; j < width; ++j)
              m[j] = fmaxf(m[j], m[j + width]);
          tile_max[r] = m[0];
        }
        float fix[2], sub[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 1));
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 2));
          const float new_max = fmaxf(row_max[r], tile_max[r]);
          // Rows fully hidden so far keep max -inf: no exp2(-inf - -inf); p = 0 from s = -inf.
          fix[r] = row_max[r] == -INFINITY ? 0.f : fast_exp2((row_max[r] - new_max) * scale_log2);
          sub[r] = new_max == -INFINITY ? 0.f : new_max * scale_log2;
          row_max[r] = new_max;
        }
        float tile_sum[2];
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            s[j][e] = fast_exp2(fmaf(s[j][e], scale_log2, -sub[e / 2]));
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float a[BC / 8];
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
            a[j] = s[j][2 * r] + s[j][2 * r + 1];
#pragma unroll
          for (int width = BC / 16; width >= 1; width /= 2)
#pragma unroll
            for (int j = 0; j < width; ++j)
              a[j] += a[j + width];
          tile_sum[r] = a[0];
        }
        if (br.dropout.active()) {
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int u = u0 + j * 8 + 2 * t4 + (e & 1), r = e / 2;
              if (s[j][e] != 0.f && my_t[r] < t0 + rows) {
                s[j][e] *= static_cast<float>(br.dropout.factor(
                    br.plan.branch, b, h, kept.position(my_t[r]), kept.position(u)));
              }
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r)
          row_sum[r] = row_sum[r] * fix[r] + tile_sum[r];  // quad-partial; reduced at the end
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[n][0] *= fix[0];
          o[n][1] *= fix[0];
          o[n][2] *= fix[1];
          o[n][3] *= fix[1];
        }
        // O += P V: P's accumulator layout is the A operand's (FlashAttention-2).
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
          const std::uint32_t pf[4] = {pack2<bf16>(s[2 * kk][0], s[2 * kk][1]),
                                       pack2<bf16>(s[2 * kk][2], s[2 * kk][3]),
                                       pack2<bf16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                       pack2<bf16>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
          for (int n = 0; n < D / 8; n += 2) {
            std::uint32_t vf[4];
            ldmatrix_x4_trans(vf, Vs + kk * 16 * LD + n * 8);
            mma16816<bf16>(o[n], pf, vf[0], vf[1]);
            mma16816<bf16>(o[n + 1], pf, vf[2], vf[3]);
          }
        }
      }
      __syncthreads();  // the stage read here is refilled in the next iteration
    }

    // Finish: full row sums across the quad, then rows, log-sum-exp and the longnet merge.
    constexpr float ln2 = 0.6931471805599453f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_sum[r] += __shfl_xor_sync(0xffffffff, row_sum[r], 1);
      row_sum[r] += __shfl_xor_sync(0xffffffff, row_sum[r], 2);
    }
    float previous[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (br.longnet && my_t[r] < t0 + rows)
        previous[r] = static_cast<float>(lse(b, kept.position(my_t[r]), h));
    }
    __syncwarp();  // every lane of the quad has read the old lse before one lane replaces it
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (my_t[r] >= t0 + rows) continue;
      const int pt = kept.position(my_t[r]);
      const float lse_r = (row_max[r] * scale_log2 + log2f(row_sum[r])) * ln2;
      float keep_old = 0.f, weight = static_cast<float>(br.output_scale), merged = lse_r;
      if (br.longnet) {
        const auto mw = merge_lse(previous[r], lse_r);
        merged = mw.merged;
        keep_old = mw.keep_old;
        weight = mw.weight;
      }
      const float w = weight / row_sum[r];
      using TO = typename OutV::value_type;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = n * 8 + 2 * t4 + e;
          const float old = keep_old != 0.f ? keep_old * float(out(b, pt, h, c)) : 0.f;
          out(b, pt, h, c) = static_cast<TO>(old + w * o[n][2 * r + e]);
        }
      }
      if (with_lse && t4 == 0) lse(b, pt, h) = static_cast<typename LseV::value_type>(merged);
    }
#else
    (void)team;
#endif
  }
};

// The forward of every branch: all in one launch for grouped semantics (disjoint heads),
// branch after branch for longnet (each merges into what the previous ones left).
template <int D, class Q, class K, class V, class OutV, class LseV>
void forward_branches(const Kokkos::Cuda& space, const Geometry& g,
                      const BranchLaunch<Kokkos::CudaSpace, float>& base, const Q& q, const K& k,
                      const V& v, const OutV& out, const LseV& lse, bool with_lse) {
  using Tiles = MmaTiles<D>;
  using Kernel = ForwardKernel<D, Q, K, V, OutV, LseV>;
  std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches;
  for (int i = 0; i < g.num_branches(); ++i) {
    auto launch = tiled_launch<Kokkos::Cuda>(g, i, base, q.extent(0));
    launch.query_rows = Tiles::query_rows;
    launch.key_rows = Tiles::key_rows;
    launch.tiles = (launch.branch.plan.max_kept + Tiles::query_rows - 1) / Tiles::query_rows;
    launches.push_back(launch);
  }
  for (const auto& set : branch_sets(launches, !base.longnet)) {
    Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, Kernel::min_blocks>> policy(
        space, static_cast<int>(set.teams()), 4, 32);
    policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::scratch_bytes + 16));
    Kokkos::parallel_for("dilated::improved::forward_mma", policy,
                         Kernel{set, q, k, v, out, lse, with_lse});
  }
}

}  // namespace dilated::Impl::mma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_IMPROVED_MMA_FORWARD_HPP
