// The options of DilatedAttention: what is fixed at construction (AttentionOptions, a value type
// with chainable setters) and what changes per call (ForwardOptions).
#ifndef DILATED_OPTIONS_HPP
#define DILATED_OPTIONS_HPP

#include <Dilated_Semantics.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>

namespace dilated {

class AttentionOptions {
 public:
  AttentionOptions& set_semantics(Semantics s) {
    semantics_ = s;
    return *this;
  }
  // Multiplies q.k; unset means 1/sqrt(head_dim).
  AttentionOptions& set_softmax_scale(double scale) {
    softmax_scale_ = scale;
    return *this;
  }
  // Probability of dropping an attention probability while training, in [0, 1).
  AttentionOptions& set_attention_dropout(double p) {
    dropout_ = p;
    return *this;
  }
  // longnet only: stop gradients through the branch weights softmax_i(lse_i), as torchscale
  // does (its lse comes out of the flash kernel detached). Default: gradients flow.
  AttentionOptions& set_detach_branch_weights(bool detach) {
    detach_ = detach;
    return *this;
  }
  // Upper bound on the score-matrix workspace of one launch of the Original algorithm; work
  // beyond it is processed in chunks. At least one segment's matrix is always allocated.
  AttentionOptions& set_workspace_bytes(std::size_t bytes) {
    workspace_bytes_ = bytes;
    return *this;
  }

  // Original: run the matrix products of each segment through the vendor's GEMM instead of
  // inside the team kernel: on CUDA cuBLAS strided-batched GEMMs (tensor cores for half/bf16),
  // on the host (Serial, OpenMP) the BLAS Kokkos Kernels was built with, for float and double
  // (impl/Dilated_OriginalHostGemmPath.hpp). Needs views with contiguous head_dim
  // (stride(3) == 1); otherwise, and for half/bf16 on the host, the team kernel runs.
  AttentionOptions& set_vendor_gemm(bool use) {
    vendor_gemm_ = use;
    return *this;
  }

  // Original on CUDA with half/bf16 storage, head_dim 64 or 128 and 16-byte aligned rows: the
  // forward as one tensor-core team kernel per launch (each segment's scores stored in a
  // workspace of at most workspace_bytes, then softmax and P V; the default). Off, or where it
  // does not apply, the products go through cuBLAS (vendor_gemm) or the team kernel.
  AttentionOptions& set_original_tensor_cores(bool use) {
    original_tensor_cores_ = use;
    return *this;
  }

  // Check q, k, v (and dout in the backward) before any work: the first NaN or infinity throws
  // dilated::NonFiniteInput naming the argument, its (b, n, h, d) and the value. Costs one read
  // of each input (a reduction per input) and a wait for it. Off (the default), non-finite
  // values propagate as in the reference (docs/api.md says which rows become NaN).
  AttentionOptions& set_check_finite(bool check) {
    check_finite_ = check;
    return *this;
  }

  Semantics semantics() const { return semantics_; }
  bool check_finite() const { return check_finite_; }
  bool vendor_gemm() const { return vendor_gemm_; }
  bool original_tensor_cores() const { return original_tensor_cores_; }
  std::optional<double> softmax_scale() const { return softmax_scale_; }
  double attention_dropout() const { return dropout_; }
  bool detach_branch_weights() const { return detach_; }
  std::size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  Semantics semantics_ = Semantics::grouped;  // the seed's peers: a drop-in default
  std::optional<double> softmax_scale_;
  double dropout_ = 0.0;
  bool detach_ = false;
  std::size_t workspace_bytes_ = std::size_t{512} << 20;
  bool vendor_gemm_ = true;
  bool original_tensor_cores_ = true;
  bool check_finite_ = false;
};

struct ForwardOptions {
  bool is_causal = false;
  bool training = false;   // dropout is applied only when training
  std::uint64_t seed = 0;  // dropout seed: same seed, same mask, on every backend
};

}  // namespace dilated

#endif  // DILATED_OPTIONS_HPP
