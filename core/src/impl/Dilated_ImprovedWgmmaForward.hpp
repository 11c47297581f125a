// The Hopper forward of the Improved algorithm (sm_90a, head_dim 64, half/bf16): the team kernel
// of ForwardKernel (Dilated_ImprovedMmaForward.hpp) with its two tile products on wgmma. A team
// is one warpgroup owning 64 query rows of one (batch, segment, head) of a branch; S = Q K^T
// reads Q and K from shared memory, O += P V takes P from registers (the score accumulator
// rounded in place, FlashAttention-3's layout) and V from shared memory. The products are
// asynchronous and warpgroup-wide: the online softmax between them is ForwardKernel's (per warp,
// each warp owning 16 of the rows), so only the instruction that does the products differs.
// Registers: a 64 x 64 score tile and a 64 x 64 output tile are 32 floats each per thread
// (mma.sync's 128-row teams needed 64 + 64), so four teams fit a multiprocessor.
#ifndef DILATED_IMPL_IMPROVED_WGMMA_FORWARD_HPP
#define DILATED_IMPL_IMPROVED_WGMMA_FORWARD_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_TensorCoreTilePolicies.hpp>
#include <impl/Dilated_ImprovedMmaForward.hpp>
#include <impl/Dilated_MmaSoftmax.hpp>
#include <impl/Dilated_WgmmaPrimitives.hpp>

#include <cstdint>
#include <type_traits>

namespace dilated::Impl::wgmma {

template <bool Dropout, class QV, class KV, class VV, class OutV, class LseV>
struct ForwardKernel {
  using Tiles = WgmmaForwardTiles;
  static constexpr int D = Tiles::d;
  static constexpr unsigned min_blocks = Tiles::min_blocks;
  using T = typename QV::non_const_value_type;
  using Space = Kokkos::CudaSpace;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  mma::ForwardIO<QV, KV, VV, OutV, LseV> io;  // set: tiles of Tiles::query_rows rows

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(DILATED_HAVE_WGMMA_DEVICE)
    using namespace mma;
    const auto team_tile =
        io.template team<D, bf16, T>(team, team.league_rank(), Tiles::query_rows);
    const auto& br = *team_tile.branch;
    const auto& tile = team_tile.tile;
    const auto& writer = team_tile.writer;
    if (tile.count == 0) return;
    constexpr int BC = Tiles::key_rows, TH = Tiles::tile_halves;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count, t0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;
    using Half = std::uint16_t;
    // Team scratch at the swizzle's 1024-byte period (of shared addresses, not generic ones).
    Half* raw =
        reinterpret_cast<Half*>(team.team_shmem().get_shmem(Tiles::scratch_bytes + Tiles::align));
    const std::uint32_t raw_address = smem_address(raw);
    Half* smem = raw + ((Tiles::align - raw_address % Tiles::align) % Tiles::align) / 2;
    const std::uint32_t base = smem_address(smem);
    const auto K_stage = [&](int s) { return smem + (1 + 2 * s) * TH; };
    const auto V_stage = [&](int s) { return smem + (2 + 2 * s) * TH; };

    const TileLoader<D, D, Tiles::query_rows, true> q_loader(io.q, b, h, kept, tid);
    const TileLoader<D, D, BC, true> k_loader(io.k, b, h, kept, tid),
        v_loader(io.v, b, h, kept, tid);
    const int key_end = br.causal ? t0 + rows : kept.count;
    const int num_tiles = (key_end + BC - 1) / BC;
    q_loader.load(t0, rows, smem);
    k_loader.load(0, key_end < BC ? key_end : BC, K_stage(0));
    v_loader.load(0, key_end < BC ? key_end : BC, V_stage(0));
    mma::commit();

    // Descriptors: Q and K K-major (8-row groups 1024 bytes apart; a k-step of 16 columns is
    // 32 bytes further), V MN-major (8-key groups 1024 bytes apart; 16 keys are 2048 bytes).
    // The start address field counts 16-byte units.
    const std::uint64_t q_desc = descriptor(base, 1024);
    const auto k_desc = [&](int s) { return descriptor(base + (1 + 2 * s) * TH * 2, 1024); };
    const auto v_desc = [&](int s) { return descriptor(base + (2 + 2 * s) * TH * 2, 1024); };

