// The language model's token layers and data on every backend and storage type, against
// independent host references: the embedding's gather and its deterministic backward against
// host loops in double (bitwise in double), the chunked fused LM head + cross-entropy against a
// dense host cross-entropy and its gradients against central finite differences, the byte
// corpus's windows against the file's bytes, and the errors.
#include <Dilated_FloatingPointTraps.hpp>
#include <Dilated_ScratchDirectory.hpp>
#include <Dilated_AttentionTestUtils.hpp>
#include <Dilated_ByteCorpus.hpp>
#include <Dilated_CrossEntropy.hpp>
#include <Dilated_Embedding.hpp>
#include <Dilated_TestData.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <atomic>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using Catch::Matchers::ContainsSubstring;
using dilated::Impl::to_double;

template <class T>
using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemSpace>;
template <class T>
using Rows3 = Kokkos::View<T***, Kokkos::LayoutRight, MemSpace>;
using Ids = Kokkos::View<int**, Kokkos::LayoutRight, MemSpace>;
using Ids1 = Kokkos::View<int*, Kokkos::LayoutRight, MemSpace>;

// The unit roundoff of a storage type (half the distance from 1 to the next value).
template <class T>
double unit_roundoff() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-53;
  if constexpr (std::is_same_v<T, float>) return 0x1p-24;
#if !DILATED_HALF_IS_FLOAT
  if constexpr (std::is_same_v<T, Kokkos::Experimental::half_t>) return 0x1p-11;
#endif
  return 0x1p-8;  // bf16
}

using dilated::testing::normal_values;

// Stores `values` (row-major) into the dense View rounded to its type; returns what was stored.
template <class View>
std::vector<double> store(const View& view, const std::vector<double>& values) {
  using T = typename View::non_const_value_type;
  REQUIRE(values.size() == view.size());
  auto host = Kokkos::create_mirror_view(view);
  std::vector<double> stored(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    host.data()[i] = static_cast<T>(values[i]);
    stored[i] = to_double(host.data()[i]);
  }
  Kokkos::deep_copy(view, host);
  return stored;
}

template <class View>
std::vector<double> fetch(const View& view) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  std::vector<double> values(view.size());
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = to_double(host.data()[i]);
  return values;
}

template <class View>
void store_ids(const View& view, const std::vector<int>& ids) {
  REQUIRE(ids.size() == view.size());
  auto host = Kokkos::create_mirror_view(view);
  std::copy(ids.begin(), ids.end(), host.data());
  Kokkos::deep_copy(view, host);
}

// Ids in [0, vocab) with many repeats: id 0 a third of the time, the rest uniform over
// [0, vocab - 1) (so the last id never occurs and its gradient row must come out 0).
std::vector<int> skewed_ids(std::size_t n, int vocab, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::uniform_int_distribution<int> uniform(0, vocab - 2);
  std::vector<int> ids(n);
  for (auto& id : ids)
    id = engine() % 3 == 0 ? 0 : uniform(engine);
  return ids;
}

// max |actual - expected| / max(max |expected|, floor): the error relative to the tensor's scale.
double normwise_error(const std::vector<double>& actual, const std::vector<double>& expected,
                      double floor = 1e-300) {
  REQUIRE(actual.size() == expected.size());
  double worst = 0, scale = floor;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    worst = std::max(worst, std::abs(actual[i] - expected[i]));
    scale = std::max(scale, std::abs(expected[i]));
  }
  return worst / scale;
}

using dilated::testing::NoFloatingPointTraps;

// ------------------------------------------------------------------------------- embedding

template <class T>
void check_embedding_forward(int vocab, int e, int b, int n) {
  INFO("vocab " << vocab << ", E " << e << ", (b, n) = (" << b << ", " << n << ")");
  Matrix<T> weight("dilated::test::weight", vocab, e);
  const auto w = store(weight, normal_values(vocab * e, 11));
  const auto ids = skewed_ids(b * n, vocab, 12);
  Ids tokens("dilated::test::ids", b, n);
  store_ids(tokens, ids);
  Rows3<T> out("dilated::test::out", b, n, e);
  dilated::Embedding<T, MemSpace> embedding;
  embedding.forward(ExecSpace(), weight, tokens, out);
  std::vector<double> expected(b * n * e);
  for (int p = 0; p < b * n; ++p)
    for (int j = 0; j < e; ++j)
      expected[p * e + j] = w[ids[p] * e + j];
  CHECK(fetch(out) == expected);

  // The same through (tokens,) ids and a (tokens, E) output.
  Ids1 flat("dilated::test::flat_ids", b * n);
  store_ids(flat, ids);
  Matrix<T> out2("dilated::test::out2", b * n, e);
  embedding.forward(ExecSpace(), weight, flat, out2);
  CHECK(fetch(out2) == expected);
}

