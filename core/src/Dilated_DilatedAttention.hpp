// dilated::DilatedAttention<Algorithm>: dilated attention over (batch, seq, heads, head_dim)
// views, forward and backward, under an algorithm policy (Original). Both semantics, causal
// masking, softmax scale, attention dropout, float / double / half / bf16 storage with float
// (or double) accumulation, any sequence length.
#ifndef DILATED_DILATED_ATTENTION_HPP
#define DILATED_DILATED_ATTENTION_HPP

#include <Dilated_AlgorithmPolicies.hpp>
#include <Dilated_CheckFinite.hpp>
#include <Dilated_Compat.hpp>
#include <Dilated_Geometry.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <Dilated_Options.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_ImprovedDriver.hpp>
#include <impl/Dilated_OriginalDriver.hpp>
#include <impl/Dilated_OriginalGemmPath.hpp>
#include <impl/Dilated_OriginalHostGemmPath.hpp>
#include <impl/Dilated_OriginalMmaBackward.hpp>
#include <impl/Dilated_OriginalMmaForward.hpp>
#include <impl/Dilated_ScratchPool.hpp>
#include <impl/Dilated_ShapeChecks.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dilated {

namespace Impl {

// Compile-time checks shared by forward and backward: Views of rank `rank`, reachable from
// ExecSpace, of the same storage type T.
template <class ExecSpace, class T, int rank, class... Views>
constexpr void check_views() {
  static_assert(is_execution_space_v<ExecSpace>,
                "dilated::DilatedAttention: the first argument must be a Kokkos execution space");
  static_assert((is_view_v<Views> && ...),
                "dilated::DilatedAttention: q, k, v, out and the gradients must be Kokkos::Views");
  static_assert(((view_rank_v<Views> == rank) && ...),
                "dilated::DilatedAttention: q, k, v, out and the gradients must have rank 4 "
                "(batch, seq, heads, head_dim)");
  static_assert((is_accessible_from_v<ExecSpace, Views> && ...),
                "dilated::DilatedAttention: every View must be accessible from the execution "
                "space");
  static_assert((std::is_same_v<typename Views::non_const_value_type, T> && ...),
                "dilated::DilatedAttention: q, k, v, out and the gradients must share one "
                "storage type");
  static_assert(is_storage_type_v<T>,
                "dilated::DilatedAttention: storage must be float, double, "
                "Kokkos::Experimental::half_t or bhalf_t");
}

template <class ExecSpace, class View>
constexpr void check_output() {
  static_assert(!std::is_const_v<typename View::value_type>,
                "dilated::DilatedAttention: outputs (out, lse, dq, dk, dv) must not be const");
}

}  // namespace Impl

template <class Algorithm = Original>
class DilatedAttention {
  static_assert(is_algorithm_policy_v<Algorithm>,
                "dilated::DilatedAttention<Algorithm>: Algorithm must be an algorithm policy "
                "(dilated::Original or dilated::Improved)");

 public:
  // Throws std::invalid_argument naming the argument for empty or mismatched lists, entries
  // < 1, a dropout outside [0, 1), a non-finite softmax scale or a zero workspace.
  DilatedAttention(std::vector<int> segment_lengths, std::vector<int> dilation_rates,
                   AttentionOptions options = {})
      : segments_(std::move(segment_lengths)),
        dilations_(std::move(dilation_rates)),
        options_(options) {
    constexpr const char* fn = "dilated::DilatedAttention";
    Geometry::validate_branches(fn, segments_, dilations_);
    const double p = options_.attention_dropout();
    Impl::require(p >= 0 && p < 1, fn, "attention_dropout = ", p, " must be in [0, 1)");
    if (options_.softmax_scale()) {
      Impl::require(std::isfinite(*options_.softmax_scale()), fn,
                    "softmax_scale = ", *options_.softmax_scale(), " must be finite");
    }
    Impl::require(options_.workspace_bytes() > 0, fn, "workspace_bytes must be > 0");
  }

  const AttentionOptions& options() const { return options_; }
  const std::vector<int>& segment_lengths() const { return segments_; }
  const std::vector<int>& dilation_rates() const { return dilations_; }

  // The geometry for `num_heads` heads (throws for grouped when num_heads < the branches).
  Geometry geometry(int num_heads) const {
    return Geometry(segments_, dilations_, num_heads, options_.semantics());
  }

