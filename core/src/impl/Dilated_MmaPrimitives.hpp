// The pieces the tensor-core kernels of the Improved algorithm share (CUDA, sm_80+): cp.async
// copies, ldmatrix, mma.sync m16n8k16 with float accumulation, packing to half/bf16, the
// loader of a tile of kept rows into padded shared memory, and when the kernels apply.
//
// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 g + t; A (16x16, row-major) registers
// hold rows g and g+8, columns 2t, 2t+1 and 2t+8, 2t+9; B (16x8, "col") holds k rows 2t, 2t+1
// and 2t+8, 2t+9 of column g; the accumulator holds rows g and g+8, columns 2t, 2t+1.
#ifndef DILATED_IMPL_MMA_PRIMITIVES_HPP
#define DILATED_IMPL_MMA_PRIMITIVES_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_Geometry.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::Impl::mma {

template <class T>
inline constexpr bool is_mma_type_v = std::is_same_v<T, Kokkos::Experimental::half_t>
#if DILATED_HAVE_BHALF
                                      || std::is_same_v<T, Kokkos::Experimental::bhalf_t>
#endif
    ;

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid.
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void wait_groups() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

// c += a b for one 16x8x16 tile; Bf16 selects the bf16 instruction. Not volatile: a pure
// function of its registers, which the compiler may schedule around other work.
template <bool Bf16>
__device__ __forceinline__ void mma16816(float (&c)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  if constexpr (Bf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats as one register of two 16-bit values (lo in the low half).
template <bool Bf16>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  std::uint32_t r;
  if constexpr (Bf16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

// x(b, p, h, c) = lo and x(b, p, h, c + 1) = hi, rounded to half/bf16 and stored as one 4-byte
// word (c even; rows contiguous and 4-byte aligned, e.g. rows_in_pieces(x)).
template <bool Bf16, class View>
__device__ __forceinline__ void store_pair(const View& x, int b, int p, int h, int c, float lo,
                                           float hi) {
  *reinterpret_cast<std::uint32_t*>(&x(b, p, h, c)) = pack2<Bf16>(lo, hi);
}

// The two 16-bit values of a register as floats (lo first).
template <bool Bf16>
__device__ __forceinline__ void unpack2(std::uint32_t r, float (&x)[2]) {
  if constexpr (Bf16) {
    x[0] = __uint_as_float(r << 16);
    x[1] = __uint_as_float(r & 0xffff0000u);
  } else {
    asm("{\n .reg .f16 lo, hi;\n mov.b32 {lo, hi}, %2;\n cvt.f32.f16 %0, lo;\n"
        " cvt.f32.f16 %1, hi;\n}\n"
        : "=f"(x[0]), "=f"(x[1])
        : "r"(r));
  }
}

#endif  // __CUDA_ARCH__

#if defined(__CUDA_ARCH__)
// Kokkos aligns team scratch to 8 bytes; cp.async and ldmatrix want 16.
template <class Member>
__device__ __forceinline__ std::uint16_t* aligned_scratch(const Member& team, int bytes) {
  return reinterpret_cast<std::uint16_t*>(
      (reinterpret_cast<std::uintptr_t>(team.team_shmem().get_shmem(bytes + 16)) + 15) &
      ~std::uintptr_t(15));
}

// Copies tiles of NROWS kept rows (head h, batch b) of a view into shared memory (rows of LD
// halves), 16 bytes per cp.async by a team of Threads (128) threads; rows past `count` are
// zero-filled. Each thread always copies the same pieces of the same tile rows, so the addresses
// are set up once: a tile costs one multiply and a few adds per thread (the kept positions of a
// segment are first + t * stride, so tile rows are a fixed byte step apart). Swizzled (D = LD = 64,
// for wgmma): piece c of row r goes to piece c ^ (r % 8) of its 128-byte row.
template <int D, int LD, int NROWS, bool Swizzled = false, int Threads = 128>
struct TileLoader {
  static constexpr int chunks = D / 8;                    // 16-byte pieces per row
  static constexpr int rows_per_pass = Threads / chunks;  // rows the team covers per pass
  static constexpr int passes = NROWS / rows_per_pass;
  static_assert(NROWS % rows_per_pass == 0, "tile rows must be a multiple of a pass");
  static_assert(!Swizzled || (D == 64 && LD == 64 && rows_per_pass % 8 == 0),
                "the 128-byte swizzle takes unpadded rows of 64 halves");
  const char* base;    // this thread's piece of its first tile row (row0) of kept row 0's tile
  const char* origin;  // kept row 0 itself: the (unread) source of zero-filled rows
  long row_step;       // bytes between consecutive kept rows
  int row0, dst0;      // this thread's first tile row and its shared-memory offset (halves)

  template <class View>
  __device__ __forceinline__ TileLoader(const View& x, int b, int h, const KeptPositions& kept,
                                        int tid) {
    row0 = tid / chunks;
    const int piece = tid % chunks;
    row_step = 2L * kept.stride * x.stride(1);
    origin = reinterpret_cast<const char*>(x.data()) +
             2 * (static_cast<long>(b) * x.stride(0) + static_cast<long>(h) * x.stride(2) +
                  static_cast<long>(kept.first) * x.stride(1) + piece * 8);
    base = origin + row0 * row_step;
    // Passes move by rows_per_pass (a multiple of 8) rows: row % 8, hence the swizzle, stays.
    dst0 = row0 * LD + (Swizzled ? piece ^ (row0 % 8) : piece) * 8;
  }
  // Kept rows [first, first + count) (count <= NROWS) into dst.
  __device__ __forceinline__ void load(int first, int count, std::uint16_t* dst) const {
    const char* src = base + first * row_step;
#pragma unroll
    for (int i = 0; i < passes; ++i) {
      const bool valid = row0 + i * rows_per_pass < count;
      copy16(dst + dst0 + i * rows_per_pass * LD,
             valid ? src + i * rows_per_pass * row_step : origin, valid);
    }
  }
};

// 2^x in one instruction (MUFU.EX2; flushes denormal results to zero, which softmax weights
// below 2^-126 of the row's largest can afford).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

#endif  // __CUDA_ARCH__

// The tiles of several branches in one launch: team r works on launch find(r), tile
// r - first_team[find(r)]. Grouped semantics gives each branch its own heads, so branches may run
// together; one launch then fills the GPU where a branch with few segments alone would leave
// multiprocessors idle (a tail per branch otherwise).
template <class Launch, int Capacity = 8>
struct BranchSet {
  static constexpr int capacity = Capacity;
  Launch launches[capacity];
  long first_team[capacity + 1] = {};
  int count = 0;

  void add(const Launch& launch, long teams) {
    launches[count] = launch;
    first_team[count + 1] = first_team[count] + teams;
    ++count;
  }
  KOKKOS_INLINE_FUNCTION long teams() const { return first_team[count]; }
  KOKKOS_INLINE_FUNCTION int find(long team) const {
    if constexpr (Capacity == 1) return 0;
    int i = 0;
    while (i + 1 < count && team >= first_team[i + 1])
      ++i;
    return i;
  }
};

// Groups `launches` (tiles already set) into sets of what may run together: all of them when
// `together` (by decreasing tile count per item, longest teams first), else one per set, in order.
template <class Launch, int Capacity = 8>
std::vector<BranchSet<Launch, Capacity>> branch_sets(std::vector<Launch> launches, bool together) {
  if (together) {
    std::stable_sort(launches.begin(), launches.end(), [](const Launch& a, const Launch& b) {
      return a.branch.plan.max_kept > b.branch.plan.max_kept;
    });
  }
  std::vector<BranchSet<Launch, Capacity>> sets;
  for (const auto& launch : launches) {
    if (sets.empty() || !together || sets.back().count == Capacity) {
      sets.emplace_back();
    }
    sets.back().add(launch, launch.branch.plan.num_items() * launch.tiles);
  }
  for (const auto& set : sets) {
    if (set.teams() > static_cast<long>(std::numeric_limits<int>::max())) {
      throw std::length_error("dilated: " + std::to_string(set.teams()) +
                              " tiles exceed one CUDA launch");
    }
  }
  return sets;
}

// Whether the tensor-core kernels take these views: half/bf16, head_dim 64 or 128, rows
// contiguous and every row start 16-byte aligned.
template <class... Views>
bool applies(int d, const Views&... views) {
  if (d != 64 && d != 128) return false;
  const auto aligned = [](const auto& x) {
    return x.stride(3) == 1 && x.stride(0) % 8 == 0 && x.stride(1) % 8 == 0 &&
           x.stride(2) % 8 == 0 && reinterpret_cast<std::uintptr_t>(x.data()) % 16 == 0;
  };
  return (aligned(views) && ...);
}

}  // namespace dilated::Impl::mma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_MMA_PRIMITIVES_HPP
