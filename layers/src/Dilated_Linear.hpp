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
#include <type_traits>

namespace dilated::Impl {

// y(i, j) = bias(j) for every row i.
template <class ExecSpace, class Bias, class Y>
void broadcast_rows(const ExecSpace& space, const char* label, const Bias& bias, const Y& y) {
  const long cols = y.extent(1);
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<long>(y.size())),
      KOKKOS_LAMBDA(long e) { y(e / cols, e % cols) = bias(e % cols); });
}

// out(j) = sum over rows i < rows of term(i, j) (+ out(j) when accumulate), in Acc. Rows are
// summed in chunks of 256 (one partial per chunk and column, consecutive threads on
// consecutive columns), then the partials: the order, and so the result, is fixed.
template <class Acc, class ExecSpace, class Term, class Out>
void column_sums(const ExecSpace& space, const char* label, long rows, long cols, const Term& term,
                 const Out& out, bool accumulate = false) {
  using T = typename Out::non_const_value_type;
  constexpr long chunk = 256;
  const long chunks = std::max(1L, (rows + chunk - 1) / chunk);
  Kokkos::View<Acc**, Kokkos::LayoutRight, typename ExecSpace::memory_space> partial(
      Kokkos::view_alloc(Kokkos::WithoutInitializing, "dilated::column_sums::partial"), chunks,
      cols);
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(space, 0, chunks * cols), KOKKOS_LAMBDA(long e) {
        const long c = e / cols, j = e % cols,
                   end = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
        Acc sum = 0;
        for (long i = c * chunk; i < end; ++i)
          sum += term(i, j);
        partial(c, j) = sum;
      });
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(space, 0, cols), KOKKOS_LAMBDA(long j) {
        Acc sum = accumulate ? static_cast<Acc>(out(j)) : Acc(0);
        for (long c = 0; c < chunks; ++c)
          sum += partial(c, j);
        out(j) = static_cast<T>(sum);
      });
}

template <class T>
using linear_accumulation_t = gemm_accumulation_t<T>;

// y (M, out) = x (M, in) w^T (w: (out, in)) + bias; bias may be empty (no bias).
template <class ExecSpace, class X, class W, class Bias, class Y>
void linear_forward(const ExecSpace& space, const X& x, const W& w, const Bias& bias, const Y& y,
                    const GemmOptions& options = {}) {
  constexpr const char* fn = "dilated::Impl::linear_forward";
  require(bias.extent(0) == 0 || bias.extent(0) == y.extent(1), fn,
          "bias.extent(0) = ", bias.extent(0), " does not match out_features = ", y.extent(1));
  if (bias.extent(0) > 0) {
    broadcast_rows(space, "dilated::linear::bias", bias, y);
    gemm(space, Op::N, Op::T, 1.0, x, w, 1.0, y, options);
  } else {
    gemm(space, Op::N, Op::T, 1.0, x, w, 0.0, y, options);
  }
}

// Gradients of y = x w^T + b for the upstream gradient dy: dx = dy w (added to dx when
// accumulate_dx), dw = dy^T x, db = column sums of dy. An empty dx or db is skipped.
template <class ExecSpace, class X, class W, class DY, class DX, class DW, class DB>
void linear_backward(const ExecSpace& space, const X& x, const W& w, const DY& dy, const DX& dx,
                     bool accumulate_dx, const DW& dw, const DB& db,
                     const GemmOptions& options = {}) {
  using T = typename DY::non_const_value_type;
  if (dx.extent(0) > 0)
    gemm(space, Op::N, Op::N, 1.0, dy, w, accumulate_dx ? 1.0 : 0.0, dx, options);
  gemm(space, Op::T, Op::N, 1.0, dy, x, 0.0, dw, options);
  if (db.extent(0) > 0) {
    using Acc = linear_accumulation_t<T>;
    const auto g = dy;
    column_sums<Acc>(
        space, "dilated::linear::bias_gradient", g.extent(0), g.extent(1),
        KOKKOS_LAMBDA(long i, long j) { return static_cast<Acc>(g(i, j)); }, db);
  }
}

}  // namespace dilated::Impl

#endif  // DILATED_LINEAR_HPP
