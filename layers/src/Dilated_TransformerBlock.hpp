// The pass the seed's two transformer blocks share (Dilated_TransformerBlockParts.hpp has the
// formulas): LN1, the block's attention (the derived class: StandardTransformerBlock runs
// MultiheadDilatedAttention, CustomTransformerBlock its own projections around DilatedAttention),
// the residual, LN2 and the GELU feed-forward with its residual, forward and backward, on
// (batch, seq, embed_dim) Views. The derived class provides
//
//   attention_forward(space, x, a, call):   a.x1 = x (+ attention of ws.normed, LN1's output)
//                                           (residual_in_attention: the sum is in a.x1; else
//                                           a.x1 holds the attention alone and LN2 adds x)
//   attention_backward(space, x, dx1, a, g, call) -> the gradient of LN1's output (M, E),
//                                           for dx1 = the gradient of x1
//   reset_attention(seed), make_gradient_attention(), attention_prefix().
#ifndef DILATED_TRANSFORMER_BLOCK_HPP
#define DILATED_TRANSFORMER_BLOCK_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_FeedForward.hpp>
#include <Dilated_LayerNorm.hpp>
#include <Dilated_Options.hpp>
#include <Dilated_TransformerBlockParts.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <memory>
#include <type_traits>

namespace dilated::Impl {

template <class Derived, class T, class MemorySpace>
class TransformerBlockBase {
  static_assert(is_storage_type_v<T>,
                "dilated::TransformerBlock<Policy, T>: T must be float, double, "
                "Kokkos::Experimental::half_t or bhalf_t");
  static_assert(Kokkos::is_memory_space<MemorySpace>::value,
                "dilated::TransformerBlock<Policy, T, MemorySpace>: MemorySpace must be a Kokkos "
                "memory space");

 public:
  using value_type = T;
  using memory_space = MemorySpace;
  using Parameters = TransformerBlockParameters<T, MemorySpace>;
  using Activations = TransformerBlockActivations<T, MemorySpace>;
  using Gradients = TransformerBlockGradients<T, MemorySpace>;
  using Workspace = TransformerBlockWorkspace<T, MemorySpace>;
  using Tokens = Kokkos::View<T***, Kokkos::LayoutRight, MemorySpace>;

  int embed_dim() const { return embed_dim_; }
  int num_heads() const { return num_heads_; }
  double layer_norm_eps() const { return eps_; }
  Parameters& parameters() { return parameters_; }
  const Parameters& parameters() const { return parameters_; }

  // Buffers shared by copies of this block and by blocks given the same workspace (which then
  // must not run at the same time); they grow to the largest call and stay until released.
  const std::shared_ptr<Workspace>& workspace() const { return workspace_; }
  Derived& set_workspace(std::shared_ptr<Workspace> workspace) {
    require(workspace != nullptr, "dilated::TransformerBlock::set_workspace",
            "workspace must not be null");
    workspace_ = std::move(workspace);
    derived().workspace_changed();
    return derived();
  }
  void release_workspace() { workspace_->release(); }

  // The feed-forward's GELU: PyTorch's nn.GELU() (approximate='none', the default and the seed's)
  // or its tanh approximation (approximate='tanh', GPT-2's), which on CUDA runs in the products'
  // epilogues (Dilated_FeedForward.hpp). A forward and its backward must use the same one.
  GeluApproximation gelu() const { return gelu_; }
  Derived& set_gelu(GeluApproximation approximation) {
    gelu_ = approximation;
    return derived();
  }

  // y (b, n, E) = the block applied to x (b, n, E); with `saved`, keeps what backward needs (its
  // buffers reused by later calls of the same shape). x and y dense (rows contiguous), distinct.
  // Asynchronous on `space`, as MultiheadDilatedAttention::forward.
  template <class ExecSpace, class X, class Y>
  void forward(const ExecSpace& space, const X& x, const Y& y, Activations& saved,
               const ForwardOptions& call = {}) const {
    check_types<ExecSpace, X, Y>();
    ScopedRegion region(Derived::forward_name);
    forward_impl(Derived::forward_name, space, x, &y, saved, call);
  }
  template <class ExecSpace, class X, class Y>
  void forward(const ExecSpace& space, const X& x, const Y& y,
               const ForwardOptions& call = {}) const {
    check_types<ExecSpace, X, Y>();
    ScopedRegion region(Derived::forward_name);
    forward_impl(Derived::forward_name, space, x, &y, workspace_->activations, call);
  }

