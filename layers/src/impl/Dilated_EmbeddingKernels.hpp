// The Embedding's kernels: the gather of the forward, and the backward's deterministic
// accumulation in three steps: a stable counting pass that lists the positions of each id in
// increasing order (no sort, no atomics), a cut of each id's run into segments of a fixed number
// of positions whose sums are taken in parallel, and the segments of each long run added in
// order. Every sum runs in a fixed order, so the result does not depend on the backend or the
// thread count.
#ifndef DILATED_IMPL_EMBEDDING_KERNELS_HPP
#define DILATED_IMPL_EMBEDDING_KERNELS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Gemm.hpp>
#include <Dilated_LayerNorm.hpp>
#include <impl/Dilated_IndexRange.hpp>
#include <impl/Dilated_RowPieces.hpp>

#include <Kokkos_Core.hpp>

namespace dilated::Impl {

// out(i, :) = weight(ids(i), :), a row per vector group (MatrixRowLaunch), W elements a move.
template <class T, int W, class ExecSpace, class Weight, class Ids, class Out>
void embedding_gather(const ExecSpace& space, const Weight& weight, const Ids& ids,
                      const Out& out) {
  using P = Pack<T, W>;
  using Launch = MatrixRowLaunch<ExecSpace>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const long rows = out.extent(0), w_stride = weight.stride(0), o_stride = out.stride(0);
  const int packs = static_cast<int>(out.extent(1)) / W;
  const T* wp = weight.data();
  T* op = out.data();
  Kokkos::parallel_for(
      "dilated::embedding::gather", Launch::policy(space, rows),
      KOKKOS_LAMBDA(const Member& member) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Launch::rows_per_team), [&](int r) {
          const long i = long(member.league_rank()) * Launch::rows_per_team + r;
          if (i >= rows) return;
          const P* src = reinterpret_cast<const P*>(wp + ids(i) * w_stride);
          P* dst = reinterpret_cast<P*>(op + i * o_stride);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs),
                               [&](int p) { dst[p] = src[p]; });
        });
      });
}

// table(c, v) = occurrences of id v in chunk c (positions [c chunk, (c + 1) chunk)), and
// rank(p) = equal ids before p in its chunk: a team per chunk, its ids in scratch; the first of
// each id in the chunk counts the id (plain writes, no atomics).
template <class ExecSpace, class Ids, class Rank, class Table>
void embedding_count_chunks(const ExecSpace& space, const Ids& ids, long chunk, long chunks,
                            long vocab, const Rank& rank, const Table& table) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  using Scratch = Kokkos::View<int*, typename ExecSpace::scratch_memory_space,
                               Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  const long positions = ids.extent(0);
  Kokkos::TeamPolicy<ExecSpace> policy(space, static_cast<int>(chunks),
                                       is_cuda_v<ExecSpace> ? 256 : 1);
  policy.set_scratch_size(0, Kokkos::PerTeam(Scratch::shmem_size(chunk)));
  Kokkos::parallel_for(
      "dilated::embedding::count_chunks", policy, KOKKOS_LAMBDA(const Member& member) {
        const long c = member.league_rank(), begin = c * chunk;
        const int len = static_cast<int>(positions - begin < chunk ? positions - begin : chunk);
        Scratch ids_here(member.team_scratch(0), chunk);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, vocab),
                             [&](long v) { table(c, v) = 0; });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, len),
                             [&](int j) { ids_here(j) = ids(begin + j); });
        member.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, len), [&](int j) {
          const int id = ids_here(j);
          int before = 0;
          for (int k = 0; k < j; ++k)
            before += ids_here(k) == id ? 1 : 0;
          rank(begin + j) = before;
          if (before == 0) {
            int count = 1;
            for (int k = j + 1; k < len; ++k)
              count += ids_here(k) == id ? 1 : 0;
            table(c, id) = count;
          }
        });
      });
}

