// PyTorch's nn.Linear on rows: y = x W^T + b with W stored (out_features, in_features), and its
// backward (dx = dy W, dW = dy^T x, db = column sums of dy). Matrices are row-major (LayoutRight)
// rank-2 Views of the storage type; products go through dilated::Impl::gemm, sums accumulate in
// float (double for double).
#ifndef DILATED_LINEAR_HPP
#define DILATED_LINEAR_HPP

#include <Dilated_Gemm.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

namespace dilated::Impl {

// y(i, j) = bias(j) for every row i (the bias where no product epilogue adds it): rows over
// threads, columns innermost, so that host loops vectorize and device threads write
// consecutive columns.
template <class ExecSpace, class Bias, class Y>
void broadcast_rows(const ExecSpace& space, const char* label, const Bias& bias, const Y& y) {
  using Policy =
      Kokkos::MDRangePolicy<ExecSpace,
                            Kokkos::Rank<2, Kokkos::Iterate::Right, Kokkos::Iterate::Right>>;
  Kokkos::parallel_for(
      label,
      Policy(space, {0, 0}, {static_cast<long>(y.extent(0)), static_cast<long>(y.extent(1))}),
      KOKKOS_LAMBDA(long i, long j) { y(i, j) = bias(j); });
}

// Column sums: rows are summed in chunks of column_sum_chunk (one partial per chunk, sum and
// column; consecutive threads on consecutive columns), then the partials in chunk order, so
// the result does not depend on the backend's scheduling.
inline constexpr long column_sum_chunk = 256;

template <class Acc, class MemorySpace>
using ColumnPartials = Kokkos::View<Acc**, Kokkos::LayoutRight, MemorySpace>;

// Extents of the partials K column sums over (rows, cols) need.
inline std::pair<long, long> column_sum_partials(int sums, long rows, long cols) {
  return {std::max(1L, (rows + column_sum_chunk - 1) / column_sum_chunk), sums * cols};
}

// out_s(j) = sum over rows i of the s-th value term(i, j, values) adds into values[s]
// (s < K), in Acc; the outputs are contiguous rank-1 Views of one type. `partial`
// (column_sum_partials(K, rows, cols) or larger) holds the chunks' sums; empty: allocated for this
// call.
template <class Acc, int K, class ExecSpace, class Term, class Partial, class... Out>
void column_sums(const ExecSpace& space, const char* label, long rows, long cols, const Term& term,
                 Partial partial, const Out&... outs) {
  static_assert(sizeof...(Out) == K, "dilated::Impl::column_sums: one output per sum");
  const auto [chunks, width] = column_sum_partials(K, rows, cols);
  if (partial.extent(0) < static_cast<std::size_t>(chunks) ||
      partial.extent(1) < static_cast<std::size_t>(width)) {
    partial =
        Partial(Kokkos::view_alloc(Kokkos::WithoutInitializing, "dilated::column_sums::partial"),
                chunks, width);
  }
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(space, 0, chunks * cols), KOKKOS_LAMBDA(long e) {
        const long c = e / cols, j = e % cols,
                   end = (c + 1) * column_sum_chunk < rows ? (c + 1) * column_sum_chunk : rows;
        Acc sums[K] = {};
        for (long i = c * column_sum_chunk; i < end; ++i)
          term(i, j, sums);
        for (int s = 0; s < K; ++s)
          partial(c, s * cols + j) = sums[s];
      });
  using T = typename std::tuple_element_t<0, std::tuple<Out...>>::non_const_value_type;
  const Kokkos::Array<T*, K> out_data{outs.data()...};
  const long chunk_count = chunks;
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(space, 0, K * cols), KOKKOS_LAMBDA(long e) {
        const long s = e / cols, j = e % cols;
        Acc sum = 0;
        for (long c = 0; c < chunk_count; ++c)
          sum += partial(c, e);
        out_data[s][j] = static_cast<T>(sum);
      });
}

template <class T>
using linear_accumulation_t = gemm_accumulation_t<T>;

// y (M, out) = x (M, in) w^T (w: (out, in)) + bias; bias may be empty (no bias). The bias goes
// into the product's epilogue where the backend has one (gemm_bias).
template <class ExecSpace, class X, class W, class Bias, class Y>
void linear_forward(const ExecSpace& space, const X& x, const W& w, const Bias& bias, const Y& y,
                    const GemmOptions& options = {}) {
  constexpr const char* fn = "dilated::Impl::linear_forward";
  require(bias.extent(0) == 0 || bias.extent(0) == y.extent(1), fn,
          "bias.extent(0) = ", bias.extent(0), " does not match out_features = ", y.extent(1));
  if (bias.extent(0) > 0) {
    if (gemm_bias(space, Op::N, Op::T, x, w, bias, y, options)) return;
    broadcast_rows(space, "dilated::linear::bias", bias, y);
    gemm(space, Op::N, Op::T, 1.0, x, w, 1.0, y, options);
  } else {
    gemm(space, Op::N, Op::T, 1.0, x, w, 0.0, y, options);
  }
}

// Gradients of y = x w^T + b for the upstream gradient dy: dx = dy w (added to dx when
// accumulate_dx), dw = dy^T x, db = column sums of dy. An empty dx or db is skipped.
// `partial`: scratch for the bias gradient (column_sum_partials(1, M, out)); empty: allocated.
template <class ExecSpace, class X, class W, class DY, class DX, class DW, class DB,
          class Partial = ColumnPartials<linear_accumulation_t<typename DY::non_const_value_type>,
                                         typename ExecSpace::memory_space>>
void linear_backward(const ExecSpace& space, const X& x, const W& w, const DY& dy, const DX& dx,
                     bool accumulate_dx, const DW& dw, const DB& db,
                     const GemmOptions& options = {}, const Partial& partial = {}) {
  using T = typename DY::non_const_value_type;
  if (dx.extent(0) > 0)
    gemm(space, Op::N, Op::N, 1.0, dy, w, accumulate_dx ? 1.0 : 0.0, dx, options);
  gemm(space, Op::T, Op::N, 1.0, dy, x, 0.0, dw, options);
  if (db.extent(0) > 0) {
    using Acc = linear_accumulation_t<T>;
    const auto g = dy;
    column_sums<Acc, 1>(
        space, "dilated::linear::bias_gradient", g.extent(0), g.extent(1),
        KOKKOS_LAMBDA(long i, long j, Acc(&sums)[1]) { sums[0] += static_cast<Acc>(g(i, j)); },
        partial, db);
  }
}

}  // namespace dilated::Impl

#endif  // DILATED_LINEAR_HPP
