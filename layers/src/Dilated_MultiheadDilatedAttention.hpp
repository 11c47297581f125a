// dilated::MultiheadDilatedAttention<Policy, T, MemorySpace>: the seed's multihead layer over
// (batch, seq, embed_dim) Views. Linear q, k, v projections (E -> E, optional bias), heads split
// into (b, n, h, d) in place, DilatedAttention<Policy>, heads merged, the MAGNETO sub-LayerNorm
// (layer_norm), and the output projection; forward, and a backward giving the gradients of the
// three inputs and of every parameter. Self-attention (query, key and value one View) is
// projected with one fused E -> 3E product into a packed (b, n, 3h, d) buffer that the attention
// reads through strided views, under either policy (the seed's Original layer makes three
// products; the math is the same, and one product with one bias reduction and one input gradient
// measured 0.04-0.05 ms a call faster forward+backward at E = 768 and 16K-64K tokens on an
// H200); otherwise three products.
// See docs/layers.md.
#ifndef DILATED_MULTIHEAD_DILATED_ATTENTION_HPP
#define DILATED_MULTIHEAD_DILATED_ATTENTION_HPP

#include <Dilated_AlgorithmPolicies.hpp>
#include <Dilated_Compat.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <Dilated_DilatedAttention.hpp>
#include <Dilated_Gemm.hpp>
#include <Dilated_LayerNorm.hpp>
#include <Dilated_Linear.hpp>
#include <Dilated_Options.hpp>
#include <Dilated_Parameters.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_ScratchPool.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dilated {

// What a forward keeps for its backward (MultiheadDilatedAttention::forward with an Activations
// argument). M = batch * seq rows; T the storage type, statistics in float (double for double).
template <class T, class MemorySpace>
struct MultiheadActivations {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Acc = Impl::accumulation_t<T>;
  MultiheadActivations() {}  // not an aggregate: `{...}` arguments mean ForwardOptions
  int batch = 0, length = 0;
  // packed: qkv is (M, 3E), each row [q | k | v] (the fused projection of self-attention);
  // otherwise (3M, E): the M rows of q, then those of k, then of v.
  bool packed = false;
  Matrix qkv;
  Matrix attention;                                                 // (M, E) merged heads
  Kokkos::View<Acc***, Kokkos::LayoutRight, MemorySpace> lse;       // (b, n, h)
  Matrix normed;                                                    // (M, E), layer_norm only
  Kokkos::View<Acc*, Kokkos::LayoutRight, MemorySpace> mean, rstd;  // (M), layer_norm only
};

// What backward returns. For self-attention (query, key and value one View) `query` holds the
// whole gradient of that input and `key`, `value` are empty; otherwise each holds its own.
template <class T, class MemorySpace>
struct MultiheadGradients {
  Kokkos::View<T***, Kokkos::LayoutRight, MemorySpace> query, key, value;
  bool self_attention = false;
  MultiheadParameters<T, MemorySpace> parameters;  // same names and shapes as the layer's
};

// Buffers the layer's calls reuse instead of allocating them per call: the forward's
// intermediates when the caller keeps no Activations, the backward's (the gradients of the
// normed and merged heads and of the projections, the column sums' partials), and dense copies
// of strided inputs. Each buffer is (re)allocated only when a call needs other extents than the
// last, and held until release(). Layers given one workspace (set_workspace) share it: they must
// then not run at the same time.
template <class T, class MemorySpace>
struct MultiheadWorkspace {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Acc = Impl::accumulation_t<T>;
  MultiheadActivations<T, MemorySpace> forward;  // used by calls without `saved`
  Matrix dz, dqkv;  // dz: the out projection's input gradient, then the norm's (in place)
  Kokkos::View<Acc**, Kokkos::LayoutRight, MemorySpace> partial;
  Matrix dense_input[3], dense_output, dense_dout;
  // The attention's temporaries (DilatedAttention::scratch), shared by the layers sharing this.
  std::shared_ptr<Impl::ScratchPool> attention_scratch = std::make_shared<Impl::ScratchPool>();

  void release() {
    auto scratch = attention_scratch;
    *this = MultiheadWorkspace();
    scratch->release();
    attention_scratch = scratch;
  }
  // Bytes held now.
  std::size_t bytes() const {
    const auto sum = [](const auto&... views) {
      return (std::size_t(0) + ... +
              (views.span() * sizeof(typename std::decay_t<decltype(views)>::value_type)));
    };
    return sum(forward.qkv, forward.attention, forward.normed, forward.lse, forward.mean,
               forward.rstd, dz, dqkv, partial, dense_input[0], dense_input[1], dense_input[2],
               dense_output, dense_dout) +
           attention_scratch->bytes();
  }
};

