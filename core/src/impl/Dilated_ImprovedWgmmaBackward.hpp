// The Hopper backward of the Improved algorithm (sm_90a, head_dim 64, half/bf16): the two passes
// of mma::DqKernel / mma::DkDvKernel (Dilated_ImprovedMmaBackward.hpp) with their tile products
// on wgmma. A team is one warpgroup owning 64 rows; each warp keeps 16 of them, and the
// accumulator layout of m64n64 is, per warp, mma.sync's m16n8 layout repeated over the columns,
// so the elementwise work between the products (P~ from the merged log-sum-exp, masks, dropout,
// dS) is the mma.sync kernels' line for line. Only the products differ:
//   dq pass  : S = Q K^T and dP = dO V^T from shared memory (K-major), dQ += dS K with dS from
//              registers and K read MN-major (the same swizzled tile, transposed by wgmma);
//              D_t of the team's rows from dO . out first when the caller asks (read once from
//              global memory, two threads a row), written for the dk/dv pass.
//   dkdv pass: S^T = K Q^T and dP^T = V dO^T from shared memory, dV += (P~Z)^T dO and
//              dK += dS^T Q with the A operands from registers and dO, Q read MN-major.
// Products are warpgroup-wide: every branch around them is team-uniform (the causal skips are
// per team, not per warp as in the mma.sync kernels). One stage of the streamed tiles: the
// 40 KiB of level-0 scratch hold four 8 KiB tiles, and the other teams of the multiprocessor
// (4 or 3) cover a team's loads.
#ifndef DILATED_IMPL_IMPROVED_WGMMA_BACKWARD_HPP
#define DILATED_IMPL_IMPROVED_WGMMA_BACKWARD_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <Dilated_TensorCoreTilePolicies.hpp>
#include <impl/Dilated_ImprovedMmaBackward.hpp>
#include <impl/Dilated_RowPieces.hpp>
#include <impl/Dilated_WgmmaPrimitives.hpp>

#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace dilated::Impl::wgmma {

#if defined(DILATED_HAVE_WGMMA_DEVICE)
// The team's scratch at the swizzle's 1024-byte period (of shared addresses, not generic ones).
template <class Member>
__device__ __forceinline__ std::uint16_t* swizzle_aligned_scratch(const Member& team) {
  using Tiles = WgmmaBackwardTiles;
  auto* raw = reinterpret_cast<std::uint16_t*>(
      team.team_shmem().get_shmem(Tiles::scratch_bytes + Tiles::align));
  const std::uint32_t address = mma::smem_address(raw);
  return raw + ((Tiles::align - address % Tiles::align) % Tiles::align) / 2;
}

// The A fragment (mma.sync's m16n8k16 layout) of k-step kk of a 64-column accumulator tile
// rounded to half/bf16: columns 16 kk .. 16 kk + 15 of the warp's 16 rows.
template <bool Bf16>
__device__ __forceinline__ void a_fragment(const float (&x)[8][4], int kk, std::uint32_t (&a)[4]) {
  a[0] = mma::pack2<Bf16>(x[2 * kk][0], x[2 * kk][1]);
  a[1] = mma::pack2<Bf16>(x[2 * kk][2], x[2 * kk][3]);
  a[2] = mma::pack2<Bf16>(x[2 * kk + 1][0], x[2 * kk + 1][1]);
  a[3] = mma::pack2<Bf16>(x[2 * kk + 1][2], x[2 * kk + 1][3]);
}
#endif

template <bool Dropout, class QV, class KV, class VV, class GV, class OV, class LseV, class DeltaV,
          class GradV>