// The host accumulations of the embedding's gradient, in double from the stored values, for
// every row and column: `ordered` in the order Embedding::backward documents (an id's positions in
// increasing order, in segments of sum_segment when there are more, the segment sums in order,
// then added to dW0 when accumulating), `sequential` a plain loop in position order, and `bound`
// what recursive summation in the device's accumulation type (float for every type but double)
// may differ from `sequential` by: (count - 1) u_acc sum |terms| (Higham, Accuracy and Stability
// of Numerical Algorithms, 2nd ed., eq. 4.4; the two-level order's (32 - 1) + (segments - 1)
// additions are no more) plus the final rounding to T.
struct HostEmbeddingGradient {
  std::vector<double> ordered, sequential, bound;
};

template <class T>
HostEmbeddingGradient host_embedding_gradient(int vocab, int e, const std::vector<int>& ids,
                                              const std::vector<double>& dout,
                                              const std::vector<double>* dw0) {
  constexpr long segment = dilated::Embedding<T, MemSpace>::sum_segment;
  const double u_acc = std::is_same_v<T, double> ? 0x1p-53 : 0x1p-24;
  std::vector<std::vector<std::size_t>> positions(vocab);
  for (std::size_t p = 0; p < ids.size(); ++p)
    positions[ids[p]].push_back(p);
  HostEmbeddingGradient r;
  r.ordered.assign(vocab * e, 0.0);
  r.sequential.assign(vocab * e, 0.0);
  r.bound.assign(vocab * e, 0.0);
  for (int v = 0; v < vocab; ++v) {
    const auto& list = positions[v];
    const long count = static_cast<long>(list.size());
    for (int j = 0; j < e; ++j) {
      const std::size_t k = v * e + j;
      double sequential = 0, magnitude = 0, total = 0;
      for (std::size_t p : list) {
        sequential += dout[p * e + j];
        magnitude += std::abs(dout[p * e + j]);
      }
      if (count <= segment) {
        total = sequential;
      } else {
        for (long first = 0; first < count; first += segment) {
          double part = 0;
          for (long i = first; i < std::min(count, first + segment); ++i)
            part += dout[list[i] * e + j];
          total += part;
        }
      }
      const double old = dw0 ? (*dw0)[k] : 0.0;
      r.ordered[k] = dw0 ? old + total : total;
      r.sequential[k] = old + sequential;
      r.bound[k] = static_cast<double>(std::max(count, 1L) - 1 + (dw0 ? 1 : 0)) * u_acc *
                       (magnitude + std::abs(old)) +
                   unit_roundoff<T>() * std::abs(r.sequential[k]);
    }
  }
  return r;
}

// Double: the documented order exactly; every type: within the summation bound of the plain
// position-order sum.
template <class T>
void check_embedding_gradient(const std::vector<double>& actual, const HostEmbeddingGradient& r) {
  if constexpr (std::is_same_v<T, double>) CHECK(actual == r.ordered);
  std::size_t outside = 0;
  for (std::size_t k = 0; k < actual.size(); ++k)
    outside += std::abs(actual[k] - r.sequential[k]) <= r.bound[k] ? 0 : 1;
  CHECK(outside == 0);
}

template <class T>
void check_embedding_backward(int vocab, int e, int b, int n, const std::vector<int>& ids) {
  INFO("vocab " << vocab << ", E " << e << ", (b, n) = (" << b << ", " << n << ")");
  Ids tokens("dilated::test::ids", b, n);
  store_ids(tokens, ids);
  Rows3<T> dout("dilated::test::dout", b, n, e);
  const auto g = store(dout, normal_values(b * n * e, 22));
  Matrix<T> dweight("dilated::test::dweight", vocab, e);
  store(dweight, normal_values(vocab * e, 23, 100.0));  // overwritten: no trace may remain
  dilated::Embedding<T, MemSpace> embedding;
  embedding.backward(ExecSpace(), tokens, dout, dweight);
  const auto actual = fetch(dweight);
  check_embedding_gradient<T>(actual, host_embedding_gradient<T>(vocab, e, ids, g, nullptr));
  std::vector<bool> present(vocab, false);
  for (int id : ids)
    present[id] = true;
  for (int v = 0; v < vocab; ++v)
    for (int j = 0; j < e; ++j)
      if (!present[v]) CHECK(actual[v * e + j] == 0.0);  // ids that never occur

  // Accumulating onto a gradient already there (a tied weight's LM-head gradient).
  const auto dw0 = store(dweight, normal_values(vocab * e, 24));
  embedding.backward(ExecSpace(), tokens, dout, dweight, true);
  check_embedding_gradient<T>(fetch(dweight), host_embedding_gradient<T>(vocab, e, ids, g, &dw0));

  // Deterministic: a second run (same buffers, other thread timing) gives the same bits.
  embedding.backward(ExecSpace(), tokens, dout, dweight);
  const auto first = fetch(dweight);
  embedding.backward(ExecSpace(), tokens, dout, dweight);
  CHECK(fetch(dweight) == first);
}

