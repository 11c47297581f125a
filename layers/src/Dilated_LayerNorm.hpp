// PyTorch's nn.LayerNorm over the last dimension of row-major (rows, features) matrices, with
// its backward: y = (x - mean) rstd gamma + beta, rstd = 1 / sqrt(var + eps), var the biased
// variance. Statistics in float (double for double storage).
//
// Memory-bound work, written to move each matrix through device memory once: a row per warp on
// CUDA (a row per team thread on the host), read 16 bytes at a time where the rows allow it
// (Pack), the mean and the centred variance taken in two passes over the row (the second from
// cache), and the backward's two column sums (dgamma, dbeta) in one pass over x and dy.
#ifndef DILATED_LAYER_NORM_HPP
#define DILATED_LAYER_NORM_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Linear.hpp>
#include <impl/Dilated_RowPieces.hpp>

#include <Kokkos_Core.hpp>

#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace dilated::Impl {

// How a kernel over the rows of a matrix spreads: one row per team thread, its columns over the
// vector lanes (a warp per row and 4 rows a team on CUDA; one row a team on the host). The
// league is an int (Kokkos' TeamPolicy): rows past 2^31 teams throw std::length_error rather
// than wrap (never at the sizes the layers meet: a row is a token). Inside, rows and offsets
// are long.
template <class ExecSpace>
struct MatrixRowLaunch {
  static constexpr int lanes = is_cuda_v<ExecSpace> ? 32 : 1;
  static constexpr int rows_per_team = is_cuda_v<ExecSpace> ? 4 : 1;
  static Kokkos::TeamPolicy<ExecSpace> policy(const ExecSpace& space, long rows) {
    const long league = (rows + rows_per_team - 1) / rows_per_team;
    if (league > static_cast<long>(std::numeric_limits<int>::max()))
      throw std::length_error("dilated::Impl::MatrixRowLaunch: " + std::to_string(rows) +
                              " rows exceed one launch");
    return Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>(league), rows_per_team, lanes);
  }
};

// The sum over a row's packs p < packs and their elements w < W of term(p, w), in Acc: across
// the warp's lanes on CUDA; on the host (one lane) in 4 x W independent partial sums, which the
// compiler turns into vector adds. One running sum is a single dependent chain that strict
// floating-point order keeps scalar: the host norm ran at a quarter of a copy's bandwidth
// (dilated_bench_elementwise, 2 cores, fp32).
template <class Acc, int W, int Lanes, class Member, class Term>
KOKKOS_INLINE_FUNCTION Acc row_sum(const Member& member, int packs, const Term& term) {
  Acc total = 0;
  if constexpr (Lanes == 1) {
    constexpr int U = 4;  // packs in flight
    Acc partial[U * W] = {};
    int p = 0;
    for (; p + U <= packs; p += U)
      for (int u = 0; u < U; ++u)
        for (int w = 0; w < W; ++w)
          partial[u * W + w] += term(p + u, w);
    for (; p < packs; ++p)
      for (int w = 0; w < W; ++w)
        partial[w] += term(p, w);
    for (int k = 0; k < U * W; ++k)
      total += partial[k];
  } else {
    Kokkos::parallel_reduce(
        Kokkos::ThreadVectorRange(member, packs),
        [&](int p, Acc& s) {
          for (int w = 0; w < W; ++w)
            s += term(p, w);
        },
        total);
  }
  return total;
}

