// The CUDA tensor-core forward of the Improved algorithm: the same team kernel as
// ImprovedForwardKernel (a team owns query rows of one (batch, segment, head) of a branch,
// streams key/value tiles through team scratch, online softmax, writes rows and log-sum-exp),
// with the two tile products done by mma.sync (m16n8k16, half or bf16 in, float accumulation)
// and the tiles moved by cp.async two stages deep. Four warps own 16 or 32 query rows each (one
// or two m-tiles, MmaForwardTiles); scores and the output accumulator stay in registers
// (FlashAttention-2's layout), so shared memory only holds the K and V tiles (and, before the
// first step, the Q tile).
//
// Used for half/bf16 storage with head_dim 64 or 128, contiguous 16-byte aligned rows
// (stride(3) == 1, other strides multiples of 8), where the wgmma forward does not run
// (Dilated_ImprovedWgmmaForward.hpp: sm_90a code at head_dim 64). Everything else takes the
// generic kernel.
#ifndef DILATED_IMPL_IMPROVED_MMA_FORWARD_HPP
#define DILATED_IMPL_IMPROVED_MMA_FORWARD_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_TensorCoreTilePolicies.hpp>
#include <impl/Dilated_ImprovedKernels.hpp>
#include <impl/Dilated_MmaPrimitives.hpp>
#include <impl/Dilated_MmaSoftmax.hpp>
#include <impl/Dilated_RowPieces.hpp>

#include <cstdint>
#include <type_traits>
#include <vector>

namespace dilated::Impl::mma {

#if defined(__CUDA_ARCH__)
// s = a b for one 16x8x16 tile (no accumulator to clear first).
template <bool Bf16>
__device__ __forceinline__ void mma16816_first(float (&c)[4], const std::uint32_t (&a)[4],
                                               std::uint32_t b0, std::uint32_t b1) {
  c[0] = c[1] = c[2] = c[3] = 0.f;
  mma16816<Bf16>(c, a, b0, b1);
}
#endif

// The forward team kernel. OutV/LseV as in ImprovedForwardKernel (grouped: the caller's views,
// written; longnet: merged into).
// Dropout is a compile-time choice: its hashing lives only in the kernel that applies it, so
// the common kernel's register allocation does not pay for it.
template <int D, bool Dropout, class QV, class KV, class VV, class OutV, class LseV>
struct ForwardKernel {
  using Tiles = MmaForwardTiles<D>;
  // Teams per multiprocessor, hence the register cap: see MmaForwardTiles.
  static constexpr unsigned min_blocks = Tiles::min_blocks;
  using T = typename QV::non_const_value_type;
  using Acc = float;
  using Space = Kokkos::CudaSpace;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  ForwardIO<QV, KV, VV, OutV, LseV> io;  // set: tiles of Tiles::query_rows rows

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(__CUDA_ARCH__)
    const auto team_tile =
        io.template team<D, bf16, T>(team, team.league_rank(), Tiles::query_rows);
    const auto& br = *team_tile.branch;
    const auto& tile = team_tile.tile;
    const auto& writer = team_tile.writer;
    if (tile.count == 0) return;
    constexpr int BC = Tiles::key_rows, LD = Tiles::ld, MT = Tiles::m_tiles, WR = 16 * MT;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count, t0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;  // mma fragment coordinates
    using Half = std::uint16_t;
    Half* smem = aligned_scratch(team, Tiles::scratch_bytes);
    const auto K_stage = [&](int s) { return smem + s * Tiles::stage_halves; };
    const auto V_stage = [&](int s) { return smem + s * Tiles::stage_halves + BC * LD; };
    Half* Qs = K_stage(1);  // the Q tile borrows stage 1 until its fragments are in registers

