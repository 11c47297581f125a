// Row-major C = op(A) op(B) + bias on a Kokkos::Cuda instance's stream through cuBLASLt, the
// bias added in the product's epilogue (CUBLASLT_EPILOGUE_BIAS): C is written once, instead of
// a broadcast pass writing it and the product reading it back (on the H200 the broadcast alone
// took twice the time of the E -> 3E projection it fed). Two more epilogues serve a GELU
// feed-forward (tanh GELU, the form cuBLASLt computes): GELU_AUX_BIAS writes gelu(op(A) op(B) +
// bias) to C and the pre-activation to an auxiliary matrix, DGELU writes op(A) op(B) times gelu'
// of the auxiliary matrix, so neither the activation nor its derivative needs a pass of its own.
// Only built with the CUDA backend.
//
// A plan (descriptors and the heuristic's algorithm) is made once per shape, storage type,
// alignment and stream and kept for the process; cuBLASLt gets a 32 MiB workspace per stream
// (cuBLAS's own advice for Hopper), a Kokkos View released at Kokkos::finalize. Returns false,
// enqueuing nothing, where cuBLASLt offers no algorithm (the caller then takes the plain
// product); throws std::runtime_error naming the call where cuBLASLt fails.
#ifndef DILATED_IMPL_CUBLASLT_GEMM_HPP
#define DILATED_IMPL_CUBLASLT_GEMM_HPP

#include <Dilated_DeviceMemory.hpp>
#include <impl/Dilated_CublasGemm.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>

namespace dilated::Impl {

// The largest power of two (up to 256) that divides the address: cuBLASLt's heuristic assumes
// 256-byte aligned operands unless told otherwise, and an algorithm chosen for more alignment
// than the pointers have fails at run time.
inline std::uint32_t pointer_alignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0)
    alignment /= 2;
  return alignment;
}

class CublasLtPlans {
 public:
  // The workspace each stream's products share (a Kokkos View of this plus 256 bytes).
  static constexpr std::size_t workspace_bytes = std::size_t(32) << 20;

  // What the epilogue adds to the product (see the file's head).
  enum class Epilogue { bias, gelu_aux_bias, dgelu };

  struct Key {
    cudaStream_t stream;
    int epilogue;
    int op_a, op_b;
    long m, n, k, lda, ldb, ldc, ld_aux;
    int type;
    int compute;
    std::uint32_t align_a, align_b, align_c, align_bias, align_aux;
    auto tie() const {
      return std::tie(stream, epilogue, op_a, op_b, m, n, k, lda, ldb, ldc, ld_aux, type, compute,
                      align_a, align_b, align_c, align_bias, align_aux);
    }
    bool operator<(const Key& other) const { return tie() < other.tie(); }
  };

  static CublasLtPlans& instance() {
    static CublasLtPlans* plans = [] {
      auto* p = new CublasLtPlans();
      Kokkos::push_finalize_hook([p] { delete p; });
      return p;
    }();
    return *plans;
  }

  // Enqueues row-major C (m x n) = op(A) op(B) + bias (+ residual, an m x n matrix with C's
  // leading dimension, when not null: beta = 1 on it, a residual connection in the same
  // epilogue) on `stream`; false when cuBLASLt has no algorithm for it (nothing enqueued).
  template <class T>
  bool matmul_bias(cudaStream_t stream, bool ta, bool tb, long m, long n, long k, const T* a,
                   long lda, const T* b, long ldb, T* c, long ldc, const T* bias,
                   cublasComputeType_t compute, const T* residual = nullptr) {
    return matmul<T>(stream, Epilogue::bias, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, bias, nullptr,
                     0, compute, residual);
  }

