// The Improved backward on the host in float in one pass over the key tiles (the host path of
// improved_backward_branches; FlashAttention-2's backward): a task owns a run of key tiles of one
// (batch, segment, head) item and, per query tile its keys see,
//   S = Q Kt, dP = G Vt, P~ and dS (Dilated_ImprovedHostBackward.hpp's dk/dv pass, unchanged),
//   dK += dS^T Q, dV += PZ^T G   (the task's own rows: written when its key tile is done),
//   dQ += dS K                   (the item's query rows: into the task's dQ rows),
// five products per (query tile, key tile) where the two passes (dq, then dk/dv) take seven: each
// recomputes S and dP, so that a row of dq and a row of dk/dv each belong to one team. Here the
// rows of dq that several tasks reach are summed after them: each task adds into dQ rows of its
// own (a slot of the workspace), and a second, memory-bound pass adds an item's slots in task
// order and writes dq. With one task per item the slot is the thread's and the task writes dq
// itself.
//
// Tasks: an item's key tiles split into `parts` runs of about equal work (causal: a key tile's
// queries are the rows from it on), parts chosen so that there are about 8 tasks per thread
// (the training shape's 28 items of 2048 rows give 16 threads 140 tasks; 2 threads, 1 part).
// grouped runs every branch's tasks in one launch (a row of dq, dk, dv belongs to one branch);
// longnet adds branch after branch into the same rows, one launch each. Tasks are taken one at a
// time (dynamic), the largest first.
//
// Same contract as the two passes, value for value up to the order of the sums: the same P~,
// dS and dropout factors, dq = scale dQ, dk = scale dK, accumulate adds into dq, dk, dv.
// DILATED_HOST_BACKWARD=two_pass in the environment runs the two passes instead (tests, A/B).
#ifndef DILATED_IMPL_IMPROVED_HOST_FUSED_BACKWARD_HPP
#define DILATED_IMPL_IMPROVED_HOST_FUSED_BACKWARD_HPP

#include <Dilated_Geometry.hpp>
#include <impl/Dilated_BranchPlan.hpp>
#include <impl/Dilated_ImprovedHostBackward.hpp>
#include <impl/Dilated_ScratchPool.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::Impl::host_tile {

// Whether the one-pass backward runs where it applies (float on a host space, no per-branch
// D_t): yes, unless DILATED_HOST_BACKWARD=two_pass. Read at every call.
// Whether the host float backward takes the one pass: the host tiles allowed, no branch needing
// its own D_t first (longnet with detached branch weights), and DILATED_HOST_BACKWARD not
// two_pass. The driver and the scratch plan ask the same question here.
inline bool fused_backward_applies(bool branch_deltas) {
  if (branch_deltas || !allowed()) return false;
  const char* choice = std::getenv("DILATED_HOST_BACKWARD");
  return !(choice && std::string(choice) == "two_pass");
}

inline constexpr const char* fused_backward_label = "dilated::improved::host_backward";

// One task: key tiles [tile_begin, tile_end) of item `item` of branch `branch`; its dQ rows
// [query_begin, the item's kept count) start at 0.
struct FusedTask {
  int branch;
  long item;
  int tile_begin, tile_end, query_begin;
  double work;
};

// Floats of one thread's tiles: Kt, Vt (dp x kp), dK, dV (kp x dp), S, dP (qr x kp), Q, G and K
// copies (64 x dp each), L, D and ones (64 each), from a 64-byte aligned base.
struct FusedLayout {
  static constexpr int rows = 64;  // query and key tile rows (ImprovedTiles<host>)
  int dp;
  explicit constexpr FusedLayout(int d) : dp(round_up(d, lanes)) {}
  constexpr long kt() const { return 0; }
  constexpr long vt() const { return kt() + long(dp) * rows; }
  constexpr long dk() const { return vt() + long(dp) * rows; }
  constexpr long dv() const { return dk() + long(rows) * dp; }
  constexpr long s() const { return dv() + long(rows) * dp; }
  constexpr long dps() const { return s() + long(rows) * rows; }
  constexpr long q() const { return dps() + long(rows) * rows; }
  constexpr long g() const { return q() + long(rows) * dp; }
  constexpr long k() const { return g() + long(rows) * dp; }
  constexpr long values() const { return k() + long(rows) * dp; }
  constexpr long entries() const { return values() + 3L * rows + 64 / sizeof(float); }
};