// With residual (r, s not null): the row normalised is x + r, and s receives it (a residual
// connection and the next LayerNorm in one pass: the sum is written once and not read back).
template <class T, int W, class ExecSpace, class X, class G, class B, class Y, class Stat>
void layer_norm_forward_rows(const ExecSpace& space, const X& x, const G& gamma, const B& beta,
                             double eps, const Y& y, const Stat& mean, const Stat& rstd,
                             const T* rp = nullptr, long r_stride = 0, T* sp = nullptr,
                             long s_stride = 0) {
  using Acc = typename Stat::non_const_value_type;
  using P = Pack<T, W>;
  using Launch = MatrixRowLaunch<ExecSpace>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const long rows = x.extent(0);
  const int cols = x.extent(1), packs = cols / W;
  const long x_stride = x.stride(0), y_stride = y.stride(0);
  const T* xp = x.data();
  T* yp = y.data();
  const P* gp = reinterpret_cast<const P*>(gamma.data());
  const P* bp = reinterpret_cast<const P*>(beta.data());
  const Acc epsilon = static_cast<Acc>(eps);
  Kokkos::parallel_for(
      "dilated::layer_norm::forward", Launch::policy(space, rows),
      KOKKOS_LAMBDA(const Member& member) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Launch::rows_per_team), [&](int r) {
          const long i = long(member.league_rank()) * Launch::rows_per_team + r;
          if (i >= rows) return;
          const P* row = reinterpret_cast<const P*>(xp + i * x_stride);
          if (rp) {
            // The sum x + r, rounded to T as the unfused add would store it, then normalised
            // from s (this thread's own writes: read back from cache).
            const P* rr = reinterpret_cast<const P*>(rp + i * r_stride);
            P* sr = reinterpret_cast<P*>(sp + i * s_stride);
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
              const P a = row[p], b = rr[p];
              P o;
              for (int w = 0; w < W; ++w)
                o.v[w] = static_cast<T>(static_cast<Acc>(a.v[w]) + static_cast<Acc>(b.v[w]));
              sr[p] = o;
            });
            row = sr;
          }
          const Acc sum = row_sum<Acc, W, Launch::lanes>(
              member, packs, [&](int p, int w) { return static_cast<Acc>(row[p].v[w]); });
          const Acc mu = sum / cols;
          // Centred: no cancellation when |mean| >> the spread.
          const Acc squares = row_sum<Acc, W, Launch::lanes>(member, packs, [&](int p, int w) {
            const Acc c = static_cast<Acc>(row[p].v[w]) - mu;
            return c * c;
          });
          const Acc rs = Acc(1) / math::sqrt(squares / cols + epsilon);
          P* out = reinterpret_cast<P*>(yp + i * y_stride);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
            const P v = row[p], g = gp[p], b = bp[p];
            P o;
            for (int w = 0; w < W; ++w)
              o.v[w] =
                  static_cast<T>((static_cast<Acc>(v.v[w]) - mu) * rs * static_cast<Acc>(g.v[w]) +
                                 static_cast<Acc>(b.v[w]));
            out[p] = o;
          });
          Kokkos::single(Kokkos::PerThread(member), [&]() {
            mean(i) = mu;
            rstd(i) = rs;
          });
        });
      });
}

