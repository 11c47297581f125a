// The Improved algorithm's generic team kernels (every backend): flash-attention style, one
// team per tile of one work item (batch, segment, head) of a branch. Tiles of q, k, v and dout
// are loaded into team scratch through the dilation stride (never gathered in device memory);
// no score matrix larger than one tile ever exists.
//   forward : a team owns `query_rows` query rows, streams key/value tiles with an online
//             softmax (running max and sum) and writes its rows and their log-sum-exp;
//   dq pass : a team owns query rows, streams key tiles, accumulates dq (or, in `delta` mode,
//             the per-branch D_t of detached longnet weights);
//   dkdv    : a team owns `key_rows` key rows, streams query tiles, accumulates dk and dv.
// Probabilities are recomputed from the merged log-sum-exp L: w P_i = output_scale exp(s - L)
// for both semantics (grouped: L = lse_i, w = 1/G; longnet: w = exp(lse_i - L)). Every row of
// dq (resp. dk, dv) of a branch belongs to one team, so no atomics are needed.
#ifndef DILATED_IMPL_IMPROVED_KERNELS_HPP
#define DILATED_IMPL_IMPROVED_KERNELS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Geometry.hpp>
#include <impl/Dilated_BranchPlan.hpp>
#include <impl/Dilated_Dropout.hpp>
#include <impl/Dilated_ImprovedHostBackward.hpp>
#include <impl/Dilated_ImprovedHostTile.hpp>
#include <impl/Dilated_OriginalKernels.hpp>

#include <Kokkos_Core.hpp>

namespace dilated::Impl {

// One launch of a branch: the branch's scalars plus the tiling. Team `r` of the launch works
// on item (item_begin + r) / tiles, tile (item_begin + r) % tiles.
template <class Space, class Acc>
struct TiledLaunch {
  BranchLaunch<Space, Acc> branch;
  int query_rows = 1, key_rows = 1;  // tile heights
  int ld = 1;                        // scratch row length: d + pad
  int tiles = 1;                     // tiles per item
  int scratch_level = 0;             // team scratch level holding the tiles

  // Teams of `team_rows` kept rows each (query rows, or key rows for key-major passes), tiles of
  // query_rows x key_rows: as many tiles per item as the branch's longest item needs.
  void tile_by(int query, int key, int team_rows) {
    query_rows = query;
    key_rows = key;
    tiles = (branch.plan.max_kept + team_rows - 1) / team_rows;
  }

  struct Tile {
    typename BranchPlan<Space>::Item item;
    int first, count;  // kept indices [first, first + count) of the team's own tile
  };
  template <class Member>
  KOKKOS_INLINE_FUNCTION Tile tile(const Member& team, int rows) const {
    return tile_at(branch.item_begin + team.league_rank(), rows);
  }
  // Tile `index` of the launch (item index / tiles, tile index % tiles); Index as in
  // BranchPlan::item.
  template <class Index>
  KOKKOS_INLINE_FUNCTION Tile tile_at(Index index, int rows) const {
    const auto it = branch.plan.item(index / tiles, branch.n);
    const int first = static_cast<int>(index % tiles) * rows;
    const int count = it.kept.count - first < rows ? it.kept.count - first : rows;
    return {it, first, count > 0 ? count : 0};
  }
};

template <class ExecSpace, class Acc>
TiledLaunch<typename ExecSpace::memory_space, Acc> tiled_launch(
    const Geometry& g, int branch, const BranchLaunch<typename ExecSpace::memory_space, Acc>& base,
    int batch) {
  TiledLaunch<typename ExecSpace::memory_space, Acc> launch;
  launch.branch = base;
  launch.branch.plan = make_branch_plan<typename ExecSpace::memory_space>(g, branch, batch, base.n);
  return launch;
}

// dst[r * ld + c] = factor * src(b, kept(first + r), h, c) for r < count, c < d.
template <class Member, class View, class Acc>
KOKKOS_INLINE_FUNCTION void load_tile(const Member& team, const View& src, int b, int h,
                                      const KeptPositions& kept, int first, int count, int d,
                                      int ld, Acc factor, Acc* dst) {
  Kokkos::parallel_for(Kokkos::TeamThreadRange(team, count), [&](int r) {
    const int p = kept.position(first + r);
    Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d),
                         [&](int c) { dst[r * ld + c] = factor * Acc(src(b, p, h, c)); });
  });
}

