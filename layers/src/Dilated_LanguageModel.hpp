// dilated::LanguageModel<Block>: a decoder-only LongNet language model over either of the seed's
// blocks (StandardTransformerBlock or CustomTransformerBlock, either policy):
//
//   x_0 = Embedding(ids)                          (vocab, E) weight, tied with the head
//   x_l = Block_l(x_{l-1}), l = 1..L              causal dilated attention
//   loss = CrossEntropy(LN_f(x_L) W_emb^T, targets), in chunks of tokens (the logits never whole)
//
// Positions are not encoded (no learned, sinusoidal or rotary embedding): a causal decoder learns
// where it is from the mask itself (Haviv et al., "Transformer Language Models without
// Positional Encodings Still Learn Positional Information", 2022), and LongNet's dilated
// segments give each branch a fixed local frame; docs/training.md says more.
//
// One training step (forward_backward) keeps every block's input (the residual stream, L + 1
// buffers of (M, E)) and, unless checkpointing is on, every block's activations; with
// checkpointing each block's backward recomputes its forward from its input into one shared set
// of activations. Every buffer is kept across steps: a step of the same shape allocates nothing.
#ifndef DILATED_LANGUAGE_MODEL_HPP
#define DILATED_LANGUAGE_MODEL_HPP

#include <Dilated_CrossEntropy.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <Dilated_Embedding.hpp>
#include <Dilated_Gelu.hpp>
#include <Dilated_LayerNorm.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <Dilated_Options.hpp>
#include <Dilated_Parameters.hpp>
#include <Dilated_Semantics.hpp>
#include <Dilated_TransformerBlockParts.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace dilated {

// A model's shape. The GPT-3 paper's (Brown et al. 2020, table 2.1) by name: "small" / "125M"
// (12 layers, width 768, 12 heads of 64), "medium" / "350M" (24, 1024, 16 of 64), "xl" / "1.3B"
// (24 layers, width 2048, heads of 128: the table lists 24 heads of 128, which do not make 2048,
// so the head size is kept and the count is 16); vocabulary 50257 (GPT-2's BPE) unless given.
// Any other shape by its numbers.
struct ModelShape {
  std::string name = "custom";
  int layers = 0, embed_dim = 0, num_heads = 0, vocab = 0;

  // Throws std::invalid_argument naming `name` when it is none of the above.
  static ModelShape named(const std::string& name, int vocab = 50257) {
    if (name == "small" || name == "125M") return {"small", 12, 768, 12, vocab};
    if (name == "medium" || name == "350M") return {"medium", 24, 1024, 16, vocab};
    if (name == "xl" || name == "1.3B") return {"xl", 24, 2048, 16, vocab};
    Impl::throw_invalid_argument("dilated::ModelShape::named", "name = '", name,
                                 "' is not a model shape (small / 125M, medium / 350M, xl / 1.3B)");
  }

  // Parameters: the tied embedding, L blocks of 12 E^2 + 13 E (+ 2 E for the Standard block's
  // sub-LayerNorm), the final LayerNorm.
  long long parameter_count(bool standard) const {
    const long long e = embed_dim;
    return static_cast<long long>(vocab) * e + layers * (12 * e * e + (standard ? 15 : 13) * e) +
           2 * e;
  }
};

// How the model attends and trains, beyond its shape.
struct LanguageModelOptions {
  std::vector<int> segment_lengths{2048, 4096, 8192};
  std::vector<int> dilation_rates{1, 2, 4};
  Semantics semantics = Semantics::grouped;
  bool checkpointing = false;     // per block: keep its input, recompute it in the backward
  long loss_chunk_tokens = 4096;  // tokens a chunk of the cross-entropy takes
  // The feed-forwards' GELU (TransformerBlock::set_gelu).
  GeluApproximation gelu = GeluApproximation::none;
  std::uint64_t init_seed = 0;
};

