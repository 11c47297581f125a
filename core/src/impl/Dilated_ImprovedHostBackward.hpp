// Host (Serial, OpenMP) micro-kernels of the Improved backward in float, the counterparts of
// the forward's (Dilated_ImprovedHostTile.hpp, whose register-blocked gemm_tile, Cephes exp and
// operand loaders they reuse): the generic team kernels' scalar dot products over scratch
// (ImprovedDqKernel, ImprovedDkDvKernel) become register-blocked products the compiler
// vectorises. Same contract as the generic kernels, tile for tile: P~ = output_scale exp(s - L)
// recomputed from the saved (merged) log-sum-exp L, dP = g . v, dS = P~ (Z dP - D_t); only the
// order of summation and the exp differ (within the float tolerance).
//
// dq pass (a team owns query rows, streams key tiles): laid out like the forward, transposed so
// that every element-wise loop runs along query rows (one query per vector lane, L_t and D_t
// loaded once per lane group):
//   St  = K Qt     : keys x query rows (Qt: d x query rows, scaled by the softmax scale);
//   dPt = V Gt     : keys x query rows (Gt: dout transposed);
//   dSt            : overwrites St in place;
//   dQ += dS K     : query rows x d, the keys' sum accumulated in registers;
// K and V rows are read in place when float with a contiguous head dim of whole vectors and the
// tile fills its register blocks, else copied (rows_operand). In delta mode (detached longnet
// weights) the row sums of P~ Z dP and of exp(s - L) replace the dQ product.
//
// dk/dv pass (a team owns key rows, streams query tiles): transposed the other way. The team's
// own keys are loaded once, transposed (Kt, scaled by the softmax scale, and Vt: d x keys), so
// that the products it accumulates, dK = dS^T Q and dV = PZ^T G, read the streamed q and dout
// rows in place (row-major, the B operand of gemm_tile) and no query tile is ever transposed:
//   S  = Q Kt, dP = G Vt : query rows x keys; the element-wise loop runs along keys (L_t, D_t
//                          scalars of the row); PZ overwrites S, dS overwrites dP;
//   dK += dS^T Q, dV += PZ^T G : keys x d.
// S is scaled through Kt; dK sums unscaled q rows, so dk = scale dK, like dq = scale dQ.
//
// Padding: the head dim to whole vectors (zeros), transposed rows to whole vectors (zeros),
// row-major operands to whole register blocks (zero rows). Padded rows and columns of S and dP
// hold finite values (zero operands; padded query rows get L = D = 0) that no product of real rows
// reads (the sums run over the real keys or queries only) and that are never written out. Causal
// masks set the hidden scores to -inf, whose exp is exactly 0 (P~ = dS = 0, as the generic kernel's
// zeros). Dropout: the mask factor is a hash per (query, key) pair, applied in a separate scalar
// loop.
#ifndef DILATED_IMPL_IMPROVED_HOST_BACKWARD_HPP
#define DILATED_IMPL_IMPROVED_HOST_BACKWARD_HPP

#include <Dilated_Geometry.hpp>
#include <impl/Dilated_ImprovedHostTile.hpp>

#include <Kokkos_Core.hpp>

#include <limits>
#include <type_traits>

