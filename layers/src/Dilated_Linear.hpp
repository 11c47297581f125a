// PyTorch's nn.Linear on rows: y = x W^T + b with W stored (out_features, in_features), and its
// backward (dx = dy W, dW = dy^T x, db = column sums of dy). Matrices are row-major (LayoutRight)
// rank-2 Views of the storage type; products go through dilated::Impl::gemm, sums accumulate in
// float (double for double).
#ifndef DILATED_LINEAR_HPP
#define DILATED_LINEAR_HPP

#include <Dilated_DeviceMemory.hpp>
#include <Dilated_Gemm.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace dilated::Impl {

// y(i, j) = bias(j) for every row i (the bias where no product epilogue adds it): rows over
// threads, columns innermost, so that host loops vectorize and device threads write
// consecutive columns. The MDRangePolicy's default index (32-bit unsigned on CUDA) holds each
// dimension, not their product: Kokkos iterates the dimensions apart, and its tile count
// ((rows / 2) x (cols / 16) on CUDA) wraps only past 2^37 elements, so (n, 4E) past 2^32 is safe.
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

// Column sums in a fixed order (the result does not depend on the backend's scheduling): the
// rows in chunks of column_sum_rows, longer past column_sum_max_chunks chunks (one partial per
// chunk, sum and column; consecutive threads
// on consecutive columns, so that every thread has few dependent loads and many are in flight),
// then the partials column_sum_fan_in at a time, level after level, until one is left. On the
// H200, chunks of 256 rows and one pass over the partials ran the 64K layer's column sums at
// 1.7-2.9 TB/s plus ~31 us per second pass (one thread per column, latency-bound).
inline constexpr long column_sum_rows = 32;
inline constexpr long column_sum_fan_in = 32;
inline constexpr long column_sum_max_chunks = 512;

template <class Acc, class MemorySpace>
using ColumnPartials = Kokkos::View<Acc**, Kokkos::LayoutRight, MemorySpace>;

// Partials per level for `rows` rows: chunks of column_sum_rows, then fan-ins of
// column_sum_fan_in; the last level (one partial) is the output itself.
inline long column_sum_chunk_rows(long rows) {
  // At most column_sum_max_chunks first partials (their buffer is then <= ~1.03 x that many rows
  // of K x cols floats, whatever the sequence length): longer chunks for more rows.
  return std::max(column_sum_rows, (rows + column_sum_max_chunks - 1) / column_sum_max_chunks);
}
inline std::vector<long> column_sum_levels(long rows) {
  const long chunk = column_sum_chunk_rows(rows);
  std::vector<long> levels{std::max(1L, (rows + chunk - 1) / chunk)};
  while (levels.back() > 1)
    levels.push_back((levels.back() + column_sum_fan_in - 1) / column_sum_fan_in);
  levels.pop_back();  // the single last partial is written to the outputs
  return levels;
}

// Extents of the partials K column sums over (rows, cols) need: every level but the last.
inline std::pair<long, long> column_sum_partials(int sums, long rows, long cols) {
  long total = 0;
  for (long count : column_sum_levels(rows))
    total += count;
  return {std::max(1L, total), sums * cols};
}

// `partial` with room for the partials of `sums` column sums over (rows, cols): kept when large
// enough (a caller's buffer), else allocated for this call.
template <class Partial>
void ensure_column_partials(Partial& partial, int sums, long rows, long cols) {
  const auto [needed, width] = column_sum_partials(sums, rows, cols);
  if (partial.extent(0) < static_cast<std::size_t>(needed) ||
      partial.extent(1) < static_cast<std::size_t>(width)) {
    partial = Partial();  // the old buffer first: the two need not coexist
    partial = allocate_view<Partial>("dilated::column_sums::partial", false, needed, width);
  }
}

// The levels after the first of column_sums: the first level's partials (rows [0, first) of
// `partial`, one per chunk of column_sum_chunk_rows(rows) rows, written by the caller) reduced
// column_sum_fan_in at a time, level after level, the last into the outputs. For a caller that
// makes the first level in a pass of its own (the host LayerNorm backward).
template <class Acc, int K, class ExecSpace, class Partial, class T>
void column_sum_tree(const ExecSpace& space, const char* label, long rows, long cols,
                     const Partial& partial, const Kokkos::Array<T*, K>& out_data) {
  const std::vector<long> levels = column_sum_levels(rows);
  // The partials: level l (rows [offset, offset + count) of `partial`) into level l + 1, fan-in
  // at a time; the last level into the outputs.
  long offset = 0;
  for (std::size_t l = 0; l < levels.size(); ++l) {
    const long count = levels[l], next_offset = offset + count,
               next = (count + column_sum_fan_in - 1) / column_sum_fan_in;
    const bool last = l + 1 == levels.size();
    const long from = offset;
    // The default index suffices: next x K x cols <= 16 x K x cols (column_sum_max_chunks first
    // partials), far below 2^32 whatever the row count.
    Kokkos::parallel_for(
        label, Kokkos::RangePolicy<ExecSpace>(space, 0, next * K * cols), KOKKOS_LAMBDA(long e) {
          const long g = e / (K * cols), w = e % (K * cols);
          const long begin = g * column_sum_fan_in,
                     end = begin + column_sum_fan_in < count ? begin + column_sum_fan_in : count;
          Acc sum = 0;
          for (long c = begin; c < end; ++c)
            sum += partial(from + c, w);
          if (last)
            out_data[w / cols][w % cols] = static_cast<T>(sum);
          else
            partial(next_offset + g, w) = sum;
        });
    offset = next_offset;
  }
}

