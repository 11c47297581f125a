// The one matrix product the layers use: C = alpha op(A) op(B) + beta C on row-major (LayoutRight)
// rank-2 Views, on an execution space instance. Three implementations behind it:
//   - KokkosBlas::gemm for float and double when Kokkos Kernels is linked
//     (DILATED_HAVE_KOKKOSKERNELS) and the rows of A, B and C are dense (row stride == columns):
//     on the host it calls the BLAS Kokkos Kernels was built with (OpenBLAS), on Kokkos::Cuda its
//     cuBLAS TPL (cublasSgemm / cublasDgemm; only when Kokkos Kernels has that TPL and its gemm
//     takes the instance, >= 4.1), so both builds multiply through the design's numerics library;
//   - cuBLAS (cublasGemmEx) on Kokkos::Cuda where Kokkos Kernels does not serve: half and bf16
//     (its gemm has no cuBLAS path for them and its own kernel accumulates in the storage type,
//     not fp32), float with GemmOptions::use_tf32 (its gemm has no TF32 setting), rows that are
//     not dense (its one-column shortcut reads B and C as contiguous), and builds without it;
//     fp32 compute for float, half and bf16, fp64 for double; on the instance's stream;
//   - a Kokkos team kernel (32 x 32 tiles of C through team scratch, accumulation in float, or
//     double for double) everywhere else. gemm_team_kernel() calls it directly (tests).
// gemm_implementation() names the choice for dense rows without TF32 (the layers' usual call).
// With beta == 0, C is not read (it may hold anything, NaN included).
#ifndef DILATED_GEMM_HPP
#define DILATED_GEMM_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Config.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_IndexRange.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <impl/Dilated_CublasGemm.hpp>
#include <impl/Dilated_CublasLtGemm.hpp>
#endif
#if DILATED_HAVE_KOKKOSKERNELS
#include <KokkosBlas3_gemm.hpp>
#include <KokkosKernels_config.h>
#endif

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <type_traits>

namespace dilated::Impl {

enum class Op { N, T };  // op(X) = X or its transpose

struct GemmOptions {
  // float on CUDA: let cuBLAS use TF32 tensor cores (about 1e-3 relative error, PyTorch's
  // allow_tf32). Ignored elsewhere.
  bool use_tf32 = false;
};

#if defined(KOKKOS_ENABLE_CUDA)
template <class ExecSpace>
inline constexpr bool is_cuda_v = std::is_same_v<ExecSpace, Kokkos::Cuda>;
#else
template <class ExecSpace>
inline constexpr bool is_cuda_v = false;
#endif

// KokkosBlas::gemm takes the caller's execution space instance from Kokkos Kernels 4.1 on
// (KOKKOSKERNELS_VERSION exists from 3.7); 3.4.01, the host build's, takes none.
#if DILATED_HAVE_KOKKOSKERNELS && defined(KOKKOSKERNELS_VERSION)
#if KOKKOSKERNELS_VERSION >= 40100
#define DILATED_KOKKOSBLAS_GEMM_ON_INSTANCE 1
#endif
#endif
#if !defined(DILATED_KOKKOSBLAS_GEMM_ON_INSTANCE)
#define DILATED_KOKKOSBLAS_GEMM_ON_INSTANCE 0
#endif
// On Kokkos::Cuda the product goes to Kokkos Kernels only where it reaches cuBLAS (its TPL) on the
// caller's stream: without the TPL its own kernel would run, without the instance it would need
// a device-wide fence on either side.
#if defined(KOKKOS_ENABLE_CUDA) && DILATED_HAVE_KOKKOSKERNELS && \
    defined(KOKKOSKERNELS_ENABLE_TPL_CUBLAS) && DILATED_KOKKOSBLAS_GEMM_ON_INSTANCE
#define DILATED_KOKKOSBLAS_ON_CUDA 1
#else
#define DILATED_KOKKOSBLAS_ON_CUDA 0
#endif

enum class GemmImplementation { kokkos_blas, cublas, team_kernel };

// Which implementation gemm() runs for (ExecSpace, T) on dense rows without TF32 (the file
// comment says where it deviates).
template <class ExecSpace, class T>
constexpr GemmImplementation gemm_implementation() {
  constexpr bool blas_type = std::is_same_v<T, float> || std::is_same_v<T, double>;
  if constexpr (is_cuda_v<ExecSpace>) {
    return blas_type && DILATED_KOKKOSBLAS_ON_CUDA ? GemmImplementation::kokkos_blas
                                                   : GemmImplementation::cublas;
  } else {
    return blas_type && DILATED_HAVE_KOKKOSKERNELS ? GemmImplementation::kokkos_blas
                                                   : GemmImplementation::team_kernel;
  }
}

// Its name: "KokkosBlas", "cuBLAS" or "team kernel".
template <class ExecSpace, class T>
constexpr const char* gemm_backend() {
  switch (gemm_implementation<ExecSpace, T>()) {
    case GemmImplementation::kokkos_blas:
      return "KokkosBlas";
    case GemmImplementation::cublas:
      return "cuBLAS";
    default:
      return "team kernel";
  }
}

template <class T>
using gemm_accumulation_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// The team kernel: a team per 32 x 32 tile of C, K in steps of 32 through scratch.
template <class ExecSpace, class AV, class BV, class CV>
struct GemmTeamKernel {
  static constexpr int tile = 32;
  using T = typename CV::non_const_value_type;
  using Acc = gemm_accumulation_t<T>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  using Scratch = Kokkos::View<Acc**, Kokkos::LayoutRight, typename ExecSpace::scratch_memory_space,
                               Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  AV a;
  BV b;
  CV c;
  bool ta, tb;
  Acc alpha, beta;
  int m, n, k, tiles_n;