  // The temporaries of the calls (accumulators, score workspaces, deltas), kept across calls in
  // a pool that grows to the largest call (impl/Dilated_ScratchPool.hpp): a loop of calls
  // allocates nothing after the first. Shared by copies of this object and by objects given the
  // same pool (a model's layers); calls that share one must run in order on one execution space
  // instance (or fence between). release_scratch() frees it.
  const std::shared_ptr<Impl::ScratchPool>& scratch() const { return scratch_; }
  DilatedAttention& set_scratch(std::shared_ptr<Impl::ScratchPool> pool) {
    Impl::require(pool != nullptr, "dilated::DilatedAttention::set_scratch",
                  "pool must not be null");
    scratch_ = std::move(pool);
    return *this;
  }
  void release_scratch() const { scratch_->release(); }

  // What the scratch pool holds after a forward (and, with `backward`, its backward) on
  // ExecSpace of (batch, n, heads, head_dim) Views of T with an lse of the accumulation type
  // passed (as the layers and blocks call it), as MemoryKind::attention_workspace entries, one
  // per pool label (the pool keeps the largest request of a label). The per-token buffers
  // (accumulators, deltas) are exact; the score workspaces of the CUDA Original paths (the
  // tensor-core score slots, the stored backward matrices, the cuBLAS path's groups) are
  // entered at their bound, options().workspace_bytes(), which they reach for long sequences.
  template <class ExecSpace, class T>
  MemoryPlan plan_scratch(int batch, int n, int heads, int head_dim, bool backward) const {
    using Acc = Impl::accumulation_t<T>;
    const std::size_t b = batch, t = n, h = heads, d = head_dim;
    const std::size_t a4 = Impl::Accumulator4<ExecSpace, Acc>::required_allocation_size(b, t, h, d);
    const std::size_t a3 = Impl::Accumulator3<ExecSpace, Acc>::required_allocation_size(b, t, h);
    const std::size_t bound = options_.workspace_bytes();
    const bool longnet = options_.semantics() == Semantics::longnet;
    constexpr bool wide = !std::is_same_v<T, Acc>;          // accumulators differ from the storage
    std::vector<std::pair<const char*, std::size_t>> pool;  // label, largest request
    const auto need = [&](const char* label, std::size_t bytes) {
      bytes = std::max<std::size_t>(bytes, 1);  // ScratchPool::get asks at least one byte
      for (auto& [l, size] : pool) {
        if (std::string(l) == label) {
          size = std::max(size, bytes);
          return;
        }
      }
      pool.emplace_back(label, bytes);
    };
    const auto fused_forward = [&]() {
      if (!longnet) return;
      need("dilated::fused::lse", a3);
      if (wide) need("dilated::fused::out_accumulator", a4);
    };
    const auto fused_backward = [&]() {
      need("dilated::fused::delta", a3);
      if (longnet && wide) {
        need("dilated::fused::dq", a4);
        need("dilated::fused::dk", a4);
        need("dilated::fused::dv", a4);
      }
      // The host's one-pass backward (improved_backward_branches): tiles and dQ slots.
      if constexpr (Impl::host_tile::enabled_v<ExecSpace, Acc>) {
        if (Impl::host_tile::fused_backward_applies(longnet && options_.detach_branch_weights()))
          need(Impl::host_tile::fused_backward_label,
               Impl::host_tile::fused_workspace_bytes(geometry(heads), batch, n, head_dim,
                                                      ExecSpace().concurrency()));
      }
    };
    bool cuda = false, mma_type = false;
#if defined(KOKKOS_ENABLE_CUDA)
    cuda = std::is_same_v<ExecSpace, Kokkos::Cuda>;
    if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) mma_type = Impl::mma::is_mma_type_v<T>;
#endif
    if constexpr (std::is_same_v<Algorithm, Improved>) {
      fused_forward();
      if (backward) fused_backward();
    } else {
      const bool tensor = cuda && mma_type && options_.original_tensor_cores();
      const bool gemm = cuda && options_.vendor_gemm();
      const bool host_gemm = Impl::original_host::applies_v<ExecSpace, T> && options_.vendor_gemm();
      const Geometry g = geometry(heads);
      const auto host_gemm_bytes = [&](bool with_backward) {
        return Impl::original_host::workspace_bytes<Acc>(g, n, head_dim, ExecSpace().concurrency(),
                                                         with_backward);
      };
      const auto host_schedule = [&](int matrices) {
        return Impl::LaunchSchedule<ExecSpace>(g, batch, n, matrices, sizeof(Acc), bound)
                   .workspace_entries *
               sizeof(Acc);
      };
      if (tensor && (d == 64 || d == 128)) {
        fused_forward();
        need(Impl::score_workspace_label, bound);
      } else {
        need("dilated::original::out_accumulator", a4);
        need("dilated::original::lse_accumulator", a3);
        if (gemm) {
          need("dilated::original::gemm_ws", bound);
        } else if (host_gemm) {
          need(Impl::original_host::workspace_label, host_gemm_bytes(false));
        } else {
          need("dilated::original::workspace", host_schedule(1));
        }
      }
      if (backward) {
        if (tensor && d == 64) {
          fused_backward();
          need(Impl::score_workspace_label, bound);
        } else {
          need("dilated::original::lse_accumulator",
               Impl::Accumulator3<ExecSpace, Acc>::required_allocation_size(longnet ? b : 0, t, h));
          need("dilated::original::dq", a4);
          need("dilated::original::dk", a4);
          need("dilated::original::dv", a4);
          if (gemm) {
            need("dilated::original::gemm_ws", bound);
          } else if (host_gemm) {
            need(Impl::original_host::workspace_label, host_gemm_bytes(true));
          } else {
            need("dilated::original::workspace", host_schedule(2));
          }
        }
      }
    }
    MemoryPlan plan;
    for (const auto& [label, bytes] : pool)
      plan.add(label, MemoryKind::attention_workspace, bytes);
    return plan;
  }

  // out = dilated attention of q, k, v; lse (b, n, h) receives the merged log-sum-exp
  // (-inf where no branch keeps the position), which backward can reuse. Like a Kokkos kernel the
  // call may return before its work on `space` is done: fence `space` before reading the results
  // from another space.
  template <class ExecSpace, class Q, class K, class V, class O, class L,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace> && Impl::is_view_v<L>, int> = 0>
  void forward(const ExecSpace& space, const Q& q, const K& k, const V& v, const O& out,
               const L& lse, const ForwardOptions& call = {}) const {
    static_assert(Impl::view_rank_v<L> == 3,
                  "dilated::DilatedAttention::forward: lse must have rank 3 (batch, seq, heads)");
    static_assert(Impl::is_accessible_from_v<ExecSpace, L>,
                  "dilated::DilatedAttention::forward: lse must be accessible from the space");
    Impl::check_output<ExecSpace, L>();
    forward_impl(space, q, k, v, out, &lse, call);
  }

  template <class ExecSpace, class Q, class K, class V, class O,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  void forward(const ExecSpace& space, const Q& q, const K& k, const V& v, const O& out,
               const ForwardOptions& call = {}) const {
    forward_impl(space, q, k, v, out, static_cast<const NoLse<ExecSpace>*>(nullptr), call);
  }

  // The same on the views' default execution space.
  template <class Q, class K, class V, class O, class... Rest,
            std::enable_if_t<Impl::is_view_v<Q>, int> = 0>
  void forward(const Q& q, const K& k, const V& v, const O& out, const Rest&... rest) const {
    forward(typename Q::execution_space{}, q, k, v, out, rest...);
  }

  // dq, dk, dv = gradients of <out, dout> with respect to q, k, v, for the forward that produced
  // `out` with the same options (same seed: same dropout mask). With `lse` from that forward
  // the longnet branch weights are not recomputed.
  template <class ExecSpace, class Q, class K, class V, class O, class L, class G, class DQ,
            class DK, class DV,
            std::enable_if_t<Impl::is_execution_space_v<ExecSpace> && Impl::is_view_v<DV>, int> = 0>
  void backward(const ExecSpace& space, const Q& q, const K& k, const V& v, const O& out,
                const L& lse, const G& dout, const DQ& dq, const DK& dk, const DV& dv,
                const ForwardOptions& call = {}) const {
    static_assert(Impl::view_rank_v<L> == 3,
                  "dilated::DilatedAttention::backward: lse must have rank 3 (batch, seq, heads)");
    backward_impl(space, q, k, v, out, &lse, dout, dq, dk, dv, call);
  }

  template <class ExecSpace, class Q, class K, class V, class O, class G, class DQ, class DK,
            class DV, std::enable_if_t<Impl::is_execution_space_v<ExecSpace>, int> = 0>
  void backward(const ExecSpace& space, const Q& q, const K& k, const V& v, const O& out,
                const G& dout, const DQ& dq, const DK& dk, const DV& dv,
                const ForwardOptions& call = {}) const {
    backward_impl(space, q, k, v, out, static_cast<const NoLse<ExecSpace>*>(nullptr), dout, dq, dk,
                  dv, call);
  }

  template <class Q, class K, class V, class O, class... Rest,
            std::enable_if_t<Impl::is_view_v<Q>, int> = 0>
  void backward(const Q& q, const K& k, const V& v, const O& out, const Rest&... rest) const {
    backward(typename Q::execution_space{}, q, k, v, out, rest...);
  }

 private:
  template <class ExecSpace>
  using NoLse = Kokkos::View<float***, typename ExecSpace::memory_space>;

  template <class ExecSpace, class Q, class K, class V, class O, class L>
  void forward_impl(const ExecSpace& space, const Q& q, const K& k, const V& v, const O& out,
                    const L* lse, const ForwardOptions& call) const {
    using T = typename Q::non_const_value_type;
    Impl::check_views<ExecSpace, T, 4, Q, K, V, O>();
    Impl::check_output<ExecSpace, O>();
    Impl::ScopedRegion region("dilated::DilatedAttention::forward");
    const Impl::ScratchScope scratch(scratch_.get());
    constexpr const char* fn = "dilated::DilatedAttention::forward";
    const Geometry g = geometry_for(fn, q);
    Impl::check_attention_shapes(fn, g, q, k, v, out);
    if (lse) Impl::check_per_token(fn, "lse", *lse, q);
    const auto check_apart = [&](const char* name, const auto& written) {
      Impl::check_no_overlap(fn, name, written, "q", q);
      Impl::check_no_overlap(fn, name, written, "k", k);
      Impl::check_no_overlap(fn, name, written, "v", v);
    };
    check_apart("out", out);
    if (lse) {
      check_apart("lse", *lse);
      Impl::check_no_overlap(fn, "lse", *lse, "out", out);
    }
    if (options_.check_finite()) {
      Impl::check_finite(space, fn, "q", q);
      Impl::check_finite(space, fn, "k", k);
      Impl::check_finite(space, fn, "v", v);
    }
    if constexpr (std::is_same_v<Algorithm, Improved>) {
      improved_forward(space, g, q, k, v, out, lse, call);
    } else {
      original_forward(space, g, q, k, v, out, lse, call);
    }
  }

  template <class ExecSpace, class Q, class K, class V, class O, class L>
  void original_forward(const ExecSpace& space, const Geometry& g, const Q& q, const K& k,
                        const V& v, const O& out, const L* lse, const ForwardOptions& call) const {
    using T = typename Q::non_const_value_type;
    using Acc = Impl::accumulation_t<T>;
#if defined(KOKKOS_ENABLE_CUDA)
    // The tensor-core Original (Dilated_OriginalMmaForward.hpp), written like the fused forward.
    if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda> && Impl::mma::is_mma_type_v<T>) {
      const int d = q.extent(3);
      const auto base = Impl::make_launch<ExecSpace, Acc>(g, options_, call, q.extent(1), d);
      if (options_.original_tensor_cores() && base.scale > 0 && Impl::mma::applies(d, q, k, v)) {
        fused_forward(
            space, g, q, out, lse,
            [&](const auto& o, const auto& l, bool with_lse, bool zero_unkept) {
              if (d == 64) {
                Impl::mma::original_forward_branches<64>(space, g, base, q, k, v, o, l, with_lse,
                                                         zero_unkept, options_.workspace_bytes());
              } else {
                Impl::mma::original_forward_branches<128>(space, g, base, q, k, v, o, l, with_lse,
                                                          zero_unkept, options_.workspace_bytes());
              }
            });
        return;
      }
    }
