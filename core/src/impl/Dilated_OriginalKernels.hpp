// The Original algorithm's team kernels. One team owns one work item of a branch: (batch,
// segment, head). It computes the segment's score matrix among the kept positions (read in
// place through the dilation stride, never gathered) into its slice of a workspace, applies the
// causal mask and a team-level softmax, then
//   forward : O = P V, merged into the output (grouped: / G; longnet: log-sum-exp merge);
//   backward: the gradients of q, k and v of that segment.
// Within one launch every (batch, position, head) row belongs to exactly one team, so every
// write is plain: no atomics. Branches are separate launches, merged in order.
#ifndef DILATED_IMPL_ORIGINAL_KERNELS_HPP
#define DILATED_IMPL_ORIGINAL_KERNELS_HPP

#include <Dilated_Compat.hpp>
#include <impl/Dilated_BranchPlan.hpp>
#include <impl/Dilated_Dropout.hpp>

#include <Kokkos_Core.hpp>

namespace dilated::Impl {

// Accumulation type of a storage type: double for double, float for everything else.
template <class T>
struct Accumulation {
  using type = float;
};
template <>
struct Accumulation<double> {
  using type = double;
};
template <class T>
using accumulation_t = typename Accumulation<std::remove_const_t<T>>::type;

// What the kernels of one launch share: the branch layout and the scalars of the call.
template <class MemorySpace, class Acc>
struct BranchLaunch {
  BranchPlan<MemorySpace> plan;
  long item_begin = 0;  // first item of this launch
  int n = 0, d = 0;
  Acc scale = 1;         // softmax scale on q.k
  Acc output_scale = 1;  // 1/G for grouped, 1 for longnet
  bool causal = false;
  bool longnet = false;
  Dropout dropout;  // inactive unless training with p > 0
};

// S[t*m + u] = P(t, u) = softmax_u(scale * q_t . k_u) over the kept positions of the item
// (causal: u <= t), and row_lse[t] = log sum_u exp(scale * q_t . k_u).
template <class Member, class QV, class KV, class Acc, class Space>
KOKKOS_INLINE_FUNCTION void segment_probabilities(const Member& team,
                                                  const BranchLaunch<Space, Acc>& launch,
                                                  const typename BranchPlan<Space>::Item& it,
                                                  const QV& q, const KV& k, Acc* S, Acc* row_lse) {
  const int m = it.kept.count, d = launch.d, b = it.b, h = it.head;
  Kokkos::parallel_for(Kokkos::TeamThreadRange(team, m), [&](int t) {
    const int pt = it.kept.position(t);
    const int last = launch.causal ? t + 1 : m;
    Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, m), [&](int u) {
      Acc s = -math::infinity<Acc>();
      if (u < last) {
        const int pu = it.kept.position(u);
        Acc dot = 0;
        for (int c = 0; c < d; ++c)
          dot += Acc(q(b, pt, h, c)) * Acc(k(b, pu, h, c));
        s = launch.scale * dot;
      }
      S[t * m + u] = s;
    });
  });
  team.team_barrier();
  Kokkos::parallel_for(Kokkos::TeamThreadRange(team, m), [&](int t) {
    Acc* row = S + t * m;
    Acc row_max;
    Kokkos::parallel_reduce(
        Kokkos::ThreadVectorRange(team, m), [&](int u, Acc& mx) { mx = row[u] > mx ? row[u] : mx; },
        Kokkos::Max<Acc>(row_max));
    Acc sum;
    Kokkos::parallel_reduce(
        Kokkos::ThreadVectorRange(team, m),
        [&](int u, Acc& acc) { acc += math::exp(row[u] - row_max); }, sum);
    const Acc lse = row_max + math::log(sum);
    Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, m),
                         [&](int u) { row[u] = math::exp(row[u] - lse); });
    Kokkos::single(Kokkos::PerThread(team), [&]() { row_lse[t] = lse; });
  });
  team.team_barrier();
}