  // gelu_aux_bias: C = gelu(op(A) op(B) + bias), aux = op(A) op(B) + bias (m x n, leading
  // dimension ld_aux). dgelu: C = (op(A) op(B)) * gelu'(aux); bias unused (null). False, with
  // nothing enqueued, where cuBLASLt has no algorithm or the auxiliary matrix breaks its rules
  // (leading dimension a multiple of 8 elements, 16-byte aligned).
  template <class T>
  bool matmul(cudaStream_t stream, Epilogue epilogue, bool ta, bool tb, long m, long n, long k,
              const T* a, long lda, const T* b, long ldb, T* c, long ldc, const T* bias,
              const T* aux, long ld_aux, cublasComputeType_t compute, const T* residual = nullptr) {
    using Compute = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const bool uses_aux = epilogue != Epilogue::bias;
    if (uses_aux && (aux == nullptr || ld_aux % 8 != 0 || ld_aux < n)) return false;
    const Key key{stream,
                  static_cast<int>(epilogue),
                  ta,
                  tb,
                  m,
                  n,
                  k,
                  lda,
                  ldb,
                  ldc,
                  uses_aux ? ld_aux : 0,
                  static_cast<int>(cuda_data_type<T>()),
                  static_cast<int>(compute),
                  pointer_alignment(a),
                  pointer_alignment(b),
                  std::min(pointer_alignment(c), pointer_alignment(residual ? residual : c)),
                  bias ? pointer_alignment(bias) : 256,
                  uses_aux ? pointer_alignment(aux) : 256};
    const std::lock_guard<std::mutex> lock(mutex_);
    const FloatingPointShield shield;
    Plan& plan = plan_for<Compute>(key);
    if (!plan.usable) return false;
    // The descriptor is shared by every call of this shape: the bias and auxiliary pointers are
    // set under the lock, and cublasLtMatmul reads them while enqueuing.
    if (epilogue != Epilogue::dgelu)
      cublas_check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                  &bias, sizeof(bias)),
                   "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
    if (uses_aux)
      cublas_check(cublasLtMatmulDescSetAttribute(
                       plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)),
                   "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_POINTER)");
    const Compute one = 1, zero = 0;
    void* ws = workspace(stream);
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: B goes first.
    cublas_check(cublasLtMatmul(handle_, plan.desc, &one, b, plan.layout_b, a, plan.layout_a,
                                residual ? &one : &zero, residual ? residual : c, plan.layout_c, c,
                                plan.layout_c, &plan.algo, ws, workspace_bytes, stream),
                 "cublasLtMatmul");
    return true;
  }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool usable = false;
  };
  struct Workspace {
    Kokkos::View<unsigned char*, Kokkos::CudaSpace> view;
  };

  CublasLtPlans() { cublas_check(cublasLtCreate(&handle_), "cublasLtCreate"); }
  ~CublasLtPlans() {
    for (auto& [key, plan] : plans_) {
      if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
      for (auto layout : {plan.layout_a, plan.layout_b, plan.layout_c})
        if (layout) cublasLtMatrixLayoutDestroy(layout);
    }
    workspaces_.clear();  // before Kokkos finalizes its memory spaces
    cublasLtDestroy(handle_);
  }

  // cuBLASLt wants its workspace 256-byte aligned (else cublasLtMatmul returns
  // CUBLAS_STATUS_INVALID_VALUE), and a Kokkos View's data follows a 128-byte header: allocate
  // 256 bytes more and align up.
  void* workspace(cudaStream_t stream) {
    auto it = workspaces_.find(stream);
    if (it == workspaces_.end()) {
      Workspace ws{allocate_view<Kokkos::View<unsigned char*, Kokkos::CudaSpace>>(
          "dilated::cublasLt::workspace", false, workspace_bytes + 256)};
      it = workspaces_.emplace(stream, std::move(ws)).first;
    }
    const auto address = reinterpret_cast<std::uintptr_t>(it->second.view.data());
    return reinterpret_cast<void*>((address + 255) / 256 * 256);
  }

  template <class Compute>
  Plan& plan_for(const Key& key) {
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan plan;
    const auto type = static_cast<cudaDataType>(key.type);
    const cudaDataType scale = std::is_same_v<Compute, double> ? CUDA_R_64F : CUDA_R_32F;
    cublas_check(
        cublasLtMatmulDescCreate(&plan.desc, static_cast<cublasComputeType_t>(key.compute), scale),
        "cublasLtMatmulDescCreate");
    const cublasOperation_t first = key.op_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t second = key.op_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublas_check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &first,
                                                sizeof(first)),
                 "cublasLtMatmulDescSetAttribute(TRANSA)");
    cublas_check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &second,
                                                sizeof(second)),
                 "cublasLtMatmulDescSetAttribute(TRANSB)");
    const auto epilogue_kind = static_cast<Epilogue>(key.epilogue);
    const cublasLtEpilogue_t epilogue = epilogue_kind == Epilogue::bias ? CUBLASLT_EPILOGUE_BIAS
                                        : epilogue_kind == Epilogue::gelu_aux_bias
                                            ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                            : CUBLASLT_EPILOGUE_DGELU;
    cublas_check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                sizeof(epilogue)),
                 "cublasLtMatmulDescSetAttribute(EPILOGUE)");
    if (epilogue_kind != Epilogue::dgelu)
      cublas_check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                  &type, sizeof(type)),
                   "cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)");
    if (epilogue_kind != Epilogue::bias) {
      // The auxiliary matrix has C's column-major shape (n x m) and its own leading dimension,
      // in C's storage type.
      const std::int64_t ld_aux = key.ld_aux;
      cublas_check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                  &ld_aux, sizeof(ld_aux)),
                   "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_LD)");
      const std::int32_t aux_type = key.type;
      cublas_check(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE,
                                         &aux_type, sizeof(aux_type)),
          "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_DATA_TYPE)");
    }
    // Column-major layouts of the row-major operands: X (r x c, leading dimension ld) is the
    // column-major c x r matrix with the same leading dimension.
    const auto layout = [&](cublasLtMatrixLayout_t* out, long rows, long cols, long ld) {
      cublas_check(cublasLtMatrixLayoutCreate(out, type, cols, rows, ld),
                   "cublasLtMatrixLayoutCreate");
    };
    // B as stored: (k x n) for op N, (n x k) for op T; likewise A.
    layout(&plan.layout_b, key.op_b ? key.n : key.k, key.op_b ? key.k : key.n, key.ldb);
    layout(&plan.layout_a, key.op_a ? key.k : key.m, key.op_a ? key.m : key.k, key.lda);
    layout(&plan.layout_c, key.m, key.n, key.ldc);

    cublasLtMatmulPreference_t preference;
    cublas_check(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
    const std::size_t bytes = workspace_bytes;
    cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                         &bytes, sizeof(bytes));
    // cuBLASLt's A is our B and its B our A (the swap above).
    const std::pair<cublasLtMatmulPreferenceAttributes_t, std::uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c}};
    for (const auto& [attribute, value] : alignments)
      cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle_, plan.desc, plan.layout_b, plan.layout_a, plan.layout_c, plan.layout_c, preference,
        1, &result, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    // No algorithm, or a bias or auxiliary matrix less than 16-byte aligned (other users of these
    // epilogues, e.g. Marian NMT, require 16 bytes after alignment errors): remembered, so that
    // the plain product is taken without asking again.
    plan.usable =
        status == CUBLAS_STATUS_SUCCESS && found > 0 && key.align_bias >= 16 && key.align_aux >= 16;
    if (plan.usable) plan.algo = result.algo;
    return plans_.emplace(key, plan).first->second;
  }

  cublasLtHandle_t handle_ = nullptr;
  std::mutex mutex_;
  std::map<Key, Plan> plans_;
  std::map<cudaStream_t, Workspace> workspaces_;
};

}  // namespace dilated::Impl

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_CUBLASLT_GEMM_HPP
