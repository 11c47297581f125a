// Every difference between the Kokkos versions we build against lives here: the fresh-machine
// path uses Kokkos 3.4.01 (Debian's trilinos 13.2 sources), the CUDA build Kokkos >= 4.6.
#ifndef DILATED_COMPAT_HPP
#define DILATED_COMPAT_HPP

#include <impl/Dilated_IndexRange.hpp>

#include <Kokkos_Core.hpp>

#include <string>
#include <type_traits>

#if KOKKOS_VERSION >= 40000
#include <Kokkos_Profiling_ScopedRegion.hpp>
#endif

// `omp simd` on host loops known to be vectorisable (independent iterations, or reductions
// split into independent partial sums); nothing without OpenMP.
#if defined(_OPENMP)
#define DILATED_HOST_SIMD _Pragma("omp simd")
#else
#define DILATED_HOST_SIMD
#endif

#if !defined(KOKKOS_VERSION) || KOKKOS_VERSION < 30400
#error "DilatedAttention needs Kokkos 3.4 or newer"
#endif

namespace dilated::Impl {

// Kokkos::Profiling::ScopedRegion arrived in Kokkos 4.0; older versions only have the
// push/pop calls it wraps.
#if KOKKOS_VERSION >= 40000
using ScopedRegion = Kokkos::Profiling::ScopedRegion;
#else
class [[nodiscard]] ScopedRegion {
 public:
  explicit ScopedRegion(const std::string& name) { Kokkos::Profiling::pushRegion(name); }
  ~ScopedRegion() { Kokkos::Profiling::popRegion(); }
  ScopedRegion(const ScopedRegion&) = delete;
  ScopedRegion& operator=(const ScopedRegion&) = delete;
};
#endif

// ExecSpace::fence(name) is 4.x; 3.4's fence() takes no name.
template <class ExecSpace>
void fence(const ExecSpace& space, const std::string& name) {
#if KOKKOS_VERSION >= 30600
  space.fence(name);
#else
  (void)name;
  space.fence();
#endif
}

// deep_copy(space, view, value) for Views of rank 1 to 4 of any layout: Kokkos 3.x cannot fill
// a LayoutStride View on an execution space instance (no ViewFillLayoutSelector<LayoutStride>),
// so strided Views (e.g. gradients inside a packed QKV buffer) are filled by a plain kernel there.
template <class ExecSpace, class View>
void fill(const ExecSpace& space, const View& view,
          const typename View::non_const_value_type& value) {
#if KOKKOS_VERSION < 40000
  if constexpr (std::is_same_v<typename View::array_layout, Kokkos::LayoutStride>) {
    constexpr int rank = static_cast<int>(View::rank);
    static_assert(rank >= 1 && rank <= 4, "dilated::Impl::fill: Views of rank 1 to 4");
    const View v = view;
    // A 64-bit index (the default, the space's size_type, is 32-bit unsigned on CUDA).
    Kokkos::parallel_for(
        "dilated::fill", index_range(space, 0, v.size()), KOKKOS_LAMBDA(long e) {
          long i[4] = {0, 0, 0, 0};
          for (int r = rank - 1; r >= 0; --r) {
            i[r] = e % static_cast<long>(v.extent(r));
            e /= static_cast<long>(v.extent(r));
          }
          if constexpr (rank == 1) v(i[0]) = value;
          if constexpr (rank == 2) v(i[0], i[1]) = value;
          if constexpr (rank == 3) v(i[0], i[1], i[2]) = value;
          if constexpr (rank == 4) v(i[0], i[1], i[2], i[3]) = value;
        });
  } else {
    Kokkos::deep_copy(space, view, value);
  }
#else
  Kokkos::deep_copy(space, view, value);
#endif
}

// Kokkos::is_view_v and Kokkos::is_execution_space_v are 4.x spellings.
template <class T>
inline constexpr bool is_view_v = Kokkos::is_view<T>::value;
template <class T>
inline constexpr bool is_execution_space_v = Kokkos::is_execution_space<T>::value;

// The rank of a View type as a plain int (View::rank changed from an enum-like constant to an
// integral_constant object in 4.x; both convert).
template <class ViewType>
inline constexpr int view_rank_v = static_cast<int>(ViewType::rank);

// True when code running in ExecSpace may dereference memory of ViewType.
template <class ExecSpace, class ViewType>
inline constexpr bool is_accessible_from_v =
    Kokkos::SpaceAccessibility<ExecSpace, typename ViewType::memory_space>::accessible;

// Device-callable math: Kokkos::exp & co. are 3.7+ spellings; 3.4 has them in Experimental.
namespace math {
#if KOKKOS_VERSION >= 30700
using Kokkos::erf;
using Kokkos::exp;
using Kokkos::log;
using Kokkos::sqrt;
using Kokkos::tanh;
#else
using Kokkos::Experimental::erf;
using Kokkos::Experimental::exp;
using Kokkos::Experimental::log;
using Kokkos::Experimental::sqrt;
using Kokkos::Experimental::tanh;
#endif

// +inf of a floating type, usable in kernels (Kokkos::Experimental::infinity in 3.4 and 4.x).
template <class T>
KOKKOS_INLINE_FUNCTION constexpr T infinity() {
  return Kokkos::Experimental::infinity<T>::value;
}
}  // namespace math

}  // namespace dilated::Impl

// Half precision storage. On a host-only Kokkos (any version) Kokkos::Experimental::half_t is
// an alias of float; it is a real 16-bit type only where a device backend (CUDA) defines one.
// bf16 (Kokkos::Experimental::bhalf_t) exists from Kokkos 3.7 on, again float on host-only.
#if defined(KOKKOS_HALF_T_IS_FLOAT) && KOKKOS_HALF_T_IS_FLOAT
#define DILATED_HALF_IS_FLOAT 1
#else
#define DILATED_HALF_IS_FLOAT 0
#endif
#if KOKKOS_VERSION >= 30700
#define DILATED_HAVE_BHALF 1
#if defined(KOKKOS_BHALF_T_IS_FLOAT) && KOKKOS_BHALF_T_IS_FLOAT
#define DILATED_BHALF_IS_FLOAT 1
#else
#define DILATED_BHALF_IS_FLOAT 0
#endif
#else
#define DILATED_HAVE_BHALF 0
#define DILATED_BHALF_IS_FLOAT 1
#endif

namespace dilated::Impl {
// The storage types every public class takes (float, double, half; bf16 where Kokkos has it).
template <class T>
inline constexpr bool is_storage_type_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                          std::is_same_v<T, Kokkos::Experimental::half_t>
#if DILATED_HAVE_BHALF
                                          || std::is_same_v<T, Kokkos::Experimental::bhalf_t>
#endif
    ;
}  // namespace dilated::Impl

#endif  // DILATED_COMPAT_HPP