namespace Impl {

// `view` with these extents, (re)allocated (uninitialised, labelled) only when they differ.
template <class View, class... Extents>
void ensure_extents(View& view, const char* label, Extents... extents) {
  const std::size_t wanted[] = {static_cast<std::size_t>(extents)...};
  for (std::size_t i = 0; i < sizeof...(Extents); ++i) {
    if (view.extent(i) != wanted[i]) {
      view = View();  // release first: the old and the new buffer need not coexist
      view = allocate_view<View>(label, false, extents...);
      return;
    }
  }
}

template <class... Views>
bool same_view(const Views&... views) {
  const auto& first = std::get<0>(std::forward_as_tuple(views...));
  const auto same = [&](const auto& v) {
    for (int i = 0; i < 3; ++i) {
      if (v.extent(i) != first.extent(i) || v.stride(i) != first.stride(i)) return false;
    }
    return static_cast<const void*>(v.data()) == static_cast<const void*>(first.data());
  };
  return (same(views) && ...);
}

// The attention of a layer or block of embed_dim E in num_heads heads, its arguments checked in
// the caller's name `fn`: E and the heads >= 1, E divisible by the heads, and DilatedAttention's
// own checks of the lists and dropout (grouped: at least one head per branch).
template <class Policy>
DilatedAttention<Policy> make_layer_attention(const char* fn, int embed_dim, int num_heads,
                                              std::vector<int> segments, std::vector<int> dilations,
                                              Semantics semantics, double dropout) {
  require(embed_dim >= 1, fn, "embed_dim = ", embed_dim, " must be >= 1");
  require(num_heads >= 1, fn, "num_heads = ", num_heads, " must be >= 1");
  require(embed_dim % num_heads == 0, fn, "embed_dim = ", embed_dim,
          " is not divisible by num_heads = ", num_heads);
  try {
    DilatedAttention<Policy> attention(
        std::move(segments), std::move(dilations),
        AttentionOptions().set_semantics(semantics).set_attention_dropout(dropout));
    (void)attention.geometry(num_heads);
    return attention;
  } catch (const std::invalid_argument& e) {
    throw_invalid_argument(fn, e.what());
  }
}

// A (b, n, E) View is the row-major (b n, E) matrix at its data pointer.
template <class View>
bool rows_are_dense(const View& x) {
  return (x.extent(2) <= 1 || x.stride(2) == 1) &&
         (x.extent(1) <= 1 || x.stride(1) == x.extent(2)) &&
         (x.extent(0) <= 1 || x.stride(0) == x.extent(1) * x.extent(2));
}

}  // namespace Impl

template <class Policy = Original, class T = float,
          class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
class MultiheadDilatedAttention {
  static_assert(is_algorithm_policy_v<Policy>,
                "dilated::MultiheadDilatedAttention<Policy, T>: Policy must be dilated::Original "
                "or dilated::Improved");
  static_assert(Impl::is_storage_type_v<T>,
                "dilated::MultiheadDilatedAttention<Policy, T>: T must be float, double, "
                "Kokkos::Experimental::half_t or bhalf_t");
  static_assert(Kokkos::is_memory_space<MemorySpace>::value,
                "dilated::MultiheadDilatedAttention<Policy, T, MemorySpace>: MemorySpace must be "
                "a Kokkos memory space");

 public:
  using policy_type = Policy;
  using value_type = T;
  using memory_space = MemorySpace;
  using Parameters = MultiheadParameters<T, MemorySpace>;
  using Gradients = MultiheadGradients<T, MemorySpace>;
  using Activations = MultiheadActivations<T, MemorySpace>;
  using Output = Kokkos::View<T***, Kokkos::LayoutRight, MemorySpace>;

