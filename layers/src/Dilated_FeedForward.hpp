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
  // one.
  if (!(approximation == GeluApproximation::tanh &&
        gemm_dgelu(space, Op::N, Op::N, dy, p.fc2_weight, h, g, options))) {
    Impl::gemm(space, Op::N, Op::N, 1.0, dy, p.fc2_weight, 0.0, g, options);
    gelu_backward(space, h, g, g, approximation);
  }
  linear_backward(space, x, p.fc1_weight, g, dx, false, dp.fc1_weight, dp.fc1_bias, options,
                  partial);
}

}  // namespace Impl
}  // namespace dilated

#endif  // DILATED_FEED_FORWARD_HPP
