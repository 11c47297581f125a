// Sizes past 2^31 and 2^32 elements in the layers' element loops (issue 20): the GELU forward and
// backward, the Linear's bias passes and the LayerNorm over matrices of more than 2^32 elements,
// compared on the rows that matter (the row holding element 2^31, the row holding element 2^32
// and the rows past it, the first rows) with the same calls on those rows alone.
//
// Why this shape. A RangePolicy whose index is too narrow (CUDA's default, 32-bit unsigned)
// leaves the elements past 2^32 unwritten or writes the wrong ones; only a run at that size shows
// it, and no host run can afford one here, so:
//   - at compile time, the library's element-loop policy (Impl::IndexRange) has a signed 64-bit
//     index on this backend;
//   - on CUDA, when the device has the memory free (about 26 GB a case; skipped otherwise, with
//     the reason), the large runs; on the host they run only with DILATED_LARGE_TESTS=1 and the
//     memory available (skipped otherwise: tens of GB and minutes of the cores);
//   - on every backend, the same comparisons at a small size, so that the checking itself runs in
//     CI.
// The outputs start filled with a value no kernel here writes (1000), so an element left
// unwritten shows, and the inputs come from a hash of the flat index, so an element computed
// from the wrong input shows. The small runs use matrices of the same alignment as the large
// ones (the same pack width: the same code), so the comparisons are bitwise.
//
// Half only: the index arithmetic does not depend on the storage type (the pack width does, and
// both widths run: 16-byte packs, and one element a thread for a matrix one element off
// alignment; before the fix only the latter, at 4.3e9 elements, passed 2^32 iterations), half is
// what the models train in at these lengths, and float would double the memory.
#include <Dilated_DeviceMemory.hpp>
#include <Dilated_Gelu.hpp>
#include <Dilated_LayerNorm.hpp>
#include <Dilated_Linear.hpp>
#include <impl/Dilated_IndexRange.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <catch2/catch_test_macros.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using T = Kokkos::Experimental::half_t;
using Acc = float;
using Buffer = Kokkos::View<T*, MemSpace>;
using Matrix =
    Kokkos::View<T**, Kokkos::LayoutRight, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
using Vector = Kokkos::View<T*, Kokkos::LayoutRight, MemSpace>;
using Stat = Kokkos::View<Acc*, Kokkos::LayoutRight, MemSpace>;

constexpr bool on_host = std::is_same_v<MemSpace, Kokkos::HostSpace>;
constexpr long two31 = 1L << 31, two32 = 1L << 32;

// The large runs: rows of 4E = 3072 (the 125M model's feed-forward; 2,875,392 tokens of it are
// 2^33.0 elements) and of E = 768 (its LayerNorms), 8 rows more than 2^32 elements hold:
// 2^32 + 23,552 and 2^32 + 5,888 elements.
constexpr long wide = 3072, wide_rows = two32 / wide + 8;
constexpr long narrow = 768, narrow_rows = two32 / narrow + 8;

static_assert(dilated::Impl::has_64bit_index_v<dilated::Impl::IndexRange<ExecSpace>> &&
                  dilated::Impl::has_64bit_index_v<
                      dilated::Impl::IndexRange<ExecSpace, Kokkos::Schedule<Kokkos::Dynamic>>>,
              "tstLargeSizes: dilated::Impl::IndexRange must have a signed 64-bit index");

const T sentinel = static_cast<T>(1000.0f);

// A (rows, cols) matrix whose data start `offset` elements into a buffer of its own: offset 1
// takes the rows off 16-byte alignment, so the kernels move one element a thread, not packs.
struct OffsetMatrix {
  Buffer buffer;
  Matrix m;
  OffsetMatrix(const std::string& label, long rows, long cols, int offset)
      : buffer(dilated::Impl::allocate_view<Buffer>(label, false, rows * cols + offset)),
        m(buffer.data() + offset, rows, cols) {}
};

// p[i] for i < n: half values in [-4, 4) from a hash of the flat index (no period a wrapped or
// truncated index could reproduce); `integers`: whole numbers in [-8, 8] instead.
void fill_pattern(T* p, std::int64_t n, std::uint64_t salt, bool integers = false) {
  Kokkos::parallel_for(
      "dilated::test::fill_pattern", dilated::Impl::index_range(ExecSpace(), 0, n),
      KOKKOS_LAMBDA(std::int64_t i) {
        std::uint64_t z = (static_cast<std::uint64_t>(i) + salt) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 29)) * 0xBF58476D1CE4E5B9ull;
        z ^= z >> 32;
        p[i] = integers ? static_cast<T>(static_cast<float>(z % 17) - 8.0f)
                        : static_cast<T>(static_cast<float>(z % 65536) / 8192.0f - 4.0f);
      });
}

