// The host BLAS behind the Original's host path (Dilated_OriginalHostGemmPath.hpp): column-major
// sgemm / dgemm on pointers with leading dimensions through Kokkos Kernels' wrapper of the BLAS it
// was built with (KokkosBlas::Impl::HostBlas; OpenBLAS on Debian). Not KokkosBlas::gemm: a
// dilated segment's kept rows are a matrix whose row stride is r * stride(1), which a Kokkos
// View holds only as LayoutStride, and KokkosBlas::gemm multiplies LayoutStride Views with its
// own kernel, not the BLAS (only LayoutLeft / LayoutRight reach the TPL). The raw wrapper reads
// the rows in place, as cuBLAS does on CUDA (Dilated_OriginalGemmPath.hpp).
//
// OpenBLAS' own controls are reached through weak symbols, so that any other BLAS links too
// (then they are null and nothing is changed): its thread count (the host path calls the BLAS
// single-threaded from each Kokkos thread: SingleThreadedBlas) and the kernel it chose for this
// CPU (blas_info(), which `dilated-attention info` and the benchmarks print: OpenBLAS built with
// DYNAMIC_ARCH picks its kernels at load time and can misdetect a CPU, e.g. a virtual machine's;
// OPENBLAS_CORETYPE overrides it, docs/performance.md).
#ifndef DILATED_IMPL_HOST_BLAS_HPP
#define DILATED_IMPL_HOST_BLAS_HPP

#include <Dilated_Config.hpp>

#if DILATED_HAVE_KOKKOSKERNELS
#include <KokkosKernels_config.h>
#if defined(KOKKOSKERNELS_ENABLE_TPL_BLAS)
#include <KokkosBlas_Host_tpl.hpp>
#define DILATED_HAVE_HOST_BLAS 1
#endif
#endif
#if !defined(DILATED_HAVE_HOST_BLAS)
#define DILATED_HAVE_HOST_BLAS 0
#endif

#include <initializer_list>
#include <string>
#include <type_traits>

// OpenBLAS' extensions (cblas.h declares them the same way), weak: null without OpenBLAS.
extern "C" {
int openblas_get_num_threads(void) __attribute__((weak));
void openblas_set_num_threads(int) __attribute__((weak));
char* openblas_get_corename(void) __attribute__((weak));
char* openblas_get_config(void) __attribute__((weak));
}

namespace dilated::Impl {

// Whether the host BLAS multiplies storage type T (float and double, when Kokkos Kernels has a
// BLAS).
template <class T>
inline constexpr bool host_blas_type_v = DILATED_HAVE_HOST_BLAS &&
                                         (std::is_same_v<T, float> || std::is_same_v<T, double>);

// C (m x n) = alpha op(A) op(B) + beta C, column-major, as BLAS' xGEMM: op 'N' or 'T'.
template <class T>
void host_gemm(char op_a, char op_b, int m, int n, int k, T alpha, const T* a, long lda, const T* b,
               long ldb, T beta, T* c, long ldc) {
#if DILATED_HAVE_HOST_BLAS
  KokkosBlas::Impl::HostBlas<T>::gemm(op_a, op_b, m, n, k, alpha, a, static_cast<int>(lda), b,
                                      static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
#else
  (void)op_a, (void)op_b, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda, (void)b;
  (void)ldb, (void)beta, (void)c, (void)ldc;
#endif
}

// One BLAS thread for the scope, the previous count restored after it. The host path calls the
// BLAS from inside its Kokkos parallel loop, one call per thread at a time: a pthread OpenBLAS
// would otherwise start its own pool beside the OpenMP threads on the same cores (and a bound
// first OpenMP thread confines that pool to one core). A no-op without OpenBLAS.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    if (openblas_get_num_threads && openblas_set_num_threads) {
      previous_ = openblas_get_num_threads();
      if (previous_ != 1) openblas_set_num_threads(1);
    }
  }
  ~SingleThreadedBlas() {
    if (previous_ > 1) openblas_set_num_threads(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_ = 0;
};

// What the host BLAS is: "OpenBLAS" (from its config string) with the kernel core it chose at
// load time and its thread count, or that it is not OpenBLAS / not built in.
struct BlasInfo {
  bool built_in = DILATED_HAVE_HOST_BLAS;
  bool openblas = false;
  std::string config;  // openblas_get_config(): version and build options
  std::string core;    // openblas_get_corename(): the kernels in use, e.g. "SkylakeX"
  int threads = 0;
};
inline BlasInfo blas_info() {
  BlasInfo info;
  if (openblas_get_corename && openblas_get_config && openblas_get_num_threads) {
    info.openblas = true;
    info.config = openblas_get_config();
    info.core = openblas_get_corename();
    info.threads = openblas_get_num_threads();
  }
  return info;
}

// What to set when OpenBLAS' core does not use the vector units this CPU has (a DYNAMIC_ARCH
// OpenBLAS that misdetects a virtual CPU falls back to e.g. "Prescott", SSE3 kernels at a fifth
// of the AVX-512 rate): "OPENBLAS_CORETYPE=SkylakeX" (AVX-512) or "...=Haswell" (AVX2); empty
// when the core fits, or where this cannot be asked (not x86-64, not GCC/Clang).
inline std::string openblas_coretype_advice(const std::string& core) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  const auto one_of = [&](std::initializer_list<const char*> names) {
    for (const char* name : names)
      if (core == name) return true;
    return false;
  };
  const bool avx512_core = one_of({"SkylakeX", "Cooperlake", "SapphireRapids"});
  if (__builtin_cpu_supports("avx512f") && !avx512_core) return "OPENBLAS_CORETYPE=SkylakeX";
  if (__builtin_cpu_supports("avx2") && !avx512_core &&
      !one_of({"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"}))
    return "OPENBLAS_CORETYPE=Haswell";
#else
  (void)core;
#endif
  return {};
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_HOST_BLAS_HPP
