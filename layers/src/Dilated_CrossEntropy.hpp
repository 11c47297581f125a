// A language model's head and loss in one pass: logits = h W^T with the (vocab, E) weight W tied
// to the token embedding, and the mean cross-entropy of the next-token targets over the tokens,
// -1/N sum_t log softmax(logits_t)[target_t], as PyTorch's F.cross_entropy(h @ W.T, targets)
// (reduction 'mean', ignore_index), with its gradients dh and dW.
//
// The (tokens x vocab) logits never exist whole: the tokens go in chunks of C rows (a setting,
// 4096 by default); for each chunk the logits (C x vocab, in a buffer the object keeps) come from
// Impl::gemm (fp32 accumulation, fp64 for double), a row kernel takes each row's log-sum-exp
// (max-subtracted, in float, double for double) and the row's loss, and overwrites the row with
// dlogits = softmax - onehot; two more products give dh = dlogits W for the chunk's rows and
// add dlogits^T h into dW. The 1/N of the mean (and a loss scale) is the products' alpha, not a
// factor on dlogits: in half storage, softmax / N for N = 65,536 tokens would fall below half's
// normal range (6e-5) where probabilities of 1e-4 already lose precision.
//
// The loss is summed in a fixed order (token t into partial t mod 1024, partials in order), so
// the same inputs give the same loss bits whatever the thread count. A loss that is not finite
// (an inf or NaN in h or W, or logits that overflow the storage type) throws NonFiniteLoss
// naming the first token whose loss is not finite.
#ifndef DILATED_CROSS_ENTROPY_HPP
#define DILATED_CROSS_ENTROPY_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <Dilated_Gemm.hpp>
#include <Dilated_LayerNorm.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_RowPieces.hpp>
#include <impl/Dilated_TokenViews.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace dilated {

// The loss of a call was inf or NaN. position(): the first token (flat index) whose loss is not
// finite, or -1 when every token's loss is finite and only their sum overflowed.
class NonFiniteLoss : public std::runtime_error {
 public:
  NonFiniteLoss(const std::string& message, double loss, long position)
      : std::runtime_error(message), loss_(loss), position_(position) {}
  double loss() const { return loss_; }
  long position() const { return position_; }

 private:
  double loss_;
  long position_;
};

// Settings of FusedLinearCrossEntropy, checked where it takes them.
class CrossEntropyOptions {
 public:
  // Tokens a chunk takes (>= 1): the logits buffer holds chunk_tokens x vocab values of the
  // storage type (4096 x 50257 floats: 823 MB; 4096 x 256: 4 MiB).
  CrossEntropyOptions& set_chunk_tokens(long chunk_tokens) {
    chunk_tokens_ = chunk_tokens;
    return *this;
  }
  // Targets equal to it add no loss and no gradient and are not counted in the mean (PyTorch's
  // default -100; any value outside [0, vocab)).
  CrossEntropyOptions& set_ignore_index(long ignore_index) {
    ignore_index_ = ignore_index;
    return *this;
  }
  // float on CUDA: the products on TF32 tensor cores (GemmOptions::use_tf32).
  CrossEntropyOptions& set_use_tf32(bool use_tf32) {
    use_tf32_ = use_tf32;
    return *this;
  }

  long chunk_tokens() const { return chunk_tokens_; }
  long ignore_index() const { return ignore_index_; }
  bool use_tf32() const { return use_tf32_; }

 private:
  long chunk_tokens_ = 4096;
  long ignore_index_ = -100;
  bool use_tf32_ = false;
};

// Per call of loss_and_gradients.
class LossGradientOptions {
 public:
  // Add the head's dW to what dweight holds (the embedding's gradient of a tied weight, or
  // gradient accumulation) instead of overwriting it.
  LossGradientOptions& set_accumulate_weight_gradient(bool accumulate) {
    accumulate_ = accumulate;
    return *this;
  }
  // A factor on dh and dW (a loss scale for half precision); the returned loss is unscaled.
  LossGradientOptions& set_scale(double scale) {
    scale_ = scale;
    return *this;
  }
  bool accumulate_weight_gradient() const { return accumulate_; }
  double scale() const { return scale_; }

 private:
  bool accumulate_ = false;
  double scale_ = 1.0;
};