// The plan of one launch: its tasks in the order they are taken, parts per item, the workspace.
struct FusedPlan {
  std::vector<FusedTask> tasks;
  int parts = 1;
  long slot_rows = 0;      // dQ rows a slot holds: the longest item's, in whole tiles
  std::size_t floats = 0;  // the workspace
};

// Parts per item: about 8 tasks per thread, at most half an item's tiles, at most
// fused_max_parts, and the slots (one dQ row block per part and item) within
// fused_slot_budget bytes.
inline constexpr int fused_max_parts = 16;
inline constexpr double fused_slot_budget = 128.0 * (1 << 20);
inline int fused_parts(long items, int threads, int max_tiles, int d) {
  if (items <= 0) return 1;
  const double slot_bytes =
      double(max_tiles) * FusedLayout::rows * FusedLayout(d).dp * sizeof(float) * items;
  long parts = (8L * threads + items - 1) / items;
  parts = std::min<long>(parts, std::max(1, max_tiles / 2));
  parts = std::min<long>(parts, fused_max_parts);
  parts = std::min<long>(parts, static_cast<long>(fused_slot_budget / slot_bytes));
  return static_cast<int>(std::max(1L, parts));
}

// The tasks of one item of `kept` rows: `parts` runs of key tiles of about equal work.
inline void split_item(std::vector<FusedTask>& tasks, int branch, long item, int kept, bool causal,
                       int parts) {
  constexpr int R = FusedLayout::rows;
  const int tiles = (kept + R - 1) / R;
  if (tiles == 0) return;
  const auto work = [&](int u) { return causal ? double(kept - u * R) : double(kept); };
  double total = 0;
  for (int u = 0; u < tiles; ++u)
    total += work(u);
  int begin = 0;
  double done = 0;
  for (int p = 0; p < parts && begin < tiles; ++p) {
    int end = begin;
    double run = 0;
    const double target = total * (p + 1) / parts;
    while (end < tiles && (end == begin || done + run + work(end) / 2 <= target)) {
      run += work(end);
      ++end;
    }
    if (p + 1 == parts) {  // the last part takes what is left
      for (; end < tiles; ++end)
        run += work(end);
    }
    tasks.push_back({branch, item, begin, end, causal ? begin * R : 0, run});
    done += run;
    begin = end;
  }
}

// Floats of the workspace of a launch of `items` items, the longest of `max_kept` rows, on
// `threads` threads: each thread's tiles, and a dQ slot per (item, part) when parts > 1, else
// per thread. fused_plan and DilatedAttention::plan_scratch both take it from here.
struct FusedShape {
  int parts;
  long slot_rows;  // dQ rows a slot holds: the longest item's, in whole tiles
  std::size_t floats;
};
inline FusedShape fused_shape(long items, int max_kept, int threads, int d) {
  const int max_tiles = std::max(1, (max_kept + FusedLayout::rows - 1) / FusedLayout::rows);
  const int parts = fused_parts(items, threads, max_tiles, d);
  const long slot_rows = static_cast<long>(max_tiles) * FusedLayout::rows;
  const long slots = parts > 1 ? items * parts : threads;
  const FusedLayout layout(d);
  return {parts, slot_rows,
          static_cast<std::size_t>(threads * layout.entries() + slots * slot_rows * layout.dp)};
}