  // Gradients for dy = dL/dy of the forward on x with the same options: dx = dL/dx (dx may be
  // dy itself: the residual stream's gradient updated in place) and every parameter's into
  // `grads` (its Views reused when they have this block's shapes).
  template <class ExecSpace, class X, class DY, class DX>
  void backward(const ExecSpace& space, const X& x, const DY& dy, const DX& dx,
                const Activations& saved, Gradients& grads, const ForwardOptions& call = {}) const {
    check_types<ExecSpace, X, DY, DX>();
    ScopedRegion region(Derived::backward_name);
    const char* fn = Derived::backward_name;
    require(saved.batch == static_cast<int>(x.extent(0)) &&
                saved.length == static_cast<int>(x.extent(1)) && saved.x1.size() > 0,
            fn, "saved activations are of a forward on (", saved.batch, ", ", saved.length,
            ") inputs, not (", x.extent(0), ", ", x.extent(1), ")");
    backward_impl(fn, space, x, dy, dx, saved, grads, call);
  }

  // The same with the forward recomputed first (activation checkpointing: the caller kept only
  // x); the recomputed activations live in the workspace.
  template <class ExecSpace, class X, class DY, class DX>
  void backward(const ExecSpace& space, const X& x, const DY& dy, const DX& dx, Gradients& grads,
                const ForwardOptions& call = {}) const {
    check_types<ExecSpace, X, DY, DX>();
    ScopedRegion region(Derived::backward_name);
    Activations& a = workspace_->activations;
    forward_impl(Derived::backward_name, space, x, static_cast<const Tokens*>(nullptr), a, call);
    backward_impl(Derived::backward_name, space, x, dy, dx, a, grads, call);
  }

  // Allocates `g` for this block (zero-filled) where its Views lack this block's shapes;
  // backward does it when needed.
  void ensure_gradients(Gradients& g) const {
    const Parameters& p = parameters_;
    Parameters& dp = g.parameters;
    const auto same = [](const auto& u, const auto& v) {
      return u.extent(0) == v.extent(0) && u.extent(1) == v.extent(1);
    };
    if (!same(dp.norm1_weight, p.norm1_weight) || !same(dp.ffn.fc1_weight, p.ffn.fc1_weight) ||
        !same(dp.attention.in_proj_weight, p.attention.in_proj_weight) ||
        !same(dp.attention.norm_weight, p.attention.norm_weight)) {
      dp = Parameters(embed_dim_, derived().make_gradient_attention(), p.attention_prefix,
                      "dilated::TransformerBlock::gradients");
    }
    g.attention.parameters = dp.attention;
  }

 protected:
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;

  TransformerBlockBase(int embed_dim, int num_heads, double eps)
      : embed_dim_(embed_dim), num_heads_(num_heads), eps_(eps) {}

  Derived& derived() { return static_cast<Derived&>(*this); }
  const Derived& derived() const { return static_cast<const Derived&>(*this); }

  template <class ExecSpace, class... Views>
  static constexpr void check_types() {
    static_assert(is_execution_space_v<ExecSpace>,
                  "dilated::TransformerBlock: the first argument must be a Kokkos execution space");
    static_assert((is_view_v<Views> && ...),
                  "dilated::TransformerBlock: x, y, dy and dx must be Kokkos::Views");
    static_assert(((view_rank_v<Views> == 3) && ...),
                  "dilated::TransformerBlock: x, y, dy and dx must have rank 3 (batch, seq, "
                  "embed_dim)");
    static_assert((std::is_same_v<typename Views::non_const_value_type, T> && ...),
                  "dilated::TransformerBlock: x, y, dy and dx must hold the block's storage type");
    static_assert((is_accessible_from_v<ExecSpace, Views> && ...),
                  "dilated::TransformerBlock: every View must be accessible from the execution "
                  "space");
    static_assert(Kokkos::SpaceAccessibility<ExecSpace, MemorySpace>::accessible,
                  "dilated::TransformerBlock: the block's MemorySpace must be accessible from the "
                  "execution space");
  }

  template <class X>
  void check_input(const char* fn, const X& x) const {
    require(x.extent(0) >= 1 && x.extent(1) >= 1, fn, "x is (", x.extent(0), ", ", x.extent(1),
            ", ", x.extent(2), "): batch and sequence length must be >= 1");
    require(x.extent(2) == static_cast<std::size_t>(embed_dim_), fn,
            "x.extent(2) (embed_dim) = ", x.extent(2), " does not match embed_dim = ", embed_dim_);
  }