#endif
    const auto out_acc = Impl::scratch_view<Impl::Accumulator4<ExecSpace, Acc>>(
        space, "dilated::original::out_accumulator", true, q.extent(0), q.extent(1), q.extent(2),
        q.extent(3));
    const auto lse_acc = Impl::scratch_view<Impl::Accumulator3<ExecSpace, Acc>>(
        space, "dilated::original::lse_accumulator", true, q.extent(0), q.extent(1), q.extent(2));
    if (use_gemm_path(space, q, k, v, out)) {
#if defined(KOKKOS_ENABLE_CUDA)
      if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
        Impl::gemm_forward_branches<T, Acc>(
            space, g,
            Impl::make_launch<ExecSpace, Acc>(g, options_, call, q.extent(1), q.extent(3)), q, k, v,
            out_acc, lse_acc, options_.workspace_bytes());
      }
#endif
      if constexpr (Impl::original_host::applies_v<ExecSpace, T>) {
        Impl::original_host::forward_branches(
            space, g,
            Impl::make_launch<ExecSpace, Acc>(g, options_, call, q.extent(1), q.extent(3)), q, k, v,
            out_acc, lse_acc);
      }
    } else {
      Impl::original_forward_branches(space, g, options_, call, q, k, v, out_acc, lse_acc, true);
    }
    Impl::convert_rows(space, "dilated::original::store_out", out_acc, out);
    if (lse) Impl::convert_rows(space, "dilated::original::store_lse", lse_acc, *lse);
  }

  // The fused forward: grouped writes the caller's views directly (no temporaries); longnet
  // merges branch by branch in the caller's out when it is float/double, else in a float
  // accumulator (from the scratch pool: no fence, the call stays asynchronous on `space`).
  template <class ExecSpace, class Q, class K, class V, class O, class L>
  void improved_forward(const ExecSpace& space, const Geometry& g, const Q& q, const K& k,
                        const V& v, const O& out, const L* lse, const ForwardOptions& call) const {
    using Acc = Impl::accumulation_t<typename Q::non_const_value_type>;
    const auto base =
        Impl::make_launch<ExecSpace, Acc>(g, options_, call, q.extent(1), q.extent(3));
    fused_forward(space, g, q, out, lse,
                  [&](const auto& o, const auto& l, bool with_lse, bool zero_unkept) {
                    Impl::improved_forward_branches(space, g, base, q, k, v, o, l, true, with_lse,
                                                    zero_unkept);
                  });
  }

  // Where a forward whose kernels write rows (and log-sum-exp) of every branch puts them:
  // `branches(o, l, with_lse, zero_unkept)` runs the branches into o / l. grouped: the caller's
  // out and lse (a branch's kernels zero the rows no branch keeps); longnet: o holding 0 and l
  // -inf on entry, merged into branch by branch, in the caller's out when it is float/double,
  // else in a float accumulator.
  template <class ExecSpace, class Q, class O, class L, class Branches>
  void fused_forward(const ExecSpace& space, const Geometry& g, const Q& q, const O& out,
                     const L* lse, const Branches& branches) const {
    using T = typename Q::non_const_value_type;
    using Acc = Impl::accumulation_t<T>;
    const int batch = q.extent(0), n = q.extent(1), heads = q.extent(2), d = q.extent(3);
    if (g.semantics() == Semantics::grouped) {
      if (lse) {
        branches(out, *lse, true, true);
      } else {
        branches(out, NoLse<ExecSpace>(), false, true);
      }
      return;
    }
    const auto lse_acc = Impl::scratch_view<Impl::Accumulator3<ExecSpace, Acc>>(
        space, "dilated::fused::lse", false, batch, n, heads);
    Kokkos::deep_copy(space, lse_acc, -Impl::math::infinity<Acc>());
    if constexpr (std::is_same_v<T, Acc>) {
      Impl::fill(space, out, T(0));
      branches(out, lse_acc, true, false);
    } else {
      const auto out_acc = Impl::scratch_view<Impl::Accumulator4<ExecSpace, Acc>>(
          space, "dilated::fused::out_accumulator", true, batch, n, heads, d);
      branches(out_acc, lse_acc, true, false);
      Impl::convert_rows(space, "dilated::fused::store_out", out_acc, out);
    }
    if (lse) Impl::convert_rows(space, "dilated::fused::store_lse", lse_acc, *lse);
  }

  template <class ExecSpace, class Q, class K, class V, class O, class L, class G, class DQ,
            class DK, class DV>
  void backward_impl(const ExecSpace& space, const Q& q, const K& k, const V& v, const O& out,
                     const L* lse, const G& dout, const DQ& dq, const DK& dk, const DV& dv,
                     const ForwardOptions& call) const {
    using T = typename Q::non_const_value_type;
    Impl::check_views<ExecSpace, T, 4, Q, K, V, O, G, DQ, DK, DV>();
    Impl::check_output<ExecSpace, DQ>();
    Impl::check_output<ExecSpace, DK>();
    Impl::check_output<ExecSpace, DV>();
    Impl::ScopedRegion region("dilated::DilatedAttention::backward");
    const Impl::ScratchScope scratch(scratch_.get());
    constexpr const char* fn = "dilated::DilatedAttention::backward";
    const Geometry g = geometry_for(fn, q);
    Impl::check_attention_shapes(fn, g, q, k, v, out);
    Impl::check_same_shape(fn, "dout", dout, q);
    Impl::check_same_shape(fn, "dq", dq, q);
    Impl::check_same_shape(fn, "dk", dk, q);
    Impl::check_same_shape(fn, "dv", dv, q);
    if (lse) Impl::check_per_token(fn, "lse", *lse, q);
    const auto check_apart = [&](const char* name, const auto& grad) {
      Impl::check_no_overlap(fn, name, grad, "q", q);
      Impl::check_no_overlap(fn, name, grad, "k", k);
      Impl::check_no_overlap(fn, name, grad, "v", v);
      Impl::check_no_overlap(fn, name, grad, "out", out);
      Impl::check_no_overlap(fn, name, grad, "dout", dout);
      if (lse) Impl::check_no_overlap(fn, name, grad, "lse", *lse);
    };
    check_apart("dq", dq);
    check_apart("dk", dk);
    check_apart("dv", dv);
    if (options_.check_finite()) {
      Impl::check_finite(space, fn, "q", q);
      Impl::check_finite(space, fn, "k", k);
      Impl::check_finite(space, fn, "v", v);
      Impl::check_finite(space, fn, "dout", dout);
    }
    if constexpr (std::is_same_v<Algorithm, Improved>) {
      improved_backward(space, g, q, k, v, out, lse, dout, dq, dk, dv, call);
    } else {
      original_backward(space, g, q, k, v, out, lse, dout, dq, dk, dv, call);
    }
  }

  template <class ExecSpace, class Q, class K, class V, class O, class L, class G, class DQ,
            class DK, class DV>
  void original_backward(const ExecSpace& space, const Geometry& g, const Q& q, const K& k,
                         const V& v, const O& out, const L* lse, const G& dout, const DQ& dq,
                         const DK& dk, const DV& dv, const ForwardOptions& call) const {
    using T = typename Q::non_const_value_type;
    using Acc = Impl::accumulation_t<T>;
    const int batch = q.extent(0), n = q.extent(1), heads = q.extent(2), d = q.extent(3);
    const bool longnet = g.semantics() == Semantics::longnet;
#if defined(KOKKOS_ENABLE_CUDA)
    // The tensor-core Original (Dilated_OriginalMmaBackward.hpp), written like the fused
    // backward; without lse the tensor-core Original forward recomputes it (pass lse to avoid).
    if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda> && Impl::mma::is_mma_type_v<T>) {
      const auto base = Impl::make_launch<ExecSpace, Acc>(g, options_, call, n, d);
      if (options_.original_tensor_cores() && base.scale > 0 && d == 64 &&
          Impl::mma::applies(d, q, k, v, dout)) {
        const std::size_t budget = options_.workspace_bytes();
        fused_backward(
            space, g, q, lse, dq, dk, dv,
            [&](const auto& lse_acc) {
              Impl::mma::original_forward_branches<64>(
                  space, g, base, q, k, v,
                  Impl::scratch_view<Impl::Accumulator4<ExecSpace, Acc>>(
                      space, "dilated::original::out_accumulator", true, batch, n, heads, d),
                  lse_acc, true, false, budget);
            },
            [&](const auto& lse_v, const auto& delta, bool branch_deltas, const auto& gq,
                const auto& gk, const auto& gv, bool accumulate) {
              Impl::original_mma_backward_branches(space, g, base, q, k, v, out, dout, lse_v, delta,
                                                   branch_deltas, gq, gk, gv, accumulate, budget);
            });
        return;
      }
    }