template <class Acc>
KOKKOS_INLINE_FUNCTION Acc dot(const Acc* a, const Acc* b, int d) {
  Acc s = 0;
  for (int c = 0; c < d; ++c)
    s += a[c] * b[c];
  return s;
}

// Forward of one branch. grouped: rows are written (each belongs to one branch) with the
// branch's log-sum-exp when `lse_out` is kept; longnet: merged into what earlier branches left
// in out/lse (out' = out e^(L - L') + o_i e^(lse_i - L'), L' = logaddexp(L, lse_i)). With
// with_output = false only the log-sum-exp is produced (backward without a saved lse).
template <class ExecSpace, class QV, class KV, class VV, class OutV, class LseV>
struct ImprovedForwardKernel {
  using Acc = accumulation_t<typename QV::value_type>;
  using Space = typename ExecSpace::memory_space;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;

  TiledLaunch<Space, Acc> launch;
  QV q;
  KV k;
  VV v;
  OutV out;
  LseV lse;
  bool with_output = true;
  bool with_lse = true;

  // Host float runs the register-blocked micro-kernels (Dilated_ImprovedHostTile.hpp).
  static constexpr bool use_host_tile = host_tile::enabled_v<ExecSpace, Acc>;
  bool host_tiles = use_host_tile;  // launch_tiles: false under DILATED_DISABLE_HOST_TILES

  // Scratch entries: Q, O (query_rows x ld), K, V (key_rows x ld), S, 3 row statistics; the
  // host micro-kernels' padded layout instead when they run.
  KOKKOS_INLINE_FUNCTION static long scratch_entries(int query_rows, int key_rows, int ld,
                                                     bool tiles = use_host_tile) {
    if constexpr (use_host_tile) {
      if (tiles) return host_tile::ForwardLayout(query_rows, key_rows, ld).entries();
    }
    return 2L * query_rows * ld + 2L * key_rows * ld + long(query_rows) * key_rows +
           3L * query_rows;
  }

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
    if constexpr (use_host_tile) {
      if (host_tiles) {
        host_tile::forward(*this, team);
        return;
      }
    }
#endif
    const auto& br = launch.branch;
    const auto tile = launch.tile(team, launch.query_rows);
    if (tile.count == 0) return;
    const int d = br.d, ld = launch.ld, BR = launch.query_rows, BC = launch.key_rows;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count;
    const KeptPositions& kept = tile.item.kept;
    Acc* Qs = static_cast<Acc*>(team.team_scratch(launch.scratch_level)
                                    .get_shmem(sizeof(Acc) * scratch_entries(BR, BC, ld, false)));
    Acc* Os = Qs + BR * ld;
    Acc* Ks = Os + BR * ld;
    Acc* Vs = Ks + BC * ld;
    Acc* S = Vs + BC * ld;
    Acc* row_max = S + BR * BC;
    Acc* row_sum = row_max + BR;
    Acc* row_fix = row_sum + BR;  // exp(old max - new max) of the current key tile