// table(c, v) = where chunk c's positions of id v start in the list (an exclusive scan of the
// counts in (id, chunk) order); then order(table(c, id) + rank) = position.
template <class ExecSpace, class Ids, class Rank, class Table, class Order>
void embedding_list_positions(const ExecSpace& space, const Ids& ids, long chunk, long chunks,
                              long vocab, const Rank& rank, const Table& table,
                              const Order& order) {
  // A 64-bit index: the table is vocab x tokens / 1024 counts (past 2^32 at 88 M tokens of
  // GPT-2's vocabulary).
  Kokkos::parallel_scan(
      "dilated::embedding::offsets", index_range(space, 0, vocab * chunks),
      KOKKOS_LAMBDA(long e, int& update, bool final) {
        const long v = e / chunks, c = e % chunks;
        const int count = table(c, v);
        if (final) table(c, v) = update;
        update += count;
      });
  Kokkos::parallel_for(
      "dilated::embedding::place",
      Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<long>(ids.extent(0))),
      KOKKOS_LAMBDA(long p) { order(table(p / chunk, ids(p)) + rank(p)) = static_cast<int>(p); });
}

// Where each id's run [start(v), end(v)) lies in the list: start(v) = table(0, v) after
// embedding_list_positions, end(v) = start(v + 1) (the last run ends at `positions`).
template <class Table>
struct EmbeddingRuns {
  Table table;
  long vocab, positions, segment;
  KOKKOS_INLINE_FUNCTION long start(long v) const { return table(0, v); }
  KOKKOS_INLINE_FUNCTION long end(long v) const {
    return v + 1 < vocab ? table(0, v + 1) : positions;
  }
  // Segments of v's run: ceil(count / segment), and one for an empty run (it writes the row).
  KOKKOS_INLINE_FUNCTION long segments(long v) const {
    const long count = end(v) - start(v);
    return count > segment ? (count + segment - 1) / segment : 1;
  }
  KOKKOS_INLINE_FUNCTION bool long_run(long v) const { return end(v) - start(v) > segment; }
};

// first_segment(v) = segments of the runs before v (v = vocab: all of them); first_partial(v) =
// segments of the long runs (more than `segment` positions) before v: where v's partial sums go.
template <class ExecSpace, class Runs, class Offsets>
void embedding_segment_offsets(const ExecSpace& space, const Runs& runs,
                               const Offsets& first_segment, const Offsets& first_partial) {
  const long vocab = runs.vocab;
  Kokkos::parallel_scan(
      "dilated::embedding::segment_offsets", Kokkos::RangePolicy<ExecSpace>(space, 0, vocab + 1),
      KOKKOS_LAMBDA(long v, int& update, bool final) {
        const int count = v < vocab ? static_cast<int>(runs.segments(v)) : 0;
        if (final) first_segment(v) = update;
        update += count;
      });
  Kokkos::parallel_scan(
      "dilated::embedding::partial_offsets", Kokkos::RangePolicy<ExecSpace>(space, 0, vocab + 1),
      KOKKOS_LAMBDA(long v, int& update, bool final) {
        const int count = v < vocab && runs.long_run(v) ? static_cast<int>(runs.segments(v)) : 0;
        if (final) first_partial(v) = update;
        update += count;
      });
}

// One segment per vector group (MatrixRowLaunch): segment s of the list belongs to the run v
// with first_segment(v) <= s < first_segment(v + 1) (a binary search), and covers positions
// [start(v) + k segment, ...) of it, k = s - first_segment(v). The segment's gradient rows are
// summed in list order, in Acc. A run of at most `segment` positions has one segment, which
// writes dweight(v, :) (the sum, or dweight plus the sum when accumulating; an empty run 0 or
// nothing); a longer run's segments go to partials(first_partial(v) + k, :). `items` is an upper
// bound of the segments (vocab + positions / segment): the ones past the real count return.
template <class T, int W, class Acc, class ExecSpace, class Runs, class Offsets, class List,
          class DOut, class DW, class Partials>