  template <class ExecSpace, class X, class Y>
  void forward_impl(const char* fn, const ExecSpace& space, const X& x, const Y* y, Activations& a,
                    const ForwardOptions& call) const {
    check_input(fn, x);
    const std::size_t b = x.extent(0), n = x.extent(1), e = embed_dim_, m = b * n;
    const Matrix xr = block_rows<Matrix>(fn, "x", x, b, n, e);
    Matrix yr;
    if (y) {
      yr = block_rows<Matrix>(fn, "y", *y, b, n, e);
      require(yr.data() != xr.data(), fn, "y must not be x (x is read by the backward)");
    }
    Workspace& ws = *workspace_;
    ensure_block_workspace(ws, m, e, Derived::is_custom);
    ensure_block_activations(a, static_cast<int>(b), static_cast<int>(n), e);
    const Parameters& p = parameters_;
    layer_norm_forward(space, xr, p.norm1_weight, p.norm1_bias, eps_, ws.normed, a.mean1, a.rstd1);
    derived().attention_forward(space, xr, a, call);
    if (Derived::residual_in_attention)
      layer_norm_forward(space, a.x1, p.norm2_weight, p.norm2_bias, eps_, ws.normed, a.mean2,
                         a.rstd2);
    else
      add_layer_norm_forward(space, a.x1, xr, a.x1, p.norm2_weight, p.norm2_bias, eps_, ws.normed,
                             a.mean2, a.rstd2);
    // The feed-forward's pre-activation is kept (also by a recomputing backward, which needs no
    // output: y null); gelu and the second product only make y.
    if (y) {
      feed_forward_hidden(space, p.ffn, ws.normed, a.hidden, ws.gelu, gelu_, gemm_);
      linear_forward_residual(space, ws.gelu, p.ffn.fc2_weight, p.ffn.fc2_bias, a.x1, yr, gemm_);
    } else {
      linear_forward(space, ws.normed, p.ffn.fc1_weight, p.ffn.fc1_bias, a.hidden, gemm_);
    }
  }

  template <class ExecSpace, class X, class DY, class DX>
  void backward_impl(const char* fn, const ExecSpace& space, const X& x, const DY& dy, const DX& dx,
                     const Activations& a, Gradients& g, const ForwardOptions& call) const {
    check_input(fn, x);
    const std::size_t b = x.extent(0), n = x.extent(1), e = embed_dim_, m = b * n;
    const Matrix xr = block_rows<Matrix>(fn, "x", x, b, n, e);
    const Matrix dyr = block_rows<Matrix>(fn, "dy", dy, b, n, e);
    const Matrix dxr = block_rows<Matrix>(fn, "dx", dx, b, n, e);
    require(dxr.data() != xr.data(), fn, "dx must not be x");
    Workspace& ws = *workspace_;
    ensure_block_workspace(ws, m, e, Derived::is_custom);
    ensure_gradients(g);
    const Parameters& p = parameters_;
    Parameters& dp = g.parameters;
    // The feed-forward, on LN2's output recomputed.
    layer_norm_forward(space, a.x1, p.norm2_weight, p.norm2_bias, eps_, ws.normed, ws.mean,
                       ws.rstd);
    feed_forward_backward(space, p.ffn, ws.normed, a.hidden, dyr, ws.dnormed, ws.gelu, dp.ffn,
                          gemm_, ws.partial, gelu_);
    // dx1 = dy + LN2's input gradient, into dx.
    layer_norm_backward(space, a.x1, p.norm2_weight, a.mean2, a.rstd2, ws.dnormed, dxr,
                        dp.norm2_weight, dp.norm2_bias, ws.partial, dyr);
    // The attention, then dx = dx1 + LN1's input gradient (in place).
    const Matrix dn1 = derived().attention_backward(space, xr, dxr, a, g, call);
    layer_norm_backward(space, xr, p.norm1_weight, a.mean1, a.rstd1, dn1, dxr, dp.norm1_weight,
                        dp.norm1_bias, ws.partial, dxr);
  }

  int embed_dim_, num_heads_;
  double eps_;
  Parameters parameters_;
  GemmOptions gemm_;
  GeluApproximation gelu_ = GeluApproximation::none;
  std::shared_ptr<Workspace> workspace_ = std::make_shared<Workspace>();
};

}  // namespace dilated::Impl

#endif  // DILATED_TRANSFORMER_BLOCK_HPP
