// What the seed's two transformer blocks (StandardTransformerBlock, CustomTransformerBlock) share:
// their parameters (two LayerNorms, the attention's projections, the feed-forward), what a
// forward keeps for its backward, the buffers their calls reuse, and their argument checks.
//
// Both blocks are pre-LN:
//
//   x1 = x + Attention(LN1(x))
//   y  = x1 + FFN(LN2(x1)),  FFN = Linear(E, 4E), GELU, Linear(4E, E)
//
// What a forward keeps (Activations) per block: LN1's and LN2's row statistics, x1 (M x E), the
// attention's projections, output and log-sum-exp, and FFN's pre-activation (M x 4E); the
// LayerNorms' outputs and gelu(h) are recomputed in the backward (one pass each) rather than kept,
// so a block holds 9 M E values (Custom) or 10 M E (Standard: the sub-LayerNorm's output) between
// the passes. The block's input x is the caller's.
#ifndef DILATED_TRANSFORMER_BLOCK_PARTS_HPP
#define DILATED_TRANSFORMER_BLOCK_PARTS_HPP

#include <Dilated_DeviceMemory.hpp>
#include <Dilated_FeedForward.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <Dilated_MultiheadDilatedAttention.hpp>
#include <Dilated_Parameters.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dilated {

// A block's tensors. `attention` holds the q, k, v and output projections (and, for the
// Standard block, the multihead layer's sub-LayerNorm), as MultiheadParameters.
template <class T, class MemorySpace>
struct TransformerBlockParameters {
  using Vector = Kokkos::View<T*, Kokkos::LayoutRight, MemorySpace>;
  Vector norm1_weight, norm1_bias;
  MultiheadParameters<T, MemorySpace> attention;
  Vector norm2_weight, norm2_bias;
  FeedForwardParameters<T, MemorySpace> ffn;
  // The prefix of the attention's names: "attention." (Standard: its MultiheadDilatedAttention
  // module) or "" (Custom: q_proj, k_proj, v_proj and out_proj are the block's own).
  std::string attention_prefix;

  TransformerBlockParameters() = default;
  // Zero-filled, except `attention`, which the caller passes (the Standard block's layer owns it).
  TransformerBlockParameters(int embed_dim,
                             MultiheadParameters<T, MemorySpace> attention_parameters,
                             std::string prefix, const std::string& label)
      : norm1_weight(Impl::allocate_view<Vector>(label + "::norm1_weight", true, embed_dim)),
        norm1_bias(Impl::allocate_view<Vector>(label + "::norm1_bias", true, embed_dim)),
        attention(std::move(attention_parameters)),
        norm2_weight(Impl::allocate_view<Vector>(label + "::norm2_weight", true, embed_dim)),
        norm2_bias(Impl::allocate_view<Vector>(label + "::norm2_bias", true, embed_dim)),
        ffn(embed_dim, 4 * embed_dim, label + "::ffn"),
        attention_prefix(std::move(prefix)) {}

  int embed_dim() const { return static_cast<int>(norm1_weight.extent(0)); }

  // The PyTorch block's state_dict order: norm1, the attention, norm2, ffn.0, ffn.2.
  std::vector<NamedTensor<T, MemorySpace>> named_tensors(const std::string& prefix = "") const {
    using Flat = Kokkos::View<T*, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    const std::size_t e = embed_dim();
    std::vector<NamedTensor<T, MemorySpace>> list{
        {prefix + "norm1.weight", {e}, Flat(norm1_weight.data(), e)},
        {prefix + "norm1.bias", {e}, Flat(norm1_bias.data(), e)}};
    for (auto& t : attention.named_tensors()) {
      t.name = prefix + attention_prefix + t.name;
      list.push_back(std::move(t));
    }
    list.push_back({prefix + "norm2.weight", {e}, Flat(norm2_weight.data(), e)});
    list.push_back({prefix + "norm2.bias", {e}, Flat(norm2_bias.data(), e)});
    for (auto& t : ffn.named_tensors(prefix + "ffn."))
      list.push_back(std::move(t));
    return list;
  }
};

