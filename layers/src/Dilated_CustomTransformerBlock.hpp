// dilated::CustomTransformerBlock<Policy, T, MemorySpace>: the seed's "standalone" block, a pre-LN
// transformer block with its own projections around DilatedAttention<Policy>, called directly:
//
//   [q | k | v] = LN1(x) W_in^T + b_in            one E -> 3E product into a (M, 3E) buffer
//   x1 = x + Attention(q, k, v) W_out^T + b_out   q, k, v: strided (b, n, h, d) views of it
//   y  = x1 + Linear(4E, E)(GELU(Linear(E, 4E)(LN2(x1))))
//
// under either policy (the Original reads the packed buffer through strided views as the
// Improved does). Both residuals are added in the products' epilogues. PyTorch names: norm1.*,
// q_proj.*, k_proj.*, v_proj.*, out_proj.*, norm2.*, ffn.0.*, ffn.2.*. See docs/training.md.
#ifndef DILATED_CUSTOM_TRANSFORMER_BLOCK_HPP
#define DILATED_CUSTOM_TRANSFORMER_BLOCK_HPP

#include <Dilated_AlgorithmPolicies.hpp>
#include <Dilated_DilatedAttention.hpp>
#include <Dilated_Linear.hpp>
#include <Dilated_MultiheadDilatedAttention.hpp>
#include <Dilated_TransformerBlock.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace dilated {

template <class Policy = Improved, class T = float,
          class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
