// Element loops over whole tensors with a 64-bit index (issue 20). A Kokkos::RangePolicy that
// names no IndexType takes the execution space's size_type: size_t on Serial and OpenMP, but
// 32-bit unsigned on CUDA (CudaSpace::size_type, Kokkos 3.4 and 4.x alike). A range of n x 4E
// elements (2,875,392 tokens x 3072 = 2^33.0, the 125M model's longest sequence on an H200) does
// not fit it: Kokkos 4.x as built by default (deprecated code 4 on) prints "an unsafe implicit
// conversion is performed on a bound" and runs the range's end modulo 2^32, without deprecated
// code 4 it aborts, and 3.4 truncates silently; either way rows past element 2^32 go unwritten.
// Every loop whose trip count is an element count (not a row or tensor count bounded far below
// 2^31) takes this policy. Its cost on CUDA is a 64-bit loop counter in kernels that are bound by
// memory traffic.
#ifndef DILATED_IMPL_INDEX_RANGE_HPP
#define DILATED_IMPL_INDEX_RANGE_HPP

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <type_traits>

namespace dilated::Impl {

// Kokkos::RangePolicy<ExecSpace, Properties...> with a signed 64-bit index: Properties are the
// policy's other traits (Kokkos::Schedule<Kokkos::Dynamic>, a work tag).
template <class ExecSpace, class... Properties>
using IndexRange = Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<std::int64_t>, Properties...>;

// [begin, end) on `space` with the 64-bit index.
template <class ExecSpace>
IndexRange<ExecSpace> index_range(const ExecSpace& space, std::int64_t begin, std::int64_t end) {
  return IndexRange<ExecSpace>(space, begin, end);
}

// Whether a RangePolicy type's index holds every element count up to 2^63 - 1.
template <class Policy>
inline constexpr bool has_64bit_index_v = std::is_signed_v<typename Policy::index_type> &&
                                          sizeof(typename Policy::index_type) == 8;

static_assert(has_64bit_index_v<IndexRange<Kokkos::DefaultExecutionSpace>> &&
                  has_64bit_index_v<IndexRange<Kokkos::DefaultHostExecutionSpace>>,
              "dilated::Impl::IndexRange: the element loops need a signed 64-bit index");

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_INDEX_RANGE_HPP