    load_tile(team, q, b, h, kept, tile.first, rows, d, ld, br.scale, Qs);
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) { Os[i * ld + c] = 0; });
      Kokkos::single(Kokkos::PerThread(team), [&]() {
        row_max[i] = -math::infinity<Acc>();
        row_sum[i] = 0;
      });
    });
    // Causal: keys after the tile's last query are hidden from every row: not visited.
    const int key_end = br.causal ? tile.first + rows : kept.count;
    for (int u0 = 0; u0 < key_end; u0 += BC) {
      const int cols = key_end - u0 < BC ? key_end - u0 : BC;
      team.team_barrier();
      load_tile(team, k, b, h, kept, u0, cols, d, ld, Acc(1), Ks);
      if (with_output) load_tile(team, v, b, h, kept, u0, cols, d, ld, Acc(1), Vs);
      team.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
        const int t = tile.first + i;
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, cols), [&](int j) {
          S[i * BC + j] =
              (br.causal && u0 + j > t) ? -math::infinity<Acc>() : dot(Qs + i * ld, Ks + j * ld, d);
        });
      });
      team.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
        const int t = tile.first + i;
        Acc* s = S + i * BC;
        // The running max joins the reduction through key 0, whose vector lane is the one that
        // updates it below (Kokkos::single): no other lane reads row_max[i] before that write
        // (a cross-lane read, then a write, is a race under independent thread scheduling).
        // The first key of a segment is visible to every row, so after the first tile the
        // running max is finite and no exp(-inf - -inf) arises.
        Acc new_max;
        Kokkos::parallel_reduce(
            Kokkos::ThreadVectorRange(team, cols),
            [&](int j, Acc& x) {
              const Acc v = j == 0 && row_max[i] > s[0] ? row_max[i] : s[j];
              x = v > x ? v : x;
            },
            Kokkos::Max<Acc>(new_max));
        Acc tile_sum;
        Kokkos::parallel_reduce(
            Kokkos::ThreadVectorRange(team, cols),
            [&](int j, Acc& x) {
              const Acc p = math::exp(s[j] - new_max);
              x += p;
              s[j] = p * Acc(br.dropout.factor(br.plan.branch, b, h, kept.position(t),
                                               kept.position(u0 + j)));
            },
            tile_sum);
        Kokkos::single(Kokkos::PerThread(team), [&]() {
          const Acc old_max = row_max[i];
          const Acc fix = old_max == -math::infinity<Acc>() ? Acc(0) : math::exp(old_max - new_max);
          row_fix[i] = fix;
          row_sum[i] = row_sum[i] * fix + tile_sum;
          row_max[i] = new_max;
        });
      });
      team.team_barrier();
      if (with_output) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
          const Acc fix = row_fix[i];
          const Acc* p = S + i * BC;
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
            Acc o = Os[i * ld + c] * fix;
            for (int j = 0; j < cols; ++j)
              o += p[j] * Vs[j * ld + c];
            Os[i * ld + c] = o;
          });
        });
      }
    }
    team.team_barrier();
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
      const int pt = kept.position(tile.first + i);
      const Acc lse_i = row_max[i] + math::log(row_sum[i]);
      Acc keep_old = 0, weight = br.output_scale, merged = lse_i;
      if (br.longnet) {
        Acc previous;
        Kokkos::single(
            Kokkos::PerThread(team), [&](Acc& x) { x = Acc(lse(b, pt, h)); }, previous);
        const auto mw = merge_lse(previous, lse_i);
        merged = mw.merged;
        keep_old = mw.keep_old;
        weight = mw.weight;
      }
      if (with_output) {
        using T = typename OutV::value_type;
        const Acc w = weight / row_sum[i];
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
          const Acc old = keep_old != Acc(0) ? keep_old * Acc(out(b, pt, h, c)) : Acc(0);
          out(b, pt, h, c) = static_cast<T>(old + w * Os[i * ld + c]);
        });
      }
      if (with_lse) {
        Kokkos::single(Kokkos::PerThread(team),
                       [&]() { lse(b, pt, h) = static_cast<typename LseV::value_type>(merged); });
      }
    });
  }
};

