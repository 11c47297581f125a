// Run-time checks of the (batch, seq, heads, head_dim) views handed to a public call; each
// failure throws std::invalid_argument naming the function, the argument and the value.
#ifndef DILATED_IMPL_SHAPE_CHECKS_HPP
#define DILATED_IMPL_SHAPE_CHECKS_HPP

#include <Dilated_Geometry.hpp>
#include <impl/Dilated_Error.hpp>

#include <cstddef>

namespace dilated::Impl {

// What dimension i of a (batch, seq, heads, head_dim) view is, for messages.
inline const char* extent_name(int i) {
  switch (i) {
    case 0:
      return "batch";
    case 1:
      return "sequence length";
    case 2:
      return "heads";
    default:
      return "head_dim";
  }
}

// q: every extent >= 1 and q.extent(2) == the configured heads.
template <class QView>
void check_query(const char* fn, const Geometry& geometry, const QView& q) {
  for (int i = 0; i < 4; ++i) {
    require(q.extent(i) >= 1, fn, "q.extent(", i, ") (", extent_name(i), ") = ", q.extent(i),
            " must be >= 1");
  }
  require(q.extent(2) == static_cast<std::size_t>(geometry.num_heads()), fn,
          "q.extent(2) (heads) = ", q.extent(2),
          " does not match num_heads = ", geometry.num_heads());
}

// `other` (named `name`) has q's extents in every dimension.
template <class QView, class OtherView>
void check_same_shape(const char* fn, const char* name, const OtherView& other, const QView& q) {
  for (int i = 0; i < 4; ++i) {
    require(other.extent(i) == q.extent(i), fn, name, ".extent(", i, ") (", extent_name(i),
            ") = ", other.extent(i), " does not match q.extent(", i, ") = ", q.extent(i));
  }
}

// `per_token` (named `name`, e.g. the log-sum-exp) is (batch, seq, heads) like q.
template <class QView, class TokenView>
void check_per_token(const char* fn, const char* name, const TokenView& per_token, const QView& q) {
  for (int i = 0; i < 3; ++i) {
    require(per_token.extent(i) == q.extent(i), fn, name, ".extent(", i, ") (", extent_name(i),
            ") = ", per_token.extent(i), " does not match q.extent(", i, ") = ", q.extent(i));
  }
}

// The views of one attention call: q, k, v and out all (b, n, h, d) with h = num_heads.
template <class Q, class K, class V, class O>
void check_attention_shapes(const char* fn, const Geometry& geometry, const Q& q, const K& k,
                            const V& v, const O& out) {
  check_query(fn, geometry, q);
  check_same_shape(fn, "k", k, q);
  check_same_shape(fn, "v", v, q);
  check_same_shape(fn, "out", out, q);
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_SHAPE_CHECKS_HPP