void embedding_segment_sums(const ExecSpace& space, const Runs& runs, long items,
                            const Offsets& first_segment, const Offsets& first_partial,
                            const List& list, const DOut& dout, const DW& dweight,
                            const Partials& partials, bool accumulate) {
  using P = Pack<T, W>;
  using Launch = MatrixRowLaunch<ExecSpace>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const long vocab = runs.vocab, segment = runs.segment, d_stride = dout.stride(0),
             w_stride = dweight.stride(0), e = dweight.extent(1);
  const int packs = static_cast<int>(e) / W;
  const T* dp = dout.data();
  T* wp = dweight.data();
  Kokkos::parallel_for(
      "dilated::embedding::segment_sums", Launch::policy(space, items),
      KOKKOS_LAMBDA(const Member& member) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Launch::rows_per_team), [&](int r) {
          const long s = long(member.league_rank()) * Launch::rows_per_team + r;
          if (s >= first_segment(vocab)) return;
          long lo = 0, hi = vocab - 1;  // the last run whose first segment is <= s
          while (lo < hi) {
            const long mid = (lo + hi + 1) / 2;
            if (first_segment(mid) <= s) {
              lo = mid;
            } else {
              hi = mid - 1;
            }
          }
          const long v = lo, k = s - first_segment(v), end = runs.end(v);
          const long begin = runs.start(v) + k * segment;
          const long stop = begin + segment < end ? begin + segment : end;
          const bool partial = runs.long_run(v);
          const long part = partial ? (first_partial(v) + k) * e : 0;
          P* row = reinterpret_cast<P*>(wp + v * w_stride);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
            Acc sum[W] = {};
            for (long i = begin; i < stop; ++i) {
              const P d = reinterpret_cast<const P*>(dp + list(i) * d_stride)[p];
              for (int w = 0; w < W; ++w)
                sum[w] += static_cast<Acc>(d.v[w]);
            }
            if (partial) {
              for (int w = 0; w < W; ++w)
                partials(part + p * W + w) = sum[w];
              return;
            }
            P o;
            if (accumulate) {
              const P old = row[p];
              for (int w = 0; w < W; ++w)
                o.v[w] = static_cast<T>(static_cast<Acc>(old.v[w]) + sum[w]);
            } else {
              for (int w = 0; w < W; ++w)
                o.v[w] = static_cast<T>(sum[w]);
            }
            row[p] = o;
          });
        });
      });
}

// dweight(v, :) = [dweight(v, :) +] the partial sums of v's segments added in segment order,
// for every long run v (a vector group per vocabulary row; the others return).
template <class T, int W, class Acc, class ExecSpace, class Runs, class Offsets, class DW,
          class Partials>
void embedding_long_runs(const ExecSpace& space, const Runs& runs, const Offsets& first_partial,
                         const DW& dweight, const Partials& partials, bool accumulate) {
  using P = Pack<T, W>;
  using Launch = MatrixRowLaunch<ExecSpace>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const long vocab = runs.vocab, w_stride = dweight.stride(0), e = dweight.extent(1);
  const int packs = static_cast<int>(e) / W;
  T* wp = dweight.data();
  Kokkos::parallel_for(
      "dilated::embedding::long_runs", Launch::policy(space, vocab),
      KOKKOS_LAMBDA(const Member& member) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Launch::rows_per_team), [&](int r) {
          const long v = long(member.league_rank()) * Launch::rows_per_team + r;
          if (v >= vocab || !runs.long_run(v)) return;
          const long first = first_partial(v), last = first_partial(v + 1);
          P* row = reinterpret_cast<P*>(wp + v * w_stride);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
            Acc sum[W] = {};
            for (long k = first; k < last; ++k)
              for (int w = 0; w < W; ++w)
                sum[w] += partials(k * e + p * W + w);
            P o;
            if (accumulate) {
              const P old = row[p];
              for (int w = 0; w < W; ++w)
                o.v[w] = static_cast<T>(static_cast<Acc>(old.v[w]) + sum[w]);
            } else {
              for (int w = 0; w < W; ++w)
                o.v[w] = static_cast<T>(sum[w]);
            }
            row[p] = o;
          });
        });
      });
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_EMBEDDING_KERNELS_HPP
