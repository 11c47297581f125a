// The CUDA tensor-core forward of the Improved algorithm: the same team kernel as
// ImprovedForwardKernel (a team owns query rows of one (batch, segment, head) of a branch,
// streams key/value tiles through team scratch, online softmax, writes rows and log-sum-exp),
// with the two tile products done by mma.sync (m16n8k16, half or bf16 in, float accumulation)
// and the tiles moved by cp.async two stages deep. Four warps own 16 or 32 query rows each (one
// or two m-tiles, MmaTiles); scores and the output accumulator stay in registers
// (FlashAttention-2's layout), so shared memory only holds the K and V tiles (and, before the
// first step, the Q tile).
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
#include <impl/Dilated_RowPieces.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace dilated::Impl::mma {

// Per head_dim: query rows per warp (16-row m-tiles), key tile rows and teams per
// multiprocessor; two stages of K and V tiles must fit the level-0 scratch Kokkos grants a team
// (48 KiB less its reserve, about 40 KiB). d = 64 gives each warp two m-tiles (32 rows, 128 per
// team) and 64-key tiles: every K and V fragment read from shared memory feeds two mma instead of
// one and the per-tile overhead is spread over twice the work; the registers this needs (two
// score and two output tiles, Q's fragments) allow 2 teams (255 registers) per multiprocessor.
// d = 128 keeps one m-tile per warp and 32-key tiles at 3 teams (168 registers; its output
// tile alone is 64 registers). Q's fragments live in registers, its tile passes through the
// second stage first. (Measured alternatives, slower: docs/performance-notes.md.)
template <int D>
struct MmaTiles {
  static constexpr int m_tiles = D <= 64 ? 2 : 1;  // 16-row m-tiles per warp
  static constexpr int query_rows = 4 * 16 * m_tiles;
  static constexpr int key_rows = D <= 64 ? 64 : 32;
  static constexpr int ld = D + 8;  // halves per scratch row: 16 bytes of padding, no conflicts
  static constexpr int stage_halves = 2 * key_rows * ld;  // K and V of one stage
  static constexpr int scratch_bytes = 2 * stage_halves * 2;
  static constexpr unsigned min_blocks = m_tiles == 2 ? 2 : 3;
  static_assert(query_rows * ld <= stage_halves, "the Q tile is staged in the second stage");
  static_assert(scratch_bytes <= 40 * 1024, "beyond Kokkos' level-0 team scratch");
};

#if defined(__CUDA_ARCH__)
// s = a b for one 16x8x16 tile (no accumulator to clear first).
template <bool Bf16>
__device__ __forceinline__ void mma16816_first(float (&c)[4], const std::uint32_t (&a)[4],
                                               std::uint32_t b0, std::uint32_t b1) {
  c[0] = c[1] = c[2] = c[3] = 0.f;
  mma16816<Bf16>(c, a, b0, b1);
}
#endif