template <class T>
void check_embedding_backward(int vocab, int e, int b, int n) {
  check_embedding_backward<T>(vocab, e, b, n, skewed_ids(b * n, vocab, 21));
}

// ------------------------------------------------------------------------- cross-entropy

struct DenseCrossEntropy {
  double loss = 0;
  long counted = 0;
  std::vector<double> dh, dw;
};

// F.cross_entropy(h @ w.T, targets, ignore_index) and its gradients, dense, in double.
DenseCrossEntropy dense_cross_entropy(const std::vector<double>& h, const std::vector<double>& w,
                                      const std::vector<int>& targets, int vocab, int e,
                                      long ignore_index) {
  const std::size_t tokens = targets.size();
  DenseCrossEntropy r;
  r.dh.assign(tokens * e, 0.0);
  r.dw.assign(vocab * e, 0.0);
  for (int y : targets)
    r.counted += y != ignore_index ? 1 : 0;
  std::vector<double> z(vocab);
  for (std::size_t t = 0; t < tokens; ++t) {
    const int y = targets[t];
    if (y == ignore_index) continue;
    double m = -std::numeric_limits<double>::infinity();
    for (int v = 0; v < vocab; ++v) {
      z[v] = 0;
      for (int j = 0; j < e; ++j)
        z[v] += h[t * e + j] * w[v * e + j];
      m = std::max(m, z[v]);
    }
    double s = 0;
    for (int v = 0; v < vocab; ++v)
      s += std::exp(z[v] - m);
    const double lse = m + std::log(s);
    r.loss += lse - z[y];
    for (int v = 0; v < vocab; ++v) {
      const double g = (std::exp(z[v] - lse) - (v == y ? 1.0 : 0.0)) / r.counted;
      for (int j = 0; j < e; ++j) {
        r.dh[t * e + j] += g * w[v * e + j];
        r.dw[v * e + j] += g * h[t * e + j];
      }
    }
  }
  r.loss /= r.counted;
  return r;
}

// Tolerances of the chunked loss against the dense reference, relative to each tensor's largest
// value (loss: to the loss), for logits of magnitude up to ~10 (E = 24, h ~ N(0, 1),
// W ~ N(0, 0.25)):
//   double: fp64 products and log-sum-exp; rounding ~ E u ~ 1e-15: 1e-12 (the bound).
//   float:  fp32 products: logits off by ~ E u |h||w| ~ 1e-6 absolute; the loss and softmax move
//           by as much, dh and dW (sums over vocab or tokens of dlogits) by ~1e-6 of their
//           scale: 1e-5.
//   half:   logits and dlogits are stored in half: logits off by up to 2^-11 * 10 = 5e-3, which
//           moves the loss by as much (~1.5e-3 of a loss ~3.5) and dlogits by p * 5e-3 plus
//           their own rounding (2^-11): 1e-2.
//   bf16:   the same with 2^-8: 8e-2.
template <class T>
double cross_entropy_tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return 1e-5;
#if !DILATED_HALF_IS_FLOAT
  if constexpr (std::is_same_v<T, Kokkos::Experimental::half_t>) return 1e-2;
#endif
  return 8e-2;
}