struct DqKernel {
  using Tiles = WgmmaBackwardTiles;
  static constexpr int D = Tiles::d;
  static constexpr unsigned min_blocks = Tiles::dq_min_blocks;
  using T = typename QV::non_const_value_type;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  mma::BranchSet<TiledLaunch<Kokkos::CudaSpace, float>> set;  // as mma::DqKernel
  QV q;
  KV k;
  VV v;
  GV dout;
  OV out;  // read only when write_delta
  LseV lse;
  DeltaV delta;
  GradV dq;
  bool accumulate = false;
  bool in_pieces = false;
  bool write_delta = false;
  float delta_scale = 1.f;

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(DILATED_HAVE_WGMMA_DEVICE)
    using namespace mma;
    const int rank = team.league_rank();
    const int which = set.find(rank);
    const auto& br = set.launches[0].branch;  // see mma::DqKernel
    const int branch_index = set.launches[which].branch.plan.branch;
    const auto tile = set.launches[which].tile_at(rank - set.first_team[which], Tiles::rows);
    if (tile.count == 0) return;
    constexpr int BC = Tiles::rows, TH = Tiles::tile_halves;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count, t0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;
    using Half = std::uint16_t;
    Half* smem = swizzle_aligned_scratch(team);
    Half* Qs = smem;
    Half* Gs = smem + TH;
    Half* Ks = smem + 2 * TH;
    Half* Vs = smem + 3 * TH;
    float* Ds = reinterpret_cast<float*>(smem + 4 * TH);
    const std::uint32_t base = smem_address(smem);
    const std::uint64_t q_desc = descriptor(base, 1024), g_desc = descriptor(base + 2 * TH, 1024),
                        k_desc = descriptor(base + 4 * TH, 1024),
                        v_desc = descriptor(base + 6 * TH, 1024);

    const TileLoader<D, D, Tiles::rows, true> q_loader(q, b, h, kept, tid),
        g_loader(dout, b, h, kept, tid), k_loader(k, b, h, kept, tid), v_loader(v, b, h, kept, tid);
    q_loader.load(t0, rows, Qs);
    g_loader.load(t0, rows, Gs);
    mma::commit();
    if (write_delta) {
      // D_t = (dout . out) * delta_scale, two threads a row (32 columns each, 16-byte reads:
      // mma::applies checked both views' rows).
      const int r = tid / 2, part = tid % 2;
      float sum = 0.f;
      const int p = kept.position(r < rows ? t0 + r : t0);
      if (r < rows) {
        const auto* o4 = reinterpret_cast<const uint4*>(&out(b, p, h, 32 * part));
        const auto* g4 = reinterpret_cast<const uint4*>(&dout(b, p, h, 32 * part));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint4 x = o4[i], y = g4[i];
          const std::uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            float a[2], c[2];
            unpack2<bf16>(xs[j], a);
            unpack2<bf16>(ys[j], c);
            sum = fmaf(a[0], c[0], fmaf(a[1], c[1], sum));
          }
        }
      }
      sum += __shfl_xor_sync(0xffffffff, sum, 1);
      if (part == 0) {
        Ds[r] = sum * delta_scale;
        if (r < rows) delta(b, p, h) = sum * delta_scale;
      }
      __syncthreads();
    }

    constexpr float log2e = 1.4426950408889634f;
    const float scale_log2 = static_cast<float>(br.scale) * log2e;
    const float log2_os = log2f(static_cast<float>(br.output_scale));
    const int my_t[2] = {t0 + warp * 16 + g, t0 + warp * 16 + g + 8};
    float L2[2], Dt[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool valid = my_t[r] < t0 + rows;
      const int pt = kept.position(valid ? my_t[r] : t0);
      L2[r] = (valid ? static_cast<float>(lse(b, pt, h)) * log2e : 0.f) - log2_os;
      if (write_delta) {
        Dt[r] = Ds[warp * 16 + g + 8 * r];
      } else {
        Dt[r] = valid ? static_cast<float>(delta(b, pt, h)) : 0.f;
      }
    }
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    const int key_end = br.causal ? t0 + rows : kept.count;
    for (int u0 = 0; u0 < key_end; u0 += BC) {
      __syncthreads();  // the previous tile's products are done with the stage
      const int cnt = key_end - u0 < BC ? key_end - u0 : BC;
      k_loader.load(u0, cnt, Ks);
      v_loader.load(u0, cnt, Vs);
      mma::commit();
      wait_groups<0>();
      fence_shared_for_async();
      __syncthreads();

      float s[BC / 8][4], dp[BC / 8][4];
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        m64n64k16_ss<bf16>(s, q_desc + 2 * kk, k_desc + 2 * kk, kk > 0);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        m64n64k16_ss<bf16>(dp, g_desc + 2 * kk, v_desc + 2 * kk, kk > 0);
      wgmma::commit();
      wgmma::wait<0>();
      fence_operands(s);
      fence_operands(dp);

      // dS in place of s (mma::DqKernel's loop; the mask test team-uniform).
      const bool masked = u0 + BC > key_end || (br.causal && u0 + BC - 1 > t0);
#pragma unroll
      for (int j = 0; j < BC / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2, u = u0 + j * 8 + 2 * t4 + (e & 1);
          const bool visible = !masked || (u < key_end && !(br.causal && u > my_t[r]));
          float ds = 0.f;
          if (visible) {
            const float p = fast_exp2(fmaf(s[j][e], scale_log2, -L2[r]));
            float z = 1.f;
            if constexpr (Dropout)
              z = static_cast<float>(
                  br.dropout.factor(branch_index, b, h, kept.position(my_t[r]), kept.position(u)));
            ds = p * (z * dp[j][e] - Dt[r]);
          }
          s[j][e] = ds;
        }

      // dQ += dS K: K's tile MN-major (16 keys = 16 rows of 128 bytes per k-step).
      fence_operands(acc);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        std::uint32_t af[4];
        a_fragment<bf16>(s, kk, af);
        m64n64k16_rs<bf16>(acc, af, k_desc + kk * (16 * 128 / 16));
      }
      wgmma::commit();
      wgmma::wait<0>();
      fence_operands(acc);
    }
    write_grad_rows<D, bf16, T>(dq, acc, static_cast<float>(br.scale), kept, b, h, my_t, t0 + rows,
                                t4, accumulate, in_pieces);