namespace Impl {

// Each logits row i (token first + i) with target y: loss(first + i) = lse - x_y, lse the
// row's log-sum-exp; with Gradient the row is overwritten with softmax - onehot(y). Rows whose
// target is ignore_index get loss 0 and a zero gradient row. A row per vector group.
template <class T, int W, bool Gradient, class Acc, class ExecSpace, class Logits, class Targets,
          class Losses>
void cross_entropy_rows(const ExecSpace& space, const Logits& logits, const Targets& targets,
                        long first, long ignore_index, const Losses& losses) {
  using P = Pack<T, W>;
  using Launch = MatrixRowLaunch<ExecSpace>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const long rows = logits.extent(0), stride = logits.stride(0);
  const int packs = static_cast<int>(logits.extent(1)) / W;
  T* lp = logits.data();
  Kokkos::parallel_for(
      Gradient ? "dilated::cross_entropy::rows_gradient" : "dilated::cross_entropy::rows",
      Launch::policy(space, rows), KOKKOS_LAMBDA(const Member& member) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Launch::rows_per_team), [&](int r) {
          const long i = long(member.league_rank()) * Launch::rows_per_team + r;
          if (i >= rows) return;
          const long y = targets(first + i);
          P* row = reinterpret_cast<P*>(lp + i * stride);
          if (y == ignore_index) {
            // A plain if (Gradient is a template constant): nvcc's extended lambdas cannot
            // first capture a variable inside `if constexpr`.
            if (Gradient) {
              Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
                P zero;
                for (int w = 0; w < W; ++w)
                  zero.v[w] = static_cast<T>(Acc(0));
                row[p] = zero;
              });
            }
            Kokkos::single(Kokkos::PerThread(member), [&]() { losses(first + i) = Acc(0); });
            return;
          }
          Acc mx;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(member, packs),
              [&](int p, Acc& m) {
                const P v = row[p];
                for (int w = 0; w < W; ++w) {
                  const Acc x = static_cast<Acc>(v.v[w]);
                  m = x > m ? x : m;
                }
              },
              Kokkos::Max<Acc>(mx));
          Acc sum;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(member, packs),
              [&](int p, Acc& s) {
                const P v = row[p];
                for (int w = 0; w < W; ++w)
                  s += math::exp(static_cast<Acc>(v.v[w]) - mx);
              },
              sum);
          const Acc lse = mx + math::log(sum);
          if (Gradient) {
            // The lane that rewrites y's pack reads x_y from it first: no other lane reads
            // a value another one overwrites.
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
              const P v = row[p];
              P g;
              for (int w = 0; w < W; ++w) {
                const Acc x = static_cast<Acc>(v.v[w]);
                const bool target = long(p) * W + w == y;
                if (target) losses(first + i) = lse - x;
                g.v[w] = static_cast<T>(math::exp(x - lse) - (target ? Acc(1) : Acc(0)));
              }
              row[p] = g;
            });
          } else {
            Kokkos::single(Kokkos::PerThread(member), [&]() {
              losses(first + i) = lse - static_cast<Acc>(lp[i * stride + y]);
            });
          }
        });
      });
}

// Partials of the losses in a fixed order: partial j sums tokens j, j + parts, j + 2 parts, ...;
// result(0) = the partials summed in order, result(1) = the first token whose loss is not
// finite (tokens when none), as a double (exact below 2^53).
template <class ExecSpace, class Losses, class Partials, class Firsts, class Result>
void sum_losses(const ExecSpace& space, const Losses& losses, long tokens, const Partials& partials,
                const Firsts& firsts, const Result& result) {
  using Acc = typename Losses::non_const_value_type;
  const long parts = std::min<long>(tokens, partials.extent(0));
  Kokkos::parallel_for(
      "dilated::cross_entropy::loss_partials", Kokkos::RangePolicy<ExecSpace>(space, 0, parts),
      KOKKOS_LAMBDA(long j) {
        const Acc inf = math::infinity<Acc>();
        Acc sum = 0;
        long first = tokens;
        for (long t = j; t < tokens; t += parts) {
          const Acc x = losses(t);
          // == only: an ordered comparison with NaN would raise FE_INVALID.
          if (first == tokens && (x != x || x == inf || x == -inf)) first = t;
          sum += x;
        }
        partials(j) = sum;
        firsts(j) = first;
      });
  Kokkos::parallel_for(
      "dilated::cross_entropy::loss_sum", Kokkos::RangePolicy<ExecSpace>(space, 0, 1),
      KOKKOS_LAMBDA(int) {
        double sum = 0;
        long first = tokens;
        for (long j = 0; j < parts; ++j) {
          sum += static_cast<double>(partials(j));
          first = firsts(j) < first ? firsts(j) : first;
        }
        result(0) = sum;
        result(1) = static_cast<double>(first);
      });
}

}  // namespace Impl