template <class T>
void check_cross_entropy(int vocab, long chunk, bool with_ignored) {
  constexpr int b = 2, n = 37, e = 24;
  constexpr long ignore = -100;
  INFO("vocab " << vocab << ", chunk_tokens " << chunk
                << (with_ignored ? ", ignored targets" : ""));
  Rows3<T> h("dilated::test::h", b, n, e), dh("dilated::test::dh", b, n, e);
  Matrix<T> weight("dilated::test::weight", vocab, e), dweight("dilated::test::dweight", vocab, e);
  const auto hv = store(h, normal_values(b * n * e, 31));
  const auto wv = store(weight, normal_values(vocab * e, 32, 0.5));
  std::vector<int> targets(b * n);
  std::mt19937_64 engine(33);
  for (auto& y : targets)
    y = static_cast<int>(engine() % vocab);
  if (with_ignored) targets[0] = targets[5] = targets[n + 7] = ignore;
  Ids ids("dilated::test::targets", b, n);
  store_ids(ids, targets);
  const auto ref = dense_cross_entropy(hv, wv, targets, vocab, e, ignore);
  const double tol = cross_entropy_tolerance<T>();

  dilated::FusedLinearCrossEntropy<T, MemSpace> ce(
      dilated::CrossEntropyOptions().set_chunk_tokens(chunk));
  const double loss = ce.loss(ExecSpace(), h, weight, ids);
  CHECK(std::abs(loss - ref.loss) <= tol * ref.loss);
  CHECK(ce.counted_tokens() == ref.counted);
  const double loss2 = ce.loss_and_gradients(ExecSpace(), h, weight, ids, dh, dweight);
  CHECK(std::abs(loss2 - ref.loss) <= tol * ref.loss);
  CHECK(normwise_error(fetch(dh), ref.dh) <= tol);
  CHECK(normwise_error(fetch(dweight), ref.dw) <= tol);
  if (with_ignored) {
    const auto dhv = fetch(dh);
    for (int j = 0; j < e; ++j)
      CHECK(dhv[5 * e + j] == 0.0);  // an ignored token has no gradient
  }

  // A loss scale on the gradients, added to a gradient dweight already holds; (tokens, E) rows.
  const auto dw0 = store(dweight, normal_values(vocab * e, 34, 0.01));
  Matrix<T> h2("dilated::test::h2", b * n, e), dh2("dilated::test::dh2", b * n, e);
  Kokkos::deep_copy(h2, Matrix<T>(h.data(), b * n, e));
  Ids1 flat("dilated::test::flat_targets", b * n);
  store_ids(flat, targets);
  const double loss3 = ce.loss_and_gradients(
      ExecSpace(), h2, weight, flat, dh2, dweight,
      dilated::LossGradientOptions().set_scale(4.0).set_accumulate_weight_gradient(true));
  CHECK(std::abs(loss3 - ref.loss) <= tol * ref.loss);
  std::vector<double> dh4(ref.dh.size()), dw4(ref.dw.size());
  for (std::size_t i = 0; i < dh4.size(); ++i)
    dh4[i] = 4.0 * ref.dh[i];
  for (std::size_t i = 0; i < dw4.size(); ++i)
    dw4[i] = dw0[i] + 4.0 * ref.dw[i];
  CHECK(normwise_error(fetch(dh2), dh4) <= tol);
  CHECK(normwise_error(fetch(dweight), dw4) <= tol);
}

// Allocations and regions seen through Kokkos Tools while `counting` is set.
struct ToolCounts {
  static inline std::atomic<int> allocations{0};
  static inline std::atomic<bool> counting{false};
  static inline std::vector<std::string> regions;
  static void on_allocate(Kokkos::Tools::SpaceHandle, const char*, const void*, std::uint64_t) {
    if (counting) ++allocations;
  }
  static void on_push_region(const char* name) {
    if (counting) regions.emplace_back(name);
  }
};

// ------------------------------------------------------------------------------ corpus

std::vector<std::uint8_t> write_bytes(const std::string& path, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::vector<std::uint8_t> bytes(n);
  for (auto& x : bytes)
    x = static_cast<std::uint8_t>(engine());
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(n));
  return bytes;
}

// Draws `batches` batches of (b, n) windows; returns inputs and targets of each, in order.
std::vector<std::vector<int>> draw_batches(dilated::training::ByteCorpus& corpus, int b,
                                           int batches) {
  const long n = corpus.sequence_length();
  Ids inputs("dilated::test::inputs", b, n), targets("dilated::test::targets", b, n);
  std::vector<std::vector<int>> out;
  for (int k = 0; k < batches; ++k) {
    corpus.draw(ExecSpace(), inputs, targets);
    for (const auto& v : {inputs, targets}) {
      const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
      out.emplace_back(host.data(), host.data() + host.size());
    }
  }
  return out;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("Embedding forward equals a host gather", "[language_model]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  using T = TestType;
  check_embedding_forward<T>(37, 16, 2, 9);  // rows of whole 16-byte packs
  check_embedding_forward<T>(37, 13, 2, 9);  // one element at a time
  check_embedding_forward<T>(5, 8, 1, 1);
}

TEMPLATE_LIST_TEST_CASE("Embedding backward equals a host accumulation in position order",
                        "[language_model]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  using T = TestType;
  // 2100 positions: three chunks of the counting pass, the last partial; id 0 on a third of
  // them, the last id on none.
  check_embedding_backward<T>(11, 16, 3, 700);
  check_embedding_backward<T>(11, 13, 3, 700);
  check_embedding_backward<T>(300, 8, 2, 64);  // more ids than positions: most rows empty
  check_embedding_backward<T>(3, 4, 1, 1);
  // Runs of one segment exactly (32 positions), one more, two segments and one more, shuffled.
  std::vector<int> ids(6, 0);
  const int counts[] = {32, 33, 64, 65};
  for (int id = 1; id <= 4; ++id)
    ids.insert(ids.end(), counts[id - 1], id);
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(25));
  check_embedding_backward<T>(6, 16, 1, static_cast<int>(ids.size()), ids);
}