// Rows compared: the first 16, 16 around the row holding element `middle` (2^31 in the large
// runs; it is their eighth) and the last 16 (in the large runs the row holding element 2^32 and
// the 8 wholly past it). 48 rows: more than 32, so the host LayerNorm backward takes its one-pass
// path for them as for the whole matrix.
struct Pick {
  long first, count;
};
std::vector<Pick> picks(long rows, long cols, long middle) {
  return {{0, 16}, {middle / cols - 7, 16}, {rows - 16, 16}};
}
long picked_rows(const std::vector<Pick>& picks) {
  long rows = 0;
  for (const auto& p : picks)
    rows += p.count;
  return rows;
}

// Rows [first, first + count) of a matrix, or elements of a vector.
template <class View>
auto rows_of(const View& v, long first, long count) {
  const auto range = std::make_pair(first, first + count);
  if constexpr (View::rank == 1) {
    return Kokkos::subview(v, range);
  } else {
    return Kokkos::subview(v, range, Kokkos::ALL);
  }
}

// small's rows, in order, = the picked rows of big (device to device).
template <class View>
void gather_rows(const View& big, const std::vector<Pick>& picks, const View& small) {
  long at = 0;
  for (const auto& p : picks) {
    Kokkos::deep_copy(ExecSpace(), rows_of(small, at, p.count), rows_of(big, p.first, p.count));
    at += p.count;
  }
}

// The picked rows of big = small's rows, in order.
template <class View>
void scatter_rows(const View& small, const std::vector<Pick>& picks, const View& big) {
  long at = 0;
  for (const auto& p : picks) {
    Kokkos::deep_copy(ExecSpace(), rows_of(big, p.first, p.count), rows_of(small, at, p.count));
    at += p.count;
  }
}

// Elements of rows [at, at + count) of `a` and [first, first + count) of `b` whose bits differ;
// the first few go to `report`.
template <class A, class B>
long differing(const A& a, long at, const B& b, long first, long count, std::string& report) {
  const auto ha = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows_of(a, at, count));
  const auto hb =
      Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows_of(b, first, count));
  using V = typename decltype(ha)::non_const_value_type;
  const long width = static_cast<long>(ha.size()) / count;
  std::ostringstream out;
  long bad = 0;
  for (long e = 0; e < static_cast<long>(ha.size()); ++e) {
    if (std::memcmp(ha.data() + e, hb.data() + e, sizeof(V)) == 0) continue;
    if (++bad > 5) continue;
    out << "\n  ";
    if (A::rank == 1)
      out << "element " << first + e;
    else
      out << "row " << first + e / width << ", column " << e % width;
    out << ": " << dilated::Impl::to_double(hb.data()[e])
        << " (the rows alone: " << dilated::Impl::to_double(ha.data()[e]) << ")";
  }
  report = out.str();
  return bad;
}

// The picked rows of `big` (whole run) against `small` (the same call on those rows alone).
template <class Big, class Small>
void check_rows(const char* what, const Big& big, const std::vector<Pick>& picks,
                const Small& small) {
  long at = 0;
  for (const auto& p : picks) {
    std::string report;
    const long bad = differing(small, at, big, p.first, p.count, report);
    INFO(what << ", rows [" << p.first << ", " << p.first + p.count << "): " << bad
              << " elements differ" << report);
    CHECK(bad == 0);
    at += p.count;
  }
}

// Bytes this backend can still allocate: the device's free memory (CUDA), MemAvailable (host).
std::size_t available_bytes() {
  if constexpr (!on_host) return dilated::device_memory_info().free;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::size_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    meminfo.ignore(64, '\n');
  }
  return 0;
}

double gib(std::size_t bytes) {
  return static_cast<double>(bytes) / (1L << 30);
}

// Skips the test case unless a large run can go ahead: on CUDA with `bytes` free and 1 GiB over
// (the context, cuBLAS, partials); on the host only when DILATED_LARGE_TESTS=1 asks for it, with
// as much memory available.
void require_large_run(std::size_t bytes) {
  const std::size_t needed = bytes + (std::size_t(1) << 30);
  if constexpr (on_host) {
    const char* asked = std::getenv("DILATED_LARGE_TESTS");
    if (!asked || std::string(asked) != "1")
      SKIP("host backend: DILATED_LARGE_TESTS=1 runs it (" << gib(needed)
                                                           << " GiB of memory; CUDA runs it)");
  }
  const std::size_t available = available_bytes();
  if (available < needed)
    SKIP(gib(available) << " GiB available, the run needs " << gib(needed) << " GiB");
}