// The scores, probabilities and dS of one (query tile, key tile) pair, shared by the two
// backward passes: for kept query index t = t0 + i and key u = u0 + j,
//   P~ = output_scale exp(s - L_t)  (w P_i),   dP = g_t . v_u,
//   PZ[i][j] = P~ Z,                            dS[i][j] = P~ (Z dP - D_t).
// Q holds scale * q. Masked pairs (causal) get zeros.
template <class Member, class Space, class Acc>
KOKKOS_INLINE_FUNCTION void backward_tile(const Member& team, const BranchLaunch<Space, Acc>& br,
                                          int b, int h, const KeptPositions& kept, int t0, int rows,
                                          int u0, int cols, int d, int ld, int lds, const Acc* Q,
                                          const Acc* G, const Acc* K, const Acc* V, const Acc* L,
                                          const Acc* D, Acc* PZ, Acc* dS) {
  Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
    const int t = t0 + i;
    Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, cols), [&](int j) {
      const int u = u0 + j;
      Acc pz = 0, ds = 0;
      if (!(br.causal && u > t)) {
        const Acc p = br.output_scale * math::exp(dot(Q + i * ld, K + j * ld, d) - L[i]);
        const Acc z =
            Acc(br.dropout.factor(br.plan.branch, b, h, kept.position(t), kept.position(u)));
        pz = p * z;
        ds = p * (z * dot(G + i * ld, V + j * ld, d) - D[i]);
      }
      PZ[i * lds + j] = pz;
      dS[i * lds + j] = ds;
    });
  });
}

// dq of one branch (query-major). In `delta` mode it produces instead, per row, the branch's
// own D_t = g_t . o_i,t = sum_u P_i Z dP (detached longnet weights), as
// sum_u P~ Z dP / sum_u P~ (P~ = exp(s - L) = w P_i, so the weight cancels).
template <class ExecSpace, class QV, class KV, class VV, class GV, class LseV, class DeltaV,
          class GradV>
struct ImprovedDqKernel {
  using Acc = accumulation_t<typename QV::value_type>;
  using Space = typename ExecSpace::memory_space;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;

  TiledLaunch<Space, Acc> launch;
  QV q;
  KV k;
  VV v;
  GV dout;
  LseV lse;      // merged log-sum-exp L (b, n, h)
  DeltaV delta;  // D_t (b, n, h): read, or written in delta mode
  GradV dq;
  bool accumulate = false;  // dq += (longnet: branches add up) or dq = (grouped)
  bool delta_mode = false;

  // Host float runs the register-blocked micro-kernels (Dilated_ImprovedHostBackward.hpp).
  static constexpr bool use_host_tile = host_tile::enabled_v<ExecSpace, Acc>;
  bool host_tiles = use_host_tile;  // launch_tiles: false under DILATED_DISABLE_HOST_TILES

  // Q, G, dQ (query_rows x ld), K, V (key_rows x ld), PZ, dS, L, D, 2 row sums; the host
  // micro-kernels' padded layout instead when they run.
  KOKKOS_INLINE_FUNCTION static long scratch_entries(int query_rows, int key_rows, int ld,
                                                     bool tiles = use_host_tile) {
    if constexpr (use_host_tile) {
      if (tiles) return host_tile::DqLayout(query_rows, key_rows, ld).entries();
    }
    return 3L * query_rows * ld + 2L * key_rows * ld + 2L * query_rows * key_rows + 4L * query_rows;
  }

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
    if constexpr (use_host_tile) {
      if (host_tiles) {
        host_tile::dq(*this, team);
        return;
      }
    }
#endif
    const auto& br = launch.branch;
    const auto tile = launch.tile(team, launch.query_rows);
    if (tile.count == 0) return;
    const int d = br.d, ld = launch.ld, BR = launch.query_rows, BC = launch.key_rows;
    const int b = tile.item.b, h = tile.item.head, rows = tile.count;
    const KeptPositions& kept = tile.item.kept;
    Acc* Qs = static_cast<Acc*>(team.team_scratch(launch.scratch_level)
                                    .get_shmem(sizeof(Acc) * scratch_entries(BR, BC, ld, false)));
    Acc* Gs = Qs + BR * ld;
    Acc* dQ = Gs + BR * ld;
    Acc* Ks = dQ + BR * ld;
    Acc* Vs = Ks + BC * ld;
    Acc* PZ = Vs + BC * ld;
    Acc* dS = PZ + BR * BC;
    Acc* L = dS + BR * BC;
    Acc* D = L + BR;
    Acc* sum_pzdp = D + BR;  // delta mode: sum P~ Z dP and sum P~ per row
    Acc* sum_p = sum_pzdp + BR;

