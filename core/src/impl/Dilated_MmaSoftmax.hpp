// What the two tensor-core forward kernels (mma.sync: Dilated_ImprovedMmaForward.hpp, wgmma:
// Dilated_ImprovedWgmmaForward.hpp) do between and after their tile products, on the register
// layout both share: per warp, 16-row m-tiles whose accumulators hold rows g and g + 8 (lane
// 4 g + t) and columns 8 j + 2 t, +1 in s[m][j][0..3] (m16n8 repeated over j). Here: the
// key/causal mask, the online softmax that turns a score tile into P (packed as the A operand
// of P V) while keeping each row's bias and sum, dropout on P, and the epilogue that writes the
// rows, their log-sum-exp and the longnet merge, and zeroes the rows a grouped branch skips.
#ifndef DILATED_IMPL_MMA_SOFTMAX_HPP
#define DILATED_IMPL_MMA_SOFTMAX_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_MmaPrimitives.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace dilated::Impl::mma {

#if defined(__CUDA_ARCH__)

// The A fragments of `MT` 16-row m-tiles of a row-major tile in shared memory (rows of LD
// halves, from `rows`: the warp's first row), k-steps of 16 columns over D columns: how the
// Improved tensor-core forwards hold their warp's Q rows.
template <int MT, int D, int LD>
__device__ __forceinline__ void a_fragments(const std::uint16_t* rows, int lane,
                                            std::uint32_t (&f)[MT][D / 16][4]) {
  const std::uint16_t* at = rows + ((lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      ldmatrix_x4(f[m][kk], at + m * 16 * LD + kk * 16);
}

// The A fragment of P's k-step kk (keys 16 kk .. 16 kk + 15) for P V: P's accumulator layout is
// the A operand's (FlashAttention-2).
template <int NJ>
__device__ __forceinline__ void p_fragment(const std::uint32_t (&pm)[NJ][2], int kk,
                                           std::uint32_t (&pf)[4]) {
  pf[0] = pm[2 * kk][0];
  pf[1] = pm[2 * kk][1];
  pf[2] = pm[2 * kk + 1][0];
  pf[3] = pm[2 * kk + 1][1];
}

// The softmax state of this lane's rows: per m-tile and half (rows g and g + 8) the bias the
// exponents subtract (log2 units: the row's running maximum of scaled scores when it was last
// moved, 0 before any score) and the raw score above which the bias must move (-inf before any
// score). The bias moves only when a score exceeds it by more than 2^8. Row sums are taken on
// the tensor cores: P times a tile of ones adds up each row of the tile's probabilities (as
// rounded for the P V product) in every column of l; rows g and g + 8 of m-tile m are l[m][0]
// and l[m][2].
template <int MT, int D, bool Bf16>
struct SoftmaxRows {
  float bias[MT][2], limit[MT][2];
  float l[MT][4];
  float scale_log2;  // softmax scale (> 0 on this path) times log2(e): folded into the exponent

  __device__ __forceinline__ explicit SoftmaxRows(float scale) {
    scale_log2 = scale * 1.4426950408889634f;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      bias[m][0] = bias[m][1] = 0.f;
      limit[m][0] = limit[m][1] = -INFINITY;
      l[m][0] = l[m][1] = l[m][2] = l[m][3] = 0.f;
    }
  }

  // Online softmax with a lazily moved bias. Each lane checks its own scores against its rows'
  // limits (a tree over its columns, no shuffle). Only when some score of the warp passed its
  // limit does the warp take the rare branch: quad-wide maxima, new biases, O and l rescaled.
  // Otherwise probabilities up to 2^8 are summed as they are (no overflow in half, bf16 or the
  // float accumulators); the final division by l normalises them. Then P = 2^(s scale_log2 -
  // bias), packed in the A-operand layout of P V (p[m][j] holds row g's and row g + 8's columns
  // j * 8 + 2 t, +1), and l += P 1.
  template <int BC>
  __device__ __forceinline__ void step(const float (&s)[MT][BC / 8][4], float (&o)[MT][D / 8][4],
                                       std::uint32_t (&p)[MT][BC / 8][2]) {
    static_assert((BC / 8 & (BC / 8 - 1)) == 0, "the max tree halves the tile's columns");
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
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < BC / 8; ++j)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          p[m][j][r] = pack2<Bf16>(fast_exp2(fmaf(s[m][j][2 * r], scale_log2, -bias[m][r])),
                                   fast_exp2(fmaf(s[m][j][2 * r + 1], scale_log2, -bias[m][r])));
    // With dropout (applied to p afterwards) the sums stay those of the undropped
    // probabilities.
    const std::uint32_t ones = pack2<Bf16>(1.f, 1.f);
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        std::uint32_t pf[4];
        p_fragment(p[m], kk, pf);
        mma16816<Bf16>(l[m], pf, ones, ones);
      }
  }
};