TEST_CASE("Embedding rejects ids outside the vocabulary, naming the position",
          "[language_model]" TEST_CATEGORY) {
  constexpr int vocab = 37, e = 8, b = 2, n = 9;
  Matrix<float> weight("dilated::test::weight", vocab, e), dweight("dilated::test::dw", vocab, e);
  store(weight, normal_values(vocab * e, 41));
  Rows3<float> out("dilated::test::out", b, n, e);
  Kokkos::deep_copy(out, 7.0f);
  Kokkos::deep_copy(dweight, 5.0f);
  auto ids = skewed_ids(b * n, vocab, 42);
  ids[n + 4] = vocab;
  ids[n + 6] = -1;
  Ids tokens("dilated::test::ids", b, n);
  store_ids(tokens, ids);
  dilated::Embedding<float, MemSpace> embedding;
  REQUIRE_THROWS_WITH(embedding.forward(ExecSpace(), weight, tokens, out),
                      ContainsSubstring("Embedding::forward: ids(1, 4) = 37 (position 13) is "
                                        "outside the vocabulary [0, 37)"));
  REQUIRE_THROWS_WITH(embedding.backward(ExecSpace(), tokens, out, dweight),
                      ContainsSubstring("Embedding::backward: ids(1, 4) = 37 (position 13)"));
  ids[n + 4] = 0;
  store_ids(tokens, ids);
  REQUIRE_THROWS_WITH(embedding.forward(ExecSpace(), weight, tokens, out),
                      ContainsSubstring("ids(1, 6) = -1 (position 15)"));
  // Nothing was written.
  for (double x : fetch(out))
    REQUIRE(x == 7.0);
  for (double x : fetch(dweight))
    REQUIRE(x == 5.0);

  Rows3<float> narrow("dilated::test::narrow", b, n, e - 1);
  REQUIRE_THROWS_WITH(embedding.forward(ExecSpace(), weight, tokens, narrow),
                      ContainsSubstring("out has 7 columns but the weight has E = 8"));
  Ids short_ids("dilated::test::short", b, n - 1);
  REQUIRE_THROWS_WITH(embedding.backward(ExecSpace(), short_ids, out, dweight),
                      ContainsSubstring("dout has 18 rows but ids has 16 positions"));
}

TEMPLATE_LIST_TEST_CASE("Chunked cross-entropy equals the dense host cross-entropy",
                        "[language_model]" TEST_CATEGORY, dilated::testing::StorageTypes) {
  using T = TestType;
  // 74 tokens: chunks of 7, 16 and 20 (none divides 74), of 74 and of 1000 (one chunk larger
  // than the call); vocab 32 takes 16-byte packs, 29 does not.
  for (const long chunk : {7L, 16L, 20L, 74L, 1000L})
    check_cross_entropy<T>(29, chunk, false);
  check_cross_entropy<T>(32, 20, false);
  check_cross_entropy<T>(32, 16, true);
  check_cross_entropy<T>(29, 1000, true);
}

TEST_CASE("Cross-entropy gradients equal central finite differences (double)",
          "[language_model]" TEST_CATEGORY) {
  constexpr int b = 2, n = 4, vocab = 6, e = 4;
  Matrix<double> h("dilated::test::h", b * n, e), dh("dilated::test::dh", b * n, e);
  Matrix<double> weight("dilated::test::weight", vocab, e), dw("dilated::test::dw", vocab, e);
  auto hv = store(h, normal_values(b * n * e, 51));
  auto wv = store(weight, normal_values(vocab * e, 52));
  std::vector<int> targets{3, 0, 5, 5, 1, 2, -100, 4};
  Ids ids("dilated::test::targets", b, n);
  store_ids(ids, targets);
  dilated::FusedLinearCrossEntropy<double, MemSpace> ce(
      dilated::CrossEntropyOptions().set_chunk_tokens(3));  // 3 chunks, the last of 2 tokens
  ce.loss_and_gradients(ExecSpace(), h, weight, ids, dh, dw);
  const auto dhv = fetch(dh), dwv = fetch(dw);
  CHECK(ce.counted_tokens() == 7);
  // Step 1e-5: truncation ~ step^2 |L'''| ~ 1e-10, rounding ~ 1e-16 |L| / step ~ 1e-11; the
  // gradients are ~1e-2..1e-1.
  constexpr double step = 1e-5, tol = 1e-8;
  const auto central = [&](auto& values, const auto& view, std::size_t i) {
    const double x = values[i];
    values[i] = x + step;
    store(view, values);
    const double up = ce.loss(ExecSpace(), h, weight, ids);
    values[i] = x - step;
    store(view, values);
    const double down = ce.loss(ExecSpace(), h, weight, ids);
    values[i] = x;
    store(view, values);
    return (up - down) / (2 * step);
  };
  double worst_h = 0, worst_w = 0;
  for (std::size_t i = 0; i < hv.size(); ++i)
    worst_h = std::max(worst_h, std::abs(central(hv, h, i) - dhv[i]));
  for (std::size_t i = 0; i < wv.size(); ++i)
    worst_w = std::max(worst_w, std::abs(central(wv, weight, i) - dwv[i]));
  INFO("worst |finite difference - gradient|: h " << worst_h << ", weight " << worst_w);
  CHECK(worst_h <= tol);
  CHECK(worst_w <= tol);
  for (int j = 0; j < e; ++j)
    CHECK(dhv[6 * e + j] == 0.0);  // the ignored token
}

