// Rows of (b, n, h, d) views moved 16 bytes at a time: the piece type and whether a view's
// rows allow it (contiguous, 16-byte aligned, whole pieces). Used by the row kernels and by the
// tensor-core forward's fused zeroing; Pack also by the layers' row kernels (LayerNorm).
#ifndef DILATED_IMPL_ROW_PIECES_HPP
#define DILATED_IMPL_ROW_PIECES_HPP

#include <cstdint>

namespace dilated::Impl {

template <class T>
struct alignas(16) Piece16 {
  T v[16 / sizeof(T)];
};

// W consecutive elements moved as one access (16 bytes when W = 16 / sizeof(T)); W = 1 is the
// plain element, for rows that cannot take pieces.
template <class T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

// The widest pack of T: 16 bytes where T divides them, else one element.
template <class T>
constexpr int row_pack_width() {
  return 16 % sizeof(T) == 0 ? static_cast<int>(16 / sizeof(T)) : 1;
}

// Whether every address p + s * stride (s >= 0) is aligned for Pack<T, W>.
template <class T, int W>
bool pack_aligned(const void* p, long stride = 0) {
  constexpr long bytes = sizeof(T) * W;
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0 &&
         stride * static_cast<long>(sizeof(T)) % bytes == 0;
}

template <class View>
bool rows_in_pieces(const View& x) {
  using T = typename View::non_const_value_type;
  const auto bytes = [](long stride) { return stride * static_cast<long>(sizeof(T)) % 16 == 0; };
  return 16 % sizeof(T) == 0 && x.stride(3) == 1 && bytes(x.extent(3)) && bytes(x.stride(0)) &&
         bytes(x.stride(1)) && bytes(x.stride(2)) &&
         reinterpret_cast<std::uintptr_t>(x.data()) % 16 == 0;
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_ROW_PIECES_HPP