class CustomTransformerBlock
    : public Impl::TransformerBlockBase<CustomTransformerBlock<Policy, T, MemorySpace>, T,
                                        MemorySpace> {
  static_assert(is_algorithm_policy_v<Policy>,
                "dilated::CustomTransformerBlock<Policy, T>: Policy must be dilated::Original or "
                "dilated::Improved");
  using Base = Impl::TransformerBlockBase<CustomTransformerBlock, T, MemorySpace>;
  friend Base;

 public:
  using policy_type = Policy;
  static constexpr bool is_custom = true;
  using typename Base::Activations;
  using typename Base::Gradients;
  using typename Base::Parameters;

  // Throws std::invalid_argument naming the argument: embed_dim or num_heads < 1, embed_dim not
  // divisible by num_heads, and DilatedAttention's checks of the lists (grouped: at least one
  // head per branch). Parameters from reset_parameters(init_seed).
  CustomTransformerBlock(int embed_dim, int num_heads, std::vector<int> segment_lengths,
                         std::vector<int> dilation_rates, Semantics semantics = Semantics::grouped,
                         std::uint64_t init_seed = 0, double dropout = 0.0)
      : CustomTransformerBlock(skip_init, embed_dim, num_heads, std::move(segment_lengths),
                               std::move(dilation_rates), semantics, dropout) {
    reset_parameters(init_seed);
  }
  // The same block with zero-filled parameters (SkipInit): for a caller that writes them.
  CustomTransformerBlock(SkipInit, int embed_dim, int num_heads, std::vector<int> segment_lengths,
                         std::vector<int> dilation_rates, Semantics semantics = Semantics::grouped,
                         double dropout = 0.0)
      : Base(embed_dim, num_heads, 1e-5),
        attention_(Impl::make_layer_attention<Policy>(
            "dilated::CustomTransformerBlock", embed_dim, num_heads, std::move(segment_lengths),
            std::move(dilation_rates), semantics, dropout)) {
    this->parameters_ =
        Parameters(embed_dim,
                   MultiheadParameters<T, MemorySpace>(
                       embed_dim, true, false, "dilated::CustomTransformerBlock::parameters"),
                   "", "dilated::CustomTransformerBlock::parameters");
    workspace_changed();
  }

  const DilatedAttention<Policy>& attention() const { return attention_; }
  int head_dim() const { return this->embed_dim_ / this->num_heads_; }
  Geometry geometry() const { return attention_.geometry(this->num_heads_); }

  // LayerNorms (1, 0), feed-forward N(0, 0.02^2) weights and zero biases from `seed`; the q, k, v
  // and output projections Xavier-normal with zero biases (the multihead layer's rule, gain 1)
  // from seed + 1.
  void reset_parameters(std::uint64_t seed) {
    Impl::ScopedRegion region("dilated::CustomTransformerBlock::reset_parameters");
    Impl::ParameterDraw<T, MemorySpace> values;
    draw_parameters(seed, values);
    values.copy();
  }
  // The values reset_parameters(seed) gives, drawn into `out` (host code only: a model draws
  // its blocks on several threads).
  void draw_parameters(std::uint64_t seed, Impl::ParameterDraw<T, MemorySpace>& out) const {
    Impl::draw_block_parameters(this->parameters_, seed, out);
    Impl::draw_parameters(this->parameters_.attention, 1.0, seed + 1, out);
  }

 private:
  static constexpr const char* forward_name = "dilated::CustomTransformerBlock::forward";
  static constexpr const char* backward_name = "dilated::CustomTransformerBlock::backward";
  static constexpr bool residual_in_attention = true;
  using Matrix = typename Base::Matrix;
  using Heads = Kokkos::View<T****, Kokkos::LayoutStride, MemorySpace>;
  using Merged = Kokkos::View<T****, Kokkos::LayoutRight, MemorySpace>;

  // The attention's temporaries go to the pool of the workspace's multihead part (shared by
  // every block given this workspace).
  void workspace_changed() {
    attention_.set_scratch(this->workspace_->attention->attention_scratch);
  }

  MultiheadParameters<T, MemorySpace> make_gradient_attention() const {
    return MultiheadParameters<T, MemorySpace>(this->embed_dim_, true, false,
                                               "dilated::CustomTransformerBlock::gradients");
  }

  // Head views (b, n, h, d) of q (part 0), k (1) or v (2) in a packed (M, 3E) buffer.
  Heads heads(const Matrix& qkv, int part, int batch, int n) const {
    const std::size_t e = this->embed_dim_, d = head_dim(), row = 3 * e;
    return Heads(qkv.data() + part * e,
                 Kokkos::LayoutStride(batch, n * row, n, row, this->num_heads_, d, d, 1));
  }
  Merged merged(const Matrix& x, int batch, int n) const {
    return Merged(x.data(), batch, n, this->num_heads_, head_dim());
  }

  // a.x1 = x + out_proj(attention(q, k, v)), q, k, v from LN1's output (ws.normed).
  template <class ExecSpace>
  void attention_forward(const ExecSpace& space, const Matrix& x, Activations& a,
                         const ForwardOptions& call) const {
    const auto& ws = *this->workspace_;
    const auto& p = this->parameters_.attention;
    const int b = a.batch, n = a.length;
    const std::size_t e = this->embed_dim_, m = std::size_t(b) * n;
    auto& s = a.attention;
    s.batch = b;
    s.length = n;
    s.packed = true;
    Impl::ensure_extents(s.qkv, "dilated::CustomTransformerBlock::qkv", m, 3 * e);
    Impl::ensure_extents(s.attention, "dilated::CustomTransformerBlock::attention", m, e);
    Impl::ensure_extents(s.lse, "dilated::CustomTransformerBlock::lse", b, n, this->num_heads_);
    Impl::linear_forward(space, ws.normed, p.in_proj_weight, p.in_proj_bias, s.qkv, this->gemm_);
    attention_.forward(space, heads(s.qkv, 0, b, n), heads(s.qkv, 1, b, n), heads(s.qkv, 2, b, n),
                       merged(s.attention, b, n), s.lse, call);
    Impl::linear_forward_residual(space, s.attention, p.out_proj_weight, p.out_proj_bias, x, a.x1,
                                  this->gemm_);
  }

  // dx1 through the output projection, the attention and the q, k, v projections (LN1's output
  // recomputed); returns the gradient of LN1's output (ws.dnormed).
  template <class ExecSpace>
  Matrix attention_backward(const ExecSpace& space, const Matrix& x, const Matrix& dx1,
                            const Activations& a, Gradients& g, const ForwardOptions& call) const {
    auto& ws = *this->workspace_;
    const Parameters& p = this->parameters_;
    auto& dp = g.parameters.attention;
    const auto& s = a.attention;
    const int b = a.batch, n = a.length;
    Impl::linear_backward(space, s.attention, p.attention.out_proj_weight, dx1, ws.dnormed, false,
                          dp.out_proj_weight, dp.out_proj_bias, this->gemm_, ws.partial);
    attention_.backward(space, heads(s.qkv, 0, b, n), heads(s.qkv, 1, b, n), heads(s.qkv, 2, b, n),
                        merged(s.attention, b, n), s.lse, merged(ws.dnormed, b, n),
                        heads(ws.dqkv, 0, b, n), heads(ws.dqkv, 1, b, n), heads(ws.dqkv, 2, b, n),
                        call);
    Impl::layer_norm_forward(space, x, p.norm1_weight, p.norm1_bias, this->eps_, ws.normed, ws.mean,
                             ws.rstd);
    Impl::linear_backward(space, ws.normed, p.attention.in_proj_weight, ws.dqkv, ws.dnormed, false,
                          dp.in_proj_weight, dp.in_proj_bias, this->gemm_, ws.partial);
    return ws.dnormed;
  }

  DilatedAttention<Policy> attention_;
};

}  // namespace dilated

#endif  // DILATED_CUSTOM_TRANSFORMER_BLOCK_HPP