// The forward team kernel. OutV/LseV as in ImprovedForwardKernel (grouped: the caller's views,
// written; longnet: merged into).
// Dropout is a compile-time choice: its hashing lives only in the kernel that applies it, so
// the common kernel's register allocation does not pay for it.
template <int D, bool Dropout, class QV, class KV, class VV, class OutV, class LseV>
struct ForwardKernel {
  using Tiles = MmaTiles<D>;
  // Teams per multiprocessor, hence the register cap: see MmaTiles.
  static constexpr unsigned min_blocks = Tiles::min_blocks;
  using T = typename QV::non_const_value_type;
  using Acc = float;
  using Space = Kokkos::CudaSpace;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  BranchSet<TiledLaunch<Space, Acc>> set;  // query_rows = Tiles::query_rows, tiles per item
  QV q;
  KV k;
  VV v;
  OutV out;
  LseV lse;
  bool with_lse = true;
  // grouped: the rows a branch with dilation > 1 does not keep get 0 (and lse -inf) here, in
  // the epilogue, instead of in a separate pass over the output (~55 us at 64K on the H100).
  bool zero_unkept = false;
  bool out_in_pieces = false;  // rows_in_pieces(out): zero rows 16 bytes at a time

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(__CUDA_ARCH__)
    const int rank = team.league_rank();
    const int which = set.find(rank);
    const auto& br = set.launches[which].branch;
    const auto tile = set.launches[which].tile_at(rank - static_cast<int>(set.first_team[which]),
                                                  Tiles::query_rows);
    const bool zero_gaps = zero_unkept && !br.longnet && tile.item.kept.stride > 1;
    using TO = typename OutV::value_type;
    // Row q of head h set to zero (lse -inf) by `lanes` threads, this one being `lane`.
    const auto zero_row = [&](int q, int lane_in, int lanes) {
      const int b = tile.item.b, h = tile.item.head;
      if (out_in_pieces) {
        auto* row = reinterpret_cast<uint4*>(&out(b, q, h, 0));
        for (int i = lane_in; i < D * int(sizeof(TO)) / 16; i += lanes)
          row[i] = make_uint4(0u, 0u, 0u, 0u);
      } else {
        for (int c = lane_in; c < D; c += lanes)
          out(b, q, h, c) = TO(0);
      }
      if (with_lse && lane_in == 0) lse(b, q, h) = -INFINITY;
    };
    // The rows of the team's segment before its first kept row (all of them when it keeps none):
    // zeroed by the segment's first tile, a warp per row.
    const int seg_begin = tile.item.segment * br.plan.window;
    const int seg_end = seg_begin + br.plan.window < br.n ? seg_begin + br.plan.window : br.n;
    if (zero_gaps && tile.first == 0) {
      const int lead_end = tile.item.kept.count > 0 ? tile.item.kept.first : seg_end;
      for (int q = seg_begin + team.team_rank(); q < lead_end; q += team.team_size())
        zero_row(q, threadIdx.x, 32);
    }
    if (tile.count == 0) return;
    constexpr int BC = Tiles::key_rows, LD = Tiles::ld, MT = Tiles::m_tiles, WR = 16 * MT;
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
    // Q fragments (A of S = Q K^T) of this warp's m-tile m, k-step kk, read once.
    const Half* Qw = Qs + (warp * WR + (lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8;
    std::uint32_t qf[MT][D / 16][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ldmatrix_x4(qf[m][kk], Qw + m * 16 * LD + kk * 16);
    __syncthreads();  // stage 1 is free for the K/V pipeline
    // This lane's ldmatrix offsets: K as B of S = Q K^T, V (transposed) as B of O = P V.
    const int mi = lane / 8;
    const int k_off = ((mi / 2) * 8 + lane % 8) * LD + (mi % 2) * 8;
    const int v_off = ((mi % 2) * 8 + lane % 8) * LD + (mi / 2) * 8;

    float o[MT][D / 8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.f;
    // Scores stay unscaled (scale > 0 on this path): the scale folds into the exponent's FFMA.
    constexpr float log2e = 1.4426950408889634f;
    const float scale_log2 = static_cast<float>(br.scale) * log2e;
    // Per m-tile and half (rows g and g + 8): the bias the exponents subtract (log2 units: the
    // row's running maximum of scaled scores when it was last moved, 0 before any score) and
    // the raw score above which the bias must move (-inf before any score). The bias moves only
    // when a score exceeds it by more than 2^8 (see the rescale below).
    float bias[MT][2], limit[MT][2];
    // Row sums, on the tensor cores: P times a tile of ones adds up each row of the tile's
    // probabilities (as rounded for the P V product) in every column of l; rows g and g + 8 of
    // m-tile m are l[m][0] and l[m][2].
    float l[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      bias[m][0] = bias[m][1] = 0.f;
      limit[m][0] = limit[m][1] = -INFINITY;
      l[m][0] = l[m][1] = l[m][2] = l[m][3] = 0.f;
    }
    const std::uint32_t ones = pack2<bf16>(1.f, 1.f);
    const auto my_t = [&](int m, int r) { return t0 + warp * WR + m * 16 + g + 8 * r; };
    const int warp_first = t0 + warp * WR, warp_last = warp_first + WR - 1;

    // One key tile of this warp's rows. `edge` (a compile-time flag) selects the version with
    // the key/causal mask (dropout is the kernel's own compile-time choice); the common version
    // has one branch (the rare rescale) between its first mma and its last, so ptxas can
    // interleave one m-tile's softmax with the other's mma.
    const auto step = [&](const int u0, const Half* Ks, const Half* Vs, auto edge) {
      // S = Q K^T: each K fragment feeds every m-tile.
      float s[MT][BC / 8][4];
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int j = 0; j < BC / 8; j += 2) {
          std::uint32_t kf[4];
          ldmatrix_x4(kf, Ks + j * 8 * LD + kk * 16);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            if (kk == 0) {
              mma16816_first<bf16>(s[m][j], qf[m][kk], kf[0], kf[1]);
              mma16816_first<bf16>(s[m][j + 1], qf[m][kk], kf[2], kf[3]);
            } else {
              mma16816<bf16>(s[m][j], qf[m][kk], kf[0], kf[1]);
              mma16816<bf16>(s[m][j + 1], qf[m][kk], kf[2], kf[3]);
            }
          }
        }
      }
      if constexpr (decltype(edge)::value) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int u = u0 + j * 8 + 2 * t4 + (e & 1);
              if (u >= key_end || (br.causal && u > my_t(m, e / 2))) s[m][j][e] = -INFINITY;
            }
      }
      // Online softmax with a lazily moved bias. Each lane checks its own scores against its
      // rows' limits (a tree over its columns, no shuffle). Only when some score of the warp
      // passed its limit does the warp take the rare branch: quad-wide maxima, new biases, O
      // and l rescaled. Otherwise probabilities up to 2^8 are summed as they are (no overflow in
      // half, bf16 or the float accumulators); the final division by l normalises them. Then
      // P = 2^(s scale_log2 - bias), packed in the A-operand layout of P V (p[m][j] holds row
      // g's and row g + 8's columns j * 8 + 2 t4, +1).
      float lane_max[MT][2];
      bool grow = false;
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float x[BC / 8];
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
            x[j] = fmaxf(s[m][j][2 * r], s[m][j][2 * r + 1]);
#pragma unroll
          for (int width = BC / 16; width >= 1; width /= 2)
#pragma unroll
            for (int j = 0; j < width; ++j)
              x[j] = fmaxf(x[j], x[j + width]);
          lane_max[m][r] = x[0];
          grow |= x[0] > limit[m][r];
        }
      if (__any_sync(0xffffffff, grow)) {
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          float fix[2];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float tm = fmaxf(lane_max[m][r], __shfl_xor_sync(0xffffffff, lane_max[m][r], 1));
            tm = fmaxf(tm, __shfl_xor_sync(0xffffffff, tm, 2));
            fix[r] = 1.f;
            if (tm > limit[m][r]) {
              const float moved = tm * scale_log2;
              // From no score yet (limit -inf) O and l are zero: fix = 0, not 2^(0 - moved).
              fix[r] = limit[m][r] == -INFINITY ? 0.f : fast_exp2(bias[m][r] - moved);
              bias[m][r] = moved;
              limit[m][r] = (moved + 8.f) / scale_log2;
            }
          }
