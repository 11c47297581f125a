// Hopper's warpgroup matrix product (wgmma.mma_async, sm_90a) for the Improved forward: shared
// memory descriptors of 128-byte-swizzled tiles, the m64n64k16 products with half/bf16 inputs
// and float accumulation, and the fences around them.
//
// wgmma needs the architecture-specific target sm_90a (CMAKE_CUDA_ARCHITECTURES=90a); with plain
// sm_90 this header compiles to nothing on the device and `compiled()` reports false, so the
// caller keeps the mma.sync kernels. A tile row is 64 halves = 128 bytes, exactly one swizzle
// atom: the 16-byte piece c of row r lives at piece c ^ (r % 8) of that row, and tiles start at
// 1024-byte boundaries (the descriptor's base offset stays 0).
//
// Operand layouts (PTX ISA, "Asynchronous Warpgroup Level Matrix Shared Memory Layout", and
// CUTLASS's make_gmma_desc): a K-major operand (Q and K of S = Q K^T) has rows 128 bytes apart,
// groups of 8 rows 1024 bytes apart (stride byte offset); the leading byte offset is unused. An
// MN-major operand (V of O = P V, rows = keys = the k dimension, transposed by the instruction)
// has its 8-key groups 1024 bytes apart (stride byte offset) and its 64-column atoms a leading
// byte offset apart, unused at N = 64. The accumulator of m64nN has, per warp w of the
// warpgroup and lane 4 g + t, rows 16 w + g and 16 w + g + 8 and columns 8 j + 2 t, +1 in
// registers 4 j .. 4 j + 3: per warp, mma.sync's m16n8 layout repeated over j. A from registers
// takes mma.sync's m16n8k16 A fragment per warp.
#ifndef DILATED_IMPL_WGMMA_PRIMITIVES_HPP
#define DILATED_IMPL_WGMMA_PRIMITIVES_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <cstdint>
#include <cstdlib>
#include <string>

namespace dilated::Impl::wgmma {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DILATED_HAVE_WGMMA_DEVICE 1

// Descriptor of a 128-byte-swizzled tile at shared address `address` (1024-byte aligned for
// the tile; k-steps inside a row add 32 bytes to the start, which the swizzle allows because it
// acts on absolute address bits). `stride` = bytes between 8-row groups.
__device__ __forceinline__ std::uint64_t descriptor(std::uint32_t address, std::uint32_t stride,
                                                    std::uint32_t leading = 16) {
  return static_cast<std::uint64_t>((address >> 4) & 0x3fff) |
         static_cast<std::uint64_t>((leading >> 4) & 0x3fff) << 16 |
         static_cast<std::uint64_t>((stride >> 4) & 0x3fff) << 32 | std::uint64_t(1) << 62;
}

// Registers the compiler must treat as read and written here: keeps their uses on the right
// side of the asynchronous products (CUTLASS's warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void fence_operands(float (&x)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      asm volatile("" : "+f"(x[j][e])::"memory");
}

__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Shared-memory writes of the generic proxy (cp.async, st.shared) made visible to the
// asynchronous proxy the products read through.
__device__ __forceinline__ void fence_shared_for_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

#define DILATED_WGMMA_D32                                                                       \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define DILATED_WGMMA_D32_OPERANDS(d)                                                           \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),     \
      "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
      "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), \
      "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
      "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), \
      "+f"(d[7][2]), "+f"(d[7][3])

// d (64 x 64, float) = [d +] A B for A = a (64 x 16, K-major) and B = b (16 x 64 given as 64
// rows of 16, K-major), both in shared memory; `accumulate` false ignores d's old values.
template <bool Bf16>
__device__ __forceinline__ void m64n64k16_ss(float (&d)[8][4], std::uint64_t a, std::uint64_t b,
                                             bool accumulate) {
  if constexpr (Bf16) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DILATED_WGMMA_D32
        ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : DILATED_WGMMA_D32_OPERANDS(d)
        : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
  } else {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " DILATED_WGMMA_D32
        ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : DILATED_WGMMA_D32_OPERANDS(d)
        : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
  }
}

// d (64 x 64, float) += A B for A in registers (mma.sync's A fragment of this warp's 16 rows)
// and B = b (16 rows of 64, MN-major: transposed by the instruction) in shared memory.
template <bool Bf16>
__device__ __forceinline__ void m64n64k16_rs(float (&d)[8][4], const std::uint32_t (&a)[4],
                                             std::uint64_t b) {
  if constexpr (Bf16) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DILATED_WGMMA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : DILATED_WGMMA_D32_OPERANDS(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
  } else {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " DILATED_WGMMA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : DILATED_WGMMA_D32_OPERANDS(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
  }
}

#undef DILATED_WGMMA_D32
#undef DILATED_WGMMA_D32_OPERANDS
#endif  // sm_90a device code

// Writes 1 where the device code was compiled with wgmma.
struct Probe {
  Kokkos::View<int, Kokkos::CudaSpace> flag;
  KOKKOS_FUNCTION void operator()(int) const {
#if defined(DILATED_HAVE_WGMMA_DEVICE)
    flag() = 1;
#endif
  }
};

// Whether the wgmma kernels run: the device code was compiled with wgmma (sm_90a; the host
// compiler cannot know the device target, so the device is asked, once per process: one tiny
// kernel and a fence) and the environment does not set DILATED_DISABLE_WGMMA to a value other
// than 0 (for comparing with, and testing, the mma.sync kernels in the same build).
inline bool compiled(const Kokkos::Cuda& space) {
  static const bool answer = [&] {
    if (const char* off = std::getenv("DILATED_DISABLE_WGMMA"); off && std::string(off) != "0") {
      return false;
    }
    Kokkos::View<int, Kokkos::CudaSpace> flag("dilated::wgmma::probe");
    Kokkos::parallel_for("dilated::wgmma::probe", Kokkos::RangePolicy<Kokkos::Cuda>(space, 0, 1),
                         Probe{flag});
    int value = 0;
    Kokkos::deep_copy(space, Kokkos::View<int, Kokkos::HostSpace>(&value), flag);
    space.fence("dilated::wgmma::probe");
    return value == 1;
  }();
  return answer;
}

}  // namespace dilated::Impl::wgmma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_WGMMA_PRIMITIVES_HPP
