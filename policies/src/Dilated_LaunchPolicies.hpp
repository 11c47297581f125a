// Launch shapes per backend, kept out of the kernels: the vector length of the nested
// TeamThreadRange x ThreadVectorRange loops (a warp on CUDA, 1 on the host backends).
#ifndef DILATED_LAUNCH_POLICIES_HPP
#define DILATED_LAUNCH_POLICIES_HPP

#include <Kokkos_Core.hpp>

namespace dilated {

template <class ExecSpace>
struct LaunchPolicy {
  static constexpr int vector_length = 1;
};

#if defined(KOKKOS_ENABLE_CUDA)
template <>
struct LaunchPolicy<Kokkos::Cuda> {
  static constexpr int vector_length = 32;
};
#endif

}  // namespace dilated

#endif  // DILATED_LAUNCH_POLICIES_HPP