template <class Block>
class LanguageModel {
 public:
  using block_type = Block;
  using value_type = typename Block::value_type;
  using memory_space = typename Block::memory_space;
  using T = value_type;
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, memory_space>;
  using Vector = Kokkos::View<T*, Kokkos::LayoutRight, memory_space>;
  using Tokens = Kokkos::View<T***, Kokkos::LayoutRight, memory_space>;
  using Ids = Kokkos::View<int**, Kokkos::LayoutRight, memory_space>;
  using Acc = Impl::accumulation_t<T>;
  static constexpr bool standard = !Block::is_custom;

  // Gradients of every parameter, in named_tensors() order.
  struct Gradients {
    Matrix embedding;
    std::vector<typename Block::Gradients> blocks;
    Vector norm_weight, norm_bias;
  };

  // Throws std::invalid_argument naming the argument: a shape entry < 1, embed_dim not divisible
  // by num_heads, loss_chunk_tokens < 1, and the blocks' checks of the segment lists.
  LanguageModel(const ModelShape& shape, const LanguageModelOptions& options = {})
      : shape_(check_shape(shape)),
        options_(options),
        embedding_(Impl::allocate_view<Matrix>("dilated::LanguageModel::embedding", false,
                                               shape.vocab, shape.embed_dim)),
        norm_weight_(Impl::allocate_view<Vector>("dilated::LanguageModel::norm_weight", false,
                                                 shape.embed_dim)),
        norm_bias_(Impl::allocate_view<Vector>("dilated::LanguageModel::norm_bias", false,
                                               shape.embed_dim)),
        loss_(CrossEntropyOptions().set_chunk_tokens(options.loss_chunk_tokens)) {
    blocks_.reserve(shape.layers);
    for (int l = 0; l < shape.layers; ++l) {
      // Undrawn: reset_parameters below draws every block's values on several threads.
      blocks_.emplace_back(skip_init, shape.embed_dim, shape.num_heads, options.segment_lengths,
                           options.dilation_rates, options.semantics);
      blocks_.back().set_gelu(options.gelu);
      if (l > 0) blocks_.back().set_workspace(blocks_.front().workspace());
    }
    saved_.resize(shape.layers);
    reset_parameters(options.init_seed);
  }