    load_tile(team, q, b, h, kept, tile.first, rows, d, ld, br.scale, Qs);
    load_tile(team, dout, b, h, kept, tile.first, rows, d, ld, Acc(1), Gs);
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) { dQ[i * ld + c] = 0; });
      Kokkos::single(Kokkos::PerThread(team), [&]() {
        const int pt = kept.position(tile.first + i);
        L[i] = Acc(lse(b, pt, h));
        D[i] = delta_mode ? Acc(0) : Acc(delta(b, pt, h));
        sum_pzdp[i] = 0;
        sum_p[i] = 0;
      });
    });
    const int key_end = br.causal ? tile.first + rows : kept.count;
    for (int u0 = 0; u0 < key_end; u0 += BC) {
      const int cols = key_end - u0 < BC ? key_end - u0 : BC;
      team.team_barrier();
      load_tile(team, k, b, h, kept, u0, cols, d, ld, Acc(1), Ks);
      load_tile(team, v, b, h, kept, u0, cols, d, ld, Acc(1), Vs);
      team.team_barrier();
      backward_tile(team, br, b, h, kept, tile.first, rows, u0, cols, d, ld, BC, Qs, Gs, Ks, Vs, L,
                    D, PZ, dS);
      team.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
        if (delta_mode) {
          // With D = 0, dS = P~ Z dP: its row sum is what D_t needs, beside sum P~.
          Acc a, w;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, cols), [&](int j, Acc& x) { x += dS[i * BC + j]; },
              a);
          const int t = tile.first + i;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, cols),
              [&](int j, Acc& x) {
                if (!(br.causal && u0 + j > t))
                  x += math::exp(dot(Qs + i * ld, Ks + j * ld, d) - L[i]);
              },
              w);
          Kokkos::single(Kokkos::PerThread(team), [&]() {
            sum_pzdp[i] += a;
            sum_p[i] += w;
          });
          return;
        }
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
          Acc acc = dQ[i * ld + c];
          for (int j = 0; j < cols; ++j)
            acc += dS[i * BC + j] * Ks[j * ld + c];
          dQ[i * ld + c] = acc;
        });
      });
    }
    team.team_barrier();
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
      const int pt = kept.position(tile.first + i);
      if (delta_mode) {
        Kokkos::single(Kokkos::PerThread(team), [&]() {
          // sum_p = exp(lse_i - L) underflows to 0 when the branch's weight does: then the
          // branch contributes no gradient to the row, and D_t must not be 0/0.
          const Acc d_t = sum_p[i] > Acc(0) ? sum_pzdp[i] / sum_p[i] : Acc(0);
          delta(b, pt, h) = static_cast<typename DeltaV::value_type>(d_t);
        });
        return;
      }
      using T = typename GradV::value_type;
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
        const Acc g = br.scale * dQ[i * ld + c];
        dq(b, pt, h, c) = static_cast<T>(accumulate ? Acc(dq(b, pt, h, c)) + g : g);
      });
    });
  }
};

// dk and dv of one branch (key-major): a team owns key rows u and streams the query tiles that
// can see them (causal: from the tile holding u0 on).
template <class ExecSpace, class QV, class KV, class VV, class GV, class LseV, class DeltaV,
          class DKV, class DVV>
struct ImprovedDkDvKernel {
  using Acc = accumulation_t<typename QV::value_type>;
  using Space = typename ExecSpace::memory_space;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;

  TiledLaunch<Space, Acc> launch;
  QV q;
  KV k;
  VV v;
  GV dout;
  LseV lse;
  DeltaV delta;
  DKV dk;
  DVV dv;
  bool accumulate = false;

  // Host float runs the register-blocked micro-kernels (Dilated_ImprovedHostBackward.hpp).
  static constexpr bool use_host_tile = host_tile::enabled_v<ExecSpace, Acc>;
  bool host_tiles = use_host_tile;  // launch_tiles: false under DILATED_DISABLE_HOST_TILES