TEST_CASE("Cross-entropy reports a loss that is not finite", "[language_model]" TEST_CATEGORY) {
  constexpr int b = 2, n = 6, vocab = 16, e = 8;
  Rows3<float> h("dilated::test::h", b, n, e), dh("dilated::test::dh", b, n, e);
  Matrix<float> weight("dilated::test::weight", vocab, e), dw("dilated::test::dw", vocab, e);
  auto hv = store(h, normal_values(b * n * e, 61));
  store(weight, normal_values(vocab * e, 62));
  Ids ids("dilated::test::targets", b, n);
  std::vector<int> targets(b * n, 3);
  store_ids(ids, targets);
  dilated::FusedLinearCrossEntropy<float, MemSpace> ce(
      dilated::CrossEntropyOptions().set_chunk_tokens(5));
  const NoFloatingPointTraps no_traps;
  // A NaN activation at (1, 2), and logits that overflow float at (1, 4).
  hv[(n + 2) * e + 3] = std::numeric_limits<double>::quiet_NaN();
  for (int j = 0; j < e; ++j)
    hv[(n + 4) * e + j] = 3e38;
  store(h, hv);
  try {
    ce.loss_and_gradients(ExecSpace(), h, weight, ids, dh, dw);
    FAIL("no NonFiniteLoss");
  } catch (const dilated::NonFiniteLoss& error) {
    CHECK(error.position() == n + 2);
    CHECK(std::isnan(error.loss()));
    CHECK_THAT(error.what(), ContainsSubstring("loss_and_gradients: the loss is nan (first at "
                                               "token 8 = (1, 2))"));
  }
  hv[(n + 2) * e + 3] = 0.5;
  store(h, hv);
  CHECK_THROWS_AS(ce.loss(ExecSpace(), h, weight, ids), dilated::NonFiniteLoss);
  try {
    ce.loss(ExecSpace(), h, weight, ids);
  } catch (const dilated::NonFiniteLoss& error) {
    CHECK(error.position() == n + 4);
  }
}

TEST_CASE("Cross-entropy rejects bad targets and shapes, naming them",
          "[language_model]" TEST_CATEGORY) {
  constexpr int b = 2, n = 6, vocab = 16, e = 8;
  Rows3<float> h("dilated::test::h", b, n, e), dh("dilated::test::dh", b, n, e);
  Matrix<float> weight("dilated::test::weight", vocab, e), dw("dilated::test::dw", vocab, e);
  store(h, normal_values(b * n * e, 71));
  store(weight, normal_values(vocab * e, 72));
  Kokkos::deep_copy(dh, 9.0f);
  Ids ids("dilated::test::targets", b, n);
  std::vector<int> targets(b * n, 3);
  targets[3] = vocab;
  store_ids(ids, targets);
  dilated::FusedLinearCrossEntropy<float, MemSpace> ce;
  REQUIRE_THROWS_WITH(ce.loss_and_gradients(ExecSpace(), h, weight, ids, dh, dw),
                      ContainsSubstring("loss_and_gradients: targets(0, 3) = 16 (position 3) is "
                                        "outside the vocabulary [0, 16)"));
  for (double x : fetch(dh))
    REQUIRE(x == 9.0);  // nothing written
  targets.assign(b * n, -100);
  store_ids(ids, targets);
  REQUIRE_THROWS_WITH(ce.loss(ExecSpace(), h, weight, ids),
                      ContainsSubstring("targets has no token to average over (12 tokens, all "
                                        "equal to ignore_index = -100)"));
  targets.assign(b * n, 1);
  store_ids(ids, targets);
  dilated::FusedLinearCrossEntropy<float, MemSpace> ignore_one(
      dilated::CrossEntropyOptions().set_ignore_index(1));
  REQUIRE_THROWS_WITH(ignore_one.loss(ExecSpace(), h, weight, ids),
                      ContainsSubstring("all equal to ignore_index = 1"));
  Matrix<float> wide("dilated::test::wide", vocab, e + 1);
  REQUIRE_THROWS_WITH(ce.loss(ExecSpace(), h, wide, ids),
                      ContainsSubstring("h has E = 8 columns but weight has 9"));
  Rows3<float> dh_short("dilated::test::dh_short", b, n - 1, e);
  REQUIRE_THROWS_WITH(ce.loss_and_gradients(ExecSpace(), h, weight, ids, dh_short, dw),
                      ContainsSubstring("dh.extent(1) = 5 differs from h.extent(1) = 6"));
  using CrossEntropy = dilated::FusedLinearCrossEntropy<float, MemSpace>;
  REQUIRE_THROWS_WITH(CrossEntropy(dilated::CrossEntropyOptions().set_chunk_tokens(0)),
                      ContainsSubstring("chunk_tokens = 0 must be >= 1"));
}

