// Host (Serial, OpenMP) micro-kernels of the Improved forward in float, where a team is one
// thread: the generic team kernel's scalar dot products and column loops over scratch become
// register-blocked loops the compiler vectorises (fixed-width inner loops over contiguous
// memory, `omp simd` where OpenMP is on; no intrinsics and no compiler flags of our own:
// -march decides the vector width).
//
// A team's query tile is held transposed (Qt: d x query rows, scaled by the softmax scale) and
// its scores transposed too (St: keys x query rows), so that every loop runs along query rows:
//   St = K Qt     : rows_block keys x cols_block queries accumulate in registers over the head
//                   dim; K rows are read in place (the dilated kept rows are evenly strided)
//                   when storage is float with a contiguous head dim of whole vectors, else
//                   from a float copy in scratch;
//   softmax       : per query (a vector lane), running max, exp and sum over the key tile; exp
//                   by Cephes' expf polynomial (range reduction by ln 2, about 1 ulp), exactly
//                   0 for arguments below -87.7 and -inf;
//   O = O f + P V : rows_block queries x cols_block head-dim columns, over the keys (V in place
//                   or copied like K).
// Padding: the head dim to whole vectors, query rows to whole vectors, keys to whole register
// blocks, all with zeros; padded keys are never visited by the softmax or P V, padded queries
// are computed (finite) and not written. Numerics: float accumulation like the generic kernel;
// only the order of summation and the exp differ (within the float tolerance).
#ifndef DILATED_IMPL_IMPROVED_HOST_TILE_HPP
#define DILATED_IMPL_IMPROVED_HOST_TILE_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Geometry.hpp>
#include <impl/Dilated_HostMath.hpp>
#include <impl/Dilated_OriginalKernels.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