// dx = rstd (g - mean_j(g) - xhat mean_j(g xhat)) with g = dy gamma, xhat = (x - mean) rstd.
// With add (not null): dx = that + add, the gradient of a residual branch joined in the same pass
// (add may be dx itself).
template <class T, int W, class ExecSpace, class X, class G, class Stat, class DY, class DX>
void layer_norm_input_gradient_rows(const ExecSpace& space, const X& x, const G& gamma,
                                    const Stat& mean, const Stat& rstd, const DY& dy, const DX& dx,
                                    const T* add = nullptr, long add_stride = 0) {
  using Acc = typename Stat::non_const_value_type;
  using P = Pack<T, W>;
  using Launch = MatrixRowLaunch<ExecSpace>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const long rows = x.extent(0);
  const int cols = x.extent(1), packs = cols / W;
  const long x_stride = x.stride(0), dy_stride = dy.stride(0), dx_stride = dx.stride(0);
  const T* xp = x.data();
  const T* dyp = dy.data();
  T* dxp = dx.data();
  const P* gp = reinterpret_cast<const P*>(gamma.data());
  Kokkos::parallel_for(
      "dilated::layer_norm::backward", Launch::policy(space, rows),
      KOKKOS_LAMBDA(const Member& member) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Launch::rows_per_team), [&](int r) {
          const long i = long(member.league_rank()) * Launch::rows_per_team + r;
          if (i >= rows) return;
          const P* xr = reinterpret_cast<const P*>(xp + i * x_stride);
          const P* dyr = reinterpret_cast<const P*>(dyp + i * dy_stride);
          const Acc mu = mean(i), rs = rstd(i);
          const Acc sum_g = row_sum<Acc, W, Launch::lanes>(member, packs, [&](int p, int w) {
            return static_cast<Acc>(dyr[p].v[w]) * static_cast<Acc>(gp[p].v[w]);
          });
          const Acc sum_gx = row_sum<Acc, W, Launch::lanes>(member, packs, [&](int p, int w) {
            return static_cast<Acc>(dyr[p].v[w]) * static_cast<Acc>(gp[p].v[w]) *
                   ((static_cast<Acc>(xr[p].v[w]) - mu) * rs);
          });
          const Acc a = sum_g / cols, b = sum_gx / cols;
          P* out = reinterpret_cast<P*>(dxp + i * dx_stride);
          const P* ar = add ? reinterpret_cast<const P*>(add + i * add_stride) : nullptr;
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
            const P v = xr[p], d = dyr[p], g = gp[p];
            P extra;
            if (ar) extra = ar[p];
            P o;
            for (int w = 0; w < W; ++w) {
              const Acc xhat = (static_cast<Acc>(v.v[w]) - mu) * rs;
              const Acc gw = static_cast<Acc>(d.v[w]) * static_cast<Acc>(g.v[w]);
              const Acc grad = rs * (gw - a - xhat * b);
              o.v[w] = static_cast<T>(ar ? grad + static_cast<Acc>(extra.v[w]) : grad);
            }
            out[p] = o;
          });
        });
      });
}

// The pack width rows of x, y (and gamma, beta) allow: 16 bytes when every row start and the
// parameters are 16-byte aligned and the row is whole packs, else one element.
template <class T, class... Views>
bool rows_take_packs(int cols, const Views&... views) {
  constexpr int W = row_pack_width<T>();
  const auto aligned = [](const auto& v) {
    using V = std::decay_t<decltype(v)>;
    return pack_aligned<T, W>(v.data(), view_rank_v<V> == 2 ? static_cast<long>(v.stride(0)) : 0);
  };
  return W > 1 && cols % W == 0 && (aligned(views) && ...);
}

// y = LayerNorm(x) with weight gamma and bias beta (features); mean and rstd (rows) receive
// each row's mean and 1 / sqrt(var + eps) for the backward. y may be x (in place: a row is read
// whole, for its statistics, before any of it is written, and each element is then written by
// the lane that reads it).
template <class ExecSpace, class X, class G, class B, class Y, class Stat>
void layer_norm_forward(const ExecSpace& space, const X& x, const G& gamma, const B& beta,
                        double eps, const Y& y, const Stat& mean, const Stat& rstd) {
  using T = typename Y::non_const_value_type;
  static_assert(std::is_same_v<typename X::non_const_value_type, T>,
                "dilated::Impl::layer_norm_forward: x and y must share the storage type");
  if (rows_take_packs<T>(x.extent(1), x, y, gamma, beta))
    layer_norm_forward_rows<T, row_pack_width<T>()>(space, x, gamma, beta, eps, y, mean, rstd);
  else
    layer_norm_forward_rows<T, 1>(space, x, gamma, beta, eps, y, mean, rstd);
}