  // The seed's constructor (segment_lengths before dilation_rates, as DilatedAttention), plus
  // the semantics and the seed of the parameter initialisation. Throws std::invalid_argument
  // naming the argument for embed_dim or num_heads < 1, embed_dim % num_heads != 0, list length
  // mismatches or entries < 1, grouped with fewer heads than branches, dropout outside [0, 1),
  // layer_norm_eps <= 0 and non-finite values.
  MultiheadDilatedAttention(int embed_dim, int num_heads, std::vector<int> segment_lengths,
                            std::vector<int> dilation_rates, double dropout = 0.0, bool bias = true,
                            bool layer_norm = true, double layer_norm_eps = 1e-5,
                            double gamma_init = 1.0, Semantics semantics = Semantics::grouped,
                            std::uint64_t init_seed = 0)
      : MultiheadDilatedAttention(skip_init, embed_dim, num_heads, std::move(segment_lengths),
                                  std::move(dilation_rates), dropout, bias, layer_norm,
                                  layer_norm_eps, gamma_init, semantics) {
    reset_parameters(init_seed);
  }
  // The same layer with zero-filled parameters (SkipInit): for a caller that writes them.
  MultiheadDilatedAttention(SkipInit, int embed_dim, int num_heads,
                            std::vector<int> segment_lengths, std::vector<int> dilation_rates,
                            double dropout = 0.0, bool bias = true, bool layer_norm = true,
                            double layer_norm_eps = 1e-5, double gamma_init = 1.0,
                            Semantics semantics = Semantics::grouped)
      : embed_dim_(embed_dim),
        num_heads_(num_heads),
        bias_(bias),
        layer_norm_(layer_norm),
        layer_norm_eps_(layer_norm_eps),
        gamma_init_(gamma_init),
        attention_(make_attention(embed_dim, num_heads, std::move(segment_lengths),
                                  std::move(dilation_rates), dropout, layer_norm_eps, gamma_init,
                                  semantics)),
        parameters_(embed_dim, bias, layer_norm, "dilated::MultiheadDilatedAttention::parameters") {
    attention_.set_scratch(workspace_->attention_scratch);
  }

  int embed_dim() const { return embed_dim_; }
  int num_heads() const { return num_heads_; }
  int head_dim() const { return embed_dim_ / num_heads_; }
  bool bias() const { return bias_; }
  bool layer_norm() const { return layer_norm_; }
  double layer_norm_eps() const { return layer_norm_eps_; }
  double gamma_init() const { return gamma_init_; }
  double dropout() const { return attention_.options().attention_dropout(); }
  Semantics semantics() const { return attention_.options().semantics(); }
  const DilatedAttention<Policy>& attention() const { return attention_; }
  Geometry geometry() const { return attention_.geometry(num_heads_); }

  // The parameter Views (shared: writing into them changes the layer).
  Parameters& parameters() { return parameters_; }
  const Parameters& parameters() const { return parameters_; }

  // Xavier-normal weights (gain 1 for q and k, gamma_init for v and out_proj), zero biases,
  // LayerNorm weight 1 and bias 0, from a generator seeded with `seed` (docs/layers.md).
  void reset_parameters(std::uint64_t seed) {
    Impl::ScopedRegion region("dilated::MultiheadDilatedAttention::reset_parameters");
    Impl::reset_parameters(parameters_, gamma_init_, seed);
  }

  // Writes / reads directory/<state_dict name>.npy for every parameter (Dilated_Parameters.hpp).
  void save(const std::string& directory) const {
    Impl::ScopedRegion region("dilated::MultiheadDilatedAttention::save");
    Impl::save_parameters(parameters_, directory);
  }
  void load(const std::string& directory) {
    Impl::ScopedRegion region("dilated::MultiheadDilatedAttention::load");
    Impl::load_parameters("dilated::MultiheadDilatedAttention::load", parameters_, directory);
  }

  // float on CUDA: matrix products on TF32 tensor cores (PyTorch's allow_tf32). Default off.
  MultiheadDilatedAttention& set_use_tf32(bool use) {
    gemm_.use_tf32 = use;
    return *this;
  }
  bool use_tf32() const { return gemm_.use_tf32; }

  // The buffers the calls reuse (MultiheadWorkspace): shared by copies of this layer, as the
  // parameters are, and by layers given the same one, which then must not run at the same time.
  // A workspace grows to the largest call and keeps its buffers until released.
  using Workspace = MultiheadWorkspace<T, MemorySpace>;
  const std::shared_ptr<Workspace>& workspace() const { return workspace_; }
  MultiheadDilatedAttention& set_workspace(std::shared_ptr<Workspace> workspace) {
    Impl::require(workspace != nullptr, "dilated::MultiheadDilatedAttention::set_workspace",
                  "workspace must not be null");
    workspace_ = std::move(workspace);
    attention_.set_scratch(workspace_->attention_scratch);
    return *this;
  }
  void release_workspace() { workspace_->release(); }

