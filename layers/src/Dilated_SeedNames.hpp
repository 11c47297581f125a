// The four class names of the seed's PyTorch packages, as aliases of this library's templates.
// They live in dilated::seed because dilated::DilatedAttention and
// dilated::MultiheadDilatedAttention already name the templates (policy first):
//
//   seed name                                  this library
//   seed::DilatedAttention                     DilatedAttention<Original>
//   seed::ImprovedDilatedAttention             DilatedAttention<Improved>
//   seed::MultiheadDilatedAttention<T>         MultiheadDilatedAttention<Original, T>
//   seed::ImprovedMultiheadDilatedAttention<T> MultiheadDilatedAttention<Improved, T>
#ifndef DILATED_SEED_NAMES_HPP
#define DILATED_SEED_NAMES_HPP

#include <Dilated_AlgorithmPolicies.hpp>
#include <Dilated_DilatedAttention.hpp>
#include <Dilated_MultiheadDilatedAttention.hpp>

#include <Kokkos_Core.hpp>

namespace dilated::seed {

using DilatedAttention = ::dilated::DilatedAttention<Original>;
using ImprovedDilatedAttention = ::dilated::DilatedAttention<Improved>;

template <class T = float, class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
using MultiheadDilatedAttention = ::dilated::MultiheadDilatedAttention<Original, T, MemorySpace>;
template <class T = float, class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
using ImprovedMultiheadDilatedAttention =
    ::dilated::MultiheadDilatedAttention<Improved, T, MemorySpace>;

}  // namespace dilated::seed

#endif  // DILATED_SEED_NAMES_HPP