  static std::size_t scratch_bytes() { return 3 * Scratch::shmem_size(tile, tile); }

  KOKKOS_FUNCTION Acc op_a(int i, int kk) const {
    return static_cast<Acc>(ta ? a(kk, i) : a(i, kk));
  }
  KOKKOS_FUNCTION Acc op_b(int kk, int j) const {
    return static_cast<Acc>(tb ? b(j, kk) : b(kk, j));
  }

  KOKKOS_FUNCTION void operator()(const Member& member) const {
    const int i0 = (member.league_rank() / tiles_n) * tile;
    const int j0 = (member.league_rank() % tiles_n) * tile;
    Scratch sa(member.team_scratch(0), tile, tile), sb(member.team_scratch(0), tile, tile),
        sc(member.team_scratch(0), tile, tile);
    Kokkos::parallel_for(Kokkos::TeamThreadRange(member, tile * tile),
                         [&](int e) { sc(e / tile, e % tile) = Acc(0); });
    for (int k0 = 0; k0 < k; k0 += tile) {
      member.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, tile * tile), [&](int e) {
        const int r = e / tile, s = e % tile;
        sa(r, s) = (i0 + r < m && k0 + s < k) ? op_a(i0 + r, k0 + s) : Acc(0);
        sb(r, s) = (k0 + r < k && j0 + s < n) ? op_b(k0 + r, j0 + s) : Acc(0);
      });
      member.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, tile * tile), [&](int e) {
        const int r = e / tile, s = e % tile;
        Acc sum = 0;
        for (int kk = 0; kk < tile; ++kk)
          sum += sa(r, kk) * sb(kk, s);
        sc(r, s) += sum;
      });
    }
    member.team_barrier();
    Kokkos::parallel_for(Kokkos::TeamThreadRange(member, tile * tile), [&](int e) {
      const int r = e / tile, s = e % tile;
      if (i0 + r >= m || j0 + s >= n) return;
      Acc result = alpha * sc(r, s);
      if (beta != Acc(0)) result += beta * static_cast<Acc>(c(i0 + r, j0 + s));
      c(i0 + r, j0 + s) = static_cast<T>(result);
    });
  }
};

template <class CV>
struct GemmScaleC {
  using T = typename CV::non_const_value_type;
  CV c;
  gemm_accumulation_t<T> beta;
  KOKKOS_FUNCTION void operator()(long e) const {
    const long i = e / c.extent(1), j = e % c.extent(1);
    c(i, j) =
        beta == 0 ? T(0) : static_cast<T>(beta * static_cast<gemm_accumulation_t<T>>(c(i, j)));
  }
};