TEST_CASE("Embedding and cross-entropy calls after the first allocate nothing",
          "[language_model]" TEST_CATEGORY) {
  constexpr int b = 2, n = 40, vocab = 24, e = 8;
  Ids ids("dilated::test::ids", b, n);
  store_ids(ids, skewed_ids(b * n, vocab, 81));
  Matrix<float> weight("dilated::test::weight", vocab, e), dw("dilated::test::dw", vocab, e);
  store(weight, normal_values(vocab * e, 82));
  Rows3<float> x("dilated::test::x", b, n, e), dx("dilated::test::dx", b, n, e);
  dilated::Embedding<float, MemSpace> embedding;
  dilated::FusedLinearCrossEntropy<float, MemSpace> ce(
      dilated::CrossEntropyOptions().set_chunk_tokens(32));
  const auto step = [&] {
    embedding.forward(ExecSpace(), weight, ids, x);
    ce.loss_and_gradients(ExecSpace(), x, weight, ids, dx, dw);
    embedding.backward(ExecSpace(), ids, dx, dw, true);
  };
  step();
  CHECK(ce.workspace_bytes() >= 32 * vocab * sizeof(float));
  // rank and order (a position each), the table (one chunk), two offsets per id, and
  // 2 * 80 / 32 = 5 rows of partial sums.
  CHECK(embedding.workspace_bytes() ==
        (2 * b * n + vocab + 2 * (vocab + 1)) * sizeof(int) + 5 * e * sizeof(float));
  Kokkos::Tools::Experimental::set_allocate_data_callback(&ToolCounts::on_allocate);
  Kokkos::Tools::Experimental::set_push_region_callback(&ToolCounts::on_push_region);
  ToolCounts::counting = true;
  step();
  step();
  ToolCounts::counting = false;
  Kokkos::Tools::Experimental::set_allocate_data_callback(nullptr);
  Kokkos::Tools::Experimental::set_push_region_callback(nullptr);
  CHECK(ToolCounts::allocations == 0);
  std::vector<std::string> ours;
  for (const auto& r : ToolCounts::regions)
    if (r.rfind("dilated::Embedding", 0) == 0 || r.rfind("dilated::FusedLinear", 0) == 0)
      ours.push_back(r);
  const std::vector<std::string> one{"dilated::Embedding::forward",
                                     "dilated::FusedLinearCrossEntropy::loss_and_gradients",
                                     "dilated::Embedding::backward"};
  std::vector<std::string> two = one;
  two.insert(two.end(), one.begin(), one.end());
  CHECK(ours == two);
}

