// The Original algorithm with its two matrix products per segment in vendor GEMMs (cuBLAS on
// CUDA: tensor cores for half and bf16), as the seed's PyTorch peer does with einsum: for each
// (branch, batch, head) the segments of one length are one strided-batched GEMM that reads q,
// k, v in place (row stride r * stride(1), segment stride w * stride(1): the dilated segment
// is a strided matrix, never gathered). The score matrices, the softmax and the merge are the
// same as in the team kernel; only who multiplies changes. Used where stride(3) == 1.
#ifndef DILATED_IMPL_ORIGINAL_GEMM_PATH_HPP
#define DILATED_IMPL_ORIGINAL_GEMM_PATH_HPP

#include <impl/Dilated_ScratchPool.hpp>
#include <impl/Dilated_CublasGemm.hpp>
#include <impl/Dilated_OriginalDriver.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <algorithm>
#include <type_traits>
#include <string>
#include <vector>

namespace dilated::Impl {

// One strided-batched GEMM's worth of work: `count` consecutive segments from `segment` of one
// (branch, batch, head), all with m kept positions.
struct SegmentGroup {
  int branch, b, head, offset, segment, count, m, window, dilation;
  KOKKOS_INLINE_FUNCTION int position(int i, int t) const {
    return (segment + i) * window + offset + t * dilation;
  }
};

// The groups of every branch, with at most `max_items` segments each (workspace budget).
inline std::vector<SegmentGroup> segment_groups(const Geometry& g, int batch, int n,
                                                std::size_t bytes_per_m2, std::size_t budget) {
  std::vector<SegmentGroup> groups;
  for (int i = 0; i < g.num_branches(); ++i) {
    const int w = g.window(i, n), r = g.dilation_rate(i), full = n / w;
    for (int b = 0; b < batch; ++b)
      for (int h = 0; h < g.num_heads(); ++h) {
        const int o = g.offset(i, h);
        if (o < 0) continue;
        const auto add = [&](int first, int count) {
          const int m = g.kept(i, first, o, n).count;
          if (m == 0 || count == 0) return;
          const long per = static_cast<long>(bytes_per_m2) * m * m;
          const int chunk = static_cast<int>(std::max(1L, std::min<long>(count, budget / per)));
          for (int s = first; s < first + count; s += chunk)
            groups.push_back({i, b, h, o, s, std::min(chunk, first + count - s), m, w, r});
        };
        add(0, full);
        if (full * w < n) add(full, 1);  // the partial last segment
      }
  }
  return groups;
}

using RowMember = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;

// A warp per row, several rows per team. A row's entries (`bytes_per_row`) are read from
// device memory once into shared memory when up to 8 rows fit in 32 KiB; the later passes over
// the row read the copy (re-reading device memory instead doubles the kernel's DRAM traffic:
// measured with ncu, 13.1 GB for the 64K forward). Longer rows are re-read.
struct RowLaunch {
  int rows_per_team;
  bool cached;
  std::size_t scratch_bytes;
};
inline RowLaunch row_launch(std::size_t bytes_per_row) {
  const std::size_t budget = 32768;
  const int fit = static_cast<int>(std::min<std::size_t>(8, budget / bytes_per_row));
  if (fit >= 1) return {fit, true, fit * bytes_per_row};
  return {8, false, 0};
}
inline Kokkos::TeamPolicy<Kokkos::Cuda> row_policy(const Kokkos::Cuda& space, int rows,
                                                   const RowLaunch& launch) {
  Kokkos::TeamPolicy<Kokkos::Cuda> policy(
      space, (rows + launch.rows_per_team - 1) / launch.rows_per_team, launch.rows_per_team, 32);
  return policy.set_scratch_size(0, Kokkos::PerTeam(launch.scratch_bytes));
}

// Device scratch for the largest group, `bytes(group)` each; reused group after group.
template <class Bytes>
Kokkos::View<char*, Kokkos::CudaSpace> group_workspace(const std::vector<SegmentGroup>& groups,
                                                       Bytes&& bytes) {
  std::size_t need = 0;
  for (const auto& gr : groups)
    need = std::max(need, bytes(gr));
  return scratch_view<Kokkos::View<char*, Kokkos::CudaSpace>>(
      Kokkos::Cuda(), "dilated::original::gemm_ws", false, need);
}

// The first pass over a row comes from device memory: each lane keeps kLoadsInFlight loads in
// flight (warp-coalesced, 32 entries apart) instead of one, or the pass is latency-bound
// (ncu: the 64K forward's softmax took 6.1 ms with one load per iteration for an ideal 5.6 GB,
// ~0.9 TB/s; 3.8 ms with four). Vector iteration q
// (lane q % 32) covers entries (q / 32) * 32 * kLoadsInFlight + q % 32 + 32 k.
constexpr int kLoadsInFlight = 4;
// Vector iterations that cover `count` entries: whole warps, each covering 32 * kLoadsInFlight.
KOKKOS_INLINE_FUNCTION int load_iterations(int count) {
  return 32 * ((count + 32 * kLoadsInFlight - 1) / (32 * kLoadsInFlight));
}
template <class F>
KOKKOS_FORCEINLINE_FUNCTION void for_each_load(int q, int count, const F& f) {
  const int base = (q / 32) * 32 * kLoadsInFlight + q % 32;
#pragma unroll
  for (int k = 0; k < kLoadsInFlight; ++k) {
    if (base + 32 * k < count) f(k, base + 32 * k);
  }
}

template <class View>
bool rows_are_contiguous(const View& v) {
  return v.stride(3) == 1;
}

// Pointer to row `position` of head `head` in batch `b` of a (b, n, h, d) view.
template <class View>
auto row_pointer(const View& v, int b, int position, int head) {
  return v.data() + static_cast<long>(b) * v.stride(0) + static_cast<long>(position) * v.stride(1) +
         static_cast<long>(head) * v.stride(2);
}

template <class T, class Acc, class Q, class K, class V, class Space>
void gemm_forward_branches(const Kokkos::Cuda& space, const Geometry& g,
                           const BranchLaunch<Space, Acc>& launch, const Q& q, const K& k,
                           const V& v, const Accumulator4<Kokkos::Cuda, Acc>& out_acc,
                           const Accumulator3<Kokkos::Cuda, Acc>& lse_acc, std::size_t budget) {
  const int batch = q.extent(0), n = q.extent(1), d = q.extent(3);
  Kokkos::deep_copy(space, lse_acc, -math::infinity<Acc>());
  // S (Acc), P (T), O (Acc, m x d <= m x m when d <= m; sized m*d below), row lse.
  const auto groups = segment_groups(g, batch, n, 2 * sizeof(Acc) + sizeof(T), budget);
  const auto workspace = group_workspace(groups, [&](const SegmentGroup& gr) {
    return static_cast<std::size_t>(gr.count) * gr.m *
           (static_cast<std::size_t>(gr.m) * (sizeof(Acc) + sizeof(T)) + (d + 1) * sizeof(Acc));
  });
  const bool longnet = launch.longnet, causal = launch.causal;
  const Acc output_scale = launch.output_scale;
  const Dropout dropout = launch.dropout;
  for (const auto& gr : groups) {
    const long mm = static_cast<long>(gr.m) * gr.m;
    Acc* S = reinterpret_cast<Acc*>(workspace.data());
    Acc* O = S + gr.count * mm;
    Acc* row_lse = O + static_cast<long>(gr.count) * gr.m * d;
    T* P = reinterpret_cast<T*>(row_lse + static_cast<long>(gr.count) * gr.m);
    const long row_q = static_cast<long>(gr.dilation) * q.stride(1),
               seg_q = static_cast<long>(gr.window) * q.stride(1);
    const long row_k = static_cast<long>(gr.dilation) * k.stride(1),
               seg_k = static_cast<long>(gr.window) * k.stride(1);
    const long row_v = static_cast<long>(gr.dilation) * v.stride(1),
               seg_v = static_cast<long>(gr.window) * v.stride(1);
    const int first = gr.segment * gr.window + gr.offset;
    // S^T (column-major) = K Q^T, i.e. S = scale Q K^T row-major, per segment.
    gemm_strided_batched<T, Acc>(
        space, true, false, gr.m, gr.m, d, launch.scale, row_pointer(k, gr.b, first, gr.head),
        row_k, seg_k, row_pointer(q, gr.b, first, gr.head), row_q, seg_q, 0, S, gr.m, mm, gr.count);
    // Row softmax (causal mask), dropout, P in storage precision for the second product.
    const SegmentGroup group = gr;
    const RowLaunch rl = row_launch(gr.m * sizeof(Acc));
    Kokkos::parallel_for(
        "dilated::original::gemm_softmax", row_policy(space, gr.count * gr.m, rl),
        KOKKOS_LAMBDA(const RowMember& team) {
          const int m = group.m, rows = group.count * m;
          Acc* cache = static_cast<Acc*>(team.team_shmem().get_shmem(rl.scratch_bytes));
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rl.rows_per_team), [&](int j) {
            const int row = team.league_rank() * rl.rows_per_team + j;
            if (row >= rows) return;
            const int i = row / m, t = row % m, last = causal ? t + 1 : m;
            // s: the row, from shared memory after the first pass when it is cached.
            const Acc* s = S + static_cast<long>(row) * m;
            Acc* e = rl.cached ? cache + static_cast<long>(j) * m : nullptr;
            Acc mx;
            Kokkos::parallel_reduce(
                Kokkos::ThreadVectorRange(team, load_iterations(last)),
                [&](int q, Acc& x) {
                  Acc value[kLoadsInFlight];
                  for_each_load(q, last, [&](int k, int u) { value[k] = s[u]; });
                  for_each_load(q, last, [&](int k, int u) {
                    if (e) e[u] = value[k];
                    x = value[k] > x ? value[k] : x;
                  });
                },
                Kokkos::Max<Acc>(mx));
            if (e) s = e;
            Acc sum;
            Kokkos::parallel_reduce(
                Kokkos::ThreadVectorRange(team, last),
                [&](int u, Acc& x) { x += math::exp(s[u] - mx); }, sum);
            const int pt = group.position(i, t);
            const Acc inv_sum = Acc(1) / sum;
            T* p = P + static_cast<long>(row) * m;
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, m), [&](int u) {
              Acc value = 0;
              if (u < last) {
                value = math::exp(s[u] - mx) * inv_sum *
                        Acc(dropout.factor(group.branch, group.b, group.head, pt,
                                           group.position(i, u)));
              }
              p[u] = static_cast<T>(value);
            });
            Kokkos::single(Kokkos::PerThread(team), [&]() { row_lse[row] = mx + math::log(sum); });
          });
        });
    // O^T (column-major, d x m) = V^T P^T, i.e. O = P V row-major.
    gemm_strided_batched<T, Acc>(space, false, false, d, gr.m, gr.m, 1.0,
                                 row_pointer(v, gr.b, first, gr.head), row_v, seg_v, P, gr.m, mm, 0,
                                 O, d, static_cast<long>(gr.m) * d, gr.count);
    // Merge into the output: grouped writes (each row has one branch), longnet log-sum-exp.
    const RowLaunch merge_rows{8, false, 0};
    Kokkos::parallel_for(
        "dilated::original::gemm_merge", row_policy(space, gr.count * gr.m, merge_rows),
        KOKKOS_LAMBDA(const RowMember& team) {
          const int rows = group.count * group.m;
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, merge_rows.rows_per_team), [&](int j) {
            const int row = team.league_rank() * merge_rows.rows_per_team + j;
            if (row >= rows) return;
            const int i = row / group.m, t = row % group.m;
            const int pt = group.position(i, t), b = group.b, h = group.head;
            const Acc lse_t = row_lse[row];
            Acc keep_old = 0, weight = output_scale, merged = lse_t;
            if (longnet) {
              // One lane reads the old lse and broadcasts it: no lane can still be reading
              // when it is replaced below.
              Acc previous;
              Kokkos::single(
                  Kokkos::PerThread(team), [&](Acc& x) { x = lse_acc(b, pt, h); }, previous);
              const auto mw = merge_lse(previous, lse_t);
              merged = mw.merged;
              keep_old = mw.keep_old;
              weight = mw.weight;
            }
            const Acc* o = O + static_cast<long>(row) * d;
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
              out_acc(b, pt, h, c) = keep_old * out_acc(b, pt, h, c) + weight * o[c];
            });
            Kokkos::single(Kokkos::PerThread(team), [&]() { lse_acc(b, pt, h) = merged; });
          });
        });
  }
}