// The longnet merge of a branch's row (log-sum-exp lse_i) into what earlier branches left
// (previous, -inf for none): merged = logaddexp(previous, lse_i), and the weights of the old
// output and of the branch's output.
template <class Acc>
struct LseMerge {
  Acc merged, keep_old, weight;
};
template <class Acc>
KOKKOS_INLINE_FUNCTION LseMerge<Acc> merge_lse(Acc previous, Acc lse_i) {
  const Acc mx = previous > lse_i ? previous : lse_i;
  const Acc merged = mx + math::log(math::exp(previous - mx) + math::exp(lse_i - mx));
  return {merged, math::exp(previous - merged), math::exp(lse_i - merged)};
}

// Forward of one branch: out_acc and lse_acc are (b, n, h[, d]) accumulators. grouped writes
// its rows (each row belongs to one branch); longnet merges them into what earlier branches
// left: L' = logaddexp(L, lse_i), out' = out e^(L - L') + o_i e^(lse_i - L'). With
// with_output = false only the merged log-sum-exp is computed (for the backward pass).
template <class ExecSpace, class QV, class KV, class VV, class OutAcc, class LseAcc>
struct OriginalForwardKernel {
  using Acc = typename OutAcc::non_const_value_type;
  using Space = typename ExecSpace::memory_space;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;

  BranchLaunch<Space, Acc> launch;
  QV q;
  KV k;
  VV v;
  OutAcc out;
  LseAcc lse;
  Kokkos::View<Acc**, Kokkos::LayoutRight, Space> work;  // (team, m*m + m)
  bool with_output = true;

  KOKKOS_FUNCTION void operator()(const Member& team) const {
    const auto it = launch.plan.item(launch.item_begin + team.league_rank(), launch.n);
    const int m = it.kept.count, b = it.b, h = it.head;
    if (m == 0) return;
    Acc* S = &work(team.league_rank(), 0);
    Acc* row_lse = S + static_cast<long>(m) * m;
    segment_probabilities(team, launch, it, q, k, S, row_lse);
    if (with_output && launch.dropout.active()) {
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, m), [&](int t) {
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, m), [&](int u) {
          S[t * m + u] *= Acc(launch.dropout.factor(launch.plan.branch, b, h, it.kept.position(t),
                                                    it.kept.position(u)));
        });
      });
      team.team_barrier();
    }
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, m), [&](int t) {
      const int pt = it.kept.position(t);
      const Acc lse_t = row_lse[t];
      Acc keep_old = 0, weight = launch.output_scale, merged = lse_t;
      if (launch.longnet) {
        Acc previous;
        Kokkos::single(
            Kokkos::PerThread(team), [&](Acc& x) { x = lse(b, pt, h); }, previous);
        const auto m = merge_lse(previous, lse_t);
        merged = m.merged;
        keep_old = m.keep_old;
        weight = m.weight;
      }
      if (with_output) {
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, launch.d), [&](int c) {
          Acc o = 0;
          for (int u = 0; u < m; ++u)
            o += S[t * m + u] * Acc(v(b, it.kept.position(u), h, c));
          out(b, pt, h, c) = keep_old * out(b, pt, h, c) + weight * o;
        });
      }
      Kokkos::single(Kokkos::PerThread(team), [&]() { lse(b, pt, h) = merged; });
    });
  }
};

// Backward of one branch, accumulating into dq/dk/dv (Acc, (b, n, h, d)). With P_i the
// branch's probabilities, Z the dropout factors, w the branch weight (1/G for grouped,
// exp(lse_i - L) for longnet with L the merged log-sum-exp) and g = dout:
//   dP(t,u) = g_t . v_u,   dS(t,u) = w P (Z dP - D_t),   dv_u += sum_t w P Z g_t,
//   dq_t += scale sum_u dS k_u,   dk_u += scale sum_t dS q_t,
// where D_t = g_t . out_t when gradients flow through the longnet branch weights, and
// D_t = g_t . o_i,t = sum_u P Z dP (the branch's own output) when they do not (grouped, or
// longnet detached).
template <class ExecSpace, class QV, class KV, class VV, class OV, class GV, class LseAcc,
          class GradAcc>