// sum = x + r (a residual connection), then y = LayerNorm(sum), in one pass over the rows (sum
// is written once and normalised from cache). sum may be x or r itself.
template <class ExecSpace, class X, class R, class S, class G, class B, class Y, class Stat>
void add_layer_norm_forward(const ExecSpace& space, const X& x, const R& r, const S& sum,
                            const G& gamma, const B& beta, double eps, const Y& y, const Stat& mean,
                            const Stat& rstd) {
  using T = typename Y::non_const_value_type;
  static_assert(std::is_same_v<typename X::non_const_value_type, T> &&
                    std::is_same_v<typename R::non_const_value_type, T> &&
                    std::is_same_v<typename S::non_const_value_type, T>,
                "dilated::Impl::add_layer_norm_forward: x, r, sum and y must share the storage "
                "type");
  if (rows_take_packs<T>(x.extent(1), x, r, sum, y, gamma, beta))
    layer_norm_forward_rows<T, row_pack_width<T>()>(space, x, gamma, beta, eps, y, mean, rstd,
                                                    r.data(), r.stride(0), sum.data(),
                                                    sum.stride(0));
  else
    layer_norm_forward_rows<T, 1>(space, x, gamma, beta, eps, y, mean, rstd, r.data(), r.stride(0),
                                  sum.data(), sum.stride(0));
}

// layer_norm_backward on the host, in one pass over the rows: a thread per chunk of rows
// (column_sum_chunk_rows) adds each row's dgamma and dbeta terms into the chunk's partial rows,
// then writes the row's dx (after reading its dy: in place is safe), and column_sum_tree reduces
// the partials as column_sums would, in the same order. Two passes (the column sums, then dx)
// read x and dy twice: 5 matrices of traffic for the 3 the backward needs, at a third of a
// copy's bandwidth on 2 cores (dilated_bench_elementwise).
template <class ExecSpace, class X, class G, class Stat, class DY, class DX, class DG, class DB,
          class Partial, class T>
void layer_norm_backward_host(const ExecSpace& space, const X& x, const G& gamma, const Stat& mean,
                              const Stat& rstd, const DY& dy, const DX& dx, const DG& dgamma,
                              const DB& dbeta, Partial partial, const T* add, long add_stride) {
  using Acc = typename Stat::non_const_value_type;
  const long rows = x.extent(0);
  const int cols = x.extent(1);
  ensure_column_partials(partial, 2, rows, cols);
  const long chunk = column_sum_chunk_rows(rows), first = column_sum_levels(rows)[0];
  const long x_stride = x.stride(0), dy_stride = dy.stride(0), dx_stride = dx.stride(0);
  const T* xp = x.data();
  const T* dyp = dy.data();
  const T* gp = gamma.data();
  T* dxp = dx.data();
  Kokkos::parallel_for(
      "dilated::layer_norm::backward", Kokkos::RangePolicy<ExecSpace>(space, 0, first),
      KOKKOS_LAMBDA(long c) {
        Acc* sum_gx = &partial(c, 0);  // dgamma's partial row, then dbeta's
        Acc* sum_dy = sum_gx + cols;
        for (int j = 0; j < 2 * cols; ++j)
          sum_gx[j] = 0;
        const long end = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
        for (long i = c * chunk; i < end; ++i) {
          const T* xr = xp + i * x_stride;
          const T* dyr = dyp + i * dy_stride;
          const Acc mu = mean(i), rs = rstd(i);
          // Sums over the row in 16-wide pieces where it has them (4 x 16 independent partial
          // sums: vector adds), else element by element.
          const auto sum = [&](const auto& term) {
            if (cols % 16 == 0)
              return row_sum<Acc, 16, 1>(0, cols / 16,
                                         [&](int p, int w) { return term(p * 16 + w); });
            return row_sum<Acc, 1, 1>(0, cols, [&](int j, int) { return term(j); });
          };
          const Acc sum_g =
              sum([&](int j) { return static_cast<Acc>(dyr[j]) * static_cast<Acc>(gp[j]); });
          const Acc sum_gxhat = sum([&](int j) {
            return static_cast<Acc>(dyr[j]) * static_cast<Acc>(gp[j]) *
                   ((static_cast<Acc>(xr[j]) - mu) * rs);
          });
          const Acc a = sum_g / cols, b = sum_gxhat / cols;
          T* out = dxp + i * dx_stride;
          const T* extra = add ? add + i * add_stride : nullptr;
          const auto write = [&](const auto& plus) {
            DILATED_HOST_SIMD
            for (int j = 0; j < cols; ++j) {
              const Acc d = static_cast<Acc>(dyr[j]);
              const Acc xhat = (static_cast<Acc>(xr[j]) - mu) * rs;
              sum_gx[j] += d * xhat;
              sum_dy[j] += d;
              out[j] = static_cast<T>(rs * (d * static_cast<Acc>(gp[j]) - a - xhat * b) + plus(j));
            }
          };
          // Two loops, not a test per element: the residual's gradient added or not.
          if (extra)
            write([&](int j) { return static_cast<Acc>(extra[j]); });
          else
            write([](int) { return Acc(0); });
        }
      });
  using DT = typename DG::non_const_value_type;
  column_sum_tree<Acc, 2>(space, "dilated::layer_norm::parameter_gradients", rows, cols, partial,
                          Kokkos::Array<DT*, 2>{dgamma.data(), dbeta.data()});
}