namespace dilated::Impl::host_tile {

// dst[c * ld + i] = factor * src(b, kept(first + i), h, c) for c < d, i < count; zeros for the
// other entries of dp rows of ld. Column by column, as the forward loads Qt: the first column
// touches every source row (their cache misses overlap) and the stores are contiguous.
template <class View>
inline void transposed_rows(const View& src, int b, int h, const KeptPositions& kept, int first,
                            int count, int d, int dp, int ld, float factor, float* dst) {
  const auto* s0 = &src(b, kept.position(first), h, 0);
  const long rs = static_cast<long>(kept.stride) * src.stride(1), cs = src.stride(3);
  for (int c = 0; c < dp; ++c) {
    float* row = dst + static_cast<long>(c) * ld;
    if (c < d) {
      for (int i = 0; i < count; ++i)
        row[i] = factor * static_cast<float>(s0[i * rs + c * cs]);
    }
    for (int i = c < d ? count : 0; i < ld; ++i)
      row[i] = 0;
  }
}

// Scratch layout of one dq team (floats, from a 64-byte aligned base):
//   Qt, Gt: dp x qp; dQ: qp x dp; St, dPt: kp x qp; K, V copies: kp x dp; 5 x qp row values
//   (L, D, the two delta-mode sums, ones: the row scale that makes gemm_tile accumulate);
// dp, qp: head dim and query rows rounded up to lanes; kp: key rows to rows_block.
struct DqLayout {
  int dp, qp, kp;
  constexpr DqLayout(int query_rows, int key_rows, int d)
      : dp(round_up(d, lanes)),
        qp(round_up(query_rows, lanes)),
        kp(round_up(key_rows, rows_block)) {}
  constexpr long qt() const { return 0; }
  constexpr long gt() const { return qt() + long(dp) * qp; }
  constexpr long dq() const { return gt() + long(dp) * qp; }
  constexpr long st() const { return dq() + long(qp) * dp; }
  constexpr long dpt() const { return st() + long(kp) * qp; }
  constexpr long k() const { return dpt() + long(kp) * qp; }
  constexpr long v() const { return k() + long(kp) * dp; }
  constexpr long rows() const { return v() + long(kp) * dp; }
  constexpr long entries() const { return rows() + 5L * qp + 64 / sizeof(float); }  // + alignment
};

// The dq pass of one team (ImprovedDqKernel's contract, delta mode included) on the host in
// float.
template <class Kernel, class Member>
void dq(const Kernel& kn, const Member& team) {
  const auto& launch = kn.launch;
  const auto& br = launch.branch;
  const auto tile = launch.tile(team, launch.query_rows);
  if (tile.count == 0) return;
  const int d = br.d, b = tile.item.b, h = tile.item.head, rows = tile.count;
  const KeptPositions& kept = tile.item.kept;
  const DqLayout layout(launch.query_rows, launch.key_rows, launch.ld);
  const int dp = layout.dp, ldq = layout.qp;  // Qt, Gt, St, dPt and the row values: ldq per row
  const int qp = round_up(rows, lanes);       // query columns computed in this tile
  float* base =
      align64(team.team_scratch(launch.scratch_level)
                  .get_shmem(sizeof(float) * Kernel::scratch_entries(launch.query_rows,
                                                                     launch.key_rows, launch.ld)));
  float* Qt = base + layout.qt();
  float* Gt = base + layout.gt();
  float* dQ = base + layout.dq();
  float* St = base + layout.st();
  float* dPt = base + layout.dpt();
  float* Kc = base + layout.k();
  float* Vc = base + layout.v();
  float* L = base + layout.rows();
  float* D = L + ldq;
  float* sum_pzdp = D + ldq;  // delta mode: sum P~ Z dP and sum exp(s - L) per row
  float* sum_p = sum_pzdp + ldq;
  float* ones = sum_p + ldq;
  const bool delta_mode = kn.delta_mode;

  transposed_rows(kn.q, b, h, kept, tile.first, rows, d, dp, ldq, br.scale, Qt);
  transposed_rows(kn.dout, b, h, kept, tile.first, rows, d, dp, ldq, 1.0f, Gt);
  if (!delta_mode) {
    for (long e = 0; e < long(qp) * dp; ++e)
      dQ[e] = 0;
  }
  // Padded queries get L = D = 0: their scores (0) stay finite.
  for (int i = 0; i < qp; ++i) {
    const bool real = i < rows;
    const int pt = kept.position(tile.first + (real ? i : 0));
    L[i] = real ? static_cast<float>(kn.lse(b, pt, h)) : 0.0f;
    D[i] = real && !delta_mode ? static_cast<float>(kn.delta(b, pt, h)) : 0.0f;
    sum_pzdp[i] = 0;
    sum_p[i] = 0;
    ones[i] = 1;
  }
  const bool dropout = br.dropout.active();
  const float output_scale = br.output_scale;
  constexpr float inf = std::numeric_limits<float>::infinity();
  // Causal: keys after the tile's last query are hidden from every row: not visited.
  const int key_end = br.causal ? tile.first + rows : kept.count;
  for (int u0 = 0; u0 < key_end; u0 += launch.key_rows) {
    const int cols = key_end - u0 < launch.key_rows ? key_end - u0 : launch.key_rows;
    const int kp = round_up(cols, rows_block);
    long ldk = 0, ldv = 0;
    const float* K = rows_operand(kn.k, b, h, kept, u0, cols, kp, d, dp, Kc, ldk);
    const float* V = rows_operand(kn.v, b, h, kept, u0, cols, kp, d, dp, Vc, ldv);
    gemm_tile(kp, qp, dp, K, ldk, 1, Qt, ldq, St, ldq, nullptr);
    gemm_tile(kp, qp, dp, V, ldv, 1, Gt, ldq, dPt, ldq, nullptr);
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
    // One query per lane: e = exp(s - L) (0 where masked), P~ = output_scale e,
    // dS = P~ (dP - D) over St; in delta mode (D = 0) also the row sums of dS and e.
    const auto along_queries = [&](auto with_sums) {
      constexpr bool sums = decltype(with_sums)::value;
      for (int i0 = 0; i0 < qp; i0 += lanes) {
        [[maybe_unused]] float a[lanes], w[lanes];
        if constexpr (sums) {
          DILATED_HOST_SIMD
          for (int l = 0; l < lanes; ++l) {
            a[l] = 0;
            w[l] = 0;
          }
        }
        const float* Li = L + i0;
        const float* Di = D + i0;
        for (int j = 0; j < cols; ++j) {
          float* s = St + static_cast<long>(j) * ldq + i0;
          const float* g = dPt + static_cast<long>(j) * ldq + i0;
          DILATED_HOST_SIMD
          for (int l = 0; l < lanes; ++l) {
            const float e = exp_nonpositive(s[l] - Li[l]);
            const float ds = output_scale * e * (g[l] - Di[l]);
            s[l] = ds;
            if constexpr (sums) {
              a[l] += ds;
              w[l] += e;
            }
          }
        }
        if constexpr (sums) {
          DILATED_HOST_SIMD
          for (int l = 0; l < lanes; ++l) {
            sum_pzdp[i0 + l] += a[l];
            sum_p[i0 + l] += w[l];
          }
        }
      }
    };
    if (!dropout) {
      if (delta_mode) {
        along_queries(std::true_type{});
      } else {
        along_queries(std::false_type{});
      }
    } else {
      // The same with the dropout factor Z of each (query, key) pair (a scalar hash).
      for (int j = 0; j < cols; ++j) {
        float* s = St + static_cast<long>(j) * ldq;
        const float* g = dPt + static_cast<long>(j) * ldq;
        const int pu = kept.position(u0 + j);
        for (int i = 0; i < rows; ++i) {
          const float z = static_cast<float>(
              br.dropout.factor(br.plan.branch, b, h, kept.position(tile.first + i), pu));
          const float e = exp_nonpositive(s[i] - L[i]);
          const float ds = output_scale * e * (z * g[i] - D[i]);
          s[i] = ds;
          sum_pzdp[i] += ds;
          sum_p[i] += e;
        }
      }
    }
    if (!delta_mode) gemm_tile(qp, dp, cols, St, 1, ldq, K, ldk, dQ, dp, ones);
  }
  for (int i = 0; i < rows; ++i) {
    const int pt = kept.position(tile.first + i);
    if (delta_mode) {
      // sum_p = exp(lse_i - L) underflows to 0 when the branch's weight does: then the branch
      // contributes no gradient to the row, and D_t must not be 0/0.
      using DT = typename std::remove_reference_t<decltype(kn.delta)>::non_const_value_type;
      const float d_t = sum_p[i] > 0.0f ? sum_pzdp[i] / sum_p[i] : 0.0f;
      kn.delta(b, pt, h) = static_cast<DT>(d_t);
      continue;
    }
    using T = typename std::remove_reference_t<decltype(kn.dq)>::non_const_value_type;
    const float* row = dQ + static_cast<long>(i) * dp;
    for (int c = 0; c < d; ++c) {
      const float g = br.scale * row[c];
      kn.dq(b, pt, h, c) =
          static_cast<T>(kn.accumulate ? static_cast<float>(kn.dq(b, pt, h, c)) + g : g);
    }
  }
}

// Scratch layout of one dk/dv team (floats, from a 64-byte aligned base):
//   Kt, Vt: dp x kp; dK, dV: kp x dp; S, dP: qr x kp; Q, G copies: qr x dp; 2 x qr row values
//   (L, D); kp ones (the row scale that makes gemm_tile accumulate);
// dp, kp: head dim and key rows rounded up to lanes; qr: query rows to rows_block.
struct DkDvLayout {
  int dp, kp, qr;
  constexpr DkDvLayout(int query_rows, int key_rows, int d)
      : dp(round_up(d, lanes)),
        kp(round_up(key_rows, lanes)),
        qr(round_up(query_rows, rows_block)) {}
  constexpr long kt() const { return 0; }
  constexpr long vt() const { return kt() + long(dp) * kp; }
  constexpr long dk() const { return vt() + long(dp) * kp; }
  constexpr long dv() const { return dk() + long(kp) * dp; }
  constexpr long s() const { return dv() + long(kp) * dp; }
  constexpr long dps() const { return s() + long(qr) * kp; }
  constexpr long q() const { return dps() + long(qr) * kp; }
  constexpr long g() const { return q() + long(qr) * dp; }
  constexpr long rows() const { return g() + long(qr) * dp; }
  constexpr long entries() const { return rows() + 2L * qr + kp + 64 / sizeof(float); }
};

// The dk/dv pass of one team (ImprovedDkDvKernel's contract) on the host in float.
// L_t (the log-sum-exp) and D_t (dout . out) of `rows` kept rows from t0, as float.
template <class Views>
inline void row_statistics(const Views& kn, const KeptPositions& kept, int b, int h, int t0,
                           int rows, float* L, float* D) {
  for (int i = 0; i < rows; ++i) {
    const int pt = kept.position(t0 + i);
    L[i] = static_cast<float>(kn.lse(b, pt, h));
    D[i] = static_cast<float>(kn.delta(b, pt, h));
  }
}

// dk = scale dK and dv = dV of `cols` kept keys from u0 (rows of dp floats), added when the
// launch accumulates.
template <class Views>
inline void write_dkdv_rows(const Views& kn, const KeptPositions& kept, int b, int h, int u0,
                            int cols, int d, int dp, float scale, const float* dK,
                            const float* dV) {
  using TK = typename std::remove_reference_t<decltype(kn.dk)>::non_const_value_type;
  using TV = typename std::remove_reference_t<decltype(kn.dv)>::non_const_value_type;
  for (int j = 0; j < cols; ++j) {
    const int pu = kept.position(u0 + j);
    const float* gk = dK + static_cast<long>(j) * dp;
    const float* gv = dV + static_cast<long>(j) * dp;
    for (int c = 0; c < d; ++c) {
      const float g = scale * gk[c];
      kn.dk(b, pu, h, c) =
          static_cast<TK>(kn.accumulate ? static_cast<float>(kn.dk(b, pu, h, c)) + g : g);
      kn.dv(b, pu, h, c) =
          static_cast<TV>(kn.accumulate ? static_cast<float>(kn.dv(b, pu, h, c)) + gv[c] : gv[c]);
    }
  }
}

// One (query tile, key tile) pair of the dk/dv products: S = Q Kt and dP = G Vt (Kt scaled, so
// S holds scale q . k), the causal mask on the real keys, then in place P~ = output_scale
// exp(S - L_t) over S (times the dropout factor Z: PZ) and dS = P~ (Z dP - D_t) over dP. Rows
// t0.. of the item's kept positions, keys u0..; shared by the dk/dv pass and the one-pass
// backward (Dilated_ImprovedHostFusedBackward.hpp).
template <class Branch>
inline void tile_probabilities(const Branch& br, const KeptPositions& kept, int b, int h, int t0,
                               int u0, int rows, int cols, int qr, int kp, int dp, const float* Q,
                               long ldq, const float* G, long ldg, const float* Kt, const float* Vt,
                               int ldk, const float* L, const float* D, float* S, float* dP) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  const float output_scale = br.output_scale;
  gemm_tile(qr, kp, dp, Q, ldq, 1, Kt, ldk, S, ldk, nullptr);
  gemm_tile(qr, kp, dp, G, ldg, 1, Vt, ldk, dP, ldk, nullptr);
  // Causal mask where the tile's last key is after its first query: S[i][j] for
  // u0 + j > t0 + i.
  if (br.causal && u0 + cols - 1 > t0) {
    for (int i = 0; i < rows; ++i) {
      float* s = S + static_cast<long>(i) * ldk;
      const int visible = t0 + i - u0 + 1;  // keys j < visible are seen by query i
      // Real keys only: the dropout loop below leaves padded columns as they are, and an
      // -inf there would meet a zero of G in dV (inf * 0: the test main traps FE_INVALID).
      for (int j = visible > 0 ? visible : 0; j < cols; ++j)
        s[j] = -inf;
    }
  }
  if (!br.dropout.active()) {
    // Along keys: P~ = output_scale exp(s - L_t) (0 where masked) over S, dS = P~ (dP - D_t)
    // over dP.
    for (int i = 0; i < rows; ++i) {
      float* s = S + static_cast<long>(i) * ldk;
      float* g = dP + static_cast<long>(i) * ldk;
      const float Li = L[i], Di = D[i];
      DILATED_HOST_SIMD
      for (int j = 0; j < kp; ++j) {
        const float p = output_scale * exp_nonpositive(s[j] - Li);
        s[j] = p;
        g[j] = p * (g[j] - Di);
      }
    }
  } else {
    // The same with the dropout factor Z of each (query, key) pair (a scalar hash):
    // PZ = P~ Z over S, dS = P~ (Z dP - D_t) over dP. Padded keys keep finite raw values.
    for (int i = 0; i < rows; ++i) {
      float* s = S + static_cast<long>(i) * ldk;
      float* g = dP + static_cast<long>(i) * ldk;
      const int pt = kept.position(t0 + i);
      for (int j = 0; j < cols; ++j) {
        const float z =
            static_cast<float>(br.dropout.factor(br.plan.branch, b, h, pt, kept.position(u0 + j)));
        const float p = output_scale * exp_nonpositive(s[j] - L[i]);
        s[j] = p * z;
        g[j] = p * (z * g[j] - D[i]);
      }
    }
  }
}