// Scores of keys at or past key_end, or (causal) after the row, set to -inf. Key u0 + j * 8 +
// 2 t + (e & 1) against row my_t(m, e / 2).
template <int MT, int BC, class RowOf>
__device__ __forceinline__ void mask_scores(float (&s)[MT][BC / 8][4], int u0, int key_end,
                                            bool causal, int t4, const RowOf& my_t) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < BC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int u = u0 + j * 8 + 2 * t4 + (e & 1);
        if (u >= key_end || (causal && u > my_t(m, e / 2))) s[m][j][e] = -INFINITY;
      }
}

// Dropout on P (rows past the tile's last, t >= t_end, are left alone): the branch's mask for
// (row, key) by kept positions, the same hash on every backend.
template <bool Bf16, int MT, int BC, class Branch, class RowOf>
__device__ __forceinline__ void drop(std::uint32_t (&p)[MT][BC / 8][2], const Branch& br, int b,
                                     int h, const KeptPositions& kept, int u0, int t_end, int t4,
                                     const RowOf& my_t) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < BC / 8; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int t = my_t(m, r);
        if (t >= t_end) continue;
        float pair[2];
        unpack2<Bf16>(p[m][j][r], pair);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int u = u0 + j * 8 + 2 * t4 + e;
          if (pair[e] != 0.f) {
            pair[e] *= static_cast<float>(
                br.dropout.factor(br.plan.branch, b, h, kept.position(t), kept.position(u)));
          }
        }
        p[m][j][r] = pack2<Bf16>(pair[0], pair[1]);
      }
}

// The output rows of one team: writes, log-sum-exp and the longnet merge, and (grouped) the
// zeroing of the rows its branch does not keep. OutV/LseV as in ImprovedForwardKernel.
template <int D, bool Bf16, class T, class OutV, class LseV>
struct RowWriter {
  OutV out;
  LseV lse;
  bool with_lse;
  bool out_in_pieces;  // rows_in_pieces(out): rows written and zeroed 16 bytes at a time
  int b, h;
  using TO = typename OutV::value_type;

  // Row q set to zero (lse -inf) by `lanes` threads, this one being `lane`.
  __device__ __forceinline__ void zero_row(int q, int lane, int lanes) const {
    if (out_in_pieces) {
      auto* row = reinterpret_cast<uint4*>(&out(b, q, h, 0));
      for (int i = lane; i < D * int(sizeof(TO)) / 16; i += lanes)
        row[i] = make_uint4(0u, 0u, 0u, 0u);
    } else {
      for (int c = lane; c < D; c += lanes)
        out(b, q, h, c) = TO(0);
    }
    if (with_lse && lane == 0) lse(b, q, h) = -INFINITY;
  }

  // Finish: rows t (my_t(m, r) < t_end) of the team's tile from o, the sums and biases.
  template <int MT, class Branch, class RowOf>
  __device__ __forceinline__ void finish(const float (&o)[MT][D / 8][4],
                                         const SoftmaxRows<MT, D, Bf16>& rows, const Branch& br,
                                         const KeptPositions& kept, int t_end, int t4,
                                         const RowOf& my_t) const {
    constexpr float ln2 = 0.6931471805599453f;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float previous[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (br.longnet && my_t(m, r) < t_end)
          previous[r] = static_cast<float>(lse(b, kept.position(my_t(m, r)), h));
      }
      __syncwarp();  // every lane of the quad has read the old lse before one lane replaces it
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (my_t(m, r) >= t_end) continue;
        const int pt = kept.position(my_t(m, r));
        const float sum = rows.l[m][2 * r];
        const float lse_r = (rows.bias[m][r] + log2f(sum)) * ln2;
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
              store_pair<Bf16>(out, b, pt, h, n * 8 + 2 * t4, w * o[m][n][2 * r],
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
  }

  // The rows after each of the tile's kept rows up to the next one (or the segment's end):
  // with the rows before the segment's first kept row (lead_rows) these are exactly the
  // segment's unkept rows. A quad per row.
  template <int MT, class RowOf>
  __device__ __forceinline__ void zero_gaps(const KeptPositions& kept, int seg_end, int t_end,
                                            int t4, const RowOf& my_t) const {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (my_t(m, r) >= t_end) continue;
        const int pt = kept.position(my_t(m, r));
        const int next = pt + kept.stride < seg_end ? pt + kept.stride : seg_end;
        for (int q = pt + 1; q < next; ++q)
          zero_row(q, t4, 4);
      }
  }