struct OriginalBackwardKernel {
  using Acc = typename GradAcc::non_const_value_type;
  using Space = typename ExecSpace::memory_space;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;

  BranchLaunch<Space, Acc> launch;
  QV q;
  KV k;
  VV v;
  OV out;
  GV dout;
  LseAcc lse;  // merged log-sum-exp (longnet); unused for grouped
  GradAcc dq, dk, dv;
  Kokkos::View<Acc**, Kokkos::LayoutRight, Space> work;  // (team, 2*m*m + m)
  bool through_weights = true;                           // D_t = g . out (longnet, not detached)

  KOKKOS_FUNCTION void operator()(const Member& team) const {
    const auto it = launch.plan.item(launch.item_begin + team.league_rank(), launch.n);
    const int m = it.kept.count, b = it.b, h = it.head, d = launch.d;
    if (m == 0) return;
    const long mm = static_cast<long>(m) * m;
    Acc* S = &work(team.league_rank(), 0);  // P, then dS
    Acc* W = S + mm;                        // w P Z, for dv
    Acc* row_lse = W + mm;
    segment_probabilities(team, launch, it, q, k, S, row_lse);
    const int branch = launch.plan.branch;
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, m), [&](int t) {
      const int pt = it.kept.position(t);
      const auto grad_dot_v = [&](int u) {
        Acc dp = 0;
        const int pu = it.kept.position(u);
        for (int c = 0; c < d; ++c)
          dp += Acc(dout(b, pt, h, c)) * Acc(v(b, pu, h, c));
        return dp;
      };
      const auto z = [&](int u) {
        return Acc(launch.dropout.factor(branch, b, h, pt, it.kept.position(u)));
      };
      Acc D = 0;
      if (through_weights) {
        Kokkos::parallel_reduce(
            Kokkos::ThreadVectorRange(team, d),
            [&](int c, Acc& acc) { acc += Acc(dout(b, pt, h, c)) * Acc(out(b, pt, h, c)); }, D);
      } else {
        // dP goes to W for the loop below (same lane, same u), so it is computed once.
        Kokkos::parallel_reduce(
            Kokkos::ThreadVectorRange(team, m),
            [&](int u, Acc& acc) {
              const Acc p = S[t * m + u];
              const Acc dp = p != Acc(0) ? grad_dot_v(u) : Acc(0);
              W[t * m + u] = dp;
              acc += p * z(u) * dp;
            },
            D);
      }
      const Acc w =
          launch.longnet ? math::exp(row_lse[t] - Acc(lse(b, pt, h))) : launch.output_scale;
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, m), [&](int u) {
        const Acc p = S[t * m + u];
        if (p == Acc(0)) {  // masked (causal) or underflowed: no gradient
          W[t * m + u] = 0;
          return;
        }
        const Acc zu = z(u), dp = through_weights ? grad_dot_v(u) : W[t * m + u];
        W[t * m + u] = w * p * zu;
        S[t * m + u] = w * p * (zu * dp - D);
      });
    });
    team.team_barrier();
    // dq rows t, dk and dv rows u: each row of this (segment, head) is this team's alone.
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, m), [&](int t) {
      const int pt = it.kept.position(t);
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
        Acc acc = 0;
        for (int u = 0; u < m; ++u)
          acc += S[t * m + u] * Acc(k(b, it.kept.position(u), h, c));
        dq(b, pt, h, c) += launch.scale * acc;
      });
    });
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, m), [&](int u) {
      const int pu = it.kept.position(u);
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
        Acc acc_k = 0, acc_v = 0;
        for (int t = 0; t < m; ++t) {
          const int pt = it.kept.position(t);
          acc_k += S[t * m + u] * Acc(q(b, pt, h, c));
          acc_v += W[t * m + u] * Acc(dout(b, pt, h, c));
        }
        dk(b, pu, h, c) += launch.scale * acc_k;
        dv(b, pu, h, c) += acc_v;
      });
    });
  }
};

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_ORIGINAL_KERNELS_HPP
