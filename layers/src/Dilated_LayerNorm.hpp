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

#include <type_traits>

namespace dilated::Impl {

// How a kernel over the rows of a matrix spreads: one row per team thread, its columns over the
// vector lanes (a warp per row and 4 rows a team on CUDA; one row a team on the host).
template <class ExecSpace>
struct MatrixRowLaunch {
  static constexpr int lanes = is_cuda_v<ExecSpace> ? 32 : 1;
  static constexpr int rows_per_team = is_cuda_v<ExecSpace> ? 4 : 1;
  static Kokkos::TeamPolicy<ExecSpace> policy(const ExecSpace& space, long rows) {
    return Kokkos::TeamPolicy<ExecSpace>(
        space, static_cast<int>((rows + rows_per_team - 1) / rows_per_team), rows_per_team, lanes);
  }
};

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
          Acc sum = 0;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(member, packs),
              [&](int p, Acc& s) {
                const P v = row[p];
                for (int w = 0; w < W; ++w)
                  s += static_cast<Acc>(v.v[w]);
              },
              sum);
          const Acc mu = sum / cols;
          Acc squares = 0;  // centred: no cancellation when |mean| >> the spread
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(member, packs),
              [&](int p, Acc& s) {
                const P v = row[p];
                for (int w = 0; w < W; ++w) {
                  const Acc c = static_cast<Acc>(v.v[w]) - mu;
                  s += c * c;
                }
              },
              squares);
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
          Acc sum_g = 0, sum_gx = 0;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(member, packs),
              [&](int p, Acc& s) {
                const P d = dyr[p], g = gp[p];
                for (int w = 0; w < W; ++w)
                  s += static_cast<Acc>(d.v[w]) * static_cast<Acc>(g.v[w]);
              },
              sum_g);
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(member, packs),
              [&](int p, Acc& s) {
                const P v = xr[p], d = dyr[p], g = gp[p];
                for (int w = 0; w < W; ++w)
                  s += static_cast<Acc>(d.v[w]) * static_cast<Acc>(g.v[w]) *
                       ((static_cast<Acc>(v.v[w]) - mu) * rs);
              },
              sum_gx);
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

// Gradients of layer_norm_forward for the upstream gradient dy: dx, dgamma = column sums of
// dy xhat and dbeta = column sums of dy. dx may be dy itself (in place: each row's dy is read
// whole before its dx is written, and the column sums run first), which saves the layer one
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
  // The parameter gradients first: they read dy, which dx may overwrite (in place).
  column_sums<Acc, 2>(
      space, "dilated::layer_norm::parameter_gradients", x.extent(0), cols,
      KOKKOS_LAMBDA(long i, long j, Acc(&sums)[2]) {
        const Acc d = static_cast<Acc>(dy(i, j));
        sums[0] += d * (static_cast<Acc>(x(i, j)) - mean(i)) * rstd(i);
        sums[1] += d;
      },
      partial, dgamma, dbeta);
  const T* add_data = add.extent(0) > 0 ? add.data() : nullptr;
  const long add_stride = add.extent(0) > 0 ? static_cast<long>(add.stride(0)) : 0;
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