#else
    (void)team;
#endif
  }
};

template <bool Dropout, class QV, class KV, class VV, class GV, class LseV, class DeltaV, class DKV,
          class DVV>
struct DkDvKernel {
  using Tiles = WgmmaBackwardTiles;
  static constexpr int D = Tiles::d;
  static constexpr unsigned min_blocks = Tiles::dkdv_min_blocks;
  using T = typename QV::non_const_value_type;
  using Member = Kokkos::TeamPolicy<Kokkos::Cuda>::member_type;
  static constexpr bool bf16 = !std::is_same_v<T, Kokkos::Experimental::half_t>;

  mma::BranchSet<TiledLaunch<Kokkos::CudaSpace, float>> set;  // as mma::DkDvKernel
  QV q;
  KV k;
  VV v;
  GV dout;
  LseV lse;
  DeltaV delta;
  DKV dk;
  DVV dv;
  bool accumulate = false;
  bool in_pieces = false;

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if defined(DILATED_HAVE_WGMMA_DEVICE)
    using namespace mma;
    const int rank = team.league_rank();
    const int which = set.find(rank);
    const auto& br = set.launches[0].branch;  // see mma::DqKernel
    const int branch_index = set.launches[which].branch.plan.branch;
    const auto tile =
        set.launches[which].tile_at(rank - static_cast<int>(set.first_team[which]), Tiles::rows);
    if (tile.count == 0) return;
    constexpr int BR = Tiles::rows, TH = Tiles::tile_halves;
    const int b = tile.item.b, h = tile.item.head, cols = tile.count, u0 = tile.first;
    const KeptPositions kept = tile.item.kept;
    const int m = kept.count;
    const int warp = team.team_rank(), lane = threadIdx.x, tid = warp * 32 + lane;
    const int g = lane / 4, t4 = lane % 4;
    using Half = std::uint16_t;
    Half* smem = swizzle_aligned_scratch(team);
    Half* Ks = smem;
    Half* Vs = smem + TH;
    Half* Qs = smem + 2 * TH;
    Half* Gs = smem + 3 * TH;
    float* L2s = reinterpret_cast<float*>(smem + 4 * TH);
    float* Ds = L2s + BR;
    const std::uint32_t base = smem_address(smem);
    const std::uint64_t k_desc = descriptor(base, 1024), v_desc = descriptor(base + 2 * TH, 1024),
                        q_desc = descriptor(base + 4 * TH, 1024),
                        g_desc = descriptor(base + 6 * TH, 1024);

