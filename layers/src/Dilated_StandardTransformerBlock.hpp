// dilated::StandardTransformerBlock<Policy, T, MemorySpace>: the seed's "multihead" block, a
// pre-LN transformer block around MultiheadDilatedAttention<Policy> (its MAGNETO sub-LayerNorm
// included):
//
//   x1 = x + MultiheadDilatedAttention(LN1(x), LN1(x), LN1(x))
//   y  = x1 + Linear(4E, E)(GELU(Linear(E, 4E)(LN2(x1))))
//
// Forward and backward (Dilated_TransformerBlock.hpp); the attention's residual is added in LN2's
// pass (add_layer_norm_forward), the feed-forward's in its second product's epilogue.
// PyTorch names: norm1.*, attention.{q,k,v}_proj.*, attention.norm.*, attention.out_proj.*,
// norm2.*, ffn.0.*, ffn.2.*. See docs/training.md.
#ifndef DILATED_STANDARD_TRANSFORMER_BLOCK_HPP
#define DILATED_STANDARD_TRANSFORMER_BLOCK_HPP

#include <Dilated_AlgorithmPolicies.hpp>
#include <Dilated_MultiheadDilatedAttention.hpp>
#include <Dilated_TransformerBlock.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <vector>

namespace dilated {

template <class Policy = Improved, class T = float,
          class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
class StandardTransformerBlock
    : public Impl::TransformerBlockBase<StandardTransformerBlock<Policy, T, MemorySpace>, T,
                                        MemorySpace> {
  static_assert(is_algorithm_policy_v<Policy>,
                "dilated::StandardTransformerBlock<Policy, T>: Policy must be dilated::Original or "
                "dilated::Improved");
  using Base = Impl::TransformerBlockBase<StandardTransformerBlock, T, MemorySpace>;
  friend Base;

 public:
  using policy_type = Policy;
  static constexpr bool is_custom = false;
  using Attention = MultiheadDilatedAttention<Policy, T, MemorySpace>;
  using typename Base::Activations;
  using typename Base::Gradients;
  using typename Base::Parameters;

  // The multihead layer's arguments (MultiheadDilatedAttention's checks and messages); LayerNorm
  // eps 1e-5 throughout. Parameters from reset_parameters(init_seed).
  StandardTransformerBlock(int embed_dim, int num_heads, std::vector<int> segment_lengths,
                           std::vector<int> dilation_rates,
                           Semantics semantics = Semantics::grouped, std::uint64_t init_seed = 0,
                           double dropout = 0.0)
      : StandardTransformerBlock(skip_init, embed_dim, num_heads, std::move(segment_lengths),
                                 std::move(dilation_rates), semantics, dropout) {
    reset_parameters(init_seed);
  }
  // The same block with zero-filled parameters (SkipInit): for a caller that writes them.
  StandardTransformerBlock(SkipInit, int embed_dim, int num_heads, std::vector<int> segment_lengths,
                           std::vector<int> dilation_rates,
                           Semantics semantics = Semantics::grouped, double dropout = 0.0)
      : Base(embed_dim, num_heads, 1e-5),
        attention_(skip_init, embed_dim, num_heads, std::move(segment_lengths),
                   std::move(dilation_rates), dropout, true, true, 1e-5, 1.0, semantics) {
    this->parameters_ = Parameters(embed_dim, attention_.parameters(), "attention.",
                                   "dilated::StandardTransformerBlock::parameters");
    workspace_changed();
  }

  const Attention& attention() const { return attention_; }
  Geometry geometry() const { return attention_.geometry(); }

  // LayerNorms (1, 0), feed-forward N(0, 0.02^2) weights and zero biases from `seed`; the
  // multihead layer's own initialisation (Xavier, MAGNETO gains) from seed + 1.
  void reset_parameters(std::uint64_t seed) {
    Impl::ScopedRegion region("dilated::StandardTransformerBlock::reset_parameters");
    Impl::ParameterDraw<T, MemorySpace> values;
    draw_parameters(seed, values);
    values.copy();
  }
  // The values reset_parameters(seed) gives, drawn into `out` (host code only: a model draws
  // its blocks on several threads).
  void draw_parameters(std::uint64_t seed, Impl::ParameterDraw<T, MemorySpace>& out) const {
    Impl::draw_block_parameters(this->parameters_, seed, out);
    Impl::draw_parameters(attention_.parameters(), attention_.gamma_init(), seed + 1, out);
  }

 private:
  static constexpr const char* forward_name = "dilated::StandardTransformerBlock::forward";
  static constexpr const char* backward_name = "dilated::StandardTransformerBlock::backward";
  static constexpr bool residual_in_attention = false;
  using Matrix = typename Base::Matrix;
  using Tokens = typename Base::Tokens;

  void workspace_changed() { attention_.set_workspace(this->workspace_->attention); }

  MultiheadParameters<T, MemorySpace> make_gradient_attention() const {
    return MultiheadParameters<T, MemorySpace>(this->embed_dim_, true, true,
                                               "dilated::StandardTransformerBlock::gradients");
  }

  // a.x1 = the multihead layer on LN1's output (ws.normed); LN2's pass adds x.
  template <class ExecSpace>
  void attention_forward(const ExecSpace& space, const Matrix& x, Activations& a,
                         const ForwardOptions& call) const {
    const auto& ws = *this->workspace_;
    const Tokens normed(ws.normed.data(), a.batch, a.length, this->embed_dim_);
    attention_.forward(space, normed, normed, normed,
                       Tokens(a.x1.data(), a.batch, a.length, this->embed_dim_), a.attention, call);
    (void)x;
  }

  // LN1's output recomputed; the layer's backward for dout = dx1 gives its input's gradient.
  template <class ExecSpace>
  Matrix attention_backward(const ExecSpace& space, const Matrix& x, const Matrix& dx1,
                            const Activations& a, Gradients& g, const ForwardOptions& call) const {
    auto& ws = *this->workspace_;
    const Parameters& p = this->parameters_;
    Impl::layer_norm_forward(space, x, p.norm1_weight, p.norm1_bias, this->eps_, ws.normed, ws.mean,
                             ws.rstd);
    const Tokens normed(ws.normed.data(), a.batch, a.length, this->embed_dim_);
    const Tokens dout(dx1.data(), a.batch, a.length, this->embed_dim_);
    // The layer's input gradient is a temporary of this pass, not a parameter gradient: it goes
    // into the shared workspace (ws.dnormed, free once LN2's backward has read it), not into a
    // buffer of each block's Gradients (L buffers of (M, E) for a model of L blocks).
    g.attention.query = Tokens(ws.dnormed.data(), a.batch, a.length, this->embed_dim_);
    attention_.backward(space, normed, normed, normed, dout, a.attention, g.attention, call);
    const Matrix dn1(g.attention.query.data(), x.extent(0), x.extent(1));
    g.attention.query = Tokens();
    return dn1;
  }

  Attention attention_;
};

}  // namespace dilated

#endif  // DILATED_STANDARD_TRANSFORMER_BLOCK_HPP