// What a block's forward keeps for its backward (M = batch x length rows).
template <class T, class MemorySpace>
struct TransformerBlockActivations {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Stat = Kokkos::View<Impl::accumulation_t<T>*, Kokkos::LayoutRight, MemorySpace>;
  TransformerBlockActivations() {}  // not an aggregate: `{...}` arguments mean ForwardOptions
  int batch = 0, length = 0;
  Stat mean1, rstd1, mean2, rstd2;                 // (M) the two LayerNorms' statistics
  Matrix x1;                                       // (M, E) x + attention
  Matrix hidden;                                   // (M, 4E) FFN pre-activation
  MultiheadActivations<T, MemorySpace> attention;  // projections, output, lse (and sub-LN)

  // Bytes held now.
  std::size_t bytes() const {
    const auto size = [](const auto& v) {
      return v.span() * sizeof(typename std::decay_t<decltype(v)>::value_type);
    };
    return size(mean1) + size(rstd1) + size(mean2) + size(rstd2) + size(x1) + size(hidden) +
           size(attention.qkv) + size(attention.attention) + size(attention.lse) +
           size(attention.normed) + size(attention.mean) + size(attention.rstd);
  }
};

// A block's parameter gradients (the input's gradient is an argument of backward). For the
// Standard block, `attention` is what its MultiheadDilatedAttention::backward fills (its
// parameters are the Views of parameters.attention; its `query`, the gradient of LN1's output, is
// a workspace buffer during the call and empty after it).
template <class T, class MemorySpace>
struct TransformerBlockGradients {
  TransformerBlockParameters<T, MemorySpace> parameters;
  MultiheadGradients<T, MemorySpace> attention;
};

// Buffers a block's calls reuse; blocks given one workspace share it (they run one at a time, as
// a model's blocks do), so a model of L blocks holds one set, not L. `activations` is where a
// forward without `saved` (or a recomputing, checkpointed backward) keeps its activations.
template <class T, class MemorySpace>
struct TransformerBlockWorkspace {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Acc = Impl::accumulation_t<T>;
  Matrix normed;   // (M, E): LN1's or LN2's output
  Matrix dnormed;  // (M, E): their gradient; the attention output's (Custom)
  Matrix gelu;     // (M, 4E): gelu(h), then its gradient
  Matrix dqkv;     // (M, 3E): the projections' gradient (Custom)
  Kokkos::View<Acc*, Kokkos::LayoutRight, MemorySpace> mean, rstd;  // recomputed statistics
  Kokkos::View<Acc**, Kokkos::LayoutRight, MemorySpace> partial;    // column sums' scratch
  TransformerBlockActivations<T, MemorySpace> activations;
  std::shared_ptr<MultiheadWorkspace<T, MemorySpace>> attention =
      std::make_shared<MultiheadWorkspace<T, MemorySpace>>();

  void release() {
    auto shared = attention;
    *this = TransformerBlockWorkspace();
    shared->release();
    attention = shared;
  }
  // Bytes held now (the multihead layer's workspace included).
  std::size_t bytes() const {
    const auto size = [](const auto& v) {
      return v.span() * sizeof(typename std::decay_t<decltype(v)>::value_type);
    };
    return size(normed) + size(dnormed) + size(gelu) + size(dqkv) + size(mean) + size(rstd) +
           size(partial) + activations.bytes() + attention->bytes();
  }
};