  // out (b, n, E) = the layer applied to query, key, value (b, n, E), on `space`. With
  // `saved`, keeps what backward needs; its buffers are reused when a later call passes the same
  // Activations with inputs of the same shape (no allocation in the steady state of a loop).
  // Asynchronous: may return before the work on `space` is done; fence `space` before reading
  // the results from another space, and keep one layer's (one workspace's) calls on one
  // execution space instance or fence between them.
  template <class ExecSpace, class Q, class K, class V, class O,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  void forward(const ExecSpace& space, const Q& query, const K& key, const V& value, const O& out,
               const ForwardOptions& call = {}) const {
    constexpr const char* fn = "dilated::MultiheadDilatedAttention::forward";
    check_types<ExecSpace, Q, K, V, O>();
    check_output<O>();
    Impl::ScopedRegion region(fn);
    forward_impl(fn, space, query, key, value, &out, workspace_->forward, call);
  }

  template <class ExecSpace, class Q, class K, class V, class O,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  void forward(const ExecSpace& space, const Q& query, const K& key, const V& value, const O& out,
               Activations& saved, const ForwardOptions& call = {}) const {
    constexpr const char* fn = "dilated::MultiheadDilatedAttention::forward";
    check_types<ExecSpace, Q, K, V, O>();
    check_output<O>();
    Impl::ScopedRegion region(fn);
    forward_impl(fn, space, query, key, value, &out, saved, call);
  }

  // The seed's call: returns (output, no attention weights), as its (output, None).
  template <class ExecSpace, class Q, class K, class V,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  std::pair<Output, std::nullopt_t> operator()(const ExecSpace& space, const Q& query, const K& key,
                                               const V& value,
                                               const ForwardOptions& call = {}) const {
    const Output out =
        Impl::allocate_view<Output>("dilated::MultiheadDilatedAttention::output", false,
                                    query.extent(0), query.extent(1), query.extent(2));
    forward(space, query, key, value, out, call);
    return {out, std::nullopt};
  }

  // Gradients of <out, dout> for the forward with the same inputs and options (same seed: same
  // dropout mask). Without `saved` the forward is recomputed first. Asynchronous, as forward.
  template <class ExecSpace, class Q, class K, class V, class G,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  Gradients backward(const ExecSpace& space, const Q& query, const K& key, const V& value,
                     const G& dout, const ForwardOptions& call = {}) const {
    constexpr const char* fn = "dilated::MultiheadDilatedAttention::backward";
    check_types<ExecSpace, Q, K, V, G>();
    Impl::ScopedRegion region(fn);
    check_inputs(fn, query, key, value);
    check_same(fn, "dout", dout, query);
    Activations& saved = workspace_->forward;
    forward_impl(fn, space, query, key, value, static_cast<const Output*>(nullptr), saved, call);
    Gradients g;
    backward_impl(space, query, key, value, dout, saved, g, call);
    return g;
  }

  template <class ExecSpace, class Q, class K, class V, class G,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  Gradients backward(const ExecSpace& space, const Q& query, const K& key, const V& value,
                     const G& dout, const Activations& saved,
                     const ForwardOptions& call = {}) const {
    Gradients g;
    backward(space, query, key, value, dout, saved, g, call);
    return g;
  }

  // The same into `grads`, whose Views are reused when they have this call's shapes (a
  // training loop that keeps one Gradients allocates nothing after its first step).
  template <class ExecSpace, class Q, class K, class V, class G,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  void backward(const ExecSpace& space, const Q& query, const K& key, const V& value, const G& dout,
                const Activations& saved, Gradients& grads, const ForwardOptions& call = {}) const {
    constexpr const char* fn = "dilated::MultiheadDilatedAttention::backward";
    check_types<ExecSpace, Q, K, V, G>();
    Impl::ScopedRegion region(fn);
    check_inputs(fn, query, key, value);
    check_same(fn, "dout", dout, query);
    Impl::require(saved.batch == static_cast<int>(query.extent(0)) &&
                      saved.length == static_cast<int>(query.extent(1)) &&
                      saved.attention.size() > 0,
                  fn, "saved activations are of a forward on (", saved.batch, ", ", saved.length,
                  ") inputs, not (", query.extent(0), ", ", query.extent(1), ")");
    Impl::require(saved.packed == Impl::same_view(query, key, value), fn,
                  "saved activations are of a forward on other query, key, value Views");
    backward_impl(space, query, key, value, dout, saved, grads, call);
  }

