// Run-time checks of the (batch, seq, heads, head_dim) views handed to a public call (shapes,
// and outputs that alias inputs); each failure throws std::invalid_argument naming the function,
// the argument and the value.
#ifndef DILATED_IMPL_SHAPE_CHECKS_HPP
#define DILATED_IMPL_SHAPE_CHECKS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Geometry.hpp>
#include <impl/Dilated_Error.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

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

// q: every extent >= 1, and q.extent(2) == the configured heads. Bounds: the kernels hold a batch
// index, a head and a column as int, and a position plus a segment length (a segment's end, the
// next kept row) too, so the batch, heads and head_dim must be < 2^31 and the sequence length
// < 2^30 (then no such sum passes 2^31); a View's element offset, and every flat index over a
// whole tensor, is 64-bit. Beyond them an index would wrap silently.
template <class QView>
void check_query(const char* fn, const Geometry& geometry, const QView& q) {
  for (int i = 0; i < 4; ++i) {
    require(q.extent(i) >= 1, fn, "q.extent(", i, ") (", extent_name(i), ") = ", q.extent(i),
            " must be >= 1");
    const std::size_t bound = std::size_t(1) << (i == 1 ? 30 : 31);
    require(q.extent(i) < bound, fn, "q.extent(", i, ") (", extent_name(i), ") = ", q.extent(i),
            " must be < 2^", i == 1 ? 30 : 31, " (indices are int in the kernels)");
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

// The bytes [first, last] a view's elements occupy: from its first element to its last one,
// by extents and strides (span() may count padding past the last element, e.g. for
// LayoutStride views into a packed buffer).
template <class View>
std::pair<std::uintptr_t, std::uintptr_t> element_bytes(const View& x) {
  std::size_t last = 0;
  for (int r = 0; r < view_rank_v<View>; ++r)
    last += (x.extent(r) - 1) * x.stride(r);
  const auto first = reinterpret_cast<std::uintptr_t>(x.data());
  return {first, first + (last + 1) * sizeof(typename View::value_type) - 1};
}

// Output `out` (named out_name) shares no memory with input `in` (named in_name): the kernels
// read inputs while other teams write outputs, so an overlap would be a race, not an in-place
// update. Compared by the byte ranges from each view's first element to its last (an output
// interleaved with an input in one buffer is rejected too; inputs may share memory with each
// other, and outputs interleaved within one buffer, like packed dq/dk/dv, are not compared).
template <class Out, class In>
void check_no_overlap(const char* fn, const char* out_name, const Out& out, const char* in_name,
                      const In& in) {
  if (out.size() == 0 || in.size() == 0) return;
  const auto a = element_bytes(out), b = element_bytes(in);
  require(a.second < b.first || b.second < a.first, fn, out_name, " shares memory with ", in_name,
          ": outputs must not alias inputs (the call reads ", in_name, " while it writes ",
          out_name, ")");
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_SHAPE_CHECKS_HPP