template <class ExecSpace, class AV, class BV, class CV>
constexpr void check_gemm_views() {
  static_assert(is_execution_space_v<ExecSpace>,
                "dilated::Impl::gemm: the first argument must be a Kokkos execution space");
  static_assert(is_view_v<AV> && is_view_v<BV> && is_view_v<CV>,
                "dilated::Impl::gemm: A, B and C must be Kokkos::Views");
  static_assert(view_rank_v<AV> == 2 && view_rank_v<BV> == 2 && view_rank_v<CV> == 2,
                "dilated::Impl::gemm: A, B and C must have rank 2");
  static_assert(std::is_same_v<typename AV::array_layout, Kokkos::LayoutRight> &&
                    std::is_same_v<typename BV::array_layout, Kokkos::LayoutRight> &&
                    std::is_same_v<typename CV::array_layout, Kokkos::LayoutRight>,
                "dilated::Impl::gemm: A, B and C must be LayoutRight (row-major)");
  static_assert(std::is_same_v<typename AV::non_const_value_type, typename CV::value_type> &&
                    std::is_same_v<typename BV::non_const_value_type, typename CV::value_type>,
                "dilated::Impl::gemm: A, B and C must share one non-const storage type (C)");
  static_assert(is_accessible_from_v<ExecSpace, AV> && is_accessible_from_v<ExecSpace, BV> &&
                    is_accessible_from_v<ExecSpace, CV>,
                "dilated::Impl::gemm: A, B and C must be accessible from the execution space");
}

// Checks the extents of op(A) (m x k), op(B) (k x n) and C (m x n); returns k.
template <class AV, class BV, class CV>
int gemm_inner_extent(const char* fn, Op op_a, const AV& a, Op op_b, const BV& b, const CV& c) {
  const std::size_t am = op_a == Op::N ? a.extent(0) : a.extent(1);
  const std::size_t ak = op_a == Op::N ? a.extent(1) : a.extent(0);
  const std::size_t bk = op_b == Op::N ? b.extent(0) : b.extent(1);
  const std::size_t bn = op_b == Op::N ? b.extent(1) : b.extent(0);
  require(am == c.extent(0), fn, "op(A) has ", am, " rows but C has ", c.extent(0));
  require(bn == c.extent(1), fn, "op(B) has ", bn, " columns but C has ", c.extent(1));
  require(ak == bk, fn, "op(A) has ", ak, " columns but op(B) has ", bk, " rows");
  return static_cast<int>(ak);
}

// The team kernel on any backend (what gemm() runs where neither cuBLAS nor Kokkos Kernels is).
template <class ExecSpace, class AV, class BV, class CV>
void gemm_team_kernel(const ExecSpace& space, Op op_a, Op op_b, double alpha, const AV& a,
                      const BV& b, double beta, const CV& c) {
  constexpr const char* fn = "dilated::Impl::gemm_team_kernel";
  check_gemm_views<ExecSpace, AV, BV, CV>();
  const int k = gemm_inner_extent(fn, op_a, a, op_b, b, c);
  const int m = c.extent(0), n = c.extent(1);
  if (m == 0 || n == 0) return;
  using T = typename CV::non_const_value_type;
  using Acc = gemm_accumulation_t<T>;
  if (k == 0) {
    // A 64-bit index: C may be an (n, 4E) activation, past 2^32 elements.
    Kokkos::parallel_for("dilated::gemm::scale_c", index_range(space, 0, c.size()),
                         GemmScaleC<CV>{c, static_cast<Acc>(beta)});
    return;
  }
  using Kernel = GemmTeamKernel<ExecSpace, AV, BV, CV>;
  const int tiles_m = (m + Kernel::tile - 1) / Kernel::tile;
  const int tiles_n = (n + Kernel::tile - 1) / Kernel::tile;
  const Kernel kernel{
      a, b, c, op_a == Op::T, op_b == Op::T, static_cast<Acc>(alpha), static_cast<Acc>(beta),
      m, n, k, tiles_n};
  Kokkos::TeamPolicy<ExecSpace> policy(space, tiles_m * tiles_n, Kokkos::AUTO);
  policy.set_scratch_size(0, Kokkos::PerTeam(Kernel::scratch_bytes()));
  Kokkos::parallel_for("dilated::gemm::team_kernel", policy, kernel);
}