template <class T, class Acc, class Q, class K, class V, class O, class G, class Space>
void gemm_backward_branches(const Kokkos::Cuda& space, const Geometry& g,
                            const BranchLaunch<Space, Acc>& launch, const Q& q, const K& k,
                            const V& v, const O& out, const G& dout,
                            const Accumulator3<Kokkos::Cuda, Acc>& lse_acc,
                            const Accumulator4<Kokkos::Cuda, Acc>& dq,
                            const Accumulator4<Kokkos::Cuda, Acc>& dk,
                            const Accumulator4<Kokkos::Cuda, Acc>& dv, bool through_weights,
                            std::size_t budget) {
  const int batch = q.extent(0), n = q.extent(1), d = q.extent(3);
  // P (Acc), dP (Acc), P w Z (T), dS (T).
  constexpr std::size_t per_m2 = 2 * sizeof(Acc) + 2 * sizeof(T);
  const auto groups = segment_groups(g, batch, n, per_m2, budget);
  const auto workspace = group_workspace(groups, [&](const SegmentGroup& gr) {
    return static_cast<std::size_t>(gr.count) * gr.m * gr.m * per_m2;
  });
  const bool longnet = launch.longnet, causal = launch.causal;
  const Acc output_scale = launch.output_scale;
  const Dropout dropout = launch.dropout;
  for (const auto& gr : groups) {
    const long mm = static_cast<long>(gr.m) * gr.m;
    Acc* P = reinterpret_cast<Acc*>(workspace.data());
    Acc* dP = P + gr.count * mm;
    T* PwZ = reinterpret_cast<T*>(dP + gr.count * mm);
    T* dS = PwZ + gr.count * mm;
    const auto rows = [&](const auto& view) {
      return std::make_pair(static_cast<long>(gr.dilation) * view.stride(1),
                            static_cast<long>(gr.window) * view.stride(1));
    };
    const auto [row_q, seg_q] = rows(q);
    const auto [row_k, seg_k] = rows(k);
    const auto [row_v, seg_v] = rows(v);
    const auto [row_g, seg_g] = rows(dout);
    const auto [row_a, seg_a] = rows(dq);  // dq, dk, dv share one layout
    const int first = gr.segment * gr.window + gr.offset;
    gemm_strided_batched<T, Acc>(
        space, true, false, gr.m, gr.m, d, launch.scale, row_pointer(k, gr.b, first, gr.head),
        row_k, seg_k, row_pointer(q, gr.b, first, gr.head), row_q, seg_q, 0, P, gr.m, mm, gr.count);
    // dP = dO V^T, row-major.
    gemm_strided_batched<T, Acc>(
        space, true, false, gr.m, gr.m, d, 1.0, row_pointer(v, gr.b, first, gr.head), row_v, seg_v,
        row_pointer(dout, gr.b, first, gr.head), row_g, seg_g, 0, dP, gr.m, mm, gr.count);
    // Per row: the probabilities, D, then P w Z and dS in storage precision.
    const SegmentGroup group = gr;
    const RowLaunch rl = row_launch(2 * gr.m * sizeof(Acc));
    Kokkos::parallel_for(
        "dilated::original::gemm_backward_rows", row_policy(space, gr.count * gr.m, rl),
        KOKKOS_LAMBDA(const RowMember& team) {
          const int m = group.m, rows = group.count * m, b = group.b, h = group.head;
          Acc* cache = static_cast<Acc*>(team.team_shmem().get_shmem(rl.scratch_bytes));
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rl.rows_per_team), [&](int j) {
            const int row = team.league_rank() * rl.rows_per_team + j;
            if (row >= rows) return;
            const int i = row / m, t = row % m, last = causal ? t + 1 : m;
            const int pt = group.position(i, t);
            // s, dp: the score and dP rows, from shared memory once cached.
            const Acc* s = P + static_cast<long>(row) * m;
            const Acc* dp = dP + static_cast<long>(row) * m;
            Acc* e = rl.cached ? cache + 2 * static_cast<long>(j) * m : nullptr;
            Acc mx;
            Kokkos::parallel_reduce(
                Kokkos::ThreadVectorRange(team, load_iterations(last)),
                [&](int q, Acc& x) {
                  Acc value[kLoadsInFlight], grad[kLoadsInFlight];
                  for_each_load(q, last, [&](int k, int u) {
                    value[k] = s[u];
                    grad[k] = dp[u];
                  });
                  for_each_load(q, last, [&](int k, int u) {
                    if (e) {
                      e[u] = value[k];
                      e[m + u] = grad[k];
                    }
                    x = value[k] > x ? value[k] : x;
                  });
                },
                Kokkos::Max<Acc>(mx));
            if (e) {
              s = e;
              dp = e + m;
            }
            Acc sum;
            Kokkos::parallel_reduce(
                Kokkos::ThreadVectorRange(team, last),
                [&](int u, Acc& x) { x += math::exp(s[u] - mx); }, sum);
            const auto z = [&](int u) {
              return Acc(dropout.factor(group.branch, b, h, pt, group.position(i, u)));
            };
            Acc D = 0;
            if (through_weights) {
              Kokkos::parallel_reduce(
                  Kokkos::ThreadVectorRange(team, static_cast<int>(out.extent(3))),
                  [&](int c, Acc& x) { x += Acc(dout(b, pt, h, c)) * Acc(out(b, pt, h, c)); }, D);
            } else {
              Kokkos::parallel_reduce(
                  Kokkos::ThreadVectorRange(team, last),
                  [&](int u, Acc& x) { x += math::exp(s[u] - mx) * z(u) * dp[u]; }, D);
              D /= sum;
            }
            const Acc lse = mx + math::log(sum);
            // p = w P = w e / sum, with w = exp(lse_i - L) for longnet, 1/G for grouped.
            const Acc w_over_sum =
                (longnet ? math::exp(lse - Acc(lse_acc(b, pt, h))) : output_scale) / sum;
            T* pwz = PwZ + static_cast<long>(row) * m;
            T* ds = dS + static_cast<long>(row) * m;
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, m), [&](int u) {
              Acc a = 0, ee = 0;
              if (u < last) {
                const Acc p = w_over_sum * math::exp(s[u] - mx), zu = z(u);
                a = p * zu;
                ee = p * (zu * dp[u] - D);
              }
              pwz[u] = static_cast<T>(a);
              ds[u] = static_cast<T>(ee);
            });
          });
        });
    // dv rows += (P w Z)^T dO, dq rows += scale dS K, dk rows += scale dS^T Q (column-major).
    gemm_strided_batched<T, Acc>(
        space, false, true, d, gr.m, gr.m, 1.0, row_pointer(dout, gr.b, first, gr.head), row_g,
        seg_g, PwZ, gr.m, mm, 1.0, row_pointer(dv, gr.b, first, gr.head), row_a, seg_a, gr.count);
    gemm_strided_batched<T, Acc>(space, false, false, d, gr.m, gr.m, launch.scale,
                                 row_pointer(k, gr.b, first, gr.head), row_k, seg_k, dS, gr.m, mm,
                                 1.0, row_pointer(dq, gr.b, first, gr.head), row_a, seg_a,
                                 gr.count);
    gemm_strided_batched<T, Acc>(space, false, true, d, gr.m, gr.m, launch.scale,
                                 row_pointer(q, gr.b, first, gr.head), row_q, seg_q, dS, gr.m, mm,
                                 1.0, row_pointer(dk, gr.b, first, gr.head), row_a, seg_a,
                                 gr.count);
  }
}

}  // namespace dilated::Impl

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_ORIGINAL_GEMM_PATH_HPP