  // K, V, dK, dV (key_rows x ld), Q, G (query_rows x ld), PZ, dS, L, D; the host
  // micro-kernels' padded layout instead when they run.
  KOKKOS_INLINE_FUNCTION static long scratch_entries(int query_rows, int key_rows, int ld,
                                                     bool tiles = use_host_tile) {
    if constexpr (use_host_tile) {
      if (tiles) return host_tile::DkDvLayout(query_rows, key_rows, ld).entries();
    }
    return 4L * key_rows * ld + 2L * query_rows * ld + 2L * query_rows * key_rows + 2L * query_rows;
  }

  KOKKOS_FUNCTION void operator()(const Member& team) const {
#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
    if constexpr (use_host_tile) {
      if (host_tiles) {
        host_tile::dkdv(*this, team);
        return;
      }
    }
#endif
    const auto& br = launch.branch;
    const auto tile = launch.tile(team, launch.key_rows);
    if (tile.count == 0) return;
    const int d = br.d, ld = launch.ld, BR = launch.query_rows, BC = launch.key_rows;
    const int b = tile.item.b, h = tile.item.head, cols = tile.count, u0 = tile.first;
    const KeptPositions& kept = tile.item.kept;
    Acc* Ks = static_cast<Acc*>(team.team_scratch(launch.scratch_level)
                                    .get_shmem(sizeof(Acc) * scratch_entries(BR, BC, ld, false)));
    Acc* Vs = Ks + BC * ld;
    Acc* dK = Vs + BC * ld;
    Acc* dV = dK + BC * ld;
    Acc* Qs = dV + BC * ld;
    Acc* Gs = Qs + BR * ld;
    Acc* PZ = Gs + BR * ld;
    Acc* dS = PZ + BR * BC;
    Acc* L = dS + BR * BC;
    Acc* D = L + BR;

    load_tile(team, k, b, h, kept, u0, cols, d, ld, Acc(1), Ks);
    load_tile(team, v, b, h, kept, u0, cols, d, ld, Acc(1), Vs);
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](int j) {
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
        dK[j * ld + c] = 0;
        dV[j * ld + c] = 0;
      });
    });
    const int m = kept.count;
    for (int t0 = br.causal ? (u0 / BR) * BR : 0; t0 < m; t0 += BR) {
      const int rows = m - t0 < BR ? m - t0 : BR;
      team.team_barrier();
      load_tile(team, q, b, h, kept, t0, rows, d, ld, br.scale, Qs);
      load_tile(team, dout, b, h, kept, t0, rows, d, ld, Acc(1), Gs);
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](int i) {
        Kokkos::single(Kokkos::PerThread(team), [&]() {
          const int pt = kept.position(t0 + i);
          L[i] = Acc(lse(b, pt, h));
          D[i] = Acc(delta(b, pt, h));
        });
      });
      team.team_barrier();
      backward_tile(team, br, b, h, kept, t0, rows, u0, cols, d, ld, BC, Qs, Gs, Ks, Vs, L, D, PZ,
                    dS);
      team.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](int j) {
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
          Acc ak = dK[j * ld + c], av = dV[j * ld + c];
          for (int i = 0; i < rows; ++i) {
            ak += dS[i * BC + j] * Qs[i * ld + c];  // Q holds scale * q
            av += PZ[i * BC + j] * Gs[i * ld + c];
          }
          dK[j * ld + c] = ak;
          dV[j * ld + c] = av;
        });
      });
    }
    team.team_barrier();
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](int j) {
      const int pu = kept.position(u0 + j);
      using TK = typename DKV::value_type;
      using TV = typename DVV::value_type;
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, d), [&](int c) {
        const Acc gk = dK[j * ld + c], gv = dV[j * ld + c];
        dk(b, pu, h, c) = static_cast<TK>(accumulate ? Acc(dk(b, pu, h, c)) + gk : gk);
        dv(b, pu, h, c) = static_cast<TV>(accumulate ? Acc(dv(b, pu, h, c)) + gv : gv);
      });
    });
  }
};

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_IMPROVED_KERNELS_HPP