#if DILATED_HAVE_KOKKOSKERNELS
// KokkosBlas::gemm on rows the caller found dense, through Views of the types Kokkos Kernels
// instantiates (unmanaged, LayoutRight, Device<ExecSpace, memory space>) over the same data.
template <class ExecSpace, class AV, class BV, class CV>
void kokkos_blas_gemm(const ExecSpace& space, Op op_a, Op op_b, double alpha, const AV& a,
                      const BV& b, double beta, const CV& c) {
  using T = typename CV::non_const_value_type;
  using Device = Kokkos::Device<ExecSpace, typename CV::memory_space>;
  using Unmanaged = Kokkos::MemoryTraits<Kokkos::Unmanaged>;
  const Kokkos::View<const T**, Kokkos::LayoutRight, Device, Unmanaged> ka(a.data(), a.extent(0),
                                                                           a.extent(1));
  const Kokkos::View<const T**, Kokkos::LayoutRight, Device, Unmanaged> kb(b.data(), b.extent(0),
                                                                           b.extent(1));
  const Kokkos::View<T**, Kokkos::LayoutRight, Device, Unmanaged> kc(c.data(), c.extent(0),
                                                                     c.extent(1));
  const char* const ta = op_a == Op::T ? "T" : "N";
  const char* const tb = op_b == Op::T ? "T" : "N";
#if DILATED_KOKKOSBLAS_GEMM_ON_INSTANCE
  // On the caller's instance, so no fence on either side: on CUDA Kokkos Kernels hands cuBLAS
  // space's stream (and runs its own small-product kernel on space); on the host the BLAS runs in
  // this thread, after the instance's earlier work (Serial and OpenMP dispatch synchronously).
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (is_cuda_v<ExecSpace>) {
    const FloatingPointShield shield;  // cuBLAS's host code, as in the direct calls
    KokkosBlas::gemm(space, ta, tb, static_cast<T>(alpha), ka, kb, static_cast<T>(beta), kc);
    return;
  }
#endif
  KokkosBlas::gemm(space, ta, tb, static_cast<T>(alpha), ka, kb, static_cast<T>(beta), kc);
#else
  // Kokkos Kernels < 4.1 (the host build's 3.4.01) takes no instance and runs on the default
  // one (its own kernel where the BLAS does not serve): order it after and before the caller's
  // work.
  fence(space, "dilated::Impl::gemm: before KokkosBlas::gemm");
  KokkosBlas::gemm(ta, tb, static_cast<T>(alpha), ka, kb, static_cast<T>(beta), kc);
  Kokkos::fence();
#endif
}
#endif