template <class Launch>
FusedPlan fused_plan(const std::vector<Launch>& launches, int threads, int d) {
  FusedPlan plan;
  long items = 0;
  int most = 0;
  for (const auto& launch : launches) {
    items += launch.branch.plan.num_items();
    most = std::max(most, launch.branch.plan.max_kept);
  }
  const FusedShape shape = fused_shape(items, most, threads, d);
  plan.parts = shape.parts;
  plan.slot_rows = shape.slot_rows;
  plan.floats = shape.floats;
  for (std::size_t i = 0; i < launches.size(); ++i) {
    const auto& br = launches[i].branch;
    for (long item = 0; item < br.plan.num_items(); ++item)
      split_item(plan.tasks, static_cast<int>(i), item, br.plan.item(item, br.n).kept.count,
                 br.causal, plan.parts);
  }
  // The largest first: the tasks taken last are the small ones (a short tail).
  std::stable_sort(plan.tasks.begin(), plan.tasks.end(),
                   [](const FusedTask& a, const FusedTask& b) { return a.work > b.work; });
  return plan;
}

// The workspace of a backward (bytes), for DilatedAttention::plan_scratch: the largest of its
// launches' (grouped: one for every branch; longnet: one a branch).
inline std::size_t fused_workspace_bytes(const Geometry& g, int batch, int n, int d, int threads) {
  const auto branch_plan = [&](int i) {
    return make_branch_plan<Kokkos::HostSpace>(g, i, batch, n);
  };
  std::size_t most = 0;
  if (g.semantics() == Semantics::grouped) {
    long items = 0;
    int kept = 0;
    for (int i = 0; i < g.num_branches(); ++i) {
      const auto plan = branch_plan(i);
      items += plan.num_items();
      kept = std::max(kept, plan.max_kept);
    }
    most = fused_shape(items, kept, threads, d).floats;
  } else {
    for (int i = 0; i < g.num_branches(); ++i) {
      const auto plan = branch_plan(i);
      most = std::max(most, fused_shape(plan.num_items(), plan.max_kept, threads, d).floats);
    }
  }
  return most * sizeof(float);
}

// One task: see the file comment. `dq_rows`: the task's dQ slot (slot_rows x dp).
template <class Views, class Launch>
void fused_task(const Views& kn, const Launch& launch, const FusedTask& task, float* work,
                float* dq_rows) {
  constexpr int R = FusedLayout::rows;
  const auto& br = launch.branch;
  const auto it = br.plan.item(task.item, br.n);
  const KeptPositions& kept = it.kept;
  const int d = br.d, b = it.b, h = it.head, m = kept.count;
  const FusedLayout layout(d);
  const int dp = layout.dp, ldk = R;  // Kt, Vt, S and dP: R per row
  float* Kt = work + layout.kt();
  float* Vt = work + layout.vt();
  float* dK = work + layout.dk();
  float* dV = work + layout.dv();
  float* S = work + layout.s();
  float* dP = work + layout.dps();
  float* Qc = work + layout.q();
  float* Gc = work + layout.g();
  float* Kc = work + layout.k();
  float* L = work + layout.values();
  float* D = L + R;
  float* ones = D + R;
  for (int j = 0; j < R; ++j)
    ones[j] = 1;
  const int query_end = round_up(m, R);
  for (long e = long(task.query_begin) * dp; e < long(query_end) * dp; ++e)
    dq_rows[e] = 0;

  for (int tile = task.tile_begin; tile < task.tile_end; ++tile) {
    const int u0 = tile * R;
    const int cols = m - u0 < R ? m - u0 : R;
    const int kp = round_up(cols, lanes);  // key columns computed in this tile
    // S = Q Kt with Kt scaled (scale q . k); K's rows unscaled for dQ += dS K (dq = scale dQ).
    transposed_rows(kn.k, b, h, kept, u0, cols, d, dp, ldk, br.scale, Kt);
    transposed_rows(kn.v, b, h, kept, u0, cols, d, dp, ldk, 1.0f, Vt);
    long ldkr = 0;
    const float* K = rows_operand(kn.k, b, h, kept, u0, cols, cols, d, dp, Kc, ldkr);
    for (long e = 0; e < long(kp) * dp; ++e) {
      dK[e] = 0;
      dV[e] = 0;
    }
    // Causal: query tiles before the one holding u0 see none of the keys: not visited.
    for (int t0 = br.causal ? u0 : 0; t0 < m; t0 += R) {
      const int rows = m - t0 < R ? m - t0 : R;
      const int qr = round_up(rows, rows_block);
      long ldq = 0, ldg = 0;
      const float* Q = rows_operand(kn.q, b, h, kept, t0, rows, qr, d, dp, Qc, ldq);
      const float* G = rows_operand(kn.dout, b, h, kept, t0, rows, qr, d, dp, Gc, ldg);
      row_statistics(kn, kept, b, h, t0, rows, L, D);
      tile_probabilities(br, kept, b, h, t0, u0, rows, cols, qr, kp, dp, Q, ldq, G, ldg, Kt, Vt,
                         ldk, L, D, S, dP);
      // dK += dS^T Q, dV += PZ^T G over the tile's real queries; dQ rows += dS K over the real
      // keys (padded query rows of dS are 0: zero rows of Q and G).
      gemm_tile(kp, dp, rows, dP, 1, ldk, Q, ldq, dK, dp, ones);
      gemm_tile(kp, dp, rows, S, 1, ldk, G, ldg, dV, dp, ones);
      gemm_tile(qr, dp, cols, dP, ldk, 1, K, ldkr, dq_rows + long(t0) * dp, dp, ones);
    }
    write_dkdv_rows(kn, kept, b, h, u0, cols, d, dp, br.scale, dK, dV);
  }
}

