// The exact reference (the oracle every kernel is tested against): both semantics of
// docs/semantics.md computed in double on the host as full-length masked softmax attention.
//
// For each head and query position p, row p of an n x n multiplicity mask says how many
// branches let p attend to key q (both kept by the head, in the same segment of that branch,
// and q <= p when causal). The output is softmax attention weighted by that multiplicity:
//   out(p) = output_scale * sum_q M(p,q) exp(s(p,q)) v(q) / sum_q M(p,q) exp(s(p,q)),
//   lse(p) = log sum_q M(p,q) exp(s(p,q)),      s(p,q) = scale * <q(p), k(q)>.
// For grouped every head sits in one branch, so M is 0/1 and output_scale = 1/G; for longnet
// this equals the log-sum-exp merge of the branches (attention over the multiset union of
// their keys). A position no branch keeps gets out = 0 and lse = -inf.
//
// Nothing here knows about segment tiling: the mask comes from Geometry::keeps and
// Geometry::segment_of, the spec's own predicates.
#ifndef DILATED_REFERENCE_HPP
#define DILATED_REFERENCE_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Geometry.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_Numeric.hpp>
#include <impl/Dilated_ShapeChecks.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace dilated {

struct ReferenceOptions {
  bool is_causal = false;
  // Multiplies q.k; unset means 1/sqrt(head_dim). Must be finite.
  std::optional<double> softmax_scale;
};

// Row p of the n x n multiplicity mask of `head` (see the file comment), written to row[0, n).
inline void reference_mask_row(const Geometry& geometry, int head, int p, int n, bool is_causal,
                               std::vector<int>& row) {
  row.assign(n, 0);
  for (int i = 0; i < geometry.num_branches(); ++i) {
    if (!geometry.keeps(i, head, p, n)) continue;
    const int segment = geometry.segment_of(i, p, n);
    const int last = is_causal ? p : n - 1;
    for (int key = 0; key <= last; ++key) {
      if (geometry.keeps(i, head, key, n) && geometry.segment_of(i, key, n) == segment) {
        ++row[key];
      }
    }
  }
}

namespace Impl {

template <class ViewType>
inline constexpr bool is_host_double_view_v =
    std::is_same_v<typename ViewType::non_const_value_type, double>&&
        is_accessible_from_v<Kokkos::DefaultHostExecutionSpace, ViewType>;

template <class Q, class K, class V, class O, class L>
void reference_impl(const Kokkos::DefaultHostExecutionSpace& space, const Geometry& geometry,
                    const Q& q, const K& k, const V& v, const O& out, const L* lse,
                    const ReferenceOptions& options) {
  constexpr const char* fn = "dilated::reference";
  check_attention_shapes(fn, geometry, q, k, v, out);
  if (lse) check_per_token(fn, "lse", *lse, q);
  const int batch = static_cast<int>(q.extent(0)), n = static_cast<int>(q.extent(1));
  const int heads = static_cast<int>(q.extent(2)), dim = static_cast<int>(q.extent(3));
  const double scale = options.softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(dim)));
  require(std::isfinite(scale), fn, "options.softmax_scale = ", scale, " must be finite");
  const double out_scale = geometry.output_scale();

  Kokkos::parallel_for(
      "dilated::reference",
      Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(space, 0, batch * heads), [&](int bh) {
        const int b = bh / heads, h = bh % heads;
        std::vector<int> mask;
        std::vector<double> score(n), acc(dim);
        for (int p = 0; p < n; ++p) {
          reference_mask_row(geometry, h, p, n, options.is_causal, mask);
          double max_score = -std::numeric_limits<double>::infinity();
          bool kept = false;  // some branch keeps p: a NaN or infinity in its row propagates
          for (int key = 0; key < n; ++key) {
            if (mask[key] == 0) continue;
            kept = true;
            double dot = 0;
            for (int c = 0; c < dim; ++c)
              dot += to_double(q(b, p, h, c)) * to_double(k(b, key, h, c));
            score[key] = scale * dot;
            max_score = std::max(max_score, score[key]);
          }
          double sum = 0;
          acc.assign(dim, 0.0);
          for (int key = 0; key < n; ++key) {
            if (mask[key] == 0) continue;
            const double w = mask[key] * std::exp(score[key] - max_score);
            sum += w;
            for (int c = 0; c < dim; ++c)
              acc[c] += w * to_double(v(b, key, h, c));
          }
          for (int c = 0; c < dim; ++c)
            out(b, p, h, c) = kept ? out_scale * acc[c] / sum : 0.0;
          if (lse) {
            (*lse)(b, p, h) =
                kept ? max_score + std::log(sum) : -std::numeric_limits<double>::infinity();
          }
        }
      });
  space.fence();
}