  // The rows of the segment before its first kept row (all of them when it keeps none), a warp
  // per row: done by the segment's first tile.
  template <class Member>
  __device__ __forceinline__ void lead_rows(const Member& team, const KeptPositions& kept,
                                            int seg_begin, int seg_end) const {
    const int lead_end = kept.count > 0 ? kept.first : seg_end;
    for (int q = seg_begin + team.team_rank(); q < lead_end; q += team.team_size())
      zero_row(q, threadIdx.x, 32);
  }
};

// What both tensor-core forwards know of their team before its tiles: its branch, its tile of
// kept rows (Launch::tile_at), the writer of its rows and its segment's end; zero_gaps: grouped
// with dilation > 1, so the rows between kept ones are the team's to zero.
template <int D, bool Bf16, class T, class OutV, class LseV, class Launch>
struct ForwardTeam {
  const decltype(Launch::branch)* branch;
  typename Launch::Tile tile;
  RowWriter<D, Bf16, T, OutV, LseV> writer;
  int seg_end;
  bool zero_gaps;
};

// The ForwardTeam of tile `rank` of a launch of `set` (tiles of query_rows kept rows; a team
// works on tile league_rank(), or on several in turn in a persistent launch); the rows of its
// segment before the first kept row are zeroed here, by the segment's first tile.
template <int D, bool Bf16, class T, class Member, class Launch, int Capacity, class OutV,
          class LseV>
__device__ __forceinline__ ForwardTeam<D, Bf16, T, OutV, LseV, Launch> forward_team(
    const Member& team, int rank, const BranchSet<Launch, Capacity>& set, int query_rows,
    const OutV& out, const LseV& lse, bool with_lse, bool out_in_pieces, bool zero_unkept) {
  const int which = set.find(rank);
  const auto& br = set.launches[which].branch;
  const auto tile =
      set.launches[which].tile_at(rank - static_cast<int>(set.first_team[which]), query_rows);
  const RowWriter<D, Bf16, T, OutV, LseV> writer{out,           lse,         with_lse,
                                                 out_in_pieces, tile.item.b, tile.item.head};
  const int seg_begin = tile.item.segment * br.plan.window;
  const int seg_end = seg_begin + br.plan.window < br.n ? seg_begin + br.plan.window : br.n;
  const bool zero_gaps = zero_unkept && !br.longnet && tile.item.kept.stride > 1;
  if (zero_gaps && tile.first == 0) writer.lead_rows(team, tile.item.kept, seg_begin, seg_end);
  return {&br, tile, writer, seg_end, zero_gaps};
}

#endif  // __CUDA_ARCH__

// What the Improved tensor-core forward kernels are given (launch_forward): their launches and
// views, and how their rows are written (see ForwardKernel). The Original forward keeps its own
// members (Dilated_OriginalMmaForward.hpp says why).
template <class QV, class KV, class VV, class OutV, class LseV>
struct ForwardIO {
  BranchSet<TiledLaunch<Kokkos::CudaSpace, float>> set;  // tiles of the kernel's query rows
  QV q;
  KV k;
  VV v;
  OutV out;
  LseV lse;
  bool with_lse = true;
  // grouped: the rows a branch with dilation > 1 does not keep get 0 (and lse -inf) in the
  // kernels' epilogue, instead of in a separate pass over the output (~55 us at 64K on the H100).
  bool zero_unkept = false;
  bool out_in_pieces = false;  // rows_in_pieces(out): rows written and zeroed 16 bytes at a time

#if defined(__CUDA_ARCH__)
  // forward_team for tile `rank` of `set`.
  template <int D, bool Bf16, class T, class Member>
  __device__ __forceinline__ auto team(const Member& member, int rank, int query_rows) const {
    return forward_team<D, Bf16, T>(member, rank, set, query_rows, out, lse, with_lse,
                                    out_in_pieces, zero_unkept);
  }
#endif
};

}  // namespace dilated::Impl::mma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_MMA_SOFTMAX_HPP