#endif

    // The merged log-sum-exp L of the forward (longnet branch weights exp(lse_i - L)).
    const auto lse_acc = Impl::scratch_view<Impl::Accumulator3<ExecSpace, Acc>>(
        space, "dilated::original::lse_accumulator", true, longnet ? batch : 0, n, heads);
    const bool gemm = use_gemm_path(space, q, k, v, out, dout);
    if (longnet && lse) {
      Impl::convert_rows(space, "dilated::original::load_lse", *lse, lse_acc);
    } else if (longnet && gemm) {
      // No lse from the forward: recompute it (a whole forward; pass lse to avoid this).
      const auto out_acc = Impl::scratch_view<Impl::Accumulator4<ExecSpace, Acc>>(
          space, "dilated::original::out_accumulator", true, batch, n, heads, d);
#if defined(KOKKOS_ENABLE_CUDA)
      if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
        Impl::gemm_forward_branches<T, Acc>(
            space, g, Impl::make_launch<ExecSpace, Acc>(g, options_, call, n, d), q, k, v, out_acc,
            lse_acc, options_.workspace_bytes());
      }
#endif
      if constexpr (Impl::original_host::applies_v<ExecSpace, T>) {
        Impl::original_host::forward_branches(
            space, g, Impl::make_launch<ExecSpace, Acc>(g, options_, call, n, d), q, k, v, out_acc,
            lse_acc);
      }
    } else if (longnet) {
      Impl::original_forward_branches(space, g, options_, call, q, k, v,
                                      Impl::Accumulator4<ExecSpace, Acc>(), lse_acc, false);
    }
    using Acc4 = Impl::Accumulator4<ExecSpace, Acc>;
    const auto dq_acc =
        Impl::scratch_view<Acc4>(space, "dilated::original::dq", true, batch, n, heads, d);
    const auto dk_acc =
        Impl::scratch_view<Acc4>(space, "dilated::original::dk", true, batch, n, heads, d);
    const auto dv_acc =
        Impl::scratch_view<Acc4>(space, "dilated::original::dv", true, batch, n, heads, d);
    const bool through_weights = longnet && !options_.detach_branch_weights();
    if (gemm) {
#if defined(KOKKOS_ENABLE_CUDA)
      if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
        Impl::gemm_backward_branches<T, Acc>(
            space, g, Impl::make_launch<ExecSpace, Acc>(g, options_, call, n, d), q, k, v, out,
            dout, lse_acc, dq_acc, dk_acc, dv_acc, through_weights, options_.workspace_bytes());
      }