  const ModelShape& shape() const { return shape_; }
  const LanguageModelOptions& options() const { return options_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  bool checkpointing() const { return options_.checkpointing; }
  // Switches activation checkpointing; with it on, the per-block activations are released.
  void set_checkpointing(bool on) {
    options_.checkpointing = on;
    if (on)
      for (auto& a : saved_)
        a = typename Block::Activations();
  }
  // The largest segment: sequence lengths must be a multiple of it (check_length).
  int largest_segment() const { return largest_of(options_.segment_lengths); }

  // Embedding N(0, 0.02^2) (GPT-2's), final LayerNorm (1, 0), block l from seed + 1 + 2 l. The
  // values are drawn on the host by several threads, a block each (the embedding on one more),
  // and copied from this one: the same values for any thread count (a 1.3B model makes 1.3
  // billion normal draws: about 30 ns each on one core of the 2-core CI machine). At most
  // `threads` blocks' values wait on the host at a time.
  void reset_parameters(std::uint64_t seed) {
    Impl::ScopedRegion region("dilated::LanguageModel::reset_parameters");
    using Draw = Impl::ParameterDraw<T, memory_space>;
    const std::size_t threads =
        std::max<std::size_t>(1, std::min<std::size_t>(std::thread::hardware_concurrency(), 16));
    Draw embedding;
    std::thread embedding_thread([&] {
      Impl::NormalGenerator normal(seed);
      embedding.draw(embedding_.data(), embedding_.size(),
                     [&](std::size_t) { return 0.02 * normal(); });
    });
    for (std::size_t first = 0; first < blocks_.size(); first += threads) {
      const std::size_t count = std::min(threads, blocks_.size() - first);
      std::vector<Draw> draws(count);
      std::vector<std::thread> workers;
      for (std::size_t i = 0; i < count; ++i) {
        workers.emplace_back([&, i] {
          const std::size_t l = first + i;
          blocks_[l].draw_parameters(seed + 1 + 2 * l, draws[i]);
        });
      }
      for (auto& w : workers)
        w.join();
      for (auto& d : draws)
        d.copy();
    }
    embedding_thread.join();
    embedding.copy();
    Kokkos::deep_copy(norm_weight_, static_cast<T>(1));
    Kokkos::deep_copy(norm_bias_, static_cast<T>(0));
  }

  // Every parameter in PyTorch names: embedding.weight (vocab, E; the head's weight too),
  // blocks.<l>.<block names>, norm.weight, norm.bias.
  std::vector<NamedTensor<T, memory_space>> named_tensors() const {
    return tensor_list(embedding_, norm_weight_, norm_bias_,
                       [&](std::size_t l) { return blocks_[l].parameters().named_tensors(); });
  }
  std::vector<NamedTensor<T, memory_space>> named_tensors(const Gradients& g) const {
    return tensor_list(g.embedding, g.norm_weight, g.norm_bias,
                       [&](std::size_t l) { return g.blocks[l].parameters.named_tensors(); });
  }

  // Throws std::invalid_argument naming `sequence_length` when the blocks' segments cannot take
  // it (not a positive multiple of the largest segment).
  void check_length(const char* fn, long length) const {
    const int largest = largest_segment();
    Impl::require(length >= 1 && length % largest == 0, fn, "sequence_length = ", length,
                  " must be a positive multiple of the largest segment length ", largest);
  }

  // One training step's passes: the forward on ids (b, n), the mean next-token cross-entropy
  // against targets (b, n) (returned, unscaled), and every parameter's gradient times
  // loss_scale into `grads` (its Views reused from step to step). Throws std::invalid_argument
  // for ids or targets outside the vocabulary (naming the position) or a length the segments
  // cannot take, before any work; NonFiniteLoss when the loss is inf or NaN (the gradients are
  // then written but meaningless: skip the step). Returns once the loss is on the host; the
  // backward is still enqueued on `space`.
  template <class ExecSpace>
  double forward_backward(const ExecSpace& space, const Ids& ids, const Ids& targets,
                          Gradients& grads, double loss_scale = 1.0) {
    constexpr const char* fn = "dilated::LanguageModel::forward_backward";
    Impl::ScopedRegion region(fn);
    Impl::require(std::isfinite(loss_scale) && loss_scale > 0, fn, "loss_scale = ", loss_scale,
                  " must be finite and > 0");
    prepare(fn, ids, targets);
    ensure_gradients(grads);
    const ForwardOptions call{true, false, 0};
    forward_blocks(space, ids, true, call);
    // The head and loss: dh into dstream_, the head's dW into the embedding's gradient.
    const Matrix dstream = dstream_;
    const double loss =
        loss_.loss_and_gradients(space, normed_, embedding_, targets, dstream, grads.embedding,
                                 LossGradientOptions().set_scale(loss_scale));
    const auto& ws = *blocks_.front().workspace();
    Impl::layer_norm_backward(space, stream_.back(), norm_weight_, mean_, rstd_, dstream, dstream,
                              grads.norm_weight, grads.norm_bias, ws.partial);
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      const Tokens x = tokens(stream_[l], ids), d = tokens(dstream, ids);
      if (options_.checkpointing)
        blocks_[l].backward(space, x, d, d, grads.blocks[l], call);
      else
        blocks_[l].backward(space, x, d, d, saved_[l], grads.blocks[l], call);
    }
    embedding_layer_.backward(space, ids, tokens(dstream, ids), grads.embedding, true);
    return loss;
  }

  // The mean loss of ids against targets, forward only (no activations kept; evaluation).
  template <class ExecSpace>
  double loss(const ExecSpace& space, const Ids& ids, const Ids& targets) {
    constexpr const char* fn = "dilated::LanguageModel::loss";
    Impl::ScopedRegion region(fn);
    prepare(fn, ids, targets);
    forward_blocks(space, ids, false, ForwardOptions{true, false, 0});
    return loss_.loss(space, normed_, embedding_, targets);
  }