template <class Kernel, class Member>
void dkdv(const Kernel& kn, const Member& team) {
  const auto& launch = kn.launch;
  const auto& br = launch.branch;
  const auto tile = launch.tile(team, launch.key_rows);
  if (tile.count == 0) return;
  const int d = br.d, b = tile.item.b, h = tile.item.head, cols = tile.count, u0 = tile.first;
  const KeptPositions& kept = tile.item.kept;
  const DkDvLayout layout(launch.query_rows, launch.key_rows, launch.ld);
  const int dp = layout.dp, ldk = layout.kp;  // Kt, Vt, S and dP: ldk per row
  const int kp = round_up(cols, lanes);       // key columns computed in this tile
  float* base =
      align64(team.team_scratch(launch.scratch_level)
                  .get_shmem(sizeof(float) * Kernel::scratch_entries(launch.query_rows,
                                                                     launch.key_rows, launch.ld)));
  float* Kt = base + layout.kt();
  float* Vt = base + layout.vt();
  float* dK = base + layout.dk();
  float* dV = base + layout.dv();
  float* S = base + layout.s();
  float* dP = base + layout.dps();
  float* Qc = base + layout.q();
  float* Gc = base + layout.g();
  float* L = base + layout.rows();
  float* D = L + layout.qr;
  float* ones = D + layout.qr;

  // S = Q Kt with Kt scaled: scale q . k, as the generic kernel's scaled Q gives.
  transposed_rows(kn.k, b, h, kept, u0, cols, d, dp, ldk, br.scale, Kt);
  transposed_rows(kn.v, b, h, kept, u0, cols, d, dp, ldk, 1.0f, Vt);
  for (long e = 0; e < long(kp) * dp; ++e) {
    dK[e] = 0;
    dV[e] = 0;
  }
  for (int j = 0; j < kp; ++j)
    ones[j] = 1;
  const int m = kept.count, BR = launch.query_rows;
  // Causal: query tiles before the one holding u0 see none of the team's keys: not visited.
  for (int t0 = br.causal ? (u0 / BR) * BR : 0; t0 < m; t0 += BR) {
    const int rows = m - t0 < BR ? m - t0 : BR;
    const int qr = round_up(rows, rows_block);
    long ldq = 0, ldg = 0;
    const float* Q = rows_operand(kn.q, b, h, kept, t0, rows, qr, d, dp, Qc, ldq);
    const float* G = rows_operand(kn.dout, b, h, kept, t0, rows, qr, d, dp, Gc, ldg);
    row_statistics(kn, kept, b, h, t0, rows, L, D);
    tile_probabilities(br, kept, b, h, t0, u0, rows, cols, qr, kp, dp, Q, ldq, G, ldg, Kt, Vt, ldk,
                       L, D, S, dP);
    // Sums over the tile's real queries only.
    gemm_tile(kp, dp, rows, dP, 1, ldk, Q, ldq, dK, dp, ones);
    gemm_tile(kp, dp, rows, S, 1, ldk, G, ldg, dV, dp, ones);
  }
  write_dkdv_rows(kn, kept, b, h, u0, cols, d, dp, br.scale, dK, dV);
}

}  // namespace dilated::Impl::host_tile

#endif  // DILATED_IMPL_IMPROVED_HOST_BACKWARD_HPP
