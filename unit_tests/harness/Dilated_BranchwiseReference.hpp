// A second oracle, in double on the host, written the way the spec's second description reads:
// attention inside each kept segment of each branch (with an optional dropout mask from the
// library's counter-based generator), then the merge: grouped divides by G, longnet weights
// the branches by softmax_i(lse_i). The merge can take its weights from another evaluation,
// which is what "detached branch weights" means for finite differences.
#ifndef DILATED_BRANCHWISE_REFERENCE_HPP
#define DILATED_BRANCHWISE_REFERENCE_HPP

#include <Dilated_Geometry.hpp>
#include <impl/Dilated_Dropout.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <limits>
#include <vector>

namespace dilated::testing {

using HostView4 = Kokkos::View<double****, Kokkos::HostSpace>;
using HostView3 = Kokkos::View<double***, Kokkos::HostSpace>;

struct Branchwise {
  std::vector<HostView4> o;    // per branch: attention output at the positions it keeps
  std::vector<HostView3> lse;  // per branch: log-sum-exp, -inf where it keeps nothing
  HostView4 out;               // merged
  HostView3 merged_lse;
};

inline Branchwise branchwise(const Geometry& g, const HostView4& q, const HostView4& k,
                             const HostView4& v, bool causal, double scale,
                             const dilated::Impl::Dropout& dropout = {}) {
  const double inf = std::numeric_limits<double>::infinity();
  const int B = q.extent(0), n = q.extent(1), H = q.extent(2), d = q.extent(3);
  Branchwise r;
  for (int i = 0; i < g.num_branches(); ++i) {
    r.o.emplace_back("o", B, n, H, d);
    r.lse.emplace_back("lse", B, n, H);
    Kokkos::deep_copy(r.lse.back(), -inf);
  }
  for (const auto& block : g.head_blocks()) {
    const int i = block.branch;
    for (int j = 0; j < g.num_segments(i, n); ++j) {
      const auto kept = g.kept(i, j, block.offset, n);
      for (int b = 0; b < B; ++b)
        for (int h = block.head_begin; h < block.head_end; ++h)
          for (int t = 0; t < kept.count; ++t) {
            const int p = kept.position(t), last = causal ? t : kept.count - 1;
            std::vector<double> s(last + 1);
            double m = -inf, z = 0;
            for (int u = 0; u <= last; ++u) {
              double dot = 0;
              for (int c = 0; c < d; ++c)
                dot += q(b, p, h, c) * k(b, kept.position(u), h, c);
              s[u] = scale * dot;
              m = std::max(m, s[u]);
            }
            for (int u = 0; u <= last; ++u)
              z += std::exp(s[u] - m);
            for (int c = 0; c < d; ++c) {
              double acc = 0;
              for (int u = 0; u <= last; ++u) {
                acc += std::exp(s[u] - m) * dropout.factor(i, b, h, p, kept.position(u)) *
                       v(b, kept.position(u), h, c);
              }
              r.o[i](b, p, h, c) = acc / z;
            }
            r.lse[i](b, p, h) = m + std::log(z);
          }
    }
  }
  return r;
}

// r.out, r.merged_lse from r's branches, with branch weights computed from `weights.lse`.
inline void merge(const Geometry& g, Branchwise& r, const Branchwise& weights) {
  const double inf = std::numeric_limits<double>::infinity();
  const int B = r.o[0].extent(0), n = r.o[0].extent(1), H = r.o[0].extent(2), d = r.o[0].extent(3),
            G = g.num_branches();
  r.out = HostView4("out", B, n, H, d);
  r.merged_lse = HostView3("merged_lse", B, n, H);
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < n; ++p)
      for (int h = 0; h < H; ++h) {
        double m = -inf;
        for (int i = 0; i < G; ++i)
          m = std::max(m, r.lse[i](b, p, h));
        r.merged_lse(b, p, h) = -inf;
        if (m == -inf) continue;
        double z = 0, wm = -inf, wz = 0;
        for (int i = 0; i < G; ++i)
          z += std::exp(r.lse[i](b, p, h) - m);
        r.merged_lse(b, p, h) = m + std::log(z);
        for (int i = 0; i < G; ++i)
          wm = std::max(wm, weights.lse[i](b, p, h));
        for (int i = 0; i < G; ++i)
          wz += std::exp(weights.lse[i](b, p, h) - wm);
        for (int i = 0; i < G; ++i) {
          if (r.lse[i](b, p, h) == -inf) continue;
          const double w = g.semantics() == Semantics::grouped
                               ? 1.0 / G
                               : std::exp(weights.lse[i](b, p, h) - wm) / wz;
          for (int c = 0; c < d; ++c)
            r.out(b, p, h, c) += w * r.o[i](b, p, h, c);
        }
      }
}

inline void merge(const Geometry& g, Branchwise& r) {
  merge(g, r, r);
}

}  // namespace dilated::testing

#endif  // DILATED_BRANCHWISE_REFERENCE_HPP