// out_s(j) = sum over rows i of the s-th value term(i, j, values) adds into values[s]
// (s < K), in Acc; the outputs are contiguous rank-1 Views of one type. `partial`
// (column_sum_partials(K, rows, cols) or larger) holds the partials; empty: allocated for this
// call.
template <class Acc, int K, class ExecSpace, class Term, class Partial, class... Out>
void column_sums(const ExecSpace& space, const char* label, long rows, long cols, const Term& term,
                 Partial partial, const Out&... outs) {
  static_assert(sizeof...(Out) == K, "dilated::Impl::column_sums: one output per sum");
  ensure_column_partials(partial, K, rows, cols);
  using T = typename std::tuple_element_t<0, std::tuple<Out...>>::non_const_value_type;
  const Kokkos::Array<T*, K> out_data{outs.data()...};
  const std::vector<long> levels = column_sum_levels(rows);
  const long first = levels.empty() ? 1 : levels[0];
  // The rows: into level 0 of the partials, or straight into the outputs for <= 32 rows.
  const bool direct = levels.empty();
  const long chunk = column_sum_chunk_rows(rows);
  if constexpr (!is_cuda_v<ExecSpace>) {
    if (!direct) {
      // The host: a thread per chunk of rows, each row's columns innermost (contiguous and
      // vectorised) into the chunk's partial row; the same sums in the same order per column
      // as the device's thread per (chunk, column), which on the host read one element per cache
      // line visit and ran at a fifth of a copy's bandwidth (dilated_bench_elementwise).
      Kokkos::parallel_for(
          label, Kokkos::RangePolicy<ExecSpace>(space, 0, first), KOKKOS_LAMBDA(long c) {
            Acc* row = &partial(c, 0);
            for (long w = 0; w < K * cols; ++w)
              row[w] = 0;
            const long end = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
            for (long i = c * chunk; i < end; ++i) {
              DILATED_HOST_SIMD
              for (long j = 0; j < cols; ++j) {
                Acc sums[K] = {};
                term(i, j, sums);
                for (int s = 0; s < K; ++s)
                  row[s * cols + j] += sums[s];
              }
            }
          });
    }
  }
  if (is_cuda_v<ExecSpace> || direct) {
    // first x cols <= column_sum_max_chunks x cols: the default index suffices.
    Kokkos::parallel_for(
        label, Kokkos::RangePolicy<ExecSpace>(space, 0, first * cols), KOKKOS_LAMBDA(long e) {
          const long c = e / cols, j = e % cols,
                     end = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
          Acc sums[K] = {};
          for (long i = c * chunk; i < end; ++i)
            term(i, j, sums);
          for (int s = 0; s < K; ++s) {
            if (direct)
              out_data[s][j] = static_cast<T>(sums[s]);
            else
              partial(c, s * cols + j) = sums[s];
          }
        });
  }
  if (!direct) column_sum_tree<Acc, K>(space, label, rows, cols, partial, out_data);
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

// y (M, out) = residual + x w^T + bias (a residual connection; residual has y's shape and may be
// y itself). On CUDA the residual and the bias go into the product's epilogue (beta = 1 on the
// residual); elsewhere one pass writes y = residual + bias and the product adds into it.
template <class ExecSpace, class X, class W, class Bias, class R, class Y>
void linear_forward_residual(const ExecSpace& space, const X& x, const W& w, const Bias& bias,
                             const R& residual, const Y& y, const GemmOptions& options = {}) {
  constexpr const char* fn = "dilated::Impl::linear_forward_residual";
  require(bias.extent(0) == 0 || bias.extent(0) == y.extent(1), fn,
          "bias.extent(0) = ", bias.extent(0), " does not match out_features = ", y.extent(1));
  require(residual.extent(0) == y.extent(0) && residual.extent(1) == y.extent(1), fn,
          "residual is (", residual.extent(0), ", ", residual.extent(1), "), y is (", y.extent(0),
          ", ", y.extent(1), ")");
  const bool same_rows = y.extent(0) <= 1 || residual.stride(0) == y.stride(0);
  if (bias.extent(0) > 0 && same_rows &&
      gemm_bias(space, Op::N, Op::T, x, w, bias, y, options, residual.data()))
    return;
  if (static_cast<const void*>(residual.data()) != static_cast<const void*>(y.data()) ||
      bias.extent(0) > 0) {
    using Policy =
        Kokkos::MDRangePolicy<ExecSpace,
                              Kokkos::Rank<2, Kokkos::Iterate::Right, Kokkos::Iterate::Right>>;
    const bool has_bias = bias.extent(0) > 0;
    using T = typename Y::non_const_value_type;
    using Acc = linear_accumulation_t<T>;
    Kokkos::parallel_for(
        "dilated::linear::residual_bias",
        Policy(space, {0, 0}, {static_cast<long>(y.extent(0)), static_cast<long>(y.extent(1))}),
        KOKKOS_LAMBDA(long i, long j) {
          y(i, j) =
              has_bias
                  ? static_cast<T>(static_cast<Acc>(residual(i, j)) + static_cast<Acc>(bias(j)))
                  : residual(i, j);
        });
  }
  gemm(space, Op::N, Op::T, 1.0, x, w, 1.0, y, options);
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