// dq rows [first, end) of an item = scale x the sum of `count` slots' rows (slot k at
// slots[k], which holds rows from begins[k] on), added to dq when accumulating.
template <class Views, class Launch>
void write_dq_rows(const Views& kn, const Launch& launch, long item, int first, int end,
                   const float* const* slots, const int* begins, int count, int dp) {
  const auto& br = launch.branch;
  const auto it = br.plan.item(item, br.n);
  using TQ = typename std::remove_reference_t<decltype(kn.dq)>::non_const_value_type;
  for (int i = first; i < end; ++i) {
    const int pt = it.kept.position(i);
    for (int c = 0; c < br.d; ++c) {
      float sum = 0;
      for (int k = 0; k < count; ++k)
        if (i >= begins[k]) sum += slots[k][static_cast<long>(i) * dp + c];
      const float g = br.scale * sum;
      kn.dq(it.b, pt, it.head, c) =
          static_cast<TQ>(kn.accumulate ? static_cast<float>(kn.dq(it.b, pt, it.head, c)) + g : g);
    }
  }
}

// The views a task reads and writes (the dk/dv kernel's names, for the shared helpers).
template <class Q, class K, class V, class G, class LseV, class DeltaV, class DQ, class DK,
          class DV>
struct FusedViews {
  Q q;
  K k;
  V v;
  G dout;
  LseV lse;
  DeltaV delta;
  DQ dq;
  DK dk;
  DV dv;
  bool accumulate;
};