template <class T, class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
class FusedLinearCrossEntropy {
  static_assert(Kokkos::is_memory_space<MemorySpace>::value,
                "dilated::FusedLinearCrossEntropy<T, MemorySpace>: MemorySpace must be a Kokkos "
                "memory space");

 public:
  using value_type = T;
  using memory_space = MemorySpace;
  using Acc = Impl::gemm_accumulation_t<T>;  // log-sum-exp and losses

  // Throws std::invalid_argument naming chunk_tokens when it is < 1.
  explicit FusedLinearCrossEntropy(const CrossEntropyOptions& options = {}) : options_(options) {
    Impl::require(options.chunk_tokens() >= 1, "dilated::FusedLinearCrossEntropy",
                  "chunk_tokens = ", options.chunk_tokens(), " must be >= 1");
  }

  const CrossEntropyOptions& options() const { return options_; }

  // The mean loss of logits = h weight^T against targets. h (tokens, E) or (b, n, E); weight
  // (vocab, E); targets (tokens,) or (b, n) int32, each in [0, vocab) or ignore_index. Throws
  // std::invalid_argument naming the argument (shapes, the first bad target, no counted target)
  // before any work, NonFiniteLoss after it. Waits for `space` twice (the targets' check, the
  // loss).
  template <class ExecSpace, class H, class Weight, class Targets>
  double loss(const ExecSpace& space, const H& h, const Weight& weight, const Targets& targets) {
    constexpr const char* fn = "dilated::FusedLinearCrossEntropy::loss";
    check_types<ExecSpace, H, Weight>();
    Impl::ScopedRegion region(fn);
    const auto hr = Impl::token_rows(fn, "h", h);
    return run<false>(fn, space, hr, weight, targets, hr, weight, LossGradientOptions());
  }

  // The loss as loss(), and its gradients in the same pass: dh (h's shape) = scale dloss/dh,
  // dweight (vocab, E) = scale dloss/dweight (added to dweight when the options say so). The
  // gradients are written even when the loss turns out not finite (then NonFiniteLoss: discard
  // them).
  template <class ExecSpace, class H, class Weight, class Targets, class DH, class DWeight>
  double loss_and_gradients(const ExecSpace& space, const H& h, const Weight& weight,
                            const Targets& targets, const DH& dh, const DWeight& dweight,
                            const LossGradientOptions& gradient_options = {}) {
    constexpr const char* fn = "dilated::FusedLinearCrossEntropy::loss_and_gradients";
    check_types<ExecSpace, H, Weight>();
    check_types<ExecSpace, DH, DWeight>();
    static_assert(
        !std::is_const_v<typename DH::value_type> && !std::is_const_v<typename DWeight::value_type>,
        "dilated::FusedLinearCrossEntropy::loss_and_gradients: dh and dweight must be "
        "writable");
    static_assert(Impl::view_rank_v<DH> == Impl::view_rank_v<H>,
                  "dilated::FusedLinearCrossEntropy::loss_and_gradients: dh must have h's rank");
    Impl::ScopedRegion region(fn);
    const auto hr = Impl::token_rows(fn, "h", h);
    const auto dhr = Impl::token_rows(fn, "dh", dh);
    for (int r = 0; r < Impl::view_rank_v<H>; ++r)
      Impl::require(dh.extent(r) == h.extent(r), fn, "dh.extent(", r, ") = ", dh.extent(r),
                    " differs from h.extent(", r, ") = ", h.extent(r));
    Impl::require(dweight.extent(0) == weight.extent(0) && dweight.extent(1) == weight.extent(1),
                  fn, "dweight is (", dweight.extent(0), ", ", dweight.extent(1),
                  ") but weight is (", weight.extent(0), ", ", weight.extent(1), ")");
    Impl::require(std::isfinite(gradient_options.scale()), fn, "scale = ", gradient_options.scale(),
                  " must be finite");
    return run<true>(fn, space, hr, weight, targets, dhr, dweight, gradient_options);
  }

  template <class H, class Weight, class Targets, std::enable_if_t<Impl::is_view_v<H>, int> = 0>
  double loss(const H& h, const Weight& weight, const Targets& targets) {
    return loss(typename MemorySpace::execution_space(), h, weight, targets);
  }
  template <class H, class Weight, class Targets, class DH, class DWeight,
            std::enable_if_t<Impl::is_view_v<H>, int> = 0>
  double loss_and_gradients(const H& h, const Weight& weight, const Targets& targets, const DH& dh,
                            const DWeight& dweight,
                            const LossGradientOptions& gradient_options = {}) {
    return loss_and_gradients(typename MemorySpace::execution_space(), h, weight, targets, dh,
                              dweight, gradient_options);
  }

