// What the token-indexed layers (Embedding, FusedLinearCrossEntropy) share: their Views seen as
// flat rows (ids (b, n) or (tokens,) as one list; activations (b, n, E) or (tokens, E) as one
// row-major matrix), buffers that grow to the largest call and stay, and the check that every
// token id lies in the vocabulary, done on the device by a reduction: the host learns the first
// bad position without copying the ids back.
#ifndef DILATED_IMPL_TOKEN_VIEWS_HPP
#define DILATED_IMPL_TOKEN_VIEWS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

namespace dilated::Impl {

template <class T, class MemorySpace>
using UnmanagedRows =
    Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
template <class T, class MemorySpace>
using UnmanagedList =
    Kokkos::View<T*, Kokkos::LayoutRight, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

// A rank-2 (tokens, E) View as it is (its row stride kept), or a rank-3 (b, n, E) one as the
// (b n, E) matrix it is in memory; throws from `fn` naming `name` when a rank-3 View's rows are
// not dense.
template <class View>
auto token_rows(const char* fn, const char* name, const View& x) {
  using T = typename View::value_type;
  static_assert(view_rank_v<View> == 2 || view_rank_v<View> == 3,
                "dilated: activations must be (tokens, E) or (batch, seq, E) Views");
  static_assert(std::is_same_v<typename View::array_layout, Kokkos::LayoutRight>,
                "dilated: activations must be LayoutRight (row-major) Views");
  if constexpr (view_rank_v<View> == 2) {
    return x;
  } else {
    const std::size_t e = x.extent(2), n = x.extent(1);
    require((x.extent(2) <= 1 || x.stride(2) == 1) && (n <= 1 || x.stride(1) == e) &&
                (x.extent(0) <= 1 || x.stride(0) == n * e),
            fn, name, " must have dense rows (strides (", x.stride(0), ", ", x.stride(1), ", ",
            x.stride(2), ") for extents (", x.extent(0), ", ", n, ", ", e, "))");
    return UnmanagedRows<T, typename View::memory_space>(x.data(), x.extent(0) * n, e);
  }
}

// A rank-1 (tokens,) or rank-2 (b, n) LayoutRight View of ids as one list of b n ids.
template <class View>
auto token_list(const View& ids) {
  using T = typename View::value_type;
  static_assert(std::is_same_v<typename View::non_const_value_type, int>,
                "dilated: token ids must be int (int32) Views");
  static_assert(view_rank_v<View> == 1 || view_rank_v<View> == 2,
                "dilated: token ids must be (tokens,) or (batch, seq) Views");
  static_assert(std::is_same_v<typename View::array_layout, Kokkos::LayoutRight>,
                "dilated: token ids must be LayoutRight Views");
  return UnmanagedList<T, typename View::memory_space>(ids.data(), ids.size());
}

// Ids per sequence of an id View: n for (b, n), every id for (tokens,); positions are reported
// as (sequence, index) with it.
template <class View>
long sequence_length_of(const View& ids) {
  if constexpr (view_rank_v<View> == 2) return static_cast<long>(ids.extent(1));
  return static_cast<long>(ids.extent(0));
}

// `view` holding at least `extents` (each), reallocated uninitialised (labelled) only when it
// holds fewer: a call after the largest one allocates nothing. Returns whether it reallocated.
template <class View, class... Extents>
bool ensure_capacity(View& view, const std::string& label, Extents... extents) {
  const std::size_t wanted[] = {static_cast<std::size_t>(extents)...};
  bool enough = true;
  for (std::size_t i = 0; i < sizeof...(Extents); ++i)
    enough = enough && view.extent(i) >= wanted[i];
  if (enough) return false;
  view = View();  // the old buffer is released before the new one is made
  view = allocate_view<View>(label, false, extents...);
  return true;
}

// The device check of token ids, with the two scalars it reduces into kept between calls.
// The type create_mirror_view gives for a View (HostMirror is renamed in newer Kokkos).
template <class View>
using host_mirror_t = decltype(Kokkos::create_mirror_view(std::declval<const View&>()));

// An ignore_index no int id can equal: every id is checked.
inline constexpr long no_ignore_index = std::numeric_limits<long>::min();

template <class MemorySpace>
class TokenIdCheck {
 public:
  // Throws std::invalid_argument from `fn` naming `argument`, the first position (as (sequence,
  // index) with `sequence_length` ids a sequence, and flat) whose id is outside [0, vocab) and
  // not `ignore_index`, and its id. Returns how many ids are not `ignore_index` (no_ignore_index:
  // every id counts and must be in the vocabulary). Waits for `space`, as the host reads the
  // result: the one wait of a checked call.
  template <class ExecSpace, class Ids>
  long run(const ExecSpace& space, const char* fn, const char* argument, const Ids& ids,
           long sequence_length, long vocab, long ignore_index) {
    using Long = Kokkos::View<long, MemorySpace>;
    if (!result_.data()) {  // result_ assigned last: a failed allocation leaves none made
      auto result =
          allocate_view<Kokkos::View<long[2], MemorySpace>>("dilated::TokenIdCheck::result", true);
      host_ = Kokkos::create_mirror_view(result);
      result_ = result;
    }
    const long count = static_cast<long>(ids.extent(0));
    if (count == 0) return 0;
    const Long first_bad = Kokkos::subview(result_, 0), counted = Kokkos::subview(result_, 1);
    Kokkos::parallel_reduce(
        "dilated::token_ids::first_bad", Kokkos::RangePolicy<ExecSpace>(space, 0, count),
        KOKKOS_LAMBDA(long p, long& first) {
          const long id = ids(p);
          if (id != ignore_index && (id < 0 || id >= vocab) && p < first) first = p;
        },
        Kokkos::Min<long, MemorySpace>(first_bad));
    Kokkos::parallel_reduce(
        "dilated::token_ids::counted", Kokkos::RangePolicy<ExecSpace>(space, 0, count),
        KOKKOS_LAMBDA(long p, long& n) { n += ids(p) != ignore_index ? 1 : 0; },
        Kokkos::Sum<long, MemorySpace>(counted));
    Kokkos::deep_copy(space, host_, result_);
    fence(space, "dilated::TokenIdCheck: the result on the host");
    const long bad = host_(0);
    if (bad < count) {
      int value = 0;
      Kokkos::deep_copy(Kokkos::View<int, Kokkos::HostSpace>(&value),
                        Kokkos::subview(ids, bad));  // the error path only
      throw_invalid_argument(fn, argument, "(", bad / sequence_length, ", ", bad % sequence_length,
                             ") = ", value, " (position ", bad, ") is outside the vocabulary [0, ",
                             vocab, ")");
    }
    return host_(1);
  }

 private:
  Kokkos::View<long[2], MemorySpace> result_;
  host_mirror_t<Kokkos::View<long[2], MemorySpace>> host_;
};

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_TOKEN_VIEWS_HPP
