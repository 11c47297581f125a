// Strided-batched GEMM on a Kokkos::Cuda instance's stream through cuBLAS (tensor cores for
// half and bf16, fp32 compute; fp64 for double). Column-major, as cuBLAS: C = alpha op(A)
// op(B) + beta C, batch matrices `stride` elements apart. Only built with the CUDA backend.
#ifndef DILATED_IMPL_CUBLAS_GEMM_HPP
#define DILATED_IMPL_CUBLAS_GEMM_HPP

#include <Dilated_Compat.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cublas_v2.h>

#include <cfenv>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace dilated::Impl {

template <class T>
constexpr cudaDataType cuda_data_type() {
  if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
#if !DILATED_HALF_IS_FLOAT
  if constexpr (std::is_same_v<T, Kokkos::Experimental::half_t>) return CUDA_R_16F;
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
  if constexpr (std::is_same_v<T, Kokkos::Experimental::bhalf_t>) return CUDA_R_16BF;
#endif
}

inline void cublas_check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("dilated: cuBLAS ") + what + " failed with status " +
                             std::to_string(static_cast<int>(status)));
  }
}

// cuBLAS's host code can raise floating-point exception flags internally (seen on the H100:
// a SIGFPE in the first half-precision call of a program that traps FE_INVALID). Run it in
// non-stop mode and give the caller back its environment, traps and flags as they were.
class FloatingPointShield {
 public:
  FloatingPointShield() { feholdexcept(&saved_); }
  ~FloatingPointShield() { fesetenv(&saved_); }
  FloatingPointShield(const FloatingPointShield&) = delete;
  FloatingPointShield& operator=(const FloatingPointShield&) = delete;

 private:
  std::fenv_t saved_;
};

// One cuBLAS handle for the process, created on first use and destroyed at Kokkos::finalize.
inline cublasHandle_t cublas_handle() {
  static cublasHandle_t handle = [] {
    const FloatingPointShield shield;
    cublasHandle_t h;
    cublas_check(cublasCreate(&h), "cublasCreate");
    Kokkos::push_finalize_hook([h] { cublasDestroy(h); });
    return h;
  }();
  return handle;
}

// A, B of storage type T; C of type TC (T, or float accumulators for half/bf16).
template <class T, class TC>
void gemm_strided_batched(const Kokkos::Cuda& space, bool transpose_a, bool transpose_b, int m,
                          int n, int k, double alpha, const T* a, long lda, long stride_a,
                          const T* b, long ldb, long stride_b, double beta, TC* c, long ldc,
                          long stride_c, int batch) {
  using Compute = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const Compute alpha_c = static_cast<Compute>(alpha), beta_c = static_cast<Compute>(beta);
  const cublasComputeType_t compute =
      std::is_same_v<T, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  const FloatingPointShield shield;
  cublasHandle_t handle = cublas_handle();
  cublas_check(cublasSetStream(handle, space.cuda_stream()), "cublasSetStream");
  cublas_check(
      cublasGemmStridedBatchedEx(
          handle, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
          m, n, k, &alpha_c, a, cuda_data_type<T>(), static_cast<int>(lda), stride_a, b,
          cuda_data_type<T>(), static_cast<int>(ldb), stride_b, &beta_c, c, cuda_data_type<TC>(),
          static_cast<int>(ldc), stride_c, batch, compute, CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
}

}  // namespace dilated::Impl

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_CUBLAS_GEMM_HPP