  // Targets the last call averaged over (those not ignore_index).
  long counted_tokens() const { return counted_; }

  // Bytes of the buffers held now: the logits chunk, a loss per token, the partials.
  std::size_t workspace_bytes() const {
    return logits_.span() * sizeof(T) + (losses_.span() + partials_.span()) * sizeof(Acc) +
           firsts_.span() * sizeof(long) + (result_.data() ? result_.span() * sizeof(double) : 0);
  }
  // The buffers a loss_and_gradients call over `tokens` rows and `vocab` classes leaves
  // allocated (MemoryKind::loss_workspace), as run() sizes them: the logits of a chunk, a loss per
  // token, the partials, the token check's result.
  MemoryPlan plan_workspace(long tokens, long vocab) const {
    const long chunk = std::min(options_.chunk_tokens(), tokens);
    const auto kind = MemoryKind::loss_workspace;
    MemoryPlan plan;
    plan.add("dilated::FusedLinearCrossEntropy::logits", kind,
             decltype(logits_)::required_allocation_size(chunk * vocab));
    plan.add("dilated::FusedLinearCrossEntropy::losses", kind,
             decltype(losses_)::required_allocation_size(tokens));
    plan.add("dilated::FusedLinearCrossEntropy::partials", kind,
             decltype(partials_)::required_allocation_size(loss_parts));
    plan.add("dilated::FusedLinearCrossEntropy::firsts", kind,
             decltype(firsts_)::required_allocation_size(loss_parts));
    plan.add("dilated::FusedLinearCrossEntropy::result", kind, 2 * sizeof(double));
    plan.add("dilated::TokenIdCheck::result", kind, 2 * sizeof(long));
    return plan;
  }
  void release_workspace() {
    logits_ = {};
    losses_ = {};
    partials_ = {};
    firsts_ = {};
    result_ = {};
    host_result_ = {};
  }

 private:
  static constexpr long loss_parts = 1024;

  template <class ExecSpace, class Rows, class Matrix>
  static constexpr void check_types() {
    static_assert(Impl::is_execution_space_v<ExecSpace>,
                  "dilated::FusedLinearCrossEntropy: the first argument must be a Kokkos "
                  "execution space");
    static_assert(Impl::is_view_v<Rows> && Impl::is_view_v<Matrix>,
                  "dilated::FusedLinearCrossEntropy: h, weight and their gradients must be "
                  "Kokkos::Views");
    static_assert(Impl::view_rank_v<Matrix> == 2 &&
                      std::is_same_v<typename Matrix::array_layout, Kokkos::LayoutRight>,
                  "dilated::FusedLinearCrossEntropy: weight and dweight must be (vocab, E) "
                  "LayoutRight Views");
    static_assert(std::is_same_v<typename Rows::non_const_value_type, T> &&
                      std::is_same_v<typename Matrix::non_const_value_type, T>,
                  "dilated::FusedLinearCrossEntropy: h, weight and their gradients must hold T");
    static_assert(Impl::is_accessible_from_v<ExecSpace, Rows> &&
                      Impl::is_accessible_from_v<ExecSpace, Matrix>,
                  "dilated::FusedLinearCrossEntropy: the Views must be accessible from the "
                  "execution space");
  }

