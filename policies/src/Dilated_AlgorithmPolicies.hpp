// Algorithm policies: tag types that choose how DilatedAttention computes (never what).
#ifndef DILATED_ALGORITHM_POLICIES_HPP
#define DILATED_ALGORITHM_POLICIES_HPP

#include <type_traits>

namespace dilated {

// The seed's original algorithm: per (batch, segment, head) a team computes the segment's full
// score matrix in a bounded workspace, a team-level softmax, then P V.
struct Original {};

// The fused algorithm: per tile of query rows a team streams key/value tiles of the segment
// through team scratch with an online softmax (flash-attention style); no score matrix exists.
struct Improved {};

template <class T>
struct is_algorithm_policy : std::false_type {};
template <>
struct is_algorithm_policy<Original> : std::true_type {};
template <>
struct is_algorithm_policy<Improved> : std::true_type {};
template <class T>
inline constexpr bool is_algorithm_policy_v = is_algorithm_policy<T>::value;

}  // namespace dilated

#endif  // DILATED_ALGORITHM_POLICIES_HPP