#pragma unroll
          for (int n = 0; n < D / 8; ++n) {
            o[m][n][0] *= fix[0];
            o[m][n][1] *= fix[0];
            o[m][n][2] *= fix[1];
            o[m][n][3] *= fix[1];
          }
          l[m][0] *= fix[0];
          l[m][1] *= fix[0];
          l[m][2] *= fix[1];
          l[m][3] *= fix[1];
        }
      }
      std::uint32_t p[MT][BC / 8][2];
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            p[m][j][r] = pack2<bf16>(fast_exp2(fmaf(s[m][j][2 * r], scale_log2, -bias[m][r])),
                                     fast_exp2(fmaf(s[m][j][2 * r + 1], scale_log2, -bias[m][r])));
            // l += P 1, and with dropout the sums stay those of the undropped probabilities.
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const std::uint32_t pf[4] = {p[m][2 * kk][0], p[m][2 * kk][1], p[m][2 * kk + 1][0],
                                       p[m][2 * kk + 1][1]};
          mma16816<bf16>(l[m], pf, ones, ones);
        }
      if constexpr (Dropout) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const int t = my_t(m, r);
              if (t >= t0 + rows) continue;
              float pair[2];
              unpack2<bf16>(p[m][j][r], pair);
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int u = u0 + j * 8 + 2 * t4 + e;
                if (pair[e] != 0.f) {
                  pair[e] *= static_cast<float>(
                      br.dropout.factor(br.plan.branch, b, h, kept.position(t), kept.position(u)));
                }
              }
              p[m][j][r] = pack2<bf16>(pair[0], pair[1]);
            }
      }
      // O += P V: P's accumulator layout is the A operand's (FlashAttention-2); each V
      // fragment feeds every m-tile.
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
          std::uint32_t vf[4];
          ldmatrix_x4_trans(vf, Vs + kk * 16 * LD + n * 8);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            const std::uint32_t pf[4] = {p[m][2 * kk][0], p[m][2 * kk][1], p[m][2 * kk + 1][0],
                                         p[m][2 * kk + 1][1]};
            mma16816<bf16>(o[m][n], pf, vf[0], vf[1]);
            mma16816<bf16>(o[m][n + 1], pf, vf[2], vf[3]);
          }
        }
      }
    };

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
      // Causal: a warp whose rows all precede the tile has nothing to do in it. Only tiles that
      // reach past the keys or (causal) past the warp's first row need a mask.
      if (!(br.causal && u0 > warp_last) && warp * WR < rows) {
        const Half* Ks = K_stage(it & 1) + k_off;
        const Half* Vs = V_stage(it & 1) + v_off;
        const bool edge = u0 + BC > key_end || (br.causal && u0 + BC - 1 > warp_first);
        if (edge) {
          step(u0, Ks, Vs, std::true_type{});
        } else {
          step(u0, Ks, Vs, std::false_type{});
        }
      }
      __syncthreads();  // the stage read here is refilled in the next iteration
    }

    // Finish: rows, log-sum-exp and the longnet merge.
    constexpr float ln2 = 0.6931471805599453f;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float previous[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (br.longnet && my_t(m, r) < t0 + rows)
          previous[r] = static_cast<float>(lse(b, kept.position(my_t(m, r)), h));
      }
      __syncwarp();  // every lane of the quad has read the old lse before one lane replaces it
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (my_t(m, r) >= t0 + rows) continue;
        const int pt = kept.position(my_t(m, r));
        const float sum = l[m][2 * r];
        const float lse_r = (bias[m][r] + log2f(sum)) * ln2;
        float keep_old = 0.f, weight = static_cast<float>(br.output_scale), merged = lse_r;
        if (br.longnet) {
          const auto mw = merge_lse(previous[r], lse_r);
          merged = mw.merged;
          keep_old = mw.keep_old;
          weight = mw.weight;
        }
        const float w = weight / sum;
        // grouped into the caller's half/bf16 rows: each lane's two adjacent columns as one
        // 4-byte store (same rounding as the conversion below), no read of the old row.
        if constexpr (std::is_same_v<TO, T>) {
          if (!br.longnet && out_in_pieces) {
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
              store_pair<bf16>(out, b, pt, h, n * 8 + 2 * t4, w * o[m][n][2 * r],
                               w * o[m][n][2 * r + 1]);
            if (with_lse && t4 == 0) lse(b, pt, h) = static_cast<typename LseV::value_type>(merged);
            continue;
          }
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = n * 8 + 2 * t4 + e;
            const float old = keep_old != 0.f ? keep_old * float(out(b, pt, h, c)) : 0.f;
            out(b, pt, h, c) = static_cast<TO>(old + w * o[m][n][2 * r + e]);
          }
        }
        if (with_lse && t4 == 0) lse(b, pt, h) = static_cast<typename LseV::value_type>(merged);
      }
    }
    // The rows after each kept row up to the next one (or the segment's end): with the rows
    // before the first kept row these are exactly the segment's unkept rows. A quad per row.
    if (zero_gaps) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if (my_t(m, r) >= t0 + rows) continue;
          const int pt = kept.position(my_t(m, r));
          const int next = pt + kept.stride < seg_end ? pt + kept.stride : seg_end;
          for (int q = pt + 1; q < next; ++q)
            zero_row(q, t4, 4);
        }
    }