  // The same calls on the default execution space of query.
  template <class Q, class K, class V, class O, std::enable_if_t<Impl::is_view_v<Q>, int> = 0>
  void forward(const Q& query, const K& key, const V& value, const O& out,
               const ForwardOptions& call = {}) const {
    forward(typename Q::execution_space{}, query, key, value, out, call);
  }
  template <class Q, class K, class V, class O, std::enable_if_t<Impl::is_view_v<Q>, int> = 0>
  void forward(const Q& query, const K& key, const V& value, const O& out, Activations& saved,
               const ForwardOptions& call = {}) const {
    forward(typename Q::execution_space{}, query, key, value, out, saved, call);
  }
  template <class Q, class K, class V, std::enable_if_t<Impl::is_view_v<Q>, int> = 0>
  std::pair<Output, std::nullopt_t> operator()(const Q& query, const K& key, const V& value,
                                               const ForwardOptions& call = {}) const {
    return (*this)(typename Q::execution_space{}, query, key, value, call);
  }
  template <class Q, class K, class V, class G, std::enable_if_t<Impl::is_view_v<Q>, int> = 0>
  Gradients backward(const Q& query, const K& key, const V& value, const G& dout,
                     const ForwardOptions& call = {}) const {
    return backward(typename Q::execution_space{}, query, key, value, dout, call);
  }
  template <class Q, class K, class V, class G, std::enable_if_t<Impl::is_view_v<Q>, int> = 0>
  Gradients backward(const Q& query, const K& key, const V& value, const G& dout,
                     const Activations& saved, const ForwardOptions& call = {}) const {
    return backward(typename Q::execution_space{}, query, key, value, dout, saved, call);
  }

 private:
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using ConstMatrix = Kokkos::View<const T**, Kokkos::LayoutRight, MemorySpace>;
  using Vector = Kokkos::View<T*, Kokkos::LayoutRight, MemorySpace>;
  using Acc = Impl::accumulation_t<T>;
  using Heads = Kokkos::View<T****, Kokkos::LayoutStride, MemorySpace>;  // q, k, v in a buffer
  using Merged = Kokkos::View<T****, Kokkos::LayoutRight, MemorySpace>;  // (M, E) as (b, n, h, d)
  using Tokens = Kokkos::View<T***, Kokkos::LayoutRight, MemorySpace>;

  static DilatedAttention<Policy> make_attention(int embed_dim, int num_heads,
                                                 std::vector<int> segments,
                                                 std::vector<int> dilations, double dropout,
                                                 double eps, double gamma_init,
                                                 Semantics semantics) {
    constexpr const char* fn = "dilated::MultiheadDilatedAttention";
    Impl::require(dropout >= 0 && dropout < 1, fn, "dropout = ", dropout, " must be in [0, 1)");
    Impl::require(std::isfinite(eps) && eps > 0, fn, "layer_norm_eps = ", eps,
                  " must be finite and > 0");
    Impl::require(std::isfinite(gamma_init), fn, "gamma_init = ", gamma_init, " must be finite");
    return Impl::make_layer_attention<Policy>(fn, embed_dim, num_heads, std::move(segments),
                                              std::move(dilations), semantics, dropout);
  }

  template <class ExecSpace, class... Views>
  static constexpr void check_types() {
    static_assert(Impl::is_execution_space_v<ExecSpace>,
                  "dilated::MultiheadDilatedAttention: the first argument must be a Kokkos "
                  "execution space");
    static_assert((Impl::is_view_v<Views> && ...),
                  "dilated::MultiheadDilatedAttention: query, key, value, out and dout must be "
                  "Kokkos::Views");
    static_assert(((Impl::view_rank_v<Views> == 3) && ...),
                  "dilated::MultiheadDilatedAttention: query, key, value, out and dout must have "
                  "rank 3 (batch, seq, embed_dim)");
    static_assert((std::is_same_v<typename Views::non_const_value_type, T> && ...),
                  "dilated::MultiheadDilatedAttention: query, key, value, out and dout must hold "
                  "the layer's storage type T");
    static_assert((Impl::is_accessible_from_v<ExecSpace, Views> && ...),
                  "dilated::MultiheadDilatedAttention: every View must be accessible from the "
                  "execution space");
    static_assert(Kokkos::SpaceAccessibility<ExecSpace, MemorySpace>::accessible,
                  "dilated::MultiheadDilatedAttention: the layer's MemorySpace (its parameters) "
                  "must be accessible from the execution space");
  }

