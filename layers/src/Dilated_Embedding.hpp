// PyTorch's nn.Embedding on int32 token ids: out(p, :) = weight(ids(p), :) for the ids of
// (batch, seq) or (tokens,) positions and a (vocab, E) weight, and its backward
// dweight(v, :) (+)= sum of dout(p, :) over the positions p with ids(p) == v.
//
// The weight is the caller's (a language model ties it to its LM head, docs/training.md); an
// Embedding holds only what its calls reuse. The forward copies rows a warp per row on CUDA (a
// team thread per row on the host), 16 bytes at a time where the rows allow it. The backward is
// deterministic: each weight row sums its positions' gradient rows in position order, in float
// (double for double), so the result has the same bits on every backend and thread count and
// equals a host loop in double exactly. Atomic float adds would depend on the threads' order;
// instead a stable counting pass lists the positions of every id in order (see backward()),
// and one row kernel then sums each list.
#ifndef DILATED_EMBEDDING_HPP
#define DILATED_EMBEDDING_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Gemm.hpp>
#include <Dilated_LayerNorm.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_RowPieces.hpp>
#include <impl/Dilated_TokenViews.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <type_traits>

namespace dilated {

namespace Impl {

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
  Kokkos::parallel_scan(
      "dilated::embedding::offsets", Kokkos::RangePolicy<ExecSpace>(space, 0, vocab * chunks),
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

// dweight(v, :) = [dweight(v, :) +] sum over i in list[start(v), start(v + 1)) of
// dout(list(i), :), in list order, in Acc; start(v) = table(0, v) (after the offsets scan).
template <class T, int W, class Acc, class ExecSpace, class List, class Table, class DOut, class DW>
void embedding_weight_gradient(const ExecSpace& space, const List& list, const Table& table,
                               long positions, const DOut& dout, const DW& dweight,
                               bool accumulate) {
  using P = Pack<T, W>;
  using Launch = MatrixRowLaunch<ExecSpace>;
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const long vocab = dweight.extent(0), d_stride = dout.stride(0), w_stride = dweight.stride(0);
  const int packs = static_cast<int>(dweight.extent(1)) / W;
  const T* dp = dout.data();
  T* wp = dweight.data();
  Kokkos::parallel_for(
      "dilated::embedding::weight_gradient", Launch::policy(space, vocab),
      KOKKOS_LAMBDA(const Member& member) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Launch::rows_per_team), [&](int r) {
          const long v = long(member.league_rank()) * Launch::rows_per_team + r;
          if (v >= vocab) return;
          const long start = table(0, v), end = v + 1 < vocab ? table(0, v + 1) : positions;
          P* row = reinterpret_cast<P*>(wp + v * w_stride);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, packs), [&](int p) {
            Acc sum[W] = {};
            for (long i = start; i < end; ++i) {
              const P d = reinterpret_cast<const P*>(dp + list(i) * d_stride)[p];
              for (int w = 0; w < W; ++w)
                sum[w] += static_cast<Acc>(d.v[w]);
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

}  // namespace Impl

template <class T, class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
class Embedding {
  static_assert(Kokkos::is_memory_space<MemorySpace>::value,
                "dilated::Embedding<T, MemorySpace>: MemorySpace must be a Kokkos memory space");

 public:
  using value_type = T;
  using memory_space = MemorySpace;
  using Acc = Impl::gemm_accumulation_t<T>;  // the backward's sums

  // Positions a team of the backward's counting pass takes: its ids go through team scratch
  // (4 KiB), and the pass keeps one count per (chunk, vocabulary row): (tokens / 1024) x vocab
  // ints, 13 MB for 65,536 tokens and GPT-2's 50,257 ids.
  static constexpr long index_chunk = 1024;

  // out(p, :) = weight(ids(p), :). weight (vocab, E); ids (b, n) or (tokens,) int32; out
  // (b, n, E) or (tokens, E), LayoutRight, of weight's storage type. Throws std::invalid_argument
  // naming the first position whose id is outside [0, vocab) (checked on the device; out is not
  // written then). Waits for `space` once (the check's result); the copy itself is enqueued.
  template <class ExecSpace, class Weight, class Ids, class Out>
  void forward(const ExecSpace& space, const Weight& weight, const Ids& ids, const Out& out) {
    constexpr const char* fn = "dilated::Embedding::forward";
    check_types<ExecSpace, Weight, Out>();
    static_assert(!std::is_const_v<typename Out::value_type>,
                  "dilated::Embedding::forward: out must be writable");
    Impl::ScopedRegion region(fn);
    const auto rows = Impl::token_rows(fn, "out", out);
    const auto list = Impl::token_list(ids);
    check_shapes(fn, weight, list, "out", rows);
    check_.run(space, fn, "ids", list, Impl::sequence_length_of(ids),
               static_cast<long>(weight.extent(0)), Impl::no_ignore_index);
    if (rows.extent(0) == 0 || rows.extent(1) == 0) return;
    if (Impl::rows_take_packs<T>(static_cast<int>(rows.extent(1)), rows, weight)) {
      Impl::embedding_gather<T, Impl::row_pack_width<T>()>(space, weight, list, rows);
    } else {
      Impl::embedding_gather<T, 1>(space, weight, list, rows);
    }
  }

  // dweight(v, :) = sum of dout(p, :) over the positions p with ids(p) == v, in position order
  // (added to dweight when `accumulate`: a tied weight's other gradient). dweight (vocab, E);
  // ids and dout as forward's ids and out. Rows of ids that do not occur get 0 (or keep their
  // value). Throws std::invalid_argument for an id outside [0, vocab), before anything is
  // written. Waits for `space` once (the check); buffers grow to the largest call and stay.
  //
  // How the positions of each id are listed in order without a sort or atomics: the positions
  // are cut into chunks of index_chunk; a team per chunk reads the chunk's ids into scratch and
  // gives every position its rank among the equal ids before it in the chunk, and the first of
  // each id the id's count in the chunk (table(chunk, id)); an exclusive scan over the table in
  // (id, chunk) order turns counts into where each chunk's run of each id starts in the list;
  // each position then goes to table(chunk, id) + rank. The list holds the positions of id 0 in
  // increasing order, then those of id 1, ...: a stable counting sort by id.
  template <class ExecSpace, class Ids, class DOut, class DWeight>
  void backward(const ExecSpace& space, const Ids& ids, const DOut& dout, const DWeight& dweight,
                bool accumulate = false) {
    constexpr const char* fn = "dilated::Embedding::backward";
    check_types<ExecSpace, DWeight, DOut>();
    static_assert(!std::is_const_v<typename DWeight::value_type>,
                  "dilated::Embedding::backward: dweight must be writable");
    Impl::ScopedRegion region(fn);
    const auto rows = Impl::token_rows(fn, "dout", dout);
    const auto list = Impl::token_list(ids);
    check_shapes(fn, dweight, list, "dout", rows);
    const long vocab = static_cast<long>(dweight.extent(0));
    check_.run(space, fn, "ids", list, Impl::sequence_length_of(ids), vocab, Impl::no_ignore_index);
    const long positions = static_cast<long>(list.extent(0));
    if (vocab == 0 || dweight.extent(1) == 0) return;
    const long chunks = std::max(1L, (positions + index_chunk - 1) / index_chunk);
    Impl::ensure_capacity(rank_, "dilated::Embedding::rank", std::max(1L, positions));
    Impl::ensure_capacity(order_, "dilated::Embedding::order", std::max(1L, positions));
    Impl::ensure_capacity(table_, "dilated::Embedding::table", chunks, vocab);
    Impl::embedding_count_chunks(space, list, index_chunk, chunks, vocab, rank_, table_);
    Impl::embedding_list_positions(space, list, index_chunk, chunks, vocab, rank_, table_, order_);
    const auto run = [&](auto width) {
      Impl::embedding_weight_gradient<T, decltype(width)::value, Acc>(
          space, order_, table_, positions, rows, dweight, accumulate);
    };
    if (Impl::rows_take_packs<T>(static_cast<int>(rows.extent(1)), rows, dweight)) {
      run(std::integral_constant<int, Impl::row_pack_width<T>()>());
    } else {
      run(std::integral_constant<int, 1>());
    }
  }

  template <class Weight, class Ids, class Out, std::enable_if_t<Impl::is_view_v<Weight>, int> = 0>
  void forward(const Weight& weight, const Ids& ids, const Out& out) {
    forward(typename MemorySpace::execution_space(), weight, ids, out);
  }
  template <class Ids, class DOut, class DWeight, std::enable_if_t<Impl::is_view_v<Ids>, int> = 0>
  void backward(const Ids& ids, const DOut& dout, const DWeight& dweight, bool accumulate = false) {
    backward(typename MemorySpace::execution_space(), ids, dout, dweight, accumulate);
  }

  // Bytes of the backward's buffers held now (4 per position twice, 4 per chunk and id).
  std::size_t workspace_bytes() const {
    return (rank_.span() + order_.span() + table_.span()) * sizeof(int);
  }
  void release_workspace() {
    rank_ = {};
    order_ = {};
    table_ = {};
  }

 private:
  template <class ExecSpace, class Matrix, class Rows>
  static constexpr void check_types() {
    static_assert(Impl::is_execution_space_v<ExecSpace>,
                  "dilated::Embedding: the first argument must be a Kokkos execution space");
    static_assert(Impl::is_view_v<Matrix> && Impl::is_view_v<Rows>,
                  "dilated::Embedding: the weight and the activations must be Kokkos::Views");
    static_assert(Impl::view_rank_v<Matrix> == 2 &&
                      std::is_same_v<typename Matrix::array_layout, Kokkos::LayoutRight>,
                  "dilated::Embedding: the weight must be a (vocab, E) LayoutRight View");
    static_assert(std::is_same_v<typename Matrix::non_const_value_type, T> &&
                      std::is_same_v<typename Rows::non_const_value_type, T>,
                  "dilated::Embedding: the weight and the activations must hold T");
    static_assert(Impl::is_accessible_from_v<ExecSpace, Matrix> &&
                      Impl::is_accessible_from_v<ExecSpace, Rows>,
                  "dilated::Embedding: the Views must be accessible from the execution space");
  }

  template <class Matrix, class List, class Rows>
  static void check_shapes(const char* fn, const Matrix& weight, const List& list,
                           const char* rows_name, const Rows& rows) {
    Impl::require(list.extent(0) < static_cast<std::size_t>(INT_MAX), fn, "ids holds ",
                  list.extent(0), " positions, more than an int32 position can index");
    Impl::require(rows.extent(0) == list.extent(0), fn, rows_name, " has ", rows.extent(0),
                  " rows but ids has ", list.extent(0), " positions");
    Impl::require(rows.extent(1) == weight.extent(1), fn, rows_name, " has ", rows.extent(1),
                  " columns but the weight has E = ", weight.extent(1));
  }

  Impl::TokenIdCheck<MemorySpace> check_;
  Kokkos::View<int*, MemorySpace> rank_, order_;
  Kokkos::View<int**, Kokkos::LayoutRight, MemorySpace> table_;
};

}  // namespace dilated

#endif  // DILATED_EMBEDDING_HPP