#else
    (void)team;
#endif
  }
};

// The forward of every branch: all in one launch for grouped semantics (disjoint heads),
// branch after branch for longnet (each merges into what the previous ones left). zero_unkept
// (grouped): the kernel also zeroes the rows no branch keeps (see ForwardKernel).
template <int D, class Q, class K, class V, class OutV, class LseV>
void forward_branches(const Kokkos::Cuda& space, const Geometry& g,
                      const BranchLaunch<Kokkos::CudaSpace, float>& base, const Q& q, const K& k,
                      const V& v, const OutV& out, const LseV& lse, bool with_lse,
                      bool zero_unkept) {
  using Tiles = MmaTiles<D>;
  std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches;
  for (int i = 0; i < g.num_branches(); ++i) {
    auto launch = tiled_launch<Kokkos::Cuda>(g, i, base, q.extent(0));
    launch.query_rows = Tiles::query_rows;
    launch.key_rows = Tiles::key_rows;
    launch.tiles = (launch.branch.plan.max_kept + Tiles::query_rows - 1) / Tiles::query_rows;
    launches.push_back(launch);
  }
  const bool pieces = rows_in_pieces(out);
  const auto run = [&](auto dropout) {
    using Kernel = ForwardKernel<D, decltype(dropout)::value, Q, K, V, OutV, LseV>;
    for (const auto& set : branch_sets(launches, !base.longnet)) {
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, Kernel::min_blocks>> policy(
          space, static_cast<int>(set.teams()), 4, 32);
      policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::scratch_bytes + 16));
      Kokkos::parallel_for("dilated::improved::forward_mma", policy,
                           Kernel{set, q, k, v, out, lse, with_lse, zero_unkept, pieces});
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
#endif  // DILATED_IMPL_IMPROVED_MMA_FORWARD_HPP