    const TileLoader<D, D, Tiles::rows, true> k_loader(k, b, h, kept, tid),
        v_loader(v, b, h, kept, tid), q_loader(q, b, h, kept, tid), g_loader(dout, b, h, kept, tid);
    k_loader.load(u0, cols, Ks);
    v_loader.load(u0, cols, Vs);
    mma::commit();

    constexpr float log2e = 1.4426950408889634f;
    const float scale_log2 = static_cast<float>(br.scale) * log2e;
    const float log2_os = log2f(static_cast<float>(br.output_scale));
    const int my_u[2] = {u0 + warp * 16 + g, u0 + warp * 16 + g + 8};
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dk_acc[n][e] = dv_acc[n][e] = 0.f;

    // Causal: query tiles from the one holding the team's first key (earlier queries see none
    // of its keys).
    for (int t0 = br.causal ? (u0 / BR) * BR : 0; t0 < m; t0 += BR) {
      const int rows = m - t0 < BR ? m - t0 : BR;
      __syncthreads();  // the previous query tile is no longer read
      q_loader.load(t0, rows, Qs);
      g_loader.load(t0, rows, Gs);
      mma::commit();
      if (tid < BR) {
        const bool valid = tid < rows;
        const int pt = kept.position(valid ? t0 + tid : t0);
        L2s[tid] = (valid ? static_cast<float>(lse(b, pt, h)) * log2e : 0.f) - log2_os;
        Ds[tid] = valid ? static_cast<float>(delta(b, pt, h)) : 0.f;
      }
      wait_groups<0>();
      fence_shared_for_async();
      __syncthreads();

      float st[BR / 8][4], dpt[BR / 8][4];  // S^T, dP^T: rows = the team's keys, columns = queries
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        m64n64k16_ss<bf16>(st, k_desc + 2 * kk, q_desc + 2 * kk, kk > 0);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        m64n64k16_ss<bf16>(dpt, v_desc + 2 * kk, g_desc + 2 * kk, kk > 0);
      wgmma::commit();
      wgmma::wait<0>();
      fence_operands(st);
      fence_operands(dpt);

      // P~ Z into st, dS into dpt (mma::DkDvKernel's loop; the mask test team-uniform).
      const bool masked = br.causal && u0 + BR - 1 > t0;
#pragma unroll
      for (int j = 0; j < BR / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = j * 8 + 2 * t4 + (e & 1), tq = t0 + i, r = e / 2;
          const bool visible = !masked || !(my_u[r] > tq);
          float pz = 0.f, ds = 0.f;
          if (visible) {
            const float p = fast_exp2(fmaf(st[j][e], scale_log2, -L2s[i]));
            float z = 1.f;
            if constexpr (Dropout)
              z = static_cast<float>(
                  br.dropout.factor(branch_index, b, h, kept.position(tq), kept.position(my_u[r])));
            pz = p * z;
            ds = p * (z * dpt[j][e] - Ds[i]);
          }
          st[j][e] = pz;
          dpt[j][e] = ds;
        }

      // dV += (P~Z)^T dO, dK += dS^T Q: dO's and Q's tiles MN-major (16 queries a k-step).
      fence_operands(dv_acc);
      fence_operands(dk_acc);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) {
        std::uint32_t pa[4], da[4];
        a_fragment<bf16>(st, kk, pa);
        a_fragment<bf16>(dpt, kk, da);
        m64n64k16_rs<bf16>(dv_acc, pa, g_desc + kk * (16 * 128 / 16));
        m64n64k16_rs<bf16>(dk_acc, da, q_desc + kk * (16 * 128 / 16));
      }
      wgmma::commit();
      wgmma::wait<0>();
      fence_operands(dv_acc);
      fence_operands(dk_acc);
    }
    write_grad_rows<D, bf16, T>(dk, dk_acc, static_cast<float>(br.scale), kept, b, h, my_u,
                                u0 + cols, t4, accumulate, in_pieces);
    write_grad_rows<D, bf16, T>(dv, dv_acc, 1.f, kept, b, h, my_u, u0 + cols, t4, accumulate,
                                in_pieces);