  // Device bytes held now, by kind (MemoryKind's): parameters; the saved activations (the
  // residual stream and, without checkpointing, the blocks' activations); workspace (the blocks'
  // shared buffers, the recomputed activations of checkpointing among them, the final norm's
  // output and the stream's gradient); the attention's scratch pool; the loss's and the
  // embedding backward's buffers. Gradients and optimizer state belong to their owners.
  struct Memory {
    std::size_t parameters = 0, activations = 0, workspace = 0, attention_workspace = 0,
                loss_workspace = 0;
  };
  Memory memory() const {
    Memory r;
    for (const auto& t : named_tensors())
      r.parameters += t.values.extent(0) * sizeof(T);
    for (const auto& x : stream_)
      r.activations += x.span() * sizeof(T);
    for (const auto& a : saved_)
      r.activations += a.bytes();
    r.activations += (mean_.span() + rstd_.span()) * sizeof(Acc);
    const auto& ws = *blocks_.front().workspace();
    r.attention_workspace = ws.attention->attention_scratch->bytes();
    r.workspace =
        ws.bytes() - r.attention_workspace + (normed_.span() + dstream_.span()) * sizeof(T);
    r.loss_workspace = loss_.workspace_bytes() + embedding_layer_.workspace_bytes();
    return r;
  }

  // The device buffers a training step (forward_backward) on (batch, length) ids leaves
  // allocated, entry for entry as the constructor, prepare(), the blocks, the attention, the loss
  // and the embedding allocate them (Dilated_MemoryPlan.hpp), without allocating anything:
  // weights, gradients, activations (the residual stream, the final norm's statistics and,
  // without checkpointing, every block's activations), workspace (one block's shared set, with
  // checkpointing its recomputed activations), the attention's scratch and the loss's buffers.
  // The optimizer's state and the trainer's buffers are theirs (training::plan_training_step).
  // ExecSpace: the space the steps run on (on the host its concurrency sizes the Original's
  // per-thread BLAS workspace: Serial holds one slot where OpenMP holds one a thread).
  template <class ExecSpace = typename memory_space::execution_space>
  static MemoryPlan plan(const ModelShape& shape, const LanguageModelOptions& options, int batch,
                         long length) {
    constexpr const char* fn = "dilated::LanguageModel::plan";
    check_shape(shape);
    Impl::require(batch >= 1 && length >= 1, fn, "batch = ", batch, " and length = ", length,
                  " must be >= 1");
    const int largest = largest_of(options.segment_lengths);
    Impl::require(length % largest == 0, fn, "length = ", length,
                  " must be a multiple of the largest segment length ", largest);
    using Stat = Kokkos::View<Acc*, Kokkos::LayoutRight, memory_space>;
    const std::size_t e = shape.embed_dim, v = shape.vocab, layers = shape.layers,
                      heads = shape.num_heads, b = batch, n = length, m = b * n;
    MemoryPlan plan;
    for (const auto kind : {MemoryKind::weights, MemoryKind::gradients}) {
      const std::string label = kind == MemoryKind::weights ? "dilated::LanguageModel::parameters"
                                                            : "dilated::LanguageModel::gradients";
      plan.add(label + "::embedding", kind, Matrix::required_allocation_size(v, e));
      Impl::plan_block_parameters<T, memory_space>(plan, kind, label + "::blocks", e, standard,
                                                   layers);
      plan.add(label + "::norm", kind, Vector::required_allocation_size(e), 2);
    }
    const auto activations = MemoryKind::activations, workspace = MemoryKind::workspace;
    plan.add("dilated::LanguageModel::stream", activations, Matrix::required_allocation_size(m, e),
             layers + 1);
    plan.add("dilated::LanguageModel::mean", activations, Stat::required_allocation_size(m), 2);
    Impl::plan_block_workspace<T, memory_space>(plan, m, e, !standard);
    Impl::plan_block_activations<T, memory_space>(
        plan, options.checkpointing ? workspace : activations, b, n, e, heads, standard,
        options.checkpointing ? 1 : layers);
    plan.add("dilated::LanguageModel::normed", workspace, Matrix::required_allocation_size(m, e),
             2);
    plan.add(Impl::make_layer_attention<typename Block::policy_type>(
                 fn, shape.embed_dim, shape.num_heads, options.segment_lengths,
                 options.dilation_rates, options.semantics, 0.0)
                 .template plan_scratch<ExecSpace, T>(batch, static_cast<int>(length),
                                                      shape.num_heads,
                                                      shape.embed_dim / shape.num_heads, true));
    plan.add(FusedLinearCrossEntropy<T, memory_space>(
                 CrossEntropyOptions().set_chunk_tokens(options.loss_chunk_tokens))
                 .plan_workspace(static_cast<long>(m), static_cast<long>(v)));
    plan.add(Embedding<T, memory_space>::plan_workspace(static_cast<long>(m), static_cast<long>(v),
                                                        static_cast<long>(e)));
    return plan;
  }