// Gradients of layer_norm_forward for the upstream gradient dy: dx, dgamma = column sums of
// dy xhat and dbeta = column sums of dy. dx may be dy itself (in place: each row's dy is read
// whole before its dx is written, and the column sums run first, or on the host take the row's
// terms before it is written: layer_norm_backward_host), which saves the layer one
// (rows, features) buffer during the attention's backward. `partial` holds the column sums' partial
// results (column_sum_partials<2>(rows, cols) of them); an empty one is allocated for the call.
//
// `add` (not empty): dx = the norm's input gradient + add, the other gradient of a residual
// stream (a block's dy); it may be dx itself.
template <class ExecSpace, class X, class G, class Stat, class DY, class DX, class DG, class DB,
          class Partial =
              ColumnPartials<typename Stat::non_const_value_type, typename ExecSpace::memory_space>,
          class Add = DX>
void layer_norm_backward(const ExecSpace& space, const X& x, const G& gamma, const Stat& mean,
                         const Stat& rstd, const DY& dy, const DX& dx, const DG& dgamma,
                         const DB& dbeta, const Partial& partial = {}, const Add& add = {}) {
  using T = typename DX::non_const_value_type;
  using Acc = typename Stat::non_const_value_type;
  static_assert(std::is_same_v<typename X::non_const_value_type, T> &&
                    std::is_same_v<typename DY::non_const_value_type, T>,
                "dilated::Impl::layer_norm_backward: x, dy and dx must share the storage type");
  const int cols = x.extent(1);
  const long rows = x.extent(0);
  const T* add_data = add.extent(0) > 0 ? add.data() : nullptr;
  const long add_stride = add.extent(0) > 0 ? static_cast<long>(add.stride(0)) : 0;
  if constexpr (!is_cuda_v<ExecSpace>) {
    if (!column_sum_levels(rows).empty()) {
      layer_norm_backward_host(space, x, gamma, mean, rstd, dy, dx, dgamma, dbeta, partial,
                               add_data, add_stride);
      return;
    }
  }
  // The parameter gradients first: they read dy, which dx may overwrite (in place).
  column_sums<Acc, 2>(
      space, "dilated::layer_norm::parameter_gradients", x.extent(0), cols,
      KOKKOS_LAMBDA(long i, long j, Acc(&sums)[2]) {
        const Acc d = static_cast<Acc>(dy(i, j));
        sums[0] += d * (static_cast<Acc>(x(i, j)) - mean(i)) * rstd(i);
        sums[1] += d;
      },
      partial, dgamma, dbeta);
  const bool packs = add_data ? rows_take_packs<T>(cols, x, dy, dx, gamma, add)
                              : rows_take_packs<T>(cols, x, dy, dx, gamma);
  if (packs)
    layer_norm_input_gradient_rows<T, row_pack_width<T>()>(space, x, gamma, mean, rstd, dy, dx,
                                                           add_data, add_stride);
  else
    layer_norm_input_gradient_rows<T, 1>(space, x, gamma, mean, rstd, dy, dx, add_data, add_stride);
}

}  // namespace dilated::Impl

#endif  // DILATED_LAYER_NORM_HPP