// The backward of `launches` (branches whose rows are disjoint: all of grouped's, or one of
// longnet's) with D_t already in `delta`.
template <class ExecSpace, class Launch, class Views>
void fused_backward_launches(const ExecSpace& space, const std::vector<Launch>& launches,
                             const Views& kn, int d) {
  const Kokkos::Experimental::UniqueToken<ExecSpace> token(space);
  const int threads = token.size();
  const FusedPlan plan = fused_plan(launches, threads, d);
  if (plan.tasks.empty()) return;
  const FusedLayout layout(d);
  const long per_thread = layout.entries(), per_slot = plan.slot_rows * layout.dp;
  const auto workspace = scratch_view<Kokkos::View<float*, Kokkos::HostSpace>>(
      space, fused_backward_label, false, plan.floats);
  float* const base = workspace.data();
  float* const slots = base + threads * per_thread;
  const bool shared = plan.parts > 1;  // dQ slots per task, summed by a second pass
  const long count = static_cast<long>(plan.tasks.size());
  const FusedTask* const tasks = plan.tasks.data();
  const Launch* const branch = launches.data();
  Kokkos::parallel_for(
      "dilated::improved::host_backward",
      Kokkos::RangePolicy<ExecSpace, Kokkos::Schedule<Kokkos::Dynamic>>(space, 0, count,
                                                                        Kokkos::ChunkSize(1)),
      [=](long e) {
        const FusedTask& task = tasks[e];
        const int id = token.acquire();
        float* dq_rows = slots + (shared ? e : id) * per_slot;
        fused_task(kn, branch[task.branch], task, align64(base + id * per_thread), dq_rows);
        if (!shared) {
          const float* const one[1] = {dq_rows};
          const int begin[1] = {task.query_begin};
          const int m = branch[task.branch]
                            .branch.plan.item(task.item, branch[task.branch].branch.n)
                            .kept.count;
          write_dq_rows(kn, branch[task.branch], task.item, task.query_begin, m, one, begin, 1,
                        layout.dp);
        }
        token.release(id);
      });
  if (!shared) {
    fence(space, "dilated::improved::host_backward: the task list is released");
    return;
  }
  // Each item's slots in task order (the order of its key tiles), a block of rows per thread.
  struct ItemSlots {
    int branch;
    long item;
    int count;
    long first;  // index into `order`
  };
  std::vector<ItemSlots> items;
  std::vector<long> order;  // task indices grouped by item, key tiles ascending
  {
    std::vector<long> index(count);
    for (long e = 0; e < count; ++e)
      index[e] = e;
    std::stable_sort(index.begin(), index.end(), [&](long a, long b) {
      const FusedTask &x = tasks[a], &y = tasks[b];
      if (x.branch != y.branch) return x.branch < y.branch;
      if (x.item != y.item) return x.item < y.item;
      return x.tile_begin < y.tile_begin;
    });
    for (long e : index) {
      const FusedTask& t = tasks[e];
      if (items.empty() || items.back().branch != t.branch || items.back().item != t.item)
        items.push_back({t.branch, t.item, 0, static_cast<long>(order.size())});
      ++items.back().count;
      order.push_back(e);
    }
  }
  constexpr int R = FusedLayout::rows;
  const long blocks = plan.slot_rows / R;
  const ItemSlots* const item_list = items.data();
  const long* const order_list = order.data();
  Kokkos::parallel_for(
      "dilated::improved::host_backward_dq",
      Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<long>(items.size()) * blocks),
      [=](long e) {
        const ItemSlots& is = item_list[e / blocks];
        const Launch& launch = branch[is.branch];
        const int m = launch.branch.plan.item(is.item, launch.branch.n).kept.count;
        const int first = static_cast<int>(e % blocks) * R, end = std::min(first + R, m);
        if (first >= end) return;
        const float* from[fused_max_parts];
        int begin[fused_max_parts];
        for (int k = 0; k < is.count; ++k) {
          const long t = order_list[is.first + k];
          from[k] = slots + t * per_slot;
          begin[k] = tasks[t].query_begin;
        }
        write_dq_rows(kn, launch, is.item, first, end, from, begin, is.count, layout.dp);
      });
  fence(space, "dilated::improved::host_backward: the task list is released");
}

// The backward of every branch in one pass each (see the file comment), D_t in `delta`.
template <class ExecSpace, class Launch, class Q, class K, class V, class G, class LseV,
          class DeltaV, class DQ, class DK, class DV>
void fused_backward_branches(const ExecSpace& space, const std::vector<Launch>& launches,
                             bool longnet, const Q& q, const K& k, const V& v, const G& dout,
                             const LseV& lse, const DeltaV& delta, const DQ& dq, const DK& dk,
                             const DV& dv, bool accumulate) {
  const FusedViews<Q, K, V, G, LseV, DeltaV, DQ, DK, DV> kn{q,     k,  v,  dout, lse,
                                                            delta, dq, dk, dv,   accumulate};
  const int d = q.extent(3);
  if (!longnet) {
    fused_backward_launches(space, launches, kn, d);
    return;
  }
  for (const auto& launch : launches)
    fused_backward_launches(space, std::vector<Launch>{launch}, kn, d);
}

}  // namespace dilated::Impl::host_tile

#endif  // DILATED_IMPL_IMPROVED_HOST_FUSED_BACKWARD_HPP