std::size_t matrix_bytes(long rows, long cols) {
  return static_cast<std::size_t>(rows * cols + 1) * sizeof(T);
}

// g = gelu(h), then dh = g gelu'(h) (the forward's output as the upstream gradient), over
// (rows, cols) matrices `offset` elements into their buffers.
void check_gelu(long rows, long cols, int offset, long middle) {
  const ExecSpace space;
  const auto pick = picks(rows, cols, middle);
  const long picked = picked_rows(pick);
  OffsetMatrix h("dilated::test::h", rows, cols, offset), g("dilated::test::g", rows, cols, offset),
      dh("dilated::test::dh", rows, cols, offset);
  fill_pattern(h.m.data(), rows * cols, 1);
  Kokkos::deep_copy(space, g.buffer, sentinel);
  Kokkos::deep_copy(space, dh.buffer, sentinel);
  dilated::Impl::gelu_forward(space, h.m, g.m);
  dilated::Impl::gelu_backward(space, h.m, g.m, dh.m);

  OffsetMatrix hs("dilated::test::h_rows", picked, cols, offset),
      gs("dilated::test::g_rows", picked, cols, offset),
      dgs("dilated::test::dg_rows", picked, cols, offset),
      dhs("dilated::test::dh_rows", picked, cols, offset);
  gather_rows(h.m, pick, hs.m);
  gather_rows(g.m, pick, dgs.m);
  Kokkos::deep_copy(space, gs.buffer, sentinel);
  Kokkos::deep_copy(space, dhs.buffer, sentinel);
  dilated::Impl::gelu_forward(space, hs.m, gs.m);
  dilated::Impl::gelu_backward(space, hs.m, dgs.m, dhs.m);
  space.fence();
  check_rows("gelu forward", g.m, pick, gs.m);
  check_rows("gelu backward", dh.m, pick, dhs.m);
}

// db = the column sums of dy, as linear_backward takes them (a named function: nvcc's extended
// lambdas cannot sit inside another lambda).
void bias_gradient(const ExecSpace& space, const Matrix& dy, const Vector& db) {
  dilated::Impl::column_sums<Acc, 1>(
      space, "dilated::linear::bias_gradient", dy.extent(0), dy.extent(1),
      KOKKOS_LAMBDA(long i, long j, Acc(&sums)[1]) { sums[0] += static_cast<Acc>(dy(i, j)); },
      dilated::Impl::ColumnPartials<Acc, MemSpace>(), db);
}

// The Linear's bias passes over a (rows, cols) matrix: broadcast_rows (the bias where no product
// epilogue adds it) and the bias gradient's column sums (linear_backward's). The sums read a
// matrix that is 0 but in the picked rows, which hold whole numbers: every partial sum is exact,
// so the sums over all the rows equal the sums over the picked rows alone bit for bit.
void check_bias(long rows, long cols, long middle) {
  const ExecSpace space;
  const auto pick = picks(rows, cols, middle);
  const long picked = picked_rows(pick);
  OffsetMatrix y("dilated::test::y", rows, cols, 0), ys("dilated::test::y_rows", picked, cols, 0);
  const Vector bias("dilated::test::bias", cols);
  fill_pattern(bias.data(), cols, 2);
  Kokkos::deep_copy(space, y.buffer, sentinel);
  Kokkos::deep_copy(space, ys.buffer, sentinel);
  dilated::Impl::broadcast_rows(space, "dilated::test::bias", bias, y.m);
  dilated::Impl::broadcast_rows(space, "dilated::test::bias", bias, ys.m);
  space.fence();
  check_rows("bias broadcast", y.m, pick, ys.m);

  fill_pattern(ys.m.data(), picked * cols, 3, true);
  Kokkos::deep_copy(space, y.buffer, T(0));
  scatter_rows(ys.m, pick, y.m);
  const Vector db("dilated::test::db", cols), dbs("dilated::test::db_rows", cols);
  bias_gradient(space, y.m, db);
  bias_gradient(space, ys.m, dbs);
  space.fence();
  std::string report;
  const long bad = differing(dbs, 0, db, 0, cols, report);
  INFO("bias gradient: " << bad << " columns differ" << report);
  CHECK(bad == 0);
}