  template <class O>
  static constexpr void check_output() {
    static_assert(!std::is_const_v<typename O::value_type>,
                  "dilated::MultiheadDilatedAttention::forward: out must not be const");
  }

  static const char* extent_name(int i) {
    return i == 0 ? "batch" : i == 1 ? "sequence length" : "embed_dim";
  }

  template <class Q, class Other>
  static void check_same(const char* fn, const char* name, const Other& other, const Q& query) {
    for (int i = 0; i < 3; ++i) {
      Impl::require(other.extent(i) == query.extent(i), fn, name, ".extent(", i, ") (",
                    extent_name(i), ") = ", other.extent(i), " does not match query.extent(", i,
                    ") = ", query.extent(i));
    }
  }

  template <class Q, class K, class V>
  void check_inputs(const char* fn, const Q& query, const K& key, const V& value) const {
    for (int i = 0; i < 2; ++i) {
      Impl::require(query.extent(i) >= 1, fn, "query.extent(", i, ") (", extent_name(i),
                    ") = ", query.extent(i), " must be >= 1");
    }
    Impl::require(query.extent(2) == static_cast<std::size_t>(embed_dim_), fn,
                  "query.extent(2) (embed_dim) = ", query.extent(2),
                  " does not match embed_dim = ", embed_dim_);
    check_same(fn, "key", key, query);
    check_same(fn, "value", value, query);
  }

  // x (b, n, E) as the (b n, E) row-major matrix: itself when its rows are dense, else a copy
  // into `scratch` (a workspace buffer).
  template <class ExecSpace, class X>
  static ConstMatrix rows_of(const ExecSpace& space, const X& x, Matrix& scratch) {
    const std::size_t m = x.extent(0) * x.extent(1), e = x.extent(2);
    if (Impl::rows_are_dense(x)) return ConstMatrix(x.data(), m, e);
    Impl::ensure_extents(scratch, "dilated::MultiheadDilatedAttention::dense_input", m, e);
    Kokkos::deep_copy(space, Tokens(scratch.data(), x.extent(0), x.extent(1), e), x);
    return scratch;
  }

  // Head views (b, n, h, d) of q (part 0), k (1) or v (2) in a projection buffer.
  Heads heads(const Matrix& qkv, bool packed, int part, int batch, int n) const {
    const std::size_t e = embed_dim_, d = head_dim(), m = std::size_t(batch) * n;
    const std::size_t row = packed ? 3 * e : e;
    T* base = qkv.data() + (packed ? part * e : part * m * e);
    return Heads(base, Kokkos::LayoutStride(batch, n * row, n, row, num_heads_, d, d, 1));
  }

  // Rows [part E, (part + 1) E) of the stacked in-projection weight, and its bias.
  Matrix in_weight(const Parameters& p, int part) const {
    return Matrix(p.in_proj_weight.data() + std::size_t(part) * embed_dim_ * embed_dim_, embed_dim_,
                  embed_dim_);
  }
  Vector in_bias(const Parameters& p, int part) const {
    if (!bias_) return Vector();
    return Vector(p.in_proj_bias.data() + std::size_t(part) * embed_dim_, embed_dim_);
  }