  // The values of each parameter tensor, in named_tensors() order (the optimizer's tensors:
  // in_proj as q, k, v; absent ones left out), for planning what depends on them (gradients'
  // norms, optimizer state) without a model.
  static std::vector<std::size_t> parameter_sizes(const ModelShape& shape) {
    check_shape(shape);
    const std::size_t e = shape.embed_dim;
    // The blocks' allocations (Impl::block_parameter_elements), in_proj's weight and bias (the
    // third and fourth) named as q, k and v's.
    std::vector<std::size_t> block;
    const auto elements = Impl::block_parameter_elements(e, standard);
    for (std::size_t i = 0; i < elements.size(); ++i) {
      if (i == 2) {
        block.insert(block.end(), {e * e, e, e * e, e, e * e, e});
      } else if (i != 3 && elements[i] > 0) {
        block.push_back(elements[i]);
      }
    }
    std::vector<std::size_t> sizes{static_cast<std::size_t>(shape.vocab) * e};
    for (int l = 0; l < shape.layers; ++l)
      sizes.insert(sizes.end(), block.begin(), block.end());
    sizes.push_back(e);
    sizes.push_back(e);
    return sizes;
  }

  // Frees what a step of one length holds beyond the parameters (the residual stream, the saved
  // activations, the shared workspace, the attention's scratch, the loss's buffers), so that a
  // step of another length starts from the parameters alone; the next step allocates again.
  void release_buffers() {
    stream_.clear();
    for (auto& a : saved_)
      a = typename Block::Activations();
    normed_ = Matrix();
    dstream_ = Matrix();
    mean_ = decltype(mean_)();
    rstd_ = decltype(rstd_)();
    blocks_.front().release_workspace();
    loss_.release_workspace();
    embedding_layer_.release_workspace();
  }

  // Allocates `grads` for this model (zero-filled); forward_backward does it when needed.
  void ensure_gradients(Gradients& g) const {
    const std::size_t e = shape_.embed_dim;
    if (g.embedding.extent(0) != embedding_.extent(0) || g.embedding.extent(1) != e ||
        g.blocks.size() != blocks_.size()) {
      g = Gradients();  // the old ones first: both need not fit
      g.embedding = Impl::allocate_view<Matrix>("dilated::LanguageModel::gradients::embedding",
                                                true, embedding_.extent(0), e);
      g.norm_weight =
          Impl::allocate_view<Vector>("dilated::LanguageModel::gradients::norm_weight", true, e);
      g.norm_bias =
          Impl::allocate_view<Vector>("dilated::LanguageModel::gradients::norm_bias", true, e);
      g.blocks.assign(blocks_.size(), typename Block::Gradients());
    }
    for (std::size_t l = 0; l < blocks_.size(); ++l)
      blocks_[l].ensure_gradients(g.blocks[l]);
  }

 private:
  static int largest_of(const std::vector<int>& segments) {
    int largest = 1;
    for (int s : segments)
      largest = std::max(largest, s);
    return largest;
  }

  static ModelShape check_shape(const ModelShape& s) {
    constexpr const char* fn = "dilated::LanguageModel";
    Impl::require(s.layers >= 1, fn, "layers = ", s.layers, " must be >= 1");
    Impl::require(s.embed_dim >= 1, fn, "embed_dim = ", s.embed_dim, " must be >= 1");
    Impl::require(s.num_heads >= 1 && s.embed_dim % s.num_heads == 0, fn,
                  "num_heads = ", s.num_heads,
                  " must be >= 1 and divide embed_dim = ", s.embed_dim);
    Impl::require(s.vocab >= 1, fn, "vocab = ", s.vocab, " must be >= 1");
    return s;
  }