namespace Impl {

// A (b, n, E) token View as the (b n, E) matrix at its data pointer; throws naming `name` when
// its rows are not dense or its extents are not this call's.
template <class Matrix, class View>
Matrix block_rows(const char* fn, const char* name, const View& v, std::size_t batch,
                  std::size_t length, std::size_t embed_dim) {
  require(v.extent(0) == batch && v.extent(1) == length && v.extent(2) == embed_dim, fn, name,
          " is (", v.extent(0), ", ", v.extent(1), ", ", v.extent(2), "), expected (", batch, ", ",
          length, ", ", embed_dim, ")");
  require(rows_are_dense(v), fn, name,
          " must be dense (LayoutRight or LayoutStride with contiguous rows)");
  return Matrix(v.data(), batch * length, embed_dim);
}

// The block's own buffers for M rows of width E, (re)allocated only when their extents change.
template <class T, class MemorySpace>
void ensure_block_workspace(TransformerBlockWorkspace<T, MemorySpace>& ws, std::size_t m,
                            std::size_t e, bool custom) {
  ensure_extents(ws.normed, "dilated::TransformerBlock::normed", m, e);
  ensure_extents(ws.dnormed, "dilated::TransformerBlock::dnormed", m, e);
  ensure_extents(ws.gelu, "dilated::TransformerBlock::gelu", m, 4 * e);
  if (custom) ensure_extents(ws.dqkv, "dilated::TransformerBlock::dqkv", m, 3 * e);
  ensure_extents(ws.mean, "dilated::TransformerBlock::mean", m);
  ensure_extents(ws.rstd, "dilated::TransformerBlock::rstd", m);
  // The widest column sums: FFN's first bias (4E columns, one sum); LayerNorm's two sums of E.
  const auto partials = column_sum_partials(1, static_cast<long>(m), static_cast<long>(4 * e));
  ensure_extents(ws.partial, "dilated::TransformerBlock::partial", partials.first, partials.second);
}

template <class T, class MemorySpace>
void ensure_block_activations(TransformerBlockActivations<T, MemorySpace>& a, int batch, int length,
                              std::size_t e) {
  const std::size_t m = std::size_t(batch) * length;
  a.batch = batch;
  a.length = length;
  ensure_extents(a.mean1, "dilated::TransformerBlock::mean1", m);
  ensure_extents(a.rstd1, "dilated::TransformerBlock::rstd1", m);
  ensure_extents(a.mean2, "dilated::TransformerBlock::mean2", m);
  ensure_extents(a.rstd2, "dilated::TransformerBlock::rstd2", m);
  ensure_extents(a.x1, "dilated::TransformerBlock::x1", m, e);
  ensure_extents(a.hidden, "dilated::TransformerBlock::hidden", m, 4 * e);
}

// The memory plan (Dilated_MemoryPlan.hpp) of a block's buffers, entry for entry what the
// constructors and ensure_* functions above allocate (the tests compare the two).

// Elements of the parameter Views a block allocates, in TransformerBlockParameters' order:
// norm1, the attention's MultiheadParameters (in_proj weight and bias, the sub-LayerNorm's
// weight and bias, empty for the Custom block, out_proj weight and bias), norm2, ffn.0, ffn.2.
inline std::vector<std::size_t> block_parameter_elements(std::size_t e, bool standard) {
  const std::size_t sub = standard ? e : 0;
  return {e, e, 3 * e * e, 3 * e, sub, sub, e * e, e, e, e, 4 * e * e, 4 * e, 4 * e * e, e};
}

template <class T, class MemorySpace>
void plan_block_parameters(MemoryPlan& plan, MemoryKind kind, const std::string& label,
                           std::size_t e, bool standard, std::size_t blocks) {
  using Flat = Kokkos::View<T*, MemorySpace>;
  for (std::size_t size : block_parameter_elements(e, standard))
    plan.add(label, kind, Flat::required_allocation_size(size), blocks);
}

// ensure_block_workspace's buffers, and the multihead layer's backward buffers the Standard
// block uses (its dz, dqkv and column-sum partials; the Custom block keeps dqkv itself).
template <class T, class MemorySpace>
void plan_block_workspace(MemoryPlan& plan, std::size_t m, std::size_t e, bool custom) {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Acc = accumulation_t<T>;
  using Stat = Kokkos::View<Acc*, Kokkos::LayoutRight, MemorySpace>;
  using Partial = Kokkos::View<Acc**, Kokkos::LayoutRight, MemorySpace>;
  const auto kind = MemoryKind::workspace;
  plan.add("dilated::TransformerBlock::normed", kind, Matrix::required_allocation_size(m, e));
  plan.add("dilated::TransformerBlock::dnormed", kind, Matrix::required_allocation_size(m, e));
  plan.add("dilated::TransformerBlock::gelu", kind, Matrix::required_allocation_size(m, 4 * e));
  if (custom)
    plan.add("dilated::TransformerBlock::dqkv", kind, Matrix::required_allocation_size(m, 3 * e));
  plan.add("dilated::TransformerBlock::mean", kind, Stat::required_allocation_size(m), 2);
  const auto partials = column_sum_partials(1, static_cast<long>(m), static_cast<long>(4 * e));
  plan.add("dilated::TransformerBlock::partial", kind,
           Partial::required_allocation_size(partials.first, partials.second));
  if (!custom) {
    const auto mha = column_sum_partials(3, static_cast<long>(m), static_cast<long>(e));
    plan.add("dilated::MultiheadDilatedAttention::partial", kind,
             Partial::required_allocation_size(mha.first, mha.second));
    plan.add("dilated::MultiheadDilatedAttention::dz", kind,
             Matrix::required_allocation_size(m, e));
    plan.add("dilated::MultiheadDilatedAttention::dqkv", kind,
             Matrix::required_allocation_size(m, 3 * e));
  }
}

// One block's Activations (ensure_block_activations and the attention's part), `count` times.
template <class T, class MemorySpace>
void plan_block_activations(MemoryPlan& plan, MemoryKind kind, std::size_t batch,
                            std::size_t length, std::size_t e, std::size_t heads, bool standard,
                            std::size_t count) {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Acc = accumulation_t<T>;
  using Stat = Kokkos::View<Acc*, Kokkos::LayoutRight, MemorySpace>;
  using Lse = Kokkos::View<Acc***, Kokkos::LayoutRight, MemorySpace>;
  const std::size_t m = batch * length;
  plan.add("dilated::TransformerBlock::mean1", kind, Stat::required_allocation_size(m), 4 * count);
  plan.add("dilated::TransformerBlock::x1", kind, Matrix::required_allocation_size(m, e), count);
  plan.add("dilated::TransformerBlock::hidden", kind, Matrix::required_allocation_size(m, 4 * e),
           count);
  const std::string owner =
      standard ? "dilated::MultiheadDilatedAttention::" : "dilated::CustomTransformerBlock::";
  plan.add(owner + "qkv", kind, Matrix::required_allocation_size(m, 3 * e), count);
  plan.add(owner + "attention", kind, Matrix::required_allocation_size(m, e), count);
  plan.add(owner + "lse", kind, Lse::required_allocation_size(batch, length, heads), count);
  if (standard) {
    plan.add("dilated::MultiheadDilatedAttention::normed", kind,
             Matrix::required_allocation_size(m, e), count);
    plan.add("dilated::MultiheadDilatedAttention::mean", kind, Stat::required_allocation_size(m),
             2 * count);
  }
}

// LayerNorm weight 1, bias 0; FFN weights N(0, 0.02^2) (GPT-2's and GPT-3's initialisation, the
// models the seed's shapes come from), biases 0; drawn in named_tensors order from `seed`.
template <class T, class MemorySpace>
void draw_block_parameters(const TransformerBlockParameters<T, MemorySpace>& p, std::uint64_t seed,
                           ParameterDraw<T, MemorySpace>& out) {
  NormalGenerator normal(seed);
  const auto fill = [&](const auto& view, double value, double std) {
    out.draw(view.data(), view.size(),
             [&](std::size_t) { return std > 0 ? std * normal() : value; });
  };
  fill(p.norm1_weight, 1.0, 0);
  fill(p.norm1_bias, 0.0, 0);
  fill(p.norm2_weight, 1.0, 0);
  fill(p.norm2_bias, 0.0, 0);
  fill(p.ffn.fc1_weight, 0.0, 0.02);
  fill(p.ffn.fc1_bias, 0.0, 0);
  fill(p.ffn.fc2_weight, 0.0, 0.02);
  fill(p.ffn.fc2_bias, 0.0, 0);
}

}  // namespace Impl
}  // namespace dilated

#endif  // DILATED_TRANSFORMER_BLOCK_PARTS_HPP