namespace dilated::Impl::host_tile {

// exp(x) for x <= 0 in straight-line arithmetic (Dilated_HostMath.hpp): the softmax loops over it
// vectorise.
using host_math::exp_nonpositive;

// Whether a kernel on ExecSpace with accumulation type Acc runs the host micro-kernels.
template <class ExecSpace, class Acc>
inline constexpr bool enabled_v =
    std::conjunction_v<std::is_same<Acc, float>,
                       std::is_same<typename ExecSpace::memory_space, Kokkos::HostSpace>>;

// Whether the micro-kernels run where they apply (enabled_v): yes, unless the environment sets
// DILATED_DISABLE_HOST_TILES to a value other than 0; then the generic team kernels of
// Dilated_ImprovedKernels.hpp run in float too (tests: each host path under more than one
// storage type). Read at every launch.
inline bool allowed() {
  const char* off = std::getenv("DILATED_DISABLE_HOST_TILES");
  return !(off && std::string(off) != "0");
}

inline constexpr int lanes = 16;  // floats per 512-bit vector: the padding unit

// A register block holds rows_block x cols_block accumulators, sized to the target's vector
// registers (the build's target flags decide which; the library sets none).
#if defined(__AVX512F__)
// 8 x 32: 16 of the 32 zmm registers.
inline constexpr int rows_block = 8;
inline constexpr int cols_block = 32;
#else
// 4 x 16: 8 ymm (AVX2) or 16 xmm (SSE) registers; larger blocks spill.
inline constexpr int rows_block = 4;
inline constexpr int cols_block = 16;
#endif

constexpr int round_up(int x, int m) {
  return (x + m - 1) / m * m;
}

// C (RB x CB, leading dimension ldc) = row_scale[r] * C + A B, or A B when row_scale is null.
// A(r, k) = A[r * ars + k * aks] (either layout), B(k, j) = B[k * ldb + j]. The RB x CB
// accumulators stay in registers over k.
template <int RB, int CB>
inline void gemm_block(int kdim, const float* A, long ars, long aks, const float* B, long ldb,
                       float* C, long ldc, const float* row_scale) {
  float acc[RB][CB];
  if (row_scale) {
    for (int r = 0; r < RB; ++r) {
      const float f = row_scale[r];
      DILATED_HOST_SIMD
      for (int j = 0; j < CB; ++j)
        acc[r][j] = f * C[r * ldc + j];
    }
  } else {
    for (int r = 0; r < RB; ++r) {
      DILATED_HOST_SIMD
      for (int j = 0; j < CB; ++j)
        acc[r][j] = 0;
    }
  }
  for (int k = 0; k < kdim; ++k) {
    const float* a = A + k * aks;
    const float* b = B + k * ldb;
    for (int r = 0; r < RB; ++r) {
      const float x = a[r * ars];
      DILATED_HOST_SIMD
      for (int j = 0; j < CB; ++j)
        acc[r][j] += x * b[j];
    }
  }
  for (int r = 0; r < RB; ++r) {
    DILATED_HOST_SIMD
    for (int j = 0; j < CB; ++j)
      C[r * ldc + j] = acc[r][j];
  }
}

// gemm_block over rows x cols: rows a multiple of rows_block, cols of lanes.
inline void gemm_tile(int rows, int cols, int kdim, const float* A, long ars, long aks,
                      const float* B, long ldb, float* C, long ldc, const float* row_scale) {
  for (int i = 0; i < rows; i += rows_block) {
    const float* a = A + i * ars;
    float* c = C + i * ldc;
    const float* f = row_scale ? row_scale + i : nullptr;
    int j = 0;
    for (; j + cols_block <= cols; j += cols_block)
      gemm_block<rows_block, cols_block>(kdim, a, ars, aks, B + j, ldb, c + j, ldc, f);
    for (; j < cols; j += lanes)
      gemm_block<rows_block, lanes>(kdim, a, ars, aks, B + j, ldb, c + j, ldc, f);
  }
}

// Scratch layout of one forward team (floats, from a 64-byte aligned base):
//   Qt: dp x qp; O: qp x dp; St: kp x qp; K, V copies: kp x dp each; 3 x qp row statistics;
// dp, qp: head dim and query rows rounded up to lanes; kp: key rows to rows_block.
struct ForwardLayout {
  int dp, qp, kp;
  constexpr ForwardLayout(int query_rows, int key_rows, int d)
      : dp(round_up(d, lanes)),
        qp(round_up(query_rows, lanes)),
        kp(round_up(key_rows, rows_block)) {}
  constexpr long qt() const { return 0; }
  constexpr long o() const { return qt() + long(dp) * qp; }
  constexpr long st() const { return o() + long(qp) * dp; }
  constexpr long k() const { return st() + long(kp) * qp; }
  constexpr long v() const { return k() + long(kp) * dp; }
  constexpr long stats() const { return v() + long(kp) * dp; }
  constexpr long entries() const { return stats() + 3L * qp + 64 / sizeof(float); }  // + alignment
};

inline float* align64(void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<float*>((a + 63) & ~std::uintptr_t(63));
}

// Rows first .. first + count of a (b, n, h, d) view at the kept positions of one segment, as
// a float matrix with row stride `ld`: in place when the storage is float with a contiguous head
// dim of whole vectors (the kept rows are evenly strided), else copied into `copy` (rows padded
// with zero columns to dp and with zero rows to `rows`).
template <class View>
inline const float* rows_operand(const View& src, int b, int h, const KeptPositions& kept,
                                 int first, int count, int rows, int d, int dp, float* copy,
                                 long& ld) {
  using T = typename View::non_const_value_type;
  if constexpr (std::is_same_v<T, float>) {
    if (src.stride(3) == 1 && d == dp && count == rows) {
      ld = static_cast<long>(kept.stride) * static_cast<long>(src.stride(1));
      return &src(b, kept.position(first), h, 0);
    }
  }
  ld = dp;
  for (int r = 0; r < count; ++r) {
    const int p = kept.position(first + r);
    float* row = copy + static_cast<long>(r) * dp;
    for (int c = 0; c < d; ++c)
      row[c] = static_cast<float>(src(b, p, h, c));
    for (int c = d; c < dp; ++c)
      row[c] = 0;
  }
  for (long e = static_cast<long>(count) * dp; e < static_cast<long>(rows) * dp; ++e)
    copy[e] = 0;
  return copy;
}

// The Improved forward of one team (ImprovedForwardKernel's contract) on the host in float.
template <class Kernel, class Member>
void forward(const Kernel& kn, const Member& team) {
  const auto& launch = kn.launch;
  const auto& br = launch.branch;
  const auto tile = launch.tile(team, launch.query_rows);
  if (tile.count == 0) return;
  const int d = br.d, b = tile.item.b, h = tile.item.head, rows = tile.count;
  const KeptPositions& kept = tile.item.kept;
  const ForwardLayout layout(launch.query_rows, launch.key_rows, d);
  const int dp = layout.dp, ldq = layout.qp;  // Qt, St and the statistics: ldq per row
  const int qp = round_up(rows, lanes);       // query columns computed in this tile
  float* base =
      align64(team.team_scratch(launch.scratch_level)
                  .get_shmem(sizeof(float) * Kernel::scratch_entries(launch.query_rows,
                                                                     launch.key_rows, launch.ld)));
  float* Qt = base + layout.qt();
  float* O = base + layout.o();
  float* St = base + layout.st();
  float* Kc = base + layout.k();
  float* Vc = base + layout.v();
  float* row_max = base + layout.stats();
  float* row_sum = row_max + ldq;
  float* row_fix = row_sum + ldq;
  constexpr float inf = std::numeric_limits<float>::infinity();

  // Qt[c][i] = scale * q(kept(first + i), c); zeros for padded queries and head-dim rows.
  // Column by column: the first column touches every row (their cache misses overlap) and the
  // stores are contiguous.
  {
    const auto* q0 = &kn.q(b, kept.position(tile.first), h, 0);
    const long rs = static_cast<long>(kept.stride) * kn.q.stride(1), cs = kn.q.stride(3);
    for (int c = 0; c < dp; ++c) {
      float* qt = Qt + static_cast<long>(c) * ldq;
      if (c < d) {
        for (int i = 0; i < rows; ++i)
          qt[i] = br.scale * static_cast<float>(q0[i * rs + c * cs]);
      }
      for (int i = c < d ? rows : 0; i < ldq; ++i)
        qt[i] = 0;
    }
  }
  for (long e = 0; e < long(qp) * dp; ++e)
    O[e] = 0;
  for (int i = 0; i < qp; ++i) {
    row_max[i] = -inf;
    row_sum[i] = 0;
  }
  const bool dropout = br.dropout.active();
  // Causal: keys after the tile's last query are hidden from every row: not visited.
  const int key_end = br.causal ? tile.first + rows : kept.count;
  for (int u0 = 0; u0 < key_end; u0 += launch.key_rows) {
    const int cols = key_end - u0 < launch.key_rows ? key_end - u0 : launch.key_rows;
    const int kp = round_up(cols, rows_block);
    long ldk = 0, ldv = 0;
    const float* K = rows_operand(kn.k, b, h, kept, u0, cols, kp, d, dp, Kc, ldk);
    gemm_tile(kp, qp, dp, K, ldk, 1, Qt, ldq, St, ldq, nullptr);
    // Causal mask where the tile's last key is after the first query: St[j][i] for
    // u0 + j > first + i.
    if (br.causal && u0 + cols - 1 > tile.first) {
      for (int j = 0; j < cols; ++j) {
        float* s = St + static_cast<long>(j) * ldq;
        const int hidden = u0 + j - tile.first;  // queries i < hidden cannot see key j
        for (int i = 0; i < (hidden < qp ? hidden : qp); ++i)
          s[i] = -inf;
      }
    }
    // Online softmax, one query per lane. The first key of a segment is visible to every
    // query, so after the first tile every running max is finite.
    for (int i0 = 0; i0 < qp; i0 += lanes) {
      float mx[lanes], sum[lanes], fix[lanes];
      DILATED_HOST_SIMD
      for (int l = 0; l < lanes; ++l)
        mx[l] = row_max[i0 + l];
      for (int j = 0; j < cols; ++j) {
        const float* s = St + static_cast<long>(j) * ldq + i0;
        DILATED_HOST_SIMD
        for (int l = 0; l < lanes; ++l)
          mx[l] = s[l] > mx[l] ? s[l] : mx[l];
      }
      DILATED_HOST_SIMD
      for (int l = 0; l < lanes; ++l) {
        fix[l] = exp_nonpositive(row_max[i0 + l] - mx[l]);  // 0 on the first tile (-inf)
        sum[l] = row_sum[i0 + l] * fix[l];
      }
      for (int j = 0; j < cols; ++j) {
        float* s = St + static_cast<long>(j) * ldq + i0;
        DILATED_HOST_SIMD
        for (int l = 0; l < lanes; ++l) {
          const float p = exp_nonpositive(s[l] - mx[l]);
          s[l] = p;
          sum[l] += p;
        }
      }
      DILATED_HOST_SIMD
      for (int l = 0; l < lanes; ++l) {
        row_max[i0 + l] = mx[l];
        row_sum[i0 + l] = sum[l];
        row_fix[i0 + l] = fix[l];
      }
    }
    if (dropout) {
      for (int j = 0; j < cols; ++j) {
        float* s = St + static_cast<long>(j) * ldq;
        const int pu = kept.position(u0 + j);
        for (int i = 0; i < rows; ++i)
          s[i] *= static_cast<float>(
              br.dropout.factor(br.plan.branch, b, h, kept.position(tile.first + i), pu));
      }
    }
    if (kn.with_output) {
      const float* V = rows_operand(kn.v, b, h, kept, u0, cols, cols, d, dp, Vc, ldv);
      gemm_tile(qp, dp, cols, St, 1, ldq, V, ldv, O, dp, row_fix);
    }
  }
  for (int i = 0; i < rows; ++i) {
    const int pt = kept.position(tile.first + i);
    const float lse_i = row_max[i] + std::log(row_sum[i]);
    float keep_old = 0, weight = br.output_scale, merged = lse_i;
    if (br.longnet) {
      const auto mw = merge_lse(static_cast<float>(kn.lse(b, pt, h)), lse_i);
      merged = mw.merged;
      keep_old = mw.keep_old;
      weight = mw.weight;
    }
    if (kn.with_output) {
      using T = typename std::remove_reference_t<decltype(kn.out)>::non_const_value_type;
      const float w = weight / row_sum[i];
      const float* o = O + static_cast<long>(i) * dp;
      for (int c = 0; c < d; ++c) {
        const float old =
            keep_old != 0.0f ? keep_old * static_cast<float>(kn.out(b, pt, h, c)) : 0.0f;
        kn.out(b, pt, h, c) = static_cast<T>(old + w * o[c]);
      }
    }
    if (kn.with_lse) {
      using L = typename std::remove_reference_t<decltype(kn.lse)>::non_const_value_type;
      kn.lse(b, pt, h) = static_cast<L>(merged);
    }
  }
}

}  // namespace dilated::Impl::host_tile

#endif  // DILATED_IMPL_IMPROVED_HOST_TILE_HPP