// y = LayerNorm(x) (with its mean and rstd), then dx for dy = y, over (rows, cols) matrices.
void check_layer_norm(long rows, long cols, long middle) {
  const ExecSpace space;
  const auto pick = picks(rows, cols, middle);
  const long picked = picked_rows(pick);
  constexpr double eps = 1e-5;
  OffsetMatrix x("dilated::test::x", rows, cols, 0), y("dilated::test::y", rows, cols, 0),
      dx("dilated::test::dx", rows, cols, 0);
  const Stat mean("dilated::test::mean", rows), rstd("dilated::test::rstd", rows);
  const Vector gamma("dilated::test::gamma", cols), beta("dilated::test::beta", cols),
      dgamma("dilated::test::dgamma", cols), dbeta("dilated::test::dbeta", cols);
  fill_pattern(x.m.data(), rows * cols, 4);
  fill_pattern(gamma.data(), cols, 5);
  fill_pattern(beta.data(), cols, 6);
  Kokkos::deep_copy(space, y.buffer, sentinel);
  Kokkos::deep_copy(space, dx.buffer, sentinel);
  dilated::Impl::layer_norm_forward(space, x.m, gamma, beta, eps, y.m, mean, rstd);
  dilated::Impl::layer_norm_backward(space, x.m, gamma, mean, rstd, y.m, dx.m, dgamma, dbeta);

  OffsetMatrix xs("dilated::test::x_rows", picked, cols, 0),
      ys("dilated::test::y_rows", picked, cols, 0), dys("dilated::test::dy_rows", picked, cols, 0),
      dxs("dilated::test::dx_rows", picked, cols, 0);
  const Stat means("dilated::test::mean_rows", picked), rstds("dilated::test::rstd_rows", picked),
      mean_in("dilated::test::mean_in", picked), rstd_in("dilated::test::rstd_in", picked);
  gather_rows(x.m, pick, xs.m);
  Kokkos::deep_copy(space, ys.buffer, sentinel);
  Kokkos::deep_copy(space, dxs.buffer, sentinel);
  dilated::Impl::layer_norm_forward(space, xs.m, gamma, beta, eps, ys.m, means, rstds);
  // The backward's inputs from the whole run: its check does not lean on the forward's.
  gather_rows(y.m, pick, dys.m);
  gather_rows(mean, pick, mean_in);
  gather_rows(rstd, pick, rstd_in);
  dilated::Impl::layer_norm_backward(space, xs.m, gamma, mean_in, rstd_in, dys.m, dxs.m, dgamma,
                                     dbeta);
  space.fence();
  check_rows("layer norm forward", y.m, pick, ys.m);
  check_rows("layer norm mean", mean, pick, means);
  check_rows("layer norm rstd", rstd, pick, rstds);
  check_rows("layer norm backward (dx)", dx.m, pick, dxs.m);
}

}  // namespace

TEST_CASE("index_range: a bound past 2^32 is kept", "[large]" TEST_CATEGORY) {
  const std::int64_t end = 2 * two32 + 5;
  const auto policy = dilated::Impl::index_range(ExecSpace(), 3, end);
  CHECK(policy.begin() == 3);
  CHECK(policy.end() == end);
}

TEST_CASE("GELU, bias passes, LayerNorm: the large-size comparisons at a small size",
          "[large]" TEST_CATEGORY) {
  for (const int offset : {0, 1}) {
    CAPTURE(offset);
    check_gelu(64, 96, offset, 64 * 96 / 2 + 40);
  }
  check_bias(64, 96, 64 * 96 / 2 + 40);
  check_layer_norm(96, 64, 96 * 64 / 2 + 20);
}

TEST_CASE("GELU forward and backward past 2^32 elements: as on the rows alone",
          "[large]" TEST_CATEGORY) {
  require_large_run(3 * matrix_bytes(wide_rows, wide));
  // Offset 0: 16-byte packs (2^29 of them for half); 1: one element a thread (2^32 + 23,552).
  for (const int offset : {0, 1}) {
    CAPTURE(offset);
    check_gelu(wide_rows, wide, offset, two31);
  }
}

TEST_CASE("Linear bias passes past 2^32 elements: as on the rows alone", "[large]" TEST_CATEGORY) {
  require_large_run(matrix_bytes(wide_rows, wide));
  check_bias(wide_rows, wide, two31);
}

TEST_CASE("LayerNorm forward and backward past 2^32 elements: as on the rows alone",
          "[large]" TEST_CATEGORY) {
  require_large_run(3 * matrix_bytes(narrow_rows, narrow) + 2 * narrow_rows * sizeof(Acc));
  check_layer_norm(narrow_rows, narrow, two31);
}
