// PyTorch's nn.Embedding on int32 token ids: out(p, :) = weight(ids(p), :) for the ids of
// (batch, seq) or (tokens,) positions and a (vocab, E) weight, and its backward
// dweight(v, :) (+)= sum of dout(p, :) over the positions p with ids(p) == v.
//
// The weight is the caller's (a language model ties it to its LM head, docs/training.md); an
// Embedding holds only what its calls reuse. The forward copies rows a warp per row on CUDA (a
// team thread per row on the host), 16 bytes at a time where the rows allow it. The backward is
// deterministic: each weight row sums its positions' gradient rows in an order fixed by the
// positions alone, in float (double for double), so the result has the same bits on every
// backend and thread count (and in double equals a host loop in that order exactly). Atomic
// float adds would depend on the threads' order; instead a stable counting pass lists the
// positions of every id in increasing order, and each id's list is summed in segments of
// sum_segment positions (in parallel), the segments then in order (see backward()).
#ifndef DILATED_EMBEDDING_HPP
#define DILATED_EMBEDDING_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Gemm.hpp>
#include <Dilated_LayerNorm.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <impl/Dilated_EmbeddingKernels.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_TokenViews.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <type_traits>

namespace dilated {

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
  // Positions whose gradient rows one vector group sums in a row (a warp on CUDA). Ids that
  // occur more often (the space is 17 % of English bytes) have their run cut into segments of
  // this many, summed in parallel into (< 2 tokens / 32, E) partial sums in Acc, which are then
  // added in segment order: no row waits on one warp's 11,000 sequential loads.
  static constexpr long sum_segment = 32;

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

  // dweight(v, :) = sum of dout(p, :) over the positions p with ids(p) == v (added to dweight
  // when `accumulate`: a tied weight's other gradient). dweight (vocab, E); ids and dout as
  // forward's ids and out. Rows of ids that do not occur get 0 (or keep their value). Throws
  // std::invalid_argument for an id outside [0, vocab), before anything is written. Waits for
  // `space` once (the check); buffers grow to the largest call and stay.
  //
  // The order of the sums: an id's positions p_1 < p_2 < ... are summed from 0 in increasing
  // order when there are at most sum_segment of them; otherwise in segments of sum_segment
  // (p_1..p_32, p_33..p_64, ...), each from 0, and the segment sums from 0 in order. With
  // `accumulate` the total is then added to dweight's value.
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
    const long e = static_cast<long>(dweight.extent(1));
    Impl::ensure_capacity(first_segment_, "dilated::Embedding::first_segment", vocab + 1);
    Impl::ensure_capacity(first_partial_, "dilated::Embedding::first_partial", vocab + 1);
    // Long runs (count > sum_segment) have ceil(count / 32) < 2 count / 32 segments.
    Impl::ensure_capacity(partials_, "dilated::Embedding::partials",
                          std::max(1L, 2 * positions / sum_segment) * e);
    const Impl::EmbeddingRuns<decltype(table_)> runs{table_, vocab, positions, sum_segment};
    Impl::embedding_segment_offsets(space, runs, first_segment_, first_partial_);
    const long items = vocab + (positions + sum_segment - 1) / sum_segment;
    const auto sums = [&](auto width) {
      constexpr int W = decltype(width)::value;
      Impl::embedding_segment_sums<T, W, Acc>(space, runs, items, first_segment_, first_partial_,
                                              order_, rows, dweight, partials_, accumulate);
      Impl::embedding_long_runs<T, W, Acc>(space, runs, first_partial_, dweight, partials_,
                                           accumulate);
    };
    if (Impl::rows_take_packs<T>(static_cast<int>(e), rows, dweight)) {
      sums(std::integral_constant<int, Impl::row_pack_width<T>()>());
    } else {
      sums(std::integral_constant<int, 1>());
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

  // Bytes of the backward's buffers held now: 4 per position twice, 4 per chunk and id, 8 per id,
  // and the partial sums (< 2 tokens / 32 rows of E values of Acc).
  std::size_t workspace_bytes() const {
    return (rank_.span() + order_.span() + table_.span() + first_segment_.span() +
            first_partial_.span()) *
               sizeof(int) +
           partials_.span() * sizeof(Acc);
  }
  // The buffers a backward over `positions` ids of `vocab` rows of width `e` leaves allocated
  // (MemoryKind::loss_workspace), as backward() sizes them; the token check's result.
  static MemoryPlan plan_workspace(long positions, long vocab, long e) {
    const long chunks = std::max(1L, (positions + index_chunk - 1) / index_chunk);
    using Ints = Kokkos::View<int*, MemorySpace>;
    const auto kind = MemoryKind::loss_workspace;
    MemoryPlan plan;
    plan.add("dilated::Embedding::rank", kind,
             Ints::required_allocation_size(std::max(1L, positions)), 2);
    plan.add("dilated::Embedding::table", kind,
             decltype(table_)::required_allocation_size(chunks, vocab));
    plan.add("dilated::Embedding::first_segment", kind, Ints::required_allocation_size(vocab + 1),
             2);
    plan.add("dilated::Embedding::partials", kind,
             decltype(partials_)::required_allocation_size(
                 std::max(1L, 2 * positions / sum_segment) * e));
    plan.add("dilated::TokenIdCheck::result", kind, 2 * sizeof(long));
    return plan;
  }
  void release_workspace() {
    rank_ = {};
    order_ = {};
    table_ = {};
    first_segment_ = {};
    first_partial_ = {};
    partials_ = {};
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
  Kokkos::View<int*, MemorySpace> rank_, order_, first_segment_, first_partial_;
  Kokkos::View<int**, Kokkos::LayoutRight, MemorySpace> table_;
  Kokkos::View<Acc*, MemorySpace> partials_;
};

}  // namespace dilated

#endif  // DILATED_EMBEDDING_HPP