    const TileLoader<D, LD, Tiles::query_rows> q_loader(io.q, b, h, kept, tid);
    const TileLoader<D, LD, BC> k_loader(io.k, b, h, kept, tid), v_loader(io.v, b, h, kept, tid);
    const int key_end = br.causal ? t0 + rows : kept.count;
    const int num_tiles = (key_end + BC - 1) / BC;
    q_loader.load(t0, rows, Qs);
    k_loader.load(0, key_end < BC ? key_end : BC, K_stage(0));
    v_loader.load(0, key_end < BC ? key_end : BC, V_stage(0));
    commit();
    wait_groups<0>();
    __syncthreads();
    // Q fragments (A of S = Q K^T) of this warp's m-tile m, k-step kk, read once.
    std::uint32_t qf[MT][D / 16][4];
    a_fragments<MT, D, LD>(Qs + warp * WR * LD, lane, qf);
    __syncthreads();  // stage 1 is free for the K/V pipeline
    // This lane's ldmatrix offsets: K as B of S = Q K^T, V (transposed) as B of O = P V.
    const int mi = lane / 8;
    const int k_off = ((mi / 2) * 8 + lane % 8) * LD + (mi % 2) * 8;
    const int v_off = ((mi % 2) * 8 + lane % 8) * LD + (mi / 2) * 8;

    float o[MT][D / 8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.f;
    // Scores stay unscaled (scale > 0 on this path): the scale folds into the exponent's FFMA.
    SoftmaxRows<MT, D, bf16> softmax(static_cast<float>(br.scale));
    const auto my_t = [&](int m, int r) { return t0 + warp * WR + m * 16 + g + 8 * r; };
    const int warp_first = t0 + warp * WR, warp_last = warp_first + WR - 1;

    // One key tile of this warp's rows. `edge` (a compile-time flag) selects the version with
    // the key/causal mask (dropout is the kernel's own compile-time choice); the common version
    // has one branch (the softmax's rare rescale) between its first mma and its last, so ptxas
    // can interleave one m-tile's softmax with the other's mma.
    const auto step = [&](const int u0, const Half* Ks, const Half* Vs, auto edge) {
      // S = Q K^T: each K fragment feeds every m-tile.
      float s[MT][BC / 8][4];
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int j = 0; j < BC / 8; j += 2) {
          std::uint32_t kf[4];
          ldmatrix_x4(kf, Ks + j * 8 * LD + kk * 16);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            if (kk == 0) {
              mma16816_first<bf16>(s[m][j], qf[m][kk], kf[0], kf[1]);
              mma16816_first<bf16>(s[m][j + 1], qf[m][kk], kf[2], kf[3]);
            } else {
              mma16816<bf16>(s[m][j], qf[m][kk], kf[0], kf[1]);
              mma16816<bf16>(s[m][j + 1], qf[m][kk], kf[2], kf[3]);
            }
          }
        }
      }
      if constexpr (decltype(edge)::value) mask_scores<MT, BC>(s, u0, key_end, br.causal, t4, my_t);
      std::uint32_t p[MT][BC / 8][2];
      softmax.template step<BC>(s, o, p);
      if constexpr (Dropout) drop<bf16, MT, BC>(p, br, b, h, kept, u0, t0 + rows, t4, my_t);
        // O += P V: each V fragment feeds every m-tile.
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
          std::uint32_t vf[4];
          ldmatrix_x4_trans(vf, Vs + kk * 16 * LD + n * 8);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            std::uint32_t pf[4];
            p_fragment(p[m], kk, pf);
            mma16816<bf16>(o[m][n], pf, vf[0], vf[1]);
            mma16816<bf16>(o[m][n + 1], pf, vf[2], vf[3]);
          }
        }
      }
    };

    for (int it = 0; it < num_tiles; ++it) {
      const int u0 = it * BC;
      if (it + 1 < num_tiles) {
        const int next = u0 + BC, cnt = key_end - next < BC ? key_end - next : BC;
        k_loader.load(next, cnt, K_stage((it + 1) & 1));
        v_loader.load(next, cnt, V_stage((it + 1) & 1));
        commit();
        wait_groups<1>();
      } else {
        wait_groups<0>();
      }
      __syncthreads();
      // Causal: a warp whose rows all precede the tile has nothing to do in it. Only tiles that
      // reach past the keys or (causal) past the warp's first row need a mask.
      if (!(br.causal && u0 > warp_last) && warp * WR < rows) {
        const Half* Ks = K_stage(it & 1) + k_off;
        const Half* Vs = V_stage(it & 1) + v_off;
        const bool edge = u0 + BC > key_end || (br.causal && u0 + BC - 1 > warp_first);
        if (edge) {
          step(u0, Ks, Vs, std::true_type{});
        } else {
          step(u0, Ks, Vs, std::false_type{});
        }
      }
      __syncthreads();  // the stage read here is refilled in the next iteration
    }

    writer.finish(o, softmax, br, kept, t0 + rows, t4, my_t);
    if (team_tile.zero_gaps) {
      writer.template zero_gaps<MT>(kept, team_tile.seg_end, t0 + rows, t4, my_t);
    }