#if defined(KOKKOS_ENABLE_CUDA)
// cublasGemmEx on space's stream (any storage type; fp32 compute, TF32 when asked, fp64 for
// double), row strides as leading dimensions.
template <class AV, class BV, class CV>
void cublas_gemm(const Kokkos::Cuda& space, Op op_a, Op op_b, double alpha, const AV& a,
                 const BV& b, double beta, const CV& c, const GemmOptions& options) {
  using T = typename CV::non_const_value_type;
  const int m = c.extent(0), n = c.extent(1);
  const int k = op_a == Op::N ? a.extent(1) : a.extent(0);
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  using Compute = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const Compute alpha_c = static_cast<Compute>(alpha), beta_c = static_cast<Compute>(beta);
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if constexpr (std::is_same_v<T, double>) compute = CUBLAS_COMPUTE_64F;
  if constexpr (std::is_same_v<T, float>) {
    if (options.use_tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  }
  const long lda = a.stride(0) > 0 ? a.stride(0) : 1, ldb = b.stride(0) > 0 ? b.stride(0) : 1,
             ldc = c.stride(0) > 0 ? c.stride(0) : 1;
  const FloatingPointShield shield;
  cublasHandle_t handle = cublas_handle();
  cublas_check(cublasSetStream(handle, space.cuda_stream()), "cublasSetStream");
  cublas_check(
      cublasGemmEx(handle, op_b == Op::T ? CUBLAS_OP_T : CUBLAS_OP_N,
                   op_a == Op::T ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha_c, b.data(),
                   cuda_data_type<T>(), static_cast<int>(ldb), a.data(), cuda_data_type<T>(),
                   static_cast<int>(lda), &beta_c, c.data(), cuda_data_type<T>(),
                   static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}
#endif

// C = alpha op(A) op(B) + beta C (see the file comment). Returns before the product is done on
// CUDA (enqueued on space's stream, through Kokkos Kernels or cuBLAS); on the host after it.
template <class ExecSpace, class AV, class BV, class CV>
void gemm(const ExecSpace& space, Op op_a, Op op_b, double alpha, const AV& a, const BV& b,
          double beta, const CV& c, const GemmOptions& options = {}) {
  constexpr const char* fn = "dilated::Impl::gemm";
  check_gemm_views<ExecSpace, AV, BV, CV>();
  const int k = gemm_inner_extent(fn, op_a, a, op_b, b, c);
  const int m = c.extent(0), n = c.extent(1);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    gemm_team_kernel(space, op_a, op_b, alpha, a, b, beta, c);
    return;
  }
  (void)options;
  using T = typename CV::non_const_value_type;
#if DILATED_HAVE_KOKKOSKERNELS
  if constexpr (gemm_implementation<ExecSpace, T>() == GemmImplementation::kokkos_blas) {
    const auto dense = [](const auto& x) { return x.extent(0) <= 1 || x.stride(0) == x.extent(1); };
    bool take = dense(a) && dense(b) && dense(c);
    if constexpr (is_cuda_v<ExecSpace> && std::is_same_v<T, float>)
      take = take && !options.use_tf32;
    if (take) {
      kokkos_blas_gemm(space, op_a, op_b, alpha, a, b, beta, c);
      return;
    }
  }
#endif
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (is_cuda_v<ExecSpace>) {
    cublas_gemm(space, op_a, op_b, alpha, a, b, beta, c, options);
    return;
  }
#endif
  gemm_team_kernel(space, op_a, op_b, alpha, a, b, beta, c);
}

#if defined(KOKKOS_ENABLE_CUDA)
// The cuBLASLt products' compute type (fp32; TF32 tensor cores for float when asked) and a
// row-major operand's leading dimension.
template <class T>
cublasComputeType_t lt_compute_type(const GemmOptions& options) {
  return std::is_same_v<T, float> && options.use_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                      : CUBLAS_COMPUTE_32F;
}
template <class X>
long lt_ld(const X& x) {
  return x.stride(0) > 0 ? long(x.stride(0)) : 1L;
}
#endif

// C = op(A) op(B) + bias (bias: one value per column of C) with the bias added in the product's
// epilogue: cuBLASLt on CUDA (not for double: the fp64 epilogue is not among cuBLASLt's
// kernels). Returns false, having done nothing, where this backend or storage type has no such
// epilogue (the caller then writes the bias and calls gemm with beta = 1). With `residual` (not
// null; C's shape and row stride): C = residual + op(A) op(B) + bias in the same epilogue.
template <class ExecSpace, class AV, class BV, class Bias, class CV>
bool gemm_bias(const ExecSpace& space, Op op_a, Op op_b, const AV& a, const BV& b, const Bias& bias,
               const CV& c, const GemmOptions& options = {},
               const typename CV::value_type* residual = nullptr) {
  constexpr const char* fn = "dilated::Impl::gemm_bias";
  check_gemm_views<ExecSpace, AV, BV, CV>();
  const int k = gemm_inner_extent(fn, op_a, a, op_b, b, c);
  require(bias.extent(0) == c.extent(1), fn, "bias.extent(0) = ", bias.extent(0),
          " does not match C's columns = ", c.extent(1));
  (void)options;
#if defined(KOKKOS_ENABLE_CUDA)
  using T = typename CV::non_const_value_type;
  if constexpr (is_cuda_v<ExecSpace> && !std::is_same_v<T, double>) {
    const long m = c.extent(0), n = c.extent(1);
    if (m == 0 || n == 0 || k == 0) return false;
    const bool contiguous = bias.extent(0) <= 1 || bias.stride(0) == 1;
    if (!contiguous) return false;
    const cublasComputeType_t compute = lt_compute_type<T>(options);
    return CublasLtPlans::instance().matmul_bias<T>(
        space.cuda_stream(), op_a == Op::T, op_b == Op::T, m, n, k, a.data(), lt_ld(a), b.data(),
        lt_ld(b), c.data(), lt_ld(c), bias.data(), compute, residual);
  }
#endif
  (void)space, (void)a, (void)b, (void)bias, (void)c, (void)k, (void)residual;
  return false;
}

// The GELU feed-forward's products with the activation in the epilogue (cuBLASLt on CUDA, half /
// bf16 / float; the tanh GELU, the one cuBLASLt computes: Dilated_Gelu.hpp): C = gelu(op(A) op(B)
// + bias) with the pre-activation op(A) op(B) + bias written to `aux` (C's shape, dense rows, a
// multiple of 8 columns) in the same epilogue. Returns false, having done nothing, where there is
// no such epilogue (the caller then takes gemm_bias or gemm and gelu_forward).
template <class ExecSpace, class AV, class BV, class Bias, class CV, class Aux>
bool gemm_bias_gelu(const ExecSpace& space, Op op_a, Op op_b, const AV& a, const BV& b,
                    const Bias& bias, const CV& c, const Aux& aux,
                    const GemmOptions& options = {}) {
  constexpr const char* fn = "dilated::Impl::gemm_bias_gelu";
  check_gemm_views<ExecSpace, AV, BV, CV>();
  const int k = gemm_inner_extent(fn, op_a, a, op_b, b, c);
  require(bias.extent(0) == c.extent(1), fn, "bias.extent(0) = ", bias.extent(0),
          " does not match C's columns = ", c.extent(1));
  require(aux.extent(0) == c.extent(0) && aux.extent(1) == c.extent(1), fn, "aux is (",
          aux.extent(0), ", ", aux.extent(1), "), C is (", c.extent(0), ", ", c.extent(1), ")");
  (void)options;
#if defined(KOKKOS_ENABLE_CUDA)
  using T = typename CV::non_const_value_type;
  if constexpr (is_cuda_v<ExecSpace> && !std::is_same_v<T, double>) {
    const long m = c.extent(0), n = c.extent(1);
    if (m == 0 || n == 0 || k == 0) return false;
    if (!(bias.extent(0) <= 1 || bias.stride(0) == 1)) return false;
    const cublasComputeType_t compute = lt_compute_type<T>(options);
    return CublasLtPlans::instance().matmul<T>(
        space.cuda_stream(), CublasLtPlans::Epilogue::gelu_aux_bias, op_a == Op::T, op_b == Op::T,
        m, n, k, a.data(), lt_ld(a), b.data(), lt_ld(b), c.data(), lt_ld(c), bias.data(),
        aux.data(), lt_ld(aux), compute);
  }
#endif
  (void)space, (void)a, (void)b, (void)bias, (void)c, (void)aux, (void)k;
  return false;
}

// C = (op(A) op(B)) * gelu'(aux) (tanh GELU) with the derivative in the product's epilogue:
// the hidden gradient of the feed-forward, aux its pre-activation (C's shape). Returns false,
// having done nothing, where there is no such epilogue (the caller takes gemm and gelu_backward).
template <class ExecSpace, class AV, class BV, class CV, class Aux>
bool gemm_dgelu(const ExecSpace& space, Op op_a, Op op_b, const AV& a, const BV& b, const Aux& aux,
                const CV& c, const GemmOptions& options = {}) {
  constexpr const char* fn = "dilated::Impl::gemm_dgelu";
  check_gemm_views<ExecSpace, AV, BV, CV>();
  const int k = gemm_inner_extent(fn, op_a, a, op_b, b, c);
  require(aux.extent(0) == c.extent(0) && aux.extent(1) == c.extent(1), fn, "aux is (",
          aux.extent(0), ", ", aux.extent(1), "), C is (", c.extent(0), ", ", c.extent(1), ")");
  (void)options;
#if defined(KOKKOS_ENABLE_CUDA)
  using T = typename CV::non_const_value_type;
  if constexpr (is_cuda_v<ExecSpace> && !std::is_same_v<T, double>) {
    const long m = c.extent(0), n = c.extent(1);
    if (m == 0 || n == 0 || k == 0) return false;
    const cublasComputeType_t compute = lt_compute_type<T>(options);
    return CublasLtPlans::instance().matmul<T>(
        space.cuda_stream(), CublasLtPlans::Epilogue::dgelu, op_a == Op::T, op_b == Op::T, m, n, k,
        a.data(), lt_ld(a), b.data(), lt_ld(b), c.data(), lt_ld(c), static_cast<const T*>(nullptr),
        aux.data(), lt_ld(aux), compute);
  }
#endif
  (void)space, (void)a, (void)b, (void)c, (void)aux, (void)k;
  return false;
}

}  // namespace dilated::Impl

#endif  // DILATED_GEMM_HPP
