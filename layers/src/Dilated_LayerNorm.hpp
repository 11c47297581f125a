// PyTorch's nn.LayerNorm over the last dimension of row-major (rows, features) matrices, with
// its backward: y = (x - mean) rstd gamma + beta, rstd = 1 / sqrt(var + eps), var the biased
// variance. One Kokkos team per row; statistics in float (double for double storage).
#ifndef DILATED_LAYER_NORM_HPP
#define DILATED_LAYER_NORM_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Linear.hpp>

#include <Kokkos_Core.hpp>

namespace dilated::Impl {

// y = LayerNorm(x) with weight gamma and bias beta (features); mean and rstd (rows) receive
// each row's mean and 1 / sqrt(var + eps) for the backward.
template <class ExecSpace, class X, class G, class B, class Y, class Stat>
void layer_norm_forward(const ExecSpace& space, const X& x, const G& gamma, const B& beta,
                        double eps, const Y& y, const Stat& mean, const Stat& rstd) {
  using T = typename Y::non_const_value_type;
  using Acc = typename Stat::non_const_value_type;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int cols = x.extent(1);
  const Acc epsilon = static_cast<Acc>(eps);
  Kokkos::parallel_for(
      "dilated::layer_norm::forward",
      Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>(x.extent(0)), Kokkos::AUTO),
      KOKKOS_LAMBDA(const Member& member) {
        const int i = member.league_rank();
        Acc sum = 0, squares = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, cols),
            [&](int j, Acc& s) { s += static_cast<Acc>(x(i, j)); }, sum);
        const Acc mu = sum / cols;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, cols),
            [&](int j, Acc& s) {
              const Acc centred = static_cast<Acc>(x(i, j)) - mu;
              s += centred * centred;
            },
            squares);
        const Acc r = Acc(1) / math::sqrt(squares / cols + epsilon);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, cols), [&](int j) {
          y(i, j) =
              static_cast<T>((static_cast<Acc>(x(i, j)) - mu) * r * static_cast<Acc>(gamma(j)) +
                             static_cast<Acc>(beta(j)));
        });
        Kokkos::single(Kokkos::PerTeam(member), [&]() {
          mean(i) = mu;
          rstd(i) = r;
        });
      });
}

// Gradients of layer_norm_forward for the upstream gradient dy:
//   dx = rstd (g - mean_j(g) - xhat mean_j(g xhat)) with g = dy gamma, xhat = (x - mean) rstd;
//   dgamma = column sums of dy xhat, dbeta = column sums of dy.
template <class ExecSpace, class X, class G, class Stat, class DY, class DX, class DG, class DB>
void layer_norm_backward(const ExecSpace& space, const X& x, const G& gamma, const Stat& mean,
                         const Stat& rstd, const DY& dy, const DX& dx, const DG& dgamma,
                         const DB& dbeta) {
  using T = typename DX::non_const_value_type;
  using Acc = typename Stat::non_const_value_type;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int cols = x.extent(1);
  Kokkos::parallel_for(
      "dilated::layer_norm::backward",
      Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>(x.extent(0)), Kokkos::AUTO),
      KOKKOS_LAMBDA(const Member& member) {
        const int i = member.league_rank();
        const Acc mu = mean(i), r = rstd(i);
        Acc sum_g = 0, sum_gx = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, cols),
            [&](int j, Acc& s) { s += static_cast<Acc>(dy(i, j)) * static_cast<Acc>(gamma(j)); },
            sum_g);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, cols),
            [&](int j, Acc& s) {
              const Acc xhat = (static_cast<Acc>(x(i, j)) - mu) * r;
              s += static_cast<Acc>(dy(i, j)) * static_cast<Acc>(gamma(j)) * xhat;
            },
            sum_gx);
        const Acc a = sum_g / cols, b = sum_gx / cols;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, cols), [&](int j) {
          const Acc xhat = (static_cast<Acc>(x(i, j)) - mu) * r;
          const Acc g = static_cast<Acc>(dy(i, j)) * static_cast<Acc>(gamma(j));
          dx(i, j) = static_cast<T>(r * (g - a - xhat * b));
        });
      });
  column_sums<Acc>(
      space, "dilated::layer_norm::weight_gradient", x.extent(0), cols,
      KOKKOS_LAMBDA(long i, long j) {
        return static_cast<Acc>(dy(i, j)) * (static_cast<Acc>(x(i, j)) - mean(i)) * rstd(i);
      },
      dgamma);
  column_sums<Acc>(
      space, "dilated::layer_norm::bias_gradient", x.extent(0), cols,
      KOKKOS_LAMBDA(long i, long j) { return static_cast<Acc>(dy(i, j)); }, dbeta);
}

}  // namespace dilated::Impl

#endif  // DILATED_LAYER_NORM_HPP