  template <class ExecSpace, class Q, class K, class V, class O>
  void forward_impl(const char* fn, const ExecSpace& space, const Q& query, const K& key,
                    const V& value, const O* out, Activations& a,
                    const ForwardOptions& call) const {
    check_inputs(fn, query, key, value);
    if (out) check_same(fn, "out", *out, query);
    const int batch = query.extent(0), n = query.extent(1);
    const std::size_t e = embed_dim_, m = std::size_t(batch) * n;
    Workspace& ws = *workspace_;
    a.batch = batch;
    a.length = n;
    a.packed = Impl::same_view(query, key, value);
    const Parameters& p = parameters_;
    constexpr const char* qkv_label = "dilated::MultiheadDilatedAttention::qkv";
    if (a.packed) {
      Impl::ensure_extents(a.qkv, qkv_label, m, 3 * e);
      Impl::linear_forward(space, rows_of(space, query, ws.dense_input[0]), p.in_proj_weight,
                           p.in_proj_bias, a.qkv, gemm_);
    } else {
      Impl::ensure_extents(a.qkv, qkv_label, 3 * m, e);
      const auto project = [&](int part, const auto& x) {
        Impl::linear_forward(space, rows_of(space, x, ws.dense_input[part]), in_weight(p, part),
                             in_bias(p, part), Matrix(a.qkv.data() + part * m * e, m, e), gemm_);
      };
      project(0, query);
      project(1, key);
      project(2, value);
    }
    Impl::ensure_extents(a.attention, "dilated::MultiheadDilatedAttention::attention", m, e);
    Impl::ensure_extents(a.lse, "dilated::MultiheadDilatedAttention::lse", batch, n, num_heads_);
    const Merged merged(a.attention.data(), batch, n, num_heads_, head_dim());
    attention_.forward(space, heads(a.qkv, a.packed, 0, batch, n),
                       heads(a.qkv, a.packed, 1, batch, n), heads(a.qkv, a.packed, 2, batch, n),
                       merged, a.lse, call);
    Matrix z = a.attention;
    if (layer_norm_ && out && &a == &ws.forward) {
      // Nobody keeps these activations (an inference forward): the heads are normalised in
      // place (the norm reads a row whole before it writes it), and the statistics, dead once
      // the norm has run, borrow the attention's score workspace (Impl::score_workspace_label),
      // itself dead once the attention has returned. Neither a normed copy nor the statistics
      // stay allocated across calls.
      using Stats = Kokkos::View<Acc*, Kokkos::LayoutRight, MemorySpace>;
      Impl::ScratchScope scope(ws.attention_scratch.get());
      const auto stats =
          Impl::scratch_view<Stats>(space, Impl::score_workspace_label, false, 2 * m);
      Impl::layer_norm_forward(space, a.attention, p.norm_weight, p.norm_bias, layer_norm_eps_,
                               a.attention, Stats(stats.data(), m), Stats(stats.data() + m, m));
    } else if (layer_norm_) {
      Impl::ensure_extents(a.mean, "dilated::MultiheadDilatedAttention::mean", m);
      Impl::ensure_extents(a.rstd, "dilated::MultiheadDilatedAttention::rstd", m);
      Impl::ensure_extents(a.normed, "dilated::MultiheadDilatedAttention::normed", m, e);
      z = a.normed;
      Impl::layer_norm_forward(space, a.attention, p.norm_weight, p.norm_bias, layer_norm_eps_, z,
                               a.mean, a.rstd);
    }
    if (out) {
      if (Impl::rows_are_dense(*out)) {
        Impl::linear_forward(space, z, p.out_proj_weight, p.out_proj_bias,
                             Matrix(out->data(), m, e), gemm_);
      } else {
        Impl::ensure_extents(ws.dense_output, "dilated::MultiheadDilatedAttention::dense_output", m,
                             e);
        Impl::linear_forward(space, z, p.out_proj_weight, p.out_proj_bias, ws.dense_output, gemm_);
        Kokkos::deep_copy(space, *out, Tokens(ws.dense_output.data(), batch, n, e));
      }
    }
  }

  // Gradient Views of g with the shapes of this call, (re)allocated only where they differ.
  void ensure_gradients(Gradients& g, bool self_attention, int batch, int n) const {
    g.self_attention = self_attention;
    const Parameters& p = parameters_;
    Parameters& dp = g.parameters;
    const auto same = [](const auto& x, const auto& y) {
      return x.extent(0) == y.extent(0) && x.extent(1) == y.extent(1);
    };
    if (!same(dp.in_proj_weight, p.in_proj_weight) || !same(dp.in_proj_bias, p.in_proj_bias) ||
        !same(dp.norm_weight, p.norm_weight) || !same(dp.out_proj_weight, p.out_proj_weight))
      dp = Parameters(embed_dim_, bias_, layer_norm_,
                      "dilated::MultiheadDilatedAttention::gradients");
    const std::size_t e = embed_dim_;
    if (self_attention) {
      Impl::ensure_extents(g.query, "dilated::MultiheadDilatedAttention::d_input", batch, n, e);
      g.key = Output();
      g.value = Output();
    } else {
      Impl::ensure_extents(g.query, "dilated::MultiheadDilatedAttention::d_query", batch, n, e);
      Impl::ensure_extents(g.key, "dilated::MultiheadDilatedAttention::d_key", batch, n, e);
      Impl::ensure_extents(g.value, "dilated::MultiheadDilatedAttention::d_value", batch, n, e);
    }
  }

