// The Original algorithm on the host (Serial, OpenMP) with its matrix products in the BLAS
// (Dilated_HostBlas.hpp: Kokkos Kernels' wrapper of OpenBLAS), for float and double with a
// contiguous head dim; the host counterpart of the cuBLAS path (Dilated_OriginalGemmPath.hpp).
// Half and bf16 storage (real 16-bit types on Kokkos >= 4 host builds) keep the team kernel: the
// BLAS has no such products, and converting q, k, v would cost a copy of each.
//
// Each (batch, segment, head) item of a branch is cut into blocks of `rows` query rows. A task
// (one block in the forward, one item in the backward) runs on one Kokkos thread, calling the
// BLAS single-threaded (SingleThreadedBlas) on the item's kept rows read in place: the dilated
// rows of a segment are a matrix with row stride r * stride(1), so q, k, v are never gathered.
// A block's score rows span all of the segment's keys (this is the Original: each row's full
// softmax is computed from its stored scores), rows x m entries (2 MiB for m = 2048), in a
// slice of one workspace per thread from the scratch pool. Why a block and one BLAS thread per
// Kokkos thread, not whole segments through a threaded BLAS: the block's scores stay in cache
// between the two products and the softmax (a segment's are 16 MiB at m = 2048), and the
// OpenMP threads never alternate with a second thread pool on the same cores
// (docs/performance-notes.md measures both).
//
//   forward, per block (t rows, u keys; causal: keys up to the block's last row):
//     S = scale Q_t K^T                        (BLAS)
//     e = exp(S - max_u S) per row, masked 0   (vectorised: Cephes exp for float)
//     O = (e Z) V                              (BLAS; Z the dropout factors)
//     out_t = merge(out_t, O_t / sum_u e)      (grouped: / G; longnet: log-sum-exp merge)
//   backward, per item, its blocks in order (dk, dv rows of the item accumulate over them):
//     S = scale Q_t K^T, dP = G_t V^T          (BLAS)
//     P~ = w P (w as in the team kernel), PZ = P~ Z, dS = P~ (Z dP - D)
//     dv += PZ^T G_t, dq_t += scale dS K, dk += scale dS^T Q_t   (BLAS, beta = 1)
// Within one branch every (batch, position, head) row belongs to one item, so tasks write
// disjoint rows; branches run in order (longnet merges them in order).
#ifndef DILATED_IMPL_ORIGINAL_HOST_GEMM_PATH_HPP
#define DILATED_IMPL_ORIGINAL_HOST_GEMM_PATH_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Geometry.hpp>
#include <impl/Dilated_BranchPlan.hpp>
#include <impl/Dilated_HostBlas.hpp>
#include <impl/Dilated_ImprovedHostTile.hpp>
#include <impl/Dilated_OriginalDriver.hpp>
#include <impl/Dilated_OriginalKernels.hpp>
#include <impl/Dilated_ScratchPool.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace dilated::Impl::original_host {

// Whether the Original on ExecSpace with storage T can take this path (the caller also asks
// for contiguous head dims and AttentionOptions::vendor_gemm).
template <class ExecSpace, class T>
inline constexpr bool applies_v =
    host_blas_type_v<T>&& std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>;

// Query rows per block, forward and backward. Each product packs its whole key-side operand (K
// or V: m x d) per call, so fewer, taller blocks pack less per FLOP: at m = 2048 a block of 64
// rows spent ~25 % of the forward in OpenBLAS' packing (perf), 256 rows measured 1.1-1.4x faster
// (docs/performance-notes.md). A block's score rows are then 2 MiB (forward: 256 x 2048 floats;
// backward: two 128-row matrices), in L2 and L3.
inline constexpr int forward_rows = 256;
inline constexpr int backward_rows = 128;

// Score rows' leading dimension: the longest segment's kept count in whole 64-byte lines.
inline int leading_dimension(int max_kept) {
  return (max_kept + 15) / 16 * 16;
}

// Entries of T per thread: forward S (rows x ld), O (rows x d), lse and 1/sum (rows each);
// backward S and dP (rows x ld each).
inline long slot_entries(int max_kept, int d, bool backward) {
  const long ld = leading_dimension(max_kept);
  return backward ? 2 * backward_rows * ld : forward_rows * (ld + d + 2);
}
inline int max_kept(const Geometry& g, int n) {
  int most = 0;
  for (int i = 0; i < g.num_branches(); ++i) {
    const int w = g.window(i, n), r = g.dilation_rate(i);
    most = std::max(most, (w + r - 1) / r);
  }
  return most;
}
// The workspace of a call (bytes), for DilatedAttention::plan_scratch.
template <class T>
std::size_t workspace_bytes(const Geometry& g, int n, int d, int threads, bool backward) {
  return static_cast<std::size_t>(threads) * slot_entries(max_kept(g, n), d, backward) * sizeof(T);
}
inline constexpr const char* workspace_label = "dilated::original::host_gemm_ws";