#endif
      if constexpr (Impl::original_host::applies_v<ExecSpace, T>) {
        Impl::original_host::backward_branches(
            space, g, Impl::make_launch<ExecSpace, Acc>(g, options_, call, n, d), q, k, v, out,
            dout, lse_acc, dq_acc, dk_acc, dv_acc, through_weights);
      }
    } else {
      const Impl::LaunchSchedule<ExecSpace> schedule(g, batch, n, 2, sizeof(Acc),
                                                     options_.workspace_bytes());
      using Kernel =
          Impl::OriginalBackwardKernel<ExecSpace, Q, K, V, O, G, Impl::Accumulator3<ExecSpace, Acc>,
                                       Impl::Accumulator4<ExecSpace, Acc>>;
      Impl::launch_branches(space, "dilated::original::backward", schedule,
                            Impl::make_launch<ExecSpace, Acc>(g, options_, call, n, d),
                            [&](const auto& launch, const auto& work) {
                              return Kernel{launch,  q,      k,      v,      out,  dout,
                                            lse_acc, dq_acc, dk_acc, dv_acc, work, through_weights};
                            });
    }
    Impl::convert_rows(space, "dilated::original::store_dq", dq_acc, dq);
    Impl::convert_rows(space, "dilated::original::store_dk", dk_acc, dk);
    Impl::convert_rows(space, "dilated::original::store_dv", dv_acc, dv);
  }

  // The fused backward (FlashAttention-2 style): probabilities are recomputed from the merged
  // log-sum-exp (the forward's `lse`, or recomputed without output when none is given).
  template <class ExecSpace, class Q, class K, class V, class O, class L, class G, class DQ,
            class DK, class DV>
  void improved_backward(const ExecSpace& space, const Geometry& g, const Q& q, const K& k,
                         const V& v, const O& out, const L* lse, const G& dout, const DQ& dq,
                         const DK& dk, const DV& dv, const ForwardOptions& call) const {
    using Acc = Impl::accumulation_t<typename Q::non_const_value_type>;
    const auto base =
        Impl::make_launch<ExecSpace, Acc>(g, options_, call, q.extent(1), q.extent(3));
    fused_backward(
        space, g, q, lse, dq, dk, dv,
        [&](const auto& lse_acc) {
          Impl::improved_forward_branches(
              space, g, base, q, k, v, Impl::Accumulator4<ExecSpace, Acc>(), lse_acc, false, true);
        },
        [&](const auto& lse_v, const auto& delta, bool branch_deltas, const auto& gq,
            const auto& gk, const auto& gv, bool accumulate) {
          Impl::improved_backward_branches(space, g, base, q, k, v, out, dout, lse_v, delta,
                                           branch_deltas, gq, gk, gv, accumulate);
        });
  }

  // Where a backward whose kernels write (or add) gradient rows of every branch gets its
  // merged log-sum-exp and puts its gradients. `recompute_lse(lse_acc)`: the merged log-sum-exp
  // into lse_acc (holding -inf) when the caller gives none. `branches(lse, delta, branch_deltas,
  // dq, dk, dv, accumulate)`: the branches' gradients, D_t in `delta` (see
  // improved_backward_branches). grouped: written into the caller's views (rows no branch keeps
  // zeroed first); longnet: added branch by branch into the caller's views when they are
  // float/double, else into float accumulators.
  template <class ExecSpace, class Q, class L, class DQ, class DK, class DV, class RecomputeLse,
            class Branches>
  void fused_backward(const ExecSpace& space, const Geometry& g, const Q& q, const L* lse,
                      const DQ& dq, const DK& dk, const DV& dv, const RecomputeLse& recompute_lse,
                      const Branches& branches) const {
    using Acc = Impl::accumulation_t<typename Q::non_const_value_type>;
    const int batch = q.extent(0), n = q.extent(1), heads = q.extent(2);
    // The merged log-sum-exp the passes read: the caller's when it already holds Acc (no copy,
    // no allocation), else a converted copy, or recomputed when none is given.
    if constexpr (std::is_same_v<typename L::non_const_value_type, Acc>) {
      if (lse) {
        fused_backward_passes(space, g, q, *lse, dq, dk, dv, branches);
        return;
      }
    }
    const auto lse_acc = Impl::scratch_view<Impl::Accumulator3<ExecSpace, Acc>>(
        space, "dilated::fused::lse", false, batch, n, heads);
    if (lse) {
      Impl::convert_rows(space, "dilated::fused::load_lse", *lse, lse_acc);
    } else {
      Kokkos::deep_copy(space, lse_acc, -Impl::math::infinity<Acc>());
      recompute_lse(lse_acc);
    }
    fused_backward_passes(space, g, q, lse_acc, dq, dk, dv, branches);
  }

  // The passes of fused_backward from the merged log-sum-exp `lse_acc`.
  template <class ExecSpace, class Q, class LV, class DQ, class DK, class DV, class Branches>
  void fused_backward_passes(const ExecSpace& space, const Geometry& g, const Q& q,
                             const LV& lse_acc, const DQ& dq, const DK& dk, const DV& dv,
                             const Branches& branches) const {
    using T = typename Q::non_const_value_type;
    using Acc = Impl::accumulation_t<T>;
    const int batch = q.extent(0), n = q.extent(1), heads = q.extent(2), d = q.extent(3);
    const bool longnet = g.semantics() == Semantics::longnet;
    // D_t: one per row from dout . out, or per branch (detached longnet weights).
    const bool branch_deltas = longnet && options_.detach_branch_weights();
    const auto delta = Impl::scratch_view<Impl::Accumulator3<ExecSpace, Acc>>(
        space, "dilated::fused::delta", false, batch, n, heads);
    if (!longnet) {
      const auto* no_lse = static_cast<const NoLse<ExecSpace>*>(nullptr);
      Impl::zero_unkept_rows(space, g, no_lse, dq, dk, dv);
      branches(lse_acc, delta, false, dq, dk, dv, false);
    } else if constexpr (std::is_same_v<T, Acc>) {
      Impl::fill(space, dq, T(0));
      Impl::fill(space, dk, T(0));
      Impl::fill(space, dv, T(0));
      branches(lse_acc, delta, branch_deltas, dq, dk, dv, true);
    } else {
      using Acc4 = Impl::Accumulator4<ExecSpace, Acc>;
      const auto dq_acc =
          Impl::scratch_view<Acc4>(space, "dilated::fused::dq", true, batch, n, heads, d);
      const auto dk_acc =
          Impl::scratch_view<Acc4>(space, "dilated::fused::dk", true, batch, n, heads, d);
      const auto dv_acc =
          Impl::scratch_view<Acc4>(space, "dilated::fused::dv", true, batch, n, heads, d);
      branches(lse_acc, delta, branch_deltas, dq_acc, dk_acc, dv_acc, true);
      Impl::convert_rows(space, "dilated::fused::store_dq", dq_acc, dq);
      Impl::convert_rows(space, "dilated::fused::store_dk", dk_acc, dk);
      Impl::convert_rows(space, "dilated::fused::store_dv", dv_acc, dv);
    }
  }

  // The vendor-GEMM paths of the Original algorithm, where asked for and every view's head_dim
  // is contiguous: cuBLAS on CUDA; the host BLAS on Serial / OpenMP for float and double
  // (Dilated_OriginalHostGemmPath.hpp). Elsewhere the team kernel.
  template <class ExecSpace, class Q, class... Views>
  bool use_gemm_path(const ExecSpace&, const Q& q, const Views&... views) const {
    const bool contiguous = q.stride(3) == 1 && ((views.stride(3) == 1) && ...);
#if defined(KOKKOS_ENABLE_CUDA)
    if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
      return options_.vendor_gemm() && contiguous;
    }
#endif
    if constexpr (Impl::original_host::applies_v<ExecSpace, typename Q::non_const_value_type>) {
      return options_.vendor_gemm() && contiguous;
    }
    (void)contiguous;
    return false;
  }

  template <class Q>
  Geometry geometry_for(const char* fn, const Q& q) const {
    Impl::require(q.extent(2) >= 1, fn, "q.extent(2) (heads) = ", q.extent(2), " must be >= 1");
    try {
      return geometry(static_cast<int>(q.extent(2)));
    } catch (const std::invalid_argument& e) {
      Impl::throw_invalid_argument(fn, e.what());
    }
  }

  std::vector<int> segments_;
  std::vector<int> dilations_;
  AttentionOptions options_;
  std::shared_ptr<Impl::ScratchPool> scratch_ = std::make_shared<Impl::ScratchPool>();
};

}  // namespace dilated

#endif  // DILATED_DILATED_ATTENTION_HPP
