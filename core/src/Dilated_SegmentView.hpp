// The kept positions of one dilated segment as a strided view of the (batch, seq, heads,
// head_dim) data: no copy, no gather. Kernels read q, k, v and write the output through it.
#ifndef DILATED_SEGMENT_VIEW_HPP
#define DILATED_SEGMENT_VIEW_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Geometry.hpp>
#include <impl/Dilated_Error.hpp>

#include <cstddef>

namespace dilated {

// (batch, kept position, head of the range, head_dim) over the memory of ViewType.
template <class ViewType>
using SegmentView =
    Kokkos::View<typename ViewType::value_type****, Kokkos::LayoutStride,
                 typename ViewType::device_type, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

namespace Impl {

// Rows first, first + stride, ... (count of them) and heads [head_begin, head_end) of `view`.
// Callable inside kernels: it only does pointer arithmetic on the view's strides.
template <class ViewType>
KOKKOS_INLINE_FUNCTION SegmentView<ViewType> strided_rows(const ViewType& view, int first,
                                                          int count, int stride, int head_begin,
                                                          int head_end) {
  // An empty segment still needs a valid base pointer: use the view's own.
  const std::size_t base = count > 0 ? static_cast<std::size_t>(first) * view.stride(1) +
                                           static_cast<std::size_t>(head_begin) * view.stride(2)
                                     : 0;
  const Kokkos::LayoutStride layout(view.extent(0), view.stride(0),                     //
                                    static_cast<std::size_t>(count),                    //
                                    static_cast<std::size_t>(stride) * view.stride(1),  //
                                    static_cast<std::size_t>(head_end - head_begin),    //
                                    view.stride(2), view.extent(3), view.stride(3));
  return SegmentView<ViewType>(view.data() + base, layout);
}

}  // namespace Impl

// The kept positions of segment `segment` of `block`'s branch, for all of `block`'s heads:
// result(b, t, j, c) is view(b, kept.position(t), block.head_begin + j, c).
template <class ViewType>
SegmentView<ViewType> segment_view(const ViewType& view, const Geometry& geometry,
                                   const HeadBlock& block, int segment) {
  static_assert(Impl::is_view_v<ViewType>, "dilated::segment_view: view must be a Kokkos::View");
  static_assert(Impl::view_rank_v<ViewType> == 4,
                "dilated::segment_view: view must have rank 4 (batch, seq, heads, head_dim)");
  constexpr const char* fn = "dilated::segment_view";
  const int n = static_cast<int>(view.extent(1));
  Impl::require(n >= 1, fn, "view.extent(1) (sequence length) = ", n, " must be >= 1");
  Impl::require(static_cast<int>(view.extent(2)) == geometry.num_heads(), fn,
                "view.extent(2) (heads) = ", view.extent(2),
                " does not match num_heads = ", geometry.num_heads());
  Impl::require(block.branch >= 0 && block.branch < geometry.num_branches(), fn,
                "block.branch = ", block.branch, " is not in [0, ", geometry.num_branches(), ")");
  Impl::require(0 <= block.head_begin && block.head_begin < block.head_end &&
                    block.head_end <= geometry.num_heads(),
                fn, "block heads [", block.head_begin, ", ", block.head_end,
                ") is not a non-empty range of [0, ", geometry.num_heads(), ")");
  for (int h = block.head_begin; h < block.head_end; ++h) {
    Impl::require(geometry.offset(block.branch, h) == block.offset, fn, "head ", h, " has offset ",
                  geometry.offset(block.branch, h), " in branch ", block.branch,
                  ", not block.offset = ", block.offset);
  }
  const int segments = geometry.num_segments(block.branch, n);
  Impl::require(segment >= 0 && segment < segments, fn, "segment = ", segment, " is not in [0, ",
                segments, ") for branch ", block.branch, " on ", n, " tokens");
  const KeptPositions kept = geometry.kept(block.branch, segment, block.offset, n);
  return Impl::strided_rows(view, kept.first, kept.count, kept.stride, block.head_begin,
                            block.head_end);
}

}  // namespace dilated

#endif  // DILATED_SEGMENT_VIEW_HPP