    float o[1][D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      o[0][n][0] = o[0][n][1] = o[0][n][2] = o[0][n][3] = 0.f;
    SoftmaxRows<1, D, bf16> softmax(static_cast<float>(br.scale));
    const auto my_t = [&](int, int r) { return t0 + warp * 16 + g + 8 * r; };

    // Each step waits for its products: a team's next step needs them, and the other teams of
    // the multiprocessor (four) keep the tensor cores busy meanwhile. (Letting O += P V run on
    // into the next step's S = Q K^T measured slower: docs/performance-notes.md.)
    for (int it = 0; it < num_tiles; ++it) {
      const int u0 = it * BC, stage = it & 1;
      if (it + 1 < num_tiles) {
        const int next = u0 + BC, cnt = key_end - next < BC ? key_end - next : BC;
        k_loader.load(next, cnt, K_stage(stage ^ 1));
        v_loader.load(next, cnt, V_stage(stage ^ 1));
        mma::commit();
        wait_groups<1>();
      } else {
        wait_groups<0>();
      }
      fence_shared_for_async();
      __syncthreads();

      // S = Q K^T over the head dimension in four k-steps.
      float s[1][BC / 8][4];
      wgmma::fence();
      const std::uint64_t kd = k_desc(stage);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        m64n64k16_ss<bf16>(s[0], q_desc + 2 * kk, kd + 2 * kk, kk > 0);
      wgmma::commit();
      wgmma::wait<0>();
      fence_operands(s[0]);

      // The key/causal mask where the tile reaches past the keys or past the team's first row:
      // team-uniform, like every branch around the warpgroup-wide products.
      if (u0 + BC > key_end || (br.causal && u0 + BC - 1 > t0))
        mask_scores<1, BC>(s, u0, key_end, br.causal, t4, my_t);
      std::uint32_t p[1][BC / 8][2];
      softmax.template step<BC>(s, o, p);
      if constexpr (Dropout) drop<bf16, 1, BC>(p, br, b, h, kept, u0, t0 + rows, t4, my_t);

      // O += P V over the tile's keys in four k-steps.
      fence_operands(o[0]);
      wgmma::fence();
      const std::uint64_t vd = v_desc(stage);
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        std::uint32_t pf[4];
        p_fragment(p[0], kk, pf);
        m64n64k16_rs<bf16>(o[0], pf, vd + kk * (16 * 128 / 16));
      }
      wgmma::commit();
      wgmma::wait<0>();
      fence_operands(o[0]);
      __syncthreads();  // the stage read here is refilled in the next iteration
    }

    writer.finish(o, softmax, br, kept, t0 + rows, t4, my_t);
    if (team_tile.zero_gaps) {
      writer.template zero_gaps<1>(kept, team_tile.seg_end, t0 + rows, t4, my_t);
    }
#else
    (void)team;
#endif
  }
};

// As mma::forward_branches<64>, on wgmma (the caller checked compiled()).
template <class Q, class K, class V, class OutV, class LseV>
void forward_branches(const Kokkos::Cuda& space, const Geometry& g,
                      const BranchLaunch<Kokkos::CudaSpace, float>& base, const Q& q, const K& k,
                      const V& v, const OutV& out, const LseV& lse, bool with_lse,
                      bool zero_unkept) {
  using Tiles = WgmmaForwardTiles;
  const auto kernel_of = [](auto dropout) {
    return mma::KernelType<ForwardKernel<decltype(dropout)::value, Q, K, V, OutV, LseV>>{};
  };
  mma::launch_forward<Tiles>("dilated::improved::forward_wgmma",
                             Tiles::scratch_bytes + Tiles::align, kernel_of, space, g, base, q, k,
                             v, out, lse, with_lse, zero_unkept);
}

}  // namespace dilated::Impl::wgmma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_IMPROVED_WGMMA_FORWARD_HPP