// exp(x) for x <= 0 in loops the compiler vectorises: Cephes' polynomial for float (the host
// micro-kernels' exp, Dilated_ImprovedHostTile.hpp), std::exp for double.
template <class T>
inline T exp_nonpositive(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return host_tile::exp_nonpositive(x);
  } else {
    return std::exp(x);
  }
}

// One score row s[0, mk) with keys [last, mk) masked: s[u] = exp(s[u] - max), masked 0.
// Returns the row's max and sum of exponentials (last >= 1: a row always sees its own key).
template <class T>
inline void exponentiate_row(T* s, int last, int mk, T& row_max, T& row_sum) {
  T mx = -std::numeric_limits<T>::infinity();
#if defined(_OPENMP)
#pragma omp simd reduction(max : mx)
#endif
  for (int u = 0; u < last; ++u)
    mx = s[u] > mx ? s[u] : mx;
  T sum = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : sum)
#endif
  for (int u = 0; u < last; ++u) {
    const T e = exp_nonpositive<T>(s[u] - mx);
    s[u] = e;
    sum += e;
  }
  for (int u = last; u < mk; ++u)
    s[u] = 0;
  row_max = mx;
  row_sum = sum;
}

// Row `t` of one (batch, head)'s kept positions in a (b, n, h, d) view, and the stride between
// consecutive kept rows.
template <class View>
auto kept_row(const View& x, const typename BranchPlan<Kokkos::HostSpace>::Item& it, int t) {
  return x.data() + static_cast<long>(it.b) * x.stride(0) +
         static_cast<long>(it.kept.position(t)) * x.stride(1) +
         static_cast<long>(it.head) * x.stride(2);
}
template <class View>
long kept_stride(const View& x, const typename BranchPlan<Kokkos::HostSpace>::Item& it) {
  return static_cast<long>(it.kept.stride) * x.stride(1);
}

template <class ExecSpace>
std::vector<BranchPlan<Kokkos::HostSpace>> branch_plans(const Geometry& g, int batch, int n) {
  std::vector<BranchPlan<Kokkos::HostSpace>> plans;
  for (int i = 0; i < g.num_branches(); ++i)
    plans.push_back(make_branch_plan<Kokkos::HostSpace>(g, i, batch, n));
  return plans;
}

// One forward block: rows [t0, t1) of item `it`, merged into out_acc / lse_acc.
template <class T, class Q, class K, class V, class OutAcc, class LseAcc>
void forward_block(const BranchLaunch<Kokkos::HostSpace, T>& launch,
                   const typename BranchPlan<Kokkos::HostSpace>::Item& it, int t0, int t1,
                   const Q& q, const K& k, const V& v, const OutAcc& out_acc, const LseAcc& lse_acc,
                   T* slot, int ld) {
  const int m = it.kept.count, d = launch.d, rows = t1 - t0, b = it.b, h = it.head;
  const int mk = launch.causal ? t1 : m;  // keys any row of the block sees
  T* S = slot;
  T* O = S + static_cast<long>(forward_rows) * ld;
  T* row_lse = O + static_cast<long>(forward_rows) * d;
  T* inv_sum = row_lse + forward_rows;
  // S^T (column-major mk x rows) = K Q_t^T: the row-major rows x mk block of scale Q_t K^T.
  host_gemm<T>('T', 'N', mk, rows, d, launch.scale, kept_row(k, it, 0), kept_stride(k, it),
               kept_row(q, it, t0), kept_stride(q, it), T(0), S, ld);
  for (int i = 0; i < rows; ++i) {
    const int t = t0 + i, last = launch.causal ? t + 1 : m;
    T* s = S + static_cast<long>(i) * ld;
    T mx, sum;
    exponentiate_row(s, last, mk, mx, sum);
    if (launch.dropout.active()) {
      const int pt = it.kept.position(t);
      for (int u = 0; u < last; ++u)
        s[u] *= T(launch.dropout.factor(launch.plan.branch, b, h, pt, it.kept.position(u)));
    }
    row_lse[i] = mx + std::log(sum);
    inv_sum[i] = T(1) / sum;
  }
  // O^T (column-major d x rows) = V^T (e Z)^T: the row-major rows x d block of (e Z) V.
  host_gemm<T>('N', 'N', d, rows, mk, T(1), kept_row(v, it, 0), kept_stride(v, it), S, ld, T(0), O,
               d);
  for (int i = 0; i < rows; ++i) {
    const int pt = it.kept.position(t0 + i);
    const T lse_t = row_lse[i];
    T keep_old = 0, weight = launch.output_scale, merged = lse_t;
    if (launch.longnet) {
      const auto mw = merge_lse(T(lse_acc(b, pt, h)), lse_t);
      merged = mw.merged;
      keep_old = mw.keep_old;
      weight = mw.weight;
    }
    const T w = weight * inv_sum[i];
    T* out = &out_acc(b, pt, h, 0);
    const T* o = O + static_cast<long>(i) * d;
    DILATED_HOST_SIMD
    for (int c = 0; c < d; ++c)
      out[c] = keep_old * out[c] + w * o[c];
    lse_acc(b, pt, h) = merged;
  }
}