#else
    (void)team;
#endif
  }
};

// As mma::backward_branches<64>, on wgmma (the caller checked compiled()).
template <class Q, class K, class V, class G, class O, class LseV, class DeltaV, class DQ, class DK,
          class DV>
void backward_branches(const Kokkos::Cuda& space,
                       std::vector<TiledLaunch<Kokkos::CudaSpace, float>> launches, bool together,
                       const Q& q, const K& k, const V& v, const G& dout, const O* out,
                       const LseV& lse, const DeltaV& delta, const DQ& dq, const DK& dk,
                       const DV& dv, bool accumulate) {
  using Tiles = WgmmaBackwardTiles;
  for (const auto& launch : launches) {
    const auto& a = launch.branch;
    const auto& z = launches.front().branch;
    if (a.scale != z.scale || a.output_scale != z.output_scale || a.causal != z.causal ||
        a.dropout.threshold != z.dropout.threshold || a.dropout.seed != z.dropout.seed)
      throw std::logic_error(
          "dilated::Impl::wgmma::backward_branches: launches differ in more than their plans");
  }
  for (auto& launch : launches)
    launch.tile_by(Tiles::rows, Tiles::rows, Tiles::rows);
  const bool dq_pieces = rows_in_pieces(dq), dkdv_pieces = rows_in_pieces(dk) && rows_in_pieces(dv);
  const float delta_scale = static_cast<float>(1.0 / launches.front().branch.output_scale);
  const auto run = [&](auto dropout) {
    constexpr bool with_dropout = decltype(dropout)::value;
    using Dq = DqKernel<with_dropout, Q, K, V, G, O, LseV, DeltaV, DQ>;
    using DkDv = DkDvKernel<with_dropout, Q, K, V, G, LseV, DeltaV, DK, DV>;
    for (const auto& set : mma::branch_sets(launches, together)) {
      const int league = static_cast<int>(set.teams());
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, Dq::min_blocks>> dq_policy(
          space, league, 4, 32);
      dq_policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::scratch_bytes + Tiles::align));
      Kokkos::parallel_for("dilated::improved::dq_wgmma", dq_policy,
                           Dq{set, q, k, v, dout, out ? *out : O(), lse, delta, dq, accumulate,
                              dq_pieces, out != nullptr, delta_scale});
      Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<128, DkDv::min_blocks>> dkdv_policy(
          space, league, 4, 32);
      dkdv_policy.set_scratch_size(0, Kokkos::PerTeam(Tiles::scratch_bytes + Tiles::align));
      Kokkos::parallel_for("dilated::improved::dkdv_wgmma", dkdv_policy,
                           DkDv{set, q, k, v, dout, lse, delta, dk, dv, accumulate, dkdv_pieces});
    }
  };
  if (launches.front().branch.dropout.active()) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

}  // namespace dilated::Impl::wgmma

#endif  // KOKKOS_ENABLE_CUDA
#endif  // DILATED_IMPL_IMPROVED_WGMMA_BACKWARD_HPP