TEST_CASE("Byte corpus: windows, next-token targets, seeds, saved and resumed state",
          "[language_model]" TEST_CATEGORY) {
  namespace training = dilated::training;
  const std::string dir = dilated::testing::scratch_directory("corpus");
  const std::string path = dir + "/train.bin";
  const auto bytes = write_bytes(path, 4000, 91);
  constexpr int b = 5, n = 16;
  training::ByteCorpus corpus(path, n, 7);
  CHECK(corpus.size() == 4000);
  CHECK(corpus.window_count() == 4000 - n);
  const auto batches = draw_batches(corpus, b, 1);
  const auto& inputs = batches[0];
  const auto& targets = batches[1];
  for (int i = 0; i < b; ++i) {
    const std::size_t s = corpus.window_start(i);
    REQUIRE(s + n < bytes.size());
    for (int j = 0; j < n; ++j) {
      CHECK(inputs[i * n + j] == bytes[s + j]);
      CHECK(targets[i * n + j] == bytes[s + j + 1]);
      if (j + 1 < n) CHECK(targets[i * n + j] == inputs[i * n + j + 1]);  // shifted by one
    }
    // Independently of window_start: the row is in the file, and its target is what follows.
    const auto row =
        std::vector<std::uint8_t>(inputs.begin() + i * n, inputs.begin() + (i + 1) * n);
    const auto at = std::search(bytes.begin(), bytes.end(), row.begin(), row.end());
    REQUIRE(at != bytes.end());
    CHECK(targets[i * n + n - 1] == *(at + n));
  }
  CHECK(corpus.state().windows_drawn == b);

  // The same seed draws the same windows; another seed others.
  training::ByteCorpus again(path, n, 7), other(path, n, 8);
  const auto first = draw_batches(again, b, 3);
  CHECK(std::vector<int>(first[0]) == inputs);
  CHECK(draw_batches(other, b, 1)[0] != inputs);

  // Saved after one batch, resumed: the next two batches are the uninterrupted run's.
  training::ByteCorpus run(path, n, 7), resumed(path, n, 1234);
  draw_batches(run, b, 1);
  run.save_state(dir + "/sampler.txt");
  CHECK(!std::filesystem::exists(dir + "/sampler.txt.tmp"));
  const auto continued = draw_batches(run, b, 2);
  resumed.load_state(dir + "/sampler.txt");
  CHECK(resumed.state().seed == 7);
  CHECK(resumed.state().windows_drawn == b);
  CHECK(draw_batches(resumed, b, 2) == continued);
  CHECK(std::vector<std::vector<int>>(first.begin() + 2, first.end()) == continued);
  training::ByteCorpus restored(path, n, 99);
  restored.restore(run.state());
  CHECK(restored.state().windows_drawn == 3 * b);

  // Every start of a small file is drawn, the last one's target being the file's last byte.
  const std::string small = dir + "/small.bin";
  write_bytes(small, 20, 92);
  training::ByteCorpus tiny(small, 8, 3);
  std::set<std::size_t> starts;
  for (std::uint64_t k = 0; k < 1000; ++k)
    starts.insert(tiny.window_start(k));
  CHECK(starts.size() == 12);
  CHECK(*starts.rbegin() == 11);
  training::ByteCorpus exact(small, 19, 3);  // a file of exactly n + 1 bytes: one window
  CHECK(exact.window_count() == 1);
  const auto whole = draw_batches(exact, 2, 1);
  CHECK(whole[0].front() == exact.bytes().front());
  CHECK(whole[1].back() == exact.bytes().back());
  std::filesystem::remove_all(dir);
}

TEST_CASE("Byte corpus rejects bad files and states, naming them",
          "[language_model]" TEST_CATEGORY) {
  namespace training = dilated::training;
  const std::string dir = dilated::testing::scratch_directory("corpus_errors");
  const std::string path = dir + "/val.bin";
  write_bytes(path, 16, 93);
  REQUIRE_THROWS_WITH(training::ByteCorpus(dir + "/missing.bin", 8, 1),
                      ContainsSubstring("missing.bin' is not a readable file"));
  REQUIRE_THROWS_WITH(training::ByteCorpus(dir, 8, 1), ContainsSubstring("is not a readable file"));
  REQUIRE_THROWS_WITH(training::ByteCorpus(path, 16, 1),
                      ContainsSubstring("holds 16 bytes, fewer than a window of "
                                        "sequence_length + 1 = 17"));
  REQUIRE_THROWS_WITH(training::ByteCorpus(path, 0, 1),
                      ContainsSubstring("sequence_length = 0 must be >= 1"));
  training::ByteCorpus corpus(path, 8, 1);
  Ids wrong("dilated::test::wrong", 2, 7), right("dilated::test::right", 2, 8);
  REQUIRE_THROWS_WITH(corpus.draw(ExecSpace(), wrong, right),
                      ContainsSubstring("inputs is (2, 7) but the windows are of "
                                        "sequence_length = 8"));
  REQUIRE_THROWS_WITH(corpus.draw(ExecSpace(), right, wrong),
                      ContainsSubstring("targets is (2, 7) but inputs is (2, 8)"));
  CHECK(corpus.state().windows_drawn == 0);

  REQUIRE_THROWS_WITH(corpus.load_state(dir + "/none.txt"), ContainsSubstring("cannot be opened"));
  std::ofstream(dir + "/garbage.txt") << "hello\n";
  REQUIRE_THROWS_WITH(corpus.load_state(dir + "/garbage.txt"),
                      ContainsSubstring("is not a ByteCorpus sampler state"));
  training::ByteCorpus longer(path, 4, 1);
  longer.save_state(dir + "/longer.txt");
  REQUIRE_THROWS_WITH(corpus.load_state(dir + "/longer.txt"),
                      ContainsSubstring("windows of sequence_length = 4, not 8"));
  write_bytes(dir + "/other.bin", 30, 94);
  training::ByteCorpus other(dir + "/other.bin", 8, 1);
  other.save_state(dir + "/other.txt");
  REQUIRE_THROWS_WITH(corpus.load_state(dir + "/other.txt"),
                      ContainsSubstring("is the state of a corpus of 30 bytes"));
  CHECK(corpus.state().seed == 1);
  std::filesystem::remove_all(dir);
}