// Merged output and log-sum-exp of all branches into out_acc (zeroed) and lse_acc (set here to
// -inf first), like original_forward_branches.
template <class ExecSpace, class T, class Q, class K, class V>
void forward_branches(const ExecSpace& space, const Geometry& g,
                      const BranchLaunch<Kokkos::HostSpace, T>& base, const Q& q, const K& k,
                      const V& v, const Accumulator4<ExecSpace, T>& out_acc,
                      const Accumulator3<ExecSpace, T>& lse_acc) {
  const int batch = q.extent(0), n = q.extent(1), d = q.extent(3);
  Kokkos::deep_copy(space, lse_acc, -math::infinity<T>());
  const int most = max_kept(g, n), ld = leading_dimension(most);
  const long per_slot = slot_entries(most, d, false);
  const Kokkos::Experimental::UniqueToken<ExecSpace> token(space);
  const auto workspace = scratch_view<Kokkos::View<T*, Kokkos::HostSpace>>(
      space, workspace_label, false, token.size() * per_slot);
  const SingleThreadedBlas one_thread;
  for (const auto& plan : branch_plans<ExecSpace>(g, batch, n)) {
    BranchLaunch<Kokkos::HostSpace, T> launch = base;
    launch.plan = plan;
    const long blocks = (plan.max_kept + forward_rows - 1) / forward_rows;
    const long tasks = plan.num_items() * blocks;
    Kokkos::parallel_for("dilated::original::host_gemm_forward",
                         Kokkos::RangePolicy<ExecSpace, Kokkos::Schedule<Kokkos::Dynamic>>(
                             space, 0, tasks, Kokkos::ChunkSize(1)),
                         [=](long task) {
                           const auto it = launch.plan.item(task / blocks, launch.n);
                           const int t0 = static_cast<int>(task % blocks) * forward_rows;
                           if (t0 >= it.kept.count) return;  // a shorter (last) segment
                           const int id = token.acquire();
                           forward_block(launch, it, t0, std::min(t0 + forward_rows, it.kept.count),
                                         q, k, v, out_acc, lse_acc,
                                         workspace.data() + id * per_slot, ld);
                           token.release(id);
                         });
  }
}