template <class ExecSpace, class Q, class K, class V, class O>
constexpr void check_reference_types() {
  static_assert(std::is_same_v<ExecSpace, Kokkos::DefaultHostExecutionSpace>,
                "dilated::reference: runs on Kokkos::DefaultHostExecutionSpace");
  static_assert(is_view_v<Q> && is_view_v<K> && is_view_v<V> && is_view_v<O>,
                "dilated::reference: q, k, v and out must be Kokkos::Views");
  static_assert(
      view_rank_v<Q> == 4 && view_rank_v<K> == 4 && view_rank_v<V> == 4 && view_rank_v<O> == 4,
      "dilated::reference: q, k, v and out must have rank 4 (batch, seq, heads, dim)");
  static_assert(is_accessible_from_v<ExecSpace, Q> && is_accessible_from_v<ExecSpace, K> &&
                    is_accessible_from_v<ExecSpace, V>,
                "dilated::reference: q, k and v must be accessible from the host");
  static_assert(is_host_double_view_v<O>,
                "dilated::reference: out must be a host-accessible View of double");
}

}  // namespace Impl

// out (and lse) = the exact dilated attention of q, k, v; see the file comment.
// q, k, v: host-accessible (b, n, h, d) Views of any floating storage type;
// out: (b, n, h, d) View of double; lse: (b, n, h) View of double.
template <class ExecSpace, class Q, class K, class V, class O, class L,
          std::enable_if_t<Impl::is_view_v<L>, int> = 0>
void reference(const ExecSpace& space, const Geometry& geometry, const Q& q, const K& k, const V& v,
               const O& out, const L& lse, const ReferenceOptions& options = {}) {
  Impl::check_reference_types<ExecSpace, Q, K, V, O>();
  static_assert(Impl::view_rank_v<L> == 3 && Impl::is_host_double_view_v<L>,
                "dilated::reference: lse must be a host-accessible rank-3 View of double");
  Impl::ScopedRegion region("dilated::reference");
  Impl::reference_impl(space, geometry, q, k, v, out, &lse, options);
}

// As above, without the log-sum-exp.
template <class ExecSpace, class Q, class K, class V, class O>
void reference(const ExecSpace& space, const Geometry& geometry, const Q& q, const K& k, const V& v,
               const O& out, const ReferenceOptions& options = {}) {
  Impl::check_reference_types<ExecSpace, Q, K, V, O>();
  Impl::ScopedRegion region("dilated::reference");
  using NoLse = Kokkos::View<double***, Kokkos::HostSpace>;
  Impl::reference_impl(space, geometry, q, k, v, out, static_cast<const NoLse*>(nullptr), options);
}

// The same two calls on a default-constructed host execution space.
template <class Q, class K, class V, class O, class L,
          std::enable_if_t<Impl::is_view_v<L>, int> = 0>
void reference(const Geometry& geometry, const Q& q, const K& k, const V& v, const O& out,
               const L& lse, const ReferenceOptions& options = {}) {
  reference(Kokkos::DefaultHostExecutionSpace{}, geometry, q, k, v, out, lse, options);
}

template <class Q, class K, class V, class O>
void reference(const Geometry& geometry, const Q& q, const K& k, const V& v, const O& out,
               const ReferenceOptions& options = {}) {
  reference(Kokkos::DefaultHostExecutionSpace{}, geometry, q, k, v, out, options);
}

}  // namespace dilated

#endif  // DILATED_REFERENCE_HPP