  template <class ExecSpace, class Q, class K, class V, class G>
  void backward_impl(const ExecSpace& space, const Q& query, const K& key, const V& value,
                     const G& dout, const Activations& a, Gradients& g,
                     const ForwardOptions& call) const {
    const int batch = query.extent(0), n = query.extent(1);
    const std::size_t e = embed_dim_, m = std::size_t(batch) * n;
    Workspace& ws = *workspace_;
    const Parameters& p = parameters_;
    ensure_gradients(g, Impl::same_view(query, key, value), batch, n);
    Parameters& dp = g.parameters;
    // Scratch of every column sum below: the out and in projections' bias gradients (e and, when
    // packed, 3e columns) and the norm's two parameter gradients (2e).
    const auto partials = Impl::column_sum_partials(3, m, e);
    Impl::ensure_extents(ws.partial, "dilated::MultiheadDilatedAttention::partial", partials.first,
                         partials.second);

    // out = z W_out^T + b_out, z the normed (or merged) heads.
    const Matrix z = layer_norm_ ? a.normed : a.attention;
    Impl::ensure_extents(ws.dz, "dilated::MultiheadDilatedAttention::dz", m, e);
    Impl::linear_backward(space, z, p.out_proj_weight, rows_of(space, dout, ws.dense_dout), ws.dz,
                          false, dp.out_proj_weight, dp.out_proj_bias, gemm_, ws.partial);
    // The norm's input gradient overwrites dz (in place: one buffer less while the attention's
    // backward holds its temporaries).
    const Matrix da = ws.dz;
    if (layer_norm_)
      Impl::layer_norm_backward(space, a.attention, p.norm_weight, a.mean, a.rstd, ws.dz, da,
                                dp.norm_weight, dp.norm_bias, ws.partial);

    // The attention, into a gradient buffer laid out as the projections.
    Impl::ensure_extents(ws.dqkv, "dilated::MultiheadDilatedAttention::dqkv", a.qkv.extent(0),
                         a.qkv.extent(1));
    const Matrix dqkv = ws.dqkv;
    const auto as_heads = [&](const Matrix& x) {
      return Merged(x.data(), batch, n, num_heads_, head_dim());
    };
    attention_.backward(space, heads(a.qkv, a.packed, 0, batch, n),
                        heads(a.qkv, a.packed, 1, batch, n), heads(a.qkv, a.packed, 2, batch, n),
                        as_heads(a.attention), a.lse, as_heads(da),
                        heads(dqkv, a.packed, 0, batch, n), heads(dqkv, a.packed, 1, batch, n),
                        heads(dqkv, a.packed, 2, batch, n), call);

    // The projections.
    if (a.packed) {
      Impl::linear_backward(space, rows_of(space, query, ws.dense_input[0]), p.in_proj_weight, dqkv,
                            Matrix(g.query.data(), m, e), false, dp.in_proj_weight, dp.in_proj_bias,
                            gemm_, ws.partial);
    } else {
      // Self-attention: the key and value parts add to the query part's input gradient.
      const auto project = [&](int part, const auto& x, const Output& dx) {
        Impl::linear_backward(space, rows_of(space, x, ws.dense_input[part]), in_weight(p, part),
                              Matrix(dqkv.data() + part * m * e, m, e), Matrix(dx.data(), m, e),
                              g.self_attention && part > 0, in_weight(dp, part), in_bias(dp, part),
                              gemm_, ws.partial);
      };
      project(0, query, g.query);
      project(1, key, g.self_attention ? g.query : g.key);
      project(2, value, g.self_attention ? g.query : g.value);
    }
  }

  int embed_dim_, num_heads_;
  bool bias_, layer_norm_;
  double layer_norm_eps_, gamma_init_;
  DilatedAttention<Policy> attention_;
  Parameters parameters_;
  Impl::GemmOptions gemm_;
  std::shared_ptr<Workspace> workspace_ = std::make_shared<Workspace>();
};

}  // namespace dilated

#endif  // DILATED_MULTIHEAD_DILATED_ATTENTION_HPP