  template <class Weight, class Norm, class BlockList>
  std::vector<NamedTensor<T, memory_space>> tensor_list(const Weight& embedding, const Norm& weight,
                                                        const Norm& bias,
                                                        const BlockList& block_list) const {
    using Flat = Kokkos::View<T*, memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    const std::size_t e = shape_.embed_dim, v = shape_.vocab;
    std::vector<NamedTensor<T, memory_space>> list{
        {"embedding.weight", {v, e}, Flat(embedding.data(), v * e)}};
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      for (auto& t : block_list(l)) {
        t.name = "blocks." + std::to_string(l) + "." + t.name;
        list.push_back(std::move(t));
      }
    }
    list.push_back({"norm.weight", {e}, Flat(weight.data(), e)});
    list.push_back({"norm.bias", {e}, Flat(bias.data(), e)});
    return list;
  }

  // Checks the shapes and the length, sizes the residual stream.
  void prepare(const char* fn, const Ids& ids, const Ids& targets) {
    Impl::require(ids.extent(0) >= 1 && ids.extent(1) >= 1, fn, "ids is (", ids.extent(0), ", ",
                  ids.extent(1), "): batch and sequence length must be >= 1");
    Impl::require(targets.extent(0) == ids.extent(0) && targets.extent(1) == ids.extent(1), fn,
                  "targets is (", targets.extent(0), ", ", targets.extent(1), "), ids is (",
                  ids.extent(0), ", ", ids.extent(1), ")");
    check_length(fn, static_cast<long>(ids.extent(1)));
    const std::size_t m = ids.extent(0) * ids.extent(1), e = shape_.embed_dim;
    stream_.resize(blocks_.size() + 1);
    for (auto& x : stream_)
      Impl::ensure_extents(x, "dilated::LanguageModel::stream", m, e);
    Impl::ensure_extents(normed_, "dilated::LanguageModel::normed", m, e);
    Impl::ensure_extents(dstream_, "dilated::LanguageModel::dstream", m, e);
    Impl::ensure_extents(mean_, "dilated::LanguageModel::mean", m);
    Impl::ensure_extents(rstd_, "dilated::LanguageModel::rstd", m);
  }

  Tokens tokens(const Matrix& x, const Ids& ids) const {
    return Tokens(x.data(), ids.extent(0), ids.extent(1), shape_.embed_dim);
  }

  template <class ExecSpace>
  void forward_blocks(const ExecSpace& space, const Ids& ids, bool keep,
                      const ForwardOptions& call) {
    embedding_layer_.forward(space, embedding_, ids, tokens(stream_[0], ids));
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const Tokens x = tokens(stream_[l], ids), y = tokens(stream_[l + 1], ids);
      if (keep && !options_.checkpointing)
        blocks_[l].forward(space, x, y, saved_[l], call);
      else
        blocks_[l].forward(space, x, y, call);
    }
    Impl::layer_norm_forward(space, stream_.back(), norm_weight_, norm_bias_, 1e-5, normed_, mean_,
                             rstd_);
  }

  ModelShape shape_;
  LanguageModelOptions options_;
  Matrix embedding_;
  Vector norm_weight_, norm_bias_;
  std::vector<Block> blocks_;
  std::vector<typename Block::Activations> saved_;
  std::vector<Matrix> stream_;  // x_0 .. x_L, (M, E) each
  Matrix normed_, dstream_;     // LN_f(x_L); the residual stream's gradient
  Kokkos::View<Acc*, Kokkos::LayoutRight, memory_space> mean_, rstd_;
  Embedding<T, memory_space> embedding_layer_;
  FusedLinearCrossEntropy<T, memory_space> loss_;
};

}  // namespace dilated

#endif  // DILATED_LANGUAGE_MODEL_HPP