#else
    (void)team;
#endif
  }
};

// Names a kernel type (what launch_forward's kernel_of returns).
template <class T>
struct KernelType {
  using type = T;
};

// The forward of every branch in launches of the kernel kernel_of(std::bool_constant<Dropout>)
// names (a team per tile of Tiles::query_rows kept rows, 4 warps, `scratch_bytes` of team
// scratch): all branches in one launch for grouped semantics (disjoint heads), branch after
// branch for longnet (each merges into what the previous ones left). zero_unkept (grouped): the
// kernel also zeroes the rows no branch keeps (see ForwardKernel). Shared by the mma.sync and
// wgmma forwards.
template <class Tiles, class KernelOf, class Q, class K, class V, class OutV, class LseV>
void launch_forward(const char* label, int scratch_bytes, const KernelOf& kernel_of,
                    const Kokkos::Cuda& space, const Geometry& g,
                    const BranchLaunch<Kokkos::CudaSpace, float>& base, const Q& q, const K& k,
                    const V& v, const OutV& out, const LseV& lse, bool with_lse, bool zero_unkept) {
  std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches;
  for (int i = 0; i < g.num_branches(); ++i) {
    auto launch = tiled_launch<Kokkos::Cuda>(g, i, base, q.extent(0));
    launch.tile_by(Tiles::query_rows, Tiles::key_rows, Tiles::query_rows);
    launches.push_back(launch);
  }
  const bool pieces = rows_in_pieces(out);
  const auto run = [&](auto dropout) {
    using Kernel = typename decltype(kernel_of(dropout))::type;
    for (const auto& set : branch_sets(launches, !base.longnet)) {
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, Kernel::min_blocks>> policy(
          space, static_cast<int>(set.teams()), 4, 32);
      policy.set_scratch_size(0, Kokkos::PerTeam(scratch_bytes));
      Kokkos::parallel_for(label, policy,
                           Kernel{{set, q, k, v, out, lse, with_lse, zero_unkept, pieces}});
    }
  };
  if (base.dropout.active()) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

// The mma.sync forward of every branch (see launch_forward).
template <int D, class Q, class K, class V, class OutV, class LseV>
void forward_branches(const Kokkos::Cuda& space, const Geometry& g,
                      const BranchLaunch<Kokkos::CudaSpace, float>& base, const Q& q, const K& k,
                      const V& v, const OutV& out, const LseV& lse, bool with_lse,
                      bool zero_unkept) {
  using Tiles = MmaForwardTiles<D>;
  const auto kernel_of = [](auto dropout) {
    return KernelType<ForwardKernel<D, decltype(dropout)::value, Q, K, V, OutV, LseV>>{};
  };
  launch_forward<Tiles>("dilated::improved::forward_mma", Tiles::scratch_bytes + 16, kernel_of,
                        space, g, base, q, k, v, out, lse, with_lse, zero_unkept);
}

}  // namespace dilated::Impl::mma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_IMPROVED_MMA_FORWARD_HPP