  template <bool Gradients, class ExecSpace, class HR, class Weight, class Targets, class DHR,
            class DWeight>
  double run(const char* fn, const ExecSpace& space, const HR& h, const Weight& weight,
             const Targets& targets, const DHR& dh, const DWeight& dweight,
             const LossGradientOptions& gradient_options) {
    const auto list = Impl::token_list(targets);
    const long tokens = static_cast<long>(h.extent(0)), vocab = static_cast<long>(weight.extent(0));
    Impl::require(h.extent(1) == weight.extent(1), fn, "h has E = ", h.extent(1),
                  " columns but weight has ", weight.extent(1));
    Impl::require(static_cast<long>(list.extent(0)) == tokens, fn, "targets has ", list.extent(0),
                  " positions but h has ", tokens, " tokens");
    Impl::require(vocab >= 1, fn, "weight has no row (vocab = 0)");
    const long ignore = options_.ignore_index();
    counted_ =
        check_.run(space, fn, "targets", list, Impl::sequence_length_of(targets), vocab, ignore);
    Impl::require(counted_ > 0, fn, "targets has no token to average over (", tokens,
                  " tokens, all equal to ignore_index = ", ignore, ")");

    const long chunk = std::min(options_.chunk_tokens(), tokens);
    Impl::ensure_capacity(logits_, "dilated::FusedLinearCrossEntropy::logits", chunk * vocab);
    Impl::ensure_capacity(losses_, "dilated::FusedLinearCrossEntropy::losses", tokens);
    if (!result_.data()) {  // result_ assigned last: a failed allocation leaves none made
      partials_ = Impl::allocate_view<decltype(partials_)>(
          "dilated::FusedLinearCrossEntropy::partials", true, loss_parts);
      firsts_ = Impl::allocate_view<decltype(firsts_)>("dilated::FusedLinearCrossEntropy::firsts",
                                                       true, loss_parts);
      auto result =
          Impl::allocate_view<decltype(result_)>("dilated::FusedLinearCrossEntropy::result", true);
      host_result_ = Kokkos::create_mirror_view(result);
      result_ = result;
    }
    const Impl::GemmOptions gemm_options{options_.use_tf32()};
    const double alpha = gradient_options.scale() / static_cast<double>(counted_);
    const bool accumulate = gradient_options.accumulate_weight_gradient();
    const auto losses = losses_;
    for (long t0 = 0; t0 < tokens; t0 += chunk) {
      const long rows = std::min(chunk, tokens - t0);
      const Impl::UnmanagedRows<T, MemorySpace> logits(logits_.data(), rows, vocab);
      const auto hc = Kokkos::subview(h, Kokkos::make_pair(t0, t0 + rows), Kokkos::ALL);
      Impl::gemm(space, Impl::Op::N, Impl::Op::T, 1.0, hc, weight, 0.0, logits, gemm_options);
      const auto rows_kernel = [&](auto width) {
        Impl::cross_entropy_rows<T, decltype(width)::value, Gradients, Acc>(space, logits, list, t0,
                                                                            ignore, losses);
      };
      if (Impl::rows_take_packs<T>(static_cast<int>(vocab), logits)) {
        rows_kernel(std::integral_constant<int, Impl::row_pack_width<T>()>());
      } else {
        rows_kernel(std::integral_constant<int, 1>());
      }
      if constexpr (Gradients) {
        const auto dhc = Kokkos::subview(dh, Kokkos::make_pair(t0, t0 + rows), Kokkos::ALL);
        Impl::gemm(space, Impl::Op::N, Impl::Op::N, alpha, logits, weight, 0.0, dhc, gemm_options);
        Impl::gemm(space, Impl::Op::T, Impl::Op::N, alpha, logits, hc,
                   t0 == 0 && !accumulate ? 0.0 : 1.0, dweight, gemm_options);
      }
    }
    Impl::sum_losses<ExecSpace>(space, losses, tokens, partials_, firsts_, result_);
    Kokkos::deep_copy(space, host_result_, result_);
    Impl::fence(space, "dilated::FusedLinearCrossEntropy: the loss on the host");
    const double loss = host_result_(0) / static_cast<double>(counted_);
    const long first = static_cast<long>(host_result_(1));
    if (first < tokens || !std::isfinite(loss)) {
      std::ostringstream msg;
      msg << fn << ": the loss is " << loss;
      if (first < tokens) {
        const long n = Impl::sequence_length_of(targets);
        msg << " (first at token " << first << " = (" << first / n << ", " << first % n << "))";
      }
      msg << ": h or weight hold inf or NaN, or the logits overflow the storage type"
          << (Gradients ? "; dh and dweight hold no usable gradient" : "");
      throw NonFiniteLoss(msg.str(), loss, first < tokens ? first : -1);
    }
    return loss;
  }

  CrossEntropyOptions options_;
  long counted_ = 0;
  Impl::TokenIdCheck<MemorySpace> check_;
  Kokkos::View<T*, MemorySpace> logits_;    // a chunk's (rows, vocab) logits, then dlogits
  Kokkos::View<Acc*, MemorySpace> losses_;  // one per token
  Kokkos::View<Acc*, MemorySpace> partials_;
  Kokkos::View<long*, MemorySpace> firsts_;
  Kokkos::View<double[2], MemorySpace> result_;
  Impl::host_mirror_t<Kokkos::View<double[2], MemorySpace>> host_result_;
};

}  // namespace dilated

#endif  // DILATED_CROSS_ENTROPY_HPP
