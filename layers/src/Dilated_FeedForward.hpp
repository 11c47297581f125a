// The transformer blocks' feed-forward, PyTorch's
//
//   nn.Sequential(nn.Linear(E, H), nn.GELU(), nn.Linear(H, E))      (H = 4 E in the seed's blocks)
//
// on (M, E) row-major matrices: its parameters and its backward. The blocks run its forward
// (Dilated_TransformerBlock.hpp) with their residual connection joined into the second product,
// y = residual + W2 gelu(W1 x + b1) + b2, and keep only the pre-activation h = W1 x + b1 (M x H);
// the backward recomputes gelu(h) into a workspace buffer (one pass over h) instead of keeping it,
// which halves what the feed-forward holds per block between the passes. With the tanh GELU on
// CUDA the activation is computed in the first product's epilogue (which writes h and gelu(h)
// together) and its derivative in the backward's product for the hidden gradient
// (Dilated_Gemm.hpp: gemm_bias_gelu, gemm_dgelu): two passes over M x H fewer each way.
#ifndef DILATED_FEED_FORWARD_HPP
#define DILATED_FEED_FORWARD_HPP

#include <Dilated_DeviceMemory.hpp>
#include <Dilated_Gelu.hpp>
#include <Dilated_Linear.hpp>
#include <Dilated_Parameters.hpp>

#include <Kokkos_Core.hpp>

#include <string>
#include <type_traits>
#include <vector>

namespace dilated {

// The feed-forward's tensors, named as the nn.Sequential's state_dict: "0.weight" (H, E),
// "0.bias" (H), "2.weight" (E, H), "2.bias" (E).
template <class T, class MemorySpace>
struct FeedForwardParameters {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Vector = Kokkos::View<T*, Kokkos::LayoutRight, MemorySpace>;
  Matrix fc1_weight;  // (H, E)
  Vector fc1_bias;    // (H)
  Matrix fc2_weight;  // (E, H)
  Vector fc2_bias;    // (E)

  FeedForwardParameters() = default;
  // Zero-filled.
  FeedForwardParameters(int embed_dim, int hidden, const std::string& label)
      : fc1_weight(Impl::allocate_view<Matrix>(label + "::fc1_weight", true, hidden, embed_dim)),
        fc1_bias(Impl::allocate_view<Vector>(label + "::fc1_bias", true, hidden)),
        fc2_weight(Impl::allocate_view<Matrix>(label + "::fc2_weight", true, embed_dim, hidden)),
        fc2_bias(Impl::allocate_view<Vector>(label + "::fc2_bias", true, embed_dim)) {}

  int embed_dim() const { return static_cast<int>(fc1_weight.extent(1)); }
  int hidden() const { return static_cast<int>(fc1_weight.extent(0)); }