// The backward of one item, its row blocks in order, accumulating into dq/dk/dv (T, (b, n, h,
// d), contiguous head dim). lse_acc: the merged log-sum-exp L (longnet).
template <class T, class Q, class K, class V, class O, class G, class LseAcc, class GradAcc>
void backward_item(const BranchLaunch<Kokkos::HostSpace, T>& launch,
                   const typename BranchPlan<Kokkos::HostSpace>::Item& it, const Q& q, const K& k,
                   const V& v, const O& out, const G& dout, const LseAcc& lse_acc,
                   const GradAcc& dq, const GradAcc& dk, const GradAcc& dv, bool through_weights,
                   T* slot, int ld) {
  const int m = it.kept.count, d = launch.d, b = it.b, h = it.head;
  const int branch = launch.plan.branch;
  T* S = slot;                                        // scores, then P~ Z
  T* dP = S + static_cast<long>(backward_rows) * ld;  // dP, then dS
  const long rq = kept_stride(q, it), rk = kept_stride(k, it), rv = kept_stride(v, it),
             rg = kept_stride(dout, it), ra = kept_stride(dq, it);
  for (int t0 = 0; t0 < m; t0 += backward_rows) {
    const int t1 = std::min(t0 + backward_rows, m), rows = t1 - t0;
    const int mk = launch.causal ? t1 : m;
    host_gemm<T>('T', 'N', mk, rows, d, launch.scale, kept_row(k, it, 0), rk, kept_row(q, it, t0),
                 rq, T(0), S, ld);
    host_gemm<T>('T', 'N', mk, rows, d, T(1), kept_row(v, it, 0), rv, kept_row(dout, it, t0), rg,
                 T(0), dP, ld);
    for (int i = 0; i < rows; ++i) {
      const int t = t0 + i, last = launch.causal ? t + 1 : m, pt = it.kept.position(t);
      T* s = S + static_cast<long>(i) * ld;
      T* dp = dP + static_cast<long>(i) * ld;
      T mx, sum;
      exponentiate_row(s, last, mk, mx, sum);
      const auto z = [&](int u) {
        return T(launch.dropout.factor(branch, b, h, pt, it.kept.position(u)));
      };
      T D = 0;
      if (through_weights) {
        const auto* g_t = kept_row(dout, it, t);
        const auto* o_t = &out(b, pt, h, 0);
        DILATED_HOST_SIMD
        for (int c = 0; c < d; ++c)
          D += T(g_t[c]) * T(o_t[c]);
      } else if (launch.dropout.active()) {
        for (int u = 0; u < last; ++u)
          D += s[u] * z(u) * dp[u];
        D /= sum;
      } else {
#if defined(_OPENMP)
#pragma omp simd reduction(+ : D)
#endif
        for (int u = 0; u < last; ++u)
          D += s[u] * dp[u];
        D /= sum;
      }
      // p = w P = w e / sum, with w = exp(lse_i - L) for longnet, 1/G for grouped.
      const T lse_i = mx + std::log(sum);
      const T w_over_sum =
          (launch.longnet ? std::exp(lse_i - T(lse_acc(b, pt, h))) : launch.output_scale) / sum;
      if (launch.dropout.active()) {
        for (int u = 0; u < last; ++u) {
          const T p = w_over_sum * s[u], zu = z(u);
          s[u] = p * zu;
          dp[u] = p * (zu * dp[u] - D);
        }
      } else {
        DILATED_HOST_SIMD
        for (int u = 0; u < last; ++u) {
          const T p = w_over_sum * s[u];
          s[u] = p;
          dp[u] = p * (dp[u] - D);
        }
      }
      for (int u = last; u < mk; ++u)
        dp[u] = 0;  // s is 0 there already
    }
    // Column-major: dv^T (d x mk) += G_t^T (P~Z), dq_t^T (d x rows) += scale K^T dS^T,
    // dk^T (d x mk) += scale Q_t^T dS.
    host_gemm<T>('N', 'T', d, mk, rows, T(1), kept_row(dout, it, t0), rg, S, ld, T(1),
                 kept_row(dv, it, 0), ra);
    host_gemm<T>('N', 'N', d, rows, mk, launch.scale, kept_row(k, it, 0), rk, dP, ld, T(1),
                 kept_row(dq, it, t0), ra);
    host_gemm<T>('N', 'T', d, mk, rows, launch.scale, kept_row(q, it, t0), rq, dP, ld, T(1),
                 kept_row(dk, it, 0), ra);
  }
}

template <class ExecSpace, class T, class Q, class K, class V, class O, class G>
void backward_branches(const ExecSpace& space, const Geometry& g,
                       const BranchLaunch<Kokkos::HostSpace, T>& base, const Q& q, const K& k,
                       const V& v, const O& out, const G& dout,
                       const Accumulator3<ExecSpace, T>& lse_acc,
                       const Accumulator4<ExecSpace, T>& dq, const Accumulator4<ExecSpace, T>& dk,
                       const Accumulator4<ExecSpace, T>& dv, bool through_weights) {
  const int batch = q.extent(0), n = q.extent(1), d = q.extent(3);
  const int most = max_kept(g, n), ld = leading_dimension(most);
  const long per_slot = slot_entries(most, d, true);
  const Kokkos::Experimental::UniqueToken<ExecSpace> token(space);
  const auto workspace = scratch_view<Kokkos::View<T*, Kokkos::HostSpace>>(
      space, workspace_label, false, token.size() * per_slot);
  const SingleThreadedBlas one_thread;
  for (const auto& plan : branch_plans<ExecSpace>(g, batch, n)) {
    BranchLaunch<Kokkos::HostSpace, T> launch = base;
    launch.plan = plan;
    Kokkos::parallel_for("dilated::original::host_gemm_backward",
                         Kokkos::RangePolicy<ExecSpace, Kokkos::Schedule<Kokkos::Dynamic>>(
                             space, 0, plan.num_items(), Kokkos::ChunkSize(1)),
                         [=](long item) {
                           const auto it = launch.plan.item(item, launch.n);
                           if (it.kept.count == 0) return;
                           const int id = token.acquire();
                           backward_item(launch, it, q, k, v, out, dout, lse_acc, dq, dk, dv,
                                         through_weights, workspace.data() + id * per_slot, ld);
                           token.release(id);
                         });
  }
}

}  // namespace dilated::Impl::original_host

#endif  // DILATED_IMPL_ORIGINAL_HOST_GEMM_PATH_HPP
