// Tile shapes of the Improved algorithm per backend, kept out of the kernels.
//   query_rows: query rows a team owns (forward, dq); key_rows: key rows streamed per step
//   (and owned per team in the dk/dv pass); team_size: threads of a team (CUDA: warps, each of
//   vector_length lanes); pad: entries added to each scratch row so that lanes reading the same
//   column of neighbouring rows hit different shared-memory banks.
#ifndef DILATED_TILE_POLICIES_HPP
#define DILATED_TILE_POLICIES_HPP

#include <Kokkos_Core.hpp>

namespace dilated {

template <class ExecSpace>
struct ImprovedTiles {
  // Host: tiles of 64 x 64 keep a team's working set (Q, K, V, S, O: 5 * 64 * d floats, 80 KiB
  // at d = 64) within L2 of one core.
  static constexpr int query_rows = 64;
  static constexpr int key_rows = 64;
  static constexpr int team_size = 1;
  static constexpr int pad = 0;
};

#if defined(KOKKOS_ENABLE_CUDA)
template <>
struct ImprovedTiles<Kokkos::Cuda> {
  // The generic (non tensor-core) CUDA path: 8 warps share a 32 x 32 tile, a lane per column.
  static constexpr int query_rows = 32;
  static constexpr int key_rows = 32;
  static constexpr int team_size = 8;
  static constexpr int pad = 1;
};
#endif

}  // namespace dilated

#endif  // DILATED_TILE_POLICIES_HPP