  std::vector<NamedTensor<T, MemorySpace>> named_tensors(const std::string& prefix = "") const {
    using Flat = Kokkos::View<T*, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    const std::size_t e = embed_dim(), h = hidden();
    return {{prefix + "0.weight", {h, e}, Flat(fc1_weight.data(), h * e)},
            {prefix + "0.bias", {h}, Flat(fc1_bias.data(), h)},
            {prefix + "2.weight", {e, h}, Flat(fc2_weight.data(), e * h)},
            {prefix + "2.bias", {e}, Flat(fc2_bias.data(), e)}};
  }
};

namespace Impl {

// dh = dg gelu'(h) over g in place (g holds dg on entry) and db = column sums of dh, in one pass
// over the rows on a host space for float storage, where the GELU's pass and the bias
// gradient's column sums (linear_backward) were two: the sums read dh, (M, H) floats, again
// right after the GELU wrote them. A thread per chunk of column_sum_chunk_rows rows adds each
// row's dh into the chunk's partial row as column_sums does, in the same order, and
// column_sum_tree reduces the partials: the same bits as the two passes. Returns false, having
// done nothing, elsewhere (other spaces or storage, rows not dense, too few rows for partials).
template <class ExecSpace, class H, class G, class DB, class Partial>
bool gelu_backward_bias_gradient(const ExecSpace& space, const H& h, const G& g, const DB& db,
                                 Partial partial, GeluApproximation approximation) {
  using T = typename G::non_const_value_type;
  if constexpr (gelu_host_loops_v<ExecSpace, T> && std::is_same_v<T, float>) {
    const long rows = h.extent(0), cols = h.extent(1);
    if (rows == 0 || cols == 0 || !is_flat_matrix(h) || !is_flat_matrix(g) ||
        column_sum_levels(rows).empty() || db.extent(0) != static_cast<std::size_t>(cols))
      return false;
    ensure_column_partials(partial, 1, rows, cols);
    const long chunk = column_sum_chunk_rows(rows), first = column_sum_levels(rows)[0];
    const float* hp = h.data();
    float* gp = g.data();
    const auto run = [&](const auto& derivative) {
      Kokkos::parallel_for(
          // A host lambda: host_math is not device code.
          "dilated::gelu::backward_bias_gradient", Kokkos::RangePolicy<ExecSpace>(space, 0, first),
          [=](long c) {
            float* sum = &partial(c, 0);
            for (long j = 0; j < cols; ++j)
              sum[j] = 0;
            const long end = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
            for (long i = c * chunk; i < end; ++i) {
              const float* hr = hp + i * cols;
              float* gr = gp + i * cols;
              DILATED_HOST_SIMD
              for (long j = 0; j < cols; ++j) {
                // Stored, then added: the sum adds the rounded dh, as the column sums read it
                // (and a product with another use is not fused into the add).
                const float d = gr[j] * derivative(hr[j]);
                gr[j] = d;
                sum[j] += d;
              }
            }
          });
    };
    if (approximation == GeluApproximation::tanh) {
      run([](float x) { return gelu_derivative_host(x, GeluApproximation::tanh); });
    } else {
      run([](float x) { return gelu_derivative_host(x, GeluApproximation::none); });
    }
    column_sum_tree<float, 1>(space, "dilated::linear::bias_gradient", rows, cols, partial,
                              Kokkos::Array<typename DB::non_const_value_type*, 1>{db.data()});
    return true;
  }
  (void)space, (void)h, (void)g, (void)db, (void)partial, (void)approximation;
  return false;
}

// h = x W1^T + b1 (kept for the backward) and g = gelu(h), both (M, H): in one product where the
// backend has the GELU epilogue, else the product and a GELU pass.
template <class ExecSpace, class T, class MemorySpace, class X, class H, class G>
void feed_forward_hidden(const ExecSpace& space, const FeedForwardParameters<T, MemorySpace>& p,
                         const X& x, const H& h, const G& g, GeluApproximation approximation,
                         const GemmOptions& options) {
  if (approximation == GeluApproximation::tanh &&
      gemm_bias_gelu(space, Op::N, Op::T, x, p.fc1_weight, p.fc1_bias, g, h, options))
    return;
  linear_forward(space, x, p.fc1_weight, p.fc1_bias, h, options);
  gelu_forward(space, h, g, approximation);
}

// The gradients of y = residual + fc2(gelu(fc1(x))) for dy (its output's gradient): the parameters'
// into dp, and dx = d/dx (M, E). x and h are the forward's input and pre-activation; g (M, H) is
// scratch (gelu(h), then the hidden gradient, in place). `partial`: the column sums' scratch.
// `approximation`: the forward's GELU.
template <class ExecSpace, class T, class MemorySpace, class X, class H, class DY, class DX,
          class G, class Partial>
void feed_forward_backward(const ExecSpace& space, const FeedForwardParameters<T, MemorySpace>& p,
                           const X& x, const H& h, const DY& dy, const DX& dx, const G& g,
                           const FeedForwardParameters<T, MemorySpace>& dp,
                           const GemmOptions& options, const Partial& partial,
                           GeluApproximation approximation = GeluApproximation::none) {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  gelu_forward(space, h, g, approximation);
  // dW2 = dy^T gelu(h), db2 = column sums of dy (dx of this product comes next, into g).
  linear_backward(space, g, p.fc2_weight, dy, Matrix(), false, dp.fc2_weight, dp.fc2_bias, options,
                  partial);
  // The hidden gradient dy W2 * gelu'(h): the derivative in the product's epilogue where there is
  // one; on the host the first bias's gradient in the derivative's pass.
  bool bias_done = false;
  if (!(approximation == GeluApproximation::tanh &&
        gemm_dgelu(space, Op::N, Op::N, dy, p.fc2_weight, h, g, options))) {
    Impl::gemm(space, Op::N, Op::N, 1.0, dy, p.fc2_weight, 0.0, g, options);
    bias_done = gelu_backward_bias_gradient(space, h, g, dp.fc1_bias, partial, approximation);
    if (!bias_done) gelu_backward(space, h, g, g, approximation);
  }
  linear_backward(space, x, p.fc1_weight, g, dx, false, dp.fc1_weight,
                  bias_done ? decltype(dp.fc1_bias)() : dp.fc1_bias, options, partial);
}

}  // namespace Impl
}  // namespace dilated

#endif  // DILATED_FEED_FORWARD_HPP
