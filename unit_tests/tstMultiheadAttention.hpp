// dilated::MultiheadDilatedAttention<Original | Improved> on every backend: forward against the
// host layer of plain loops in double, the two policies against each other, gradients of the
// inputs and of every parameter against central finite differences (double), parameter
// initialisation, .npy save/load, strided inputs, and the errors for bad arguments.
#include <DilatedAttention.hpp>
#include <Dilated_ScratchDirectory.hpp>
#include <Dilated_Allclose.hpp>
#include <Dilated_TokenTestData.hpp>
#include <Dilated_AttentionTestUtils.hpp>
#include <Dilated_LayerReference.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using dilated::Semantics;
using dilated::testing::Host3;
using dilated::testing::HostParameters;
using dilated::testing::LayerConfig;

template <class Policy, class T>
using Layer = dilated::MultiheadDilatedAttention<Policy, T, MemSpace>;
template <class T>
using Tokens = Kokkos::View<T***, Kokkos::LayoutRight, MemSpace>;

static_assert(
    std::is_same_v<dilated::seed::DilatedAttention, dilated::DilatedAttention<dilated::Original>>);
static_assert(std::is_same_v<dilated::seed::ImprovedDilatedAttention,
                             dilated::DilatedAttention<dilated::Improved>>);
static_assert(std::is_same_v<dilated::seed::MultiheadDilatedAttention<double, MemSpace>,
                             Layer<dilated::Original, double>>);
static_assert(std::is_same_v<dilated::seed::ImprovedMultiheadDilatedAttention<float, MemSpace>,
                             Layer<dilated::Improved, float>>);

// The shared token helpers (Dilated_TokenTestData.hpp) with this backend's memory space.
using dilated::testing::fetch;
using dilated::testing::fetch_flat;
using dilated::testing::random_tokens;
template <class T>
Tokens<T> store(Host3& x) {
  return dilated::testing::store<T, MemSpace>(x);
}

// Accuracy of the layer against double: a few roundings of T through two projections, the
// attention and the norm (O(1) data; E <= 32).
template <class T>
double layer_tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-10;
  if constexpr (std::is_same_v<T, float>) return 1e-4;
  if constexpr (std::is_same_v<T, Kokkos::Experimental::half_t>) return 3e-2;
  return 1.5e-1;  // bf16
}

template <class Policy, class T>
Layer<Policy, T> make_layer(const LayerConfig& c, bool bias, std::uint64_t seed,
                            double dropout = 0.0) {
  return Layer<Policy, T>(c.embed_dim, c.num_heads, c.segs, c.dils, dropout, bias, c.layer_norm,
                          c.eps, 0.8, c.semantics, seed);
}

struct Case {
  LayerConfig config;
  int b, n;
  bool bias, self, causal;
};

// Each runs with both policies: grouped and longnet, n not a multiple of the segments, with and
// without bias and layer norm, self- and cross-attention, causal and not.
const std::vector<Case> forward_cases = {
    {{16, 2, {8, 16}, {1, 2}, Semantics::grouped, true}, 2, 24, true, true, false},
    {{16, 2, {8, 16}, {1, 2}, Semantics::grouped, true}, 1, 20, true, false, true},
    {{24, 3, {8, 16, 32}, {1, 2, 4}, Semantics::longnet, true}, 1, 40, true, true, true},
    {{24, 3, {8, 16, 32}, {1, 2, 4}, Semantics::longnet, false}, 2, 33, false, false, false},
    {{32, 4, {16, 32}, {1, 2}, Semantics::longnet, true}, 1, 50, false, true, false},
    // embed_dim 15: rows of no whole 16-byte pack in any storage type, so the LayerNorm and bias
    // kernels take their one-element path (the cases above take the packed one).
    {{15, 3, {8, 16}, {1, 2}, Semantics::grouped, true}, 2, 21, true, true, true},
};

template <class Policy, class T>
void check_forward(const Case& c, std::uint64_t seed) {
  CAPTURE(dilated::to_string(c.config.semantics), c.config.embed_dim, c.config.num_heads, c.b, c.n,
          c.bias, c.config.layer_norm, c.self, c.causal);
  const auto layer = make_layer<Policy, T>(c.config, c.bias, seed);
  const int e = c.config.embed_dim;
  Host3 xq = random_tokens(c.b, c.n, e, seed + 1), xk = random_tokens(c.b, c.n, e, seed + 2),
        xv = random_tokens(c.b, c.n, e, seed + 3);
  const auto q = store<T>(xq);
  const auto k = c.self ? q : store<T>(xk);
  const auto v = c.self ? q : store<T>(xv);
  if (c.self) xk = xv = xq;
  Tokens<T> out("out", c.b, c.n, e);
  layer.forward(ExecSpace(), q, k, v, out, {c.causal, false, 0});
  const auto expected = dilated::testing::host_layer(
      c.config, dilated::testing::host_parameters(layer.parameters()), xq, xk, xv, c.causal);
  const double tol = layer_tolerance<T>();
  DILATED_CHECK_ALLCLOSE(fetch(out), expected, tol, tol);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("Layer forward equals the host layer in double", "[layer]" TEST_CATEGORY,
                        dilated::testing::StorageTypes) {
  std::uint64_t seed = 100;
  for (const auto& c : forward_cases) {
    check_forward<dilated::Original, TestType>(c, seed += 10);
    check_forward<dilated::Improved, TestType>(c, seed);
  }
}

TEST_CASE("Layer: Original and Improved agree, forward and backward", "[layer]" TEST_CATEGORY) {
  // float, same parameters (same initialisation seed): the two attention algorithms inside the
  // same layer code, self-attention (one fused projection) and cross-attention (three).
  for (bool self : {true, false}) {
    const LayerConfig c{32, 4, {16, 32, 64}, {1, 2, 4}, Semantics::longnet, true};
    CAPTURE(self);
    const auto original = make_layer<dilated::Original, float>(c, true, 7);
    const auto improved = make_layer<dilated::Improved, float>(c, true, 7);
    const int b = 2, n = 70;
    Host3 x = random_tokens(b, n, 32, 1), y = random_tokens(b, n, 32, 2),
          r = random_tokens(b, n, 32, 3);
    const auto q = store<float>(x), other = store<float>(y), dout = store<float>(r);
    const auto k = self ? q : other;
    Tokens<float> out_o("out_o", b, n, 32), out_i("out_i", b, n, 32);
    const dilated::ForwardOptions call{true, false, 0};
    original.forward(ExecSpace(), q, k, q, out_o, call);
    improved.forward(ExecSpace(), q, k, q, out_i, call);
    DILATED_CHECK_ALLCLOSE(fetch(out_i), fetch(out_o), 1e-4, 1e-4);
    const auto g_o = original.backward(ExecSpace(), q, k, q, dout, call);
    const auto g_i = improved.backward(ExecSpace(), q, k, q, dout, call);
    REQUIRE(g_o.self_attention == self);
    REQUIRE(g_i.self_attention == self);
    DILATED_CHECK_ALLCLOSE(fetch(g_i.query), fetch(g_o.query), 1e-4, 1e-4);
    if (!self) {
      DILATED_CHECK_ALLCLOSE(fetch(g_i.key), fetch(g_o.key), 1e-4, 1e-4);
      DILATED_CHECK_ALLCLOSE(fetch(g_i.value), fetch(g_o.value), 1e-4, 1e-4);
    }
    const auto t_o = g_o.parameters.named_tensors(), t_i = g_i.parameters.named_tensors();
    REQUIRE(t_o.size() == t_i.size());
    for (std::size_t t = 0; t < t_o.size(); ++t) {
      CAPTURE(t_o[t].name);
      DILATED_CHECK_ALLCLOSE(fetch_flat(t_i[t]), fetch_flat(t_o[t]), 1e-4, 1e-4);
    }
  }
}

namespace {

struct GradCase {
  LayerConfig config;
  int b, n;
  bool bias, self, causal;
};

// sum(out * r) of the host layer.
double host_loss(const GradCase& c, const HostParameters& p, const Host3& q, const Host3& k,
                 const Host3& v, const Host3& r) {
  const Host3 out = dilated::testing::host_layer(c.config, p, q, k, v, c.causal);
  double sum = 0;
  for (std::size_t i = 0; i < out.size(); ++i)
    sum += out.data()[i] * r.data()[i];
  return sum;
}

template <class Policy>
void check_gradients(const GradCase& c, std::uint64_t seed) {
  CAPTURE(dilated::to_string(c.config.semantics), c.config.layer_norm, c.bias, c.self, c.causal);
  const auto layer = make_layer<Policy, double>(c.config, c.bias, seed);
  const int e = c.config.embed_dim;
  Host3 xq = random_tokens(c.b, c.n, e, seed + 1), xk = random_tokens(c.b, c.n, e, seed + 2),
        xv = random_tokens(c.b, c.n, e, seed + 3), r = random_tokens(c.b, c.n, e, seed + 4);
  const auto q = store<double>(xq);
  const auto k = c.self ? q : store<double>(xk);
  const auto v = c.self ? q : store<double>(xv);
  const auto dout = store<double>(r);
  // Non-trivial LayerNorm parameters, so their gradients are exercised off the identity.
  auto named = layer.parameters().named_tensors();
  for (auto& t : named) {
    if (t.name.rfind("norm.", 0) != 0 && t.name.find(".bias") == std::string::npos) continue;
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), t.values);
    for (std::size_t i = 0; i < host.extent(0); ++i)
      host(i) += 0.1 * std::sin(3.0 * i + 1);
    Kokkos::deep_copy(t.values, host);
  }
  const dilated::ForwardOptions call{c.causal, false, 0};
  typename Layer<Policy, double>::Activations saved;
  Tokens<double> out("out", c.b, c.n, e);
  layer.forward(ExecSpace(), q, k, v, out, saved, call);
  const auto g = layer.backward(ExecSpace(), q, k, v, dout, saved, call);
  REQUIRE(g.self_attention == c.self);

  HostParameters p = dilated::testing::host_parameters(layer.parameters());
  Host3 hq = xq, hk = c.self ? xq : xk, hv = c.self ? xq : xv;
  const double eps = 1e-6, rtol = 1e-6, atol = 1e-7;
  // Central differences of the loss in one coordinate of `x`.
  const auto diff = [&](double& x) {
    const double x0 = x;
    x = x0 + eps;
    const double up = host_loss(c, p, hq, hk, hv, r);
    x = x0 - eps;
    const double down = host_loss(c, p, hq, hk, hv, r);
    x = x0;
    return (up - down) / (2 * eps);
  };
  // Parameters.
  const auto grads = g.parameters.named_tensors();
  for (const auto& t : grads) {
    CAPTURE(t.name);
    Kokkos::View<double*, Kokkos::HostSpace> fd("fd", p[t.name].size());
    for (std::size_t i = 0; i < fd.extent(0); ++i)
      fd(i) = diff(p[t.name][i]);
    DILATED_CHECK_ALLCLOSE(fetch_flat(t), fd, rtol, atol);
  }
  // Inputs: for self-attention one input is perturbed everywhere it is used.
  const auto input_fd = [&](Host3& x, const auto& others) {
    Host3 fd("fd", x.extent(0), x.extent(1), x.extent(2));
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double x0 = x.data()[i];
      for (Host3* o : others)
        o->data()[i] = x0 + eps;
      const double up = host_loss(c, p, hq, hk, hv, r);
      for (Host3* o : others)
        o->data()[i] = x0 - eps;
      const double down = host_loss(c, p, hq, hk, hv, r);
      for (Host3* o : others)
        o->data()[i] = x0;
      fd.data()[i] = (up - down) / (2 * eps);
    }
    return fd;
  };
  if (c.self) {
    // hq, hk, hv are one host View here (Views copy shallowly).
    DILATED_CHECK_ALLCLOSE(fetch(g.query), input_fd(hq, std::vector<Host3*>{&hq}), rtol, atol);
    CHECK(g.key.size() == 0);
    CHECK(g.value.size() == 0);
  } else {
    DILATED_CHECK_ALLCLOSE(fetch(g.query), input_fd(hq, std::vector<Host3*>{&hq}), rtol, atol);
    DILATED_CHECK_ALLCLOSE(fetch(g.key), input_fd(hk, std::vector<Host3*>{&hk}), rtol, atol);
    DILATED_CHECK_ALLCLOSE(fetch(g.value), input_fd(hv, std::vector<Host3*>{&hv}), rtol, atol);
  }
  // The backward that recomputes the forward gives the same gradients.
  const auto again = layer.backward(ExecSpace(), q, k, v, dout, call);
  DILATED_CHECK_ALLCLOSE(fetch(again.query), fetch(g.query), 1e-12, 1e-12);
}

}  // namespace

TEMPLATE_TEST_CASE("Layer gradients equal finite differences (double)",
                   "[layer][backward]" TEST_CATEGORY, dilated::Original, dilated::Improved) {
  const GradCase cases[] = {
      {{8, 2, {4, 8}, {1, 2}, Semantics::grouped, true}, 2, 12, true, true, true},
      {{8, 2, {4, 8}, {1, 2}, Semantics::longnet, true}, 1, 11, true, false, false},
      {{12, 3, {4, 8}, {1, 2}, Semantics::longnet, false}, 1, 10, false, true, false},
      {{8, 2, {4, 8}, {1, 2}, Semantics::grouped, false}, 1, 12, true, false, true},
      // embed_dim 9: the one-element path of the LayerNorm backward (double packs are 2 wide).
      {{9, 3, {4, 8}, {1, 2}, Semantics::grouped, true}, 1, 10, true, true, false},
  };
  std::uint64_t seed = 300;
  for (const auto& c : cases)
    check_gradients<TestType>(c, seed += 10);
}

TEMPLATE_TEST_CASE("Column sums equal host sums for every number of partial levels",
                   "[layer][column_sums]" TEST_CATEGORY, float, double) {
  // The bias and LayerNorm parameter gradients: rows summed 32 at a time, then the partials 32 at
  // a time per level. Row counts around each level boundary (1, 32: the rows straight into the
  // outputs; 33: one level; 1024, 1025, 32769: two and three levels), two sums at once, and a
  // reused partial buffer larger than needed. Small integers: the sums are exact in float too.
  using T = TestType;
  const long cols = 37;
  Kokkos::View<T**, Kokkos::LayoutRight, MemSpace> partial;
  for (long rows : {1L, 32L, 33L, 1024L, 1025L, 32769L}) {
    CAPTURE(rows);
    Kokkos::View<T**, Kokkos::LayoutRight, MemSpace> x("x", rows, cols);
    auto xh = Kokkos::create_mirror_view(x);
    std::mt19937_64 engine(rows);
    std::uniform_int_distribution<int> small(-8, 8);
    for (std::size_t i = 0; i < xh.size(); ++i)
      xh.data()[i] = static_cast<T>(small(engine));
    Kokkos::deep_copy(x, xh);
    Kokkos::View<T*, MemSpace> sum("sum", cols), twice("twice", cols);
    if (rows == 1024) partial = decltype(partial)("partial", 200, 3 * cols);
    dilated::Impl::column_sums<T, 2>(
        ExecSpace(), "dilated::test::column_sums", rows, cols,
        KOKKOS_LAMBDA(long i, long j, T(&sums)[2]) {
          sums[0] += x(i, j);
          sums[1] += 2 * x(i, j);
        },
        partial, sum, twice);
    const auto got = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), sum);
    const auto got2 = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), twice);
    for (long j = 0; j < cols; ++j) {
      double expected = 0;
      for (long i = 0; i < rows; ++i)
        expected += static_cast<double>(xh(i, j));
      CHECK(static_cast<double>(got(j)) == expected);
      CHECK(static_cast<double>(got2(j)) == 2 * expected);
    }
  }
}

TEMPLATE_TEST_CASE(
    "Layer: reused Activations, Gradients and workspace give a fresh layer's results",
    "[layer][workspace]" TEST_CATEGORY, dilated::Original, dilated::Improved) {
  // One layer, one Activations and one Gradients through calls of other shapes (the buffers are
  // reallocated) and of the same shape (reused), and a second layer of another width sharing the
  // workspace: every result equals that of a layer with a workspace of its own, fresh each call.
  using T = float;
  const LayerConfig wide{24, 3, {8, 16}, {1, 2}, Semantics::grouped, true};
  const LayerConfig narrow{16, 2, {8, 16}, {1, 2}, Semantics::longnet, true};
  auto layer = make_layer<TestType, T>(wide, true, 11);
  auto other = make_layer<TestType, T>(narrow, true, 12);
  other.set_workspace(layer.workspace());
  REQUIRE(other.workspace() == layer.workspace());
  typename Layer<TestType, T>::Activations saved;
  typename Layer<TestType, T>::Gradients grads;
  const dilated::ForwardOptions call{true, false, 0};
  // The same kernels on the same inputs; not 0 only because a device's reduction order may
  // differ between launches (atomics). A stale or misplaced buffer is off by O(1).
  const double tol = 1e-6;
  const auto check = [&](auto& l, const LayerConfig& c, int b, int n, std::uint64_t seed) {
    CAPTURE(c.embed_dim, b, n);
    Host3 xh = random_tokens(b, n, c.embed_dim, seed),
          rh = random_tokens(b, n, c.embed_dim, seed + 1);
    const auto x = store<T>(xh), dout = store<T>(rh);
    Tokens<T> out("out", b, n, c.embed_dim), fresh_out("fresh_out", b, n, c.embed_dim);
    l.forward(ExecSpace(), x, x, x, out, saved, call);
    l.backward(ExecSpace(), x, x, x, dout, saved, grads, call);
    auto fresh = l;  // same parameters, its own workspace
    fresh.set_workspace(std::make_shared<typename Layer<TestType, T>::Workspace>());
    typename Layer<TestType, T>::Activations fresh_saved;
    fresh.forward(ExecSpace(), x, x, x, fresh_out, fresh_saved, call);
    const auto expected = fresh.backward(ExecSpace(), x, x, x, dout, fresh_saved, call);
    DILATED_CHECK_ALLCLOSE(fetch(out), fetch(fresh_out), tol, tol);
    DILATED_CHECK_ALLCLOSE(fetch(grads.query), fetch(expected.query), tol, tol);
    const auto got = grads.parameters.named_tensors(), want = expected.parameters.named_tensors();
    REQUIRE(got.size() == want.size());
    for (std::size_t t = 0; t < got.size(); ++t) {
      CAPTURE(got[t].name);
      DILATED_CHECK_ALLCLOSE(fetch_flat(got[t]), fetch_flat(want[t]), tol, tol);
    }
    // The forward without Activations uses the workspace's own, and keeps neither a normed copy
    // of the heads nor their statistics (the heads are normed in place; the statistics borrow
    // the attention's scratch): a normed buffer there is M x E held across calls for nothing.
    l.forward(ExecSpace(), x, x, x, out, call);
    DILATED_CHECK_ALLCLOSE(fetch(out), fetch(fresh_out), tol, tol);
    CHECK(l.workspace()->forward.normed.size() == 0);
    CHECK(l.workspace()->forward.mean.size() == 0);
    CHECK(l.workspace()->forward.rstd.size() == 0);
  };
  check(layer, wide, 2, 40, 1);
  const void* qkv = saved.qkv.data();
  const void* dq = grads.query.data();
  check(layer, wide, 2, 40, 3);  // same shape: the same buffers
  CHECK(saved.qkv.data() == qkv);
  CHECK(grads.query.data() == dq);
  check(layer, wide, 1, 23, 5);    // smaller
  check(other, narrow, 3, 30, 7);  // another width, the shared workspace
  check(layer, wide, 2, 40, 9);
  CHECK(layer.workspace()->bytes() > 0);
  layer.release_workspace();
  CHECK(other.workspace()->bytes() == 0);
}

TEMPLATE_TEST_CASE("Layer: the forward that keeps no activations equals the one that does",
                   "[layer][workspace]" TEST_CATEGORY, dilated::Original, dilated::Improved) {
  // Heads of 64 in half: on CUDA the Original's tensor-core path, whose score workspace the
  // forward without Activations borrows for its normed heads once the attention has returned
  // (Impl::score_workspace_label), and whose backward keeps its stored matrices in the same
  // buffer. Forwards of both kinds and backwards alternate through one layer: every result
  // equals the first of its kind. Tolerance: two half ulps at 1 (an atomic accumulation may sum
  // in another order from launch to launch); a buffer overwritten by another use is off by O(1).
  using T = Kokkos::Experimental::half_t;
  const LayerConfig c{128, 2, {64, 128}, {1, 2}, Semantics::grouped, true};
  const auto layer = make_layer<TestType, T>(c, true, 21);
  const int b = 1, n = 256;
  Host3 xh = random_tokens(b, n, c.embed_dim, 22), rh = random_tokens(b, n, c.embed_dim, 23);
  const auto x = store<T>(xh), dout = store<T>(rh);
  const dilated::ForwardOptions call{true, false, 0};
  typename Layer<TestType, T>::Activations saved;
  typename Layer<TestType, T>::Gradients grads;
  Tokens<T> out("out", b, n, c.embed_dim);
  layer.forward(ExecSpace(), x, x, x, out, saved, call);
  layer.backward(ExecSpace(), x, x, x, dout, saved, grads, call);
  const Host3 first = fetch(out), first_dx = fetch(grads.query);
  const double tol = 2e-3;
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    layer.forward(ExecSpace(), x, x, x, out, call);
    DILATED_CHECK_ALLCLOSE(fetch(out), first, tol, tol);
    layer.forward(ExecSpace(), x, x, x, out, saved, call);
    layer.backward(ExecSpace(), x, x, x, dout, saved, grads, call);
    DILATED_CHECK_ALLCLOSE(fetch(out), first, tol, tol);
    DILATED_CHECK_ALLCLOSE(fetch(grads.query), first_dx, tol, tol);
  }
}

TEMPLATE_TEST_CASE("Layer backward with dropout equals finite differences of its forward",
                   "[layer][backward][dropout]" TEST_CATEGORY, dilated::Original,
                   dilated::Improved) {
  // The host layer has no dropout: differentiate the layer's own double forward (same seed,
  // same mask) in a sample of coordinates of every tensor.
  const LayerConfig c{8, 2, {4, 8}, {1, 2}, Semantics::longnet, true};
  const auto layer = make_layer<TestType, double>(c, true, 5, 0.3);
  const int b = 1, n = 12, e = 8;
  Host3 xh = random_tokens(b, n, e, 1), rh = random_tokens(b, n, e, 2);
  const auto x = store<double>(xh), r = store<double>(rh);
  const dilated::ForwardOptions call{true, true, 99};
  const auto g = layer.backward(ExecSpace(), x, x, x, r, call);
  Tokens<double> out("out", b, n, e);
  const auto loss = [&] {
    layer.forward(ExecSpace(), x, x, x, out, call);
    const Host3 o = fetch(out);
    double sum = 0;
    for (std::size_t i = 0; i < o.size(); ++i)
      sum += o.data()[i] * rh.data()[i];
    return sum;
  };
  const double with_dropout = loss();
  Tokens<double> plain("plain", b, n, e);
  layer.forward(ExecSpace(), x, x, x, plain, {true, false, 99});
  CHECK(fetch(plain)(0, 5, 3) != fetch(out)(0, 5, 3));  // the mask changes the output
  CHECK(loss() == with_dropout);                        // and the same seed repeats it
  const double eps = 1e-6;
  const auto diff = [&](auto& view, std::size_t i) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
    const double x0 = host.data()[i];
    host.data()[i] = x0 + eps;
    Kokkos::deep_copy(view, host);
    const double up = loss();
    host.data()[i] = x0 - eps;
    Kokkos::deep_copy(view, host);
    const double down = loss();
    host.data()[i] = x0;
    Kokkos::deep_copy(view, host);
    return (up - down) / (2 * eps);
  };
  const auto params = layer.parameters().named_tensors();
  const auto grads = g.parameters.named_tensors();
  for (std::size_t t = 0; t < params.size(); ++t) {
    CAPTURE(params[t].name);
    auto values = params[t].values;
    const auto grad = fetch_flat(grads[t]);
    for (std::size_t i = 0; i < values.extent(0); i += 5) {
      CAPTURE(i);
      CHECK(std::abs(diff(values, i) - grad(i)) <= 1e-7 + 1e-6 * std::abs(grad(i)));
    }
  }
  auto xv = x;
  const auto dx = fetch(g.query);
  for (std::size_t i = 0; i < x.size(); i += 3) {
    CAPTURE(i);
    CHECK(std::abs(diff(xv, i) - dx.data()[i]) <= 1e-7 + 1e-6 * std::abs(dx.data()[i]));
  }
}

TEMPLATE_TEST_CASE("Layer initialisation: Xavier normal, zero biases, unit norm weight",
                   "[layer][init]" TEST_CATEGORY, dilated::Original, dilated::Improved) {
  const LayerConfig c{64, 4, {16}, {1}, Semantics::grouped, true};
  const auto layer = make_layer<TestType, float>(c, true, 11);  // gamma_init 0.8
  for (const auto& t : layer.parameters().named_tensors()) {
    CAPTURE(t.name);
    const auto values = fetch_flat(t);
    double sum = 0, squares = 0;
    for (std::size_t i = 0; i < values.extent(0); ++i) {
      sum += values(i);
      squares += values(i) * values(i);
    }
    const double count = values.extent(0), mean = sum / count,
                 std = std::sqrt(squares / count - mean * mean);
    if (t.shape.size() == 2) {
      const bool magneto = t.name == "v_proj.weight" || t.name == "out_proj.weight";
      const double expected = (magneto ? 0.8 : 1.0) * std::sqrt(2.0 / (64 + 64));
      CHECK(std::abs(std - expected) < 0.03 * expected);  // 4096 draws: 1.1% standard error
      CHECK(std::abs(mean) < 4 * expected / 64);
    } else {
      CHECK(mean == (t.name == "norm.weight" ? 1.0 : 0.0));
      CHECK(std == 0.0);
    }
  }
  // Same seed, same weights (and on both policies); another seed, other weights.
  const auto again = make_layer<dilated::Original, float>(c, true, 11);
  const auto other = make_layer<TestType, float>(c, true, 12);
  const auto w = fetch_flat(layer.parameters().named_tensors()[0]);
  CHECK(fetch_flat(again.parameters().named_tensors()[0])(17) == w(17));
  CHECK(fetch_flat(other.parameters().named_tensors()[0])(17) != w(17));
}

namespace {}  // namespace

TEMPLATE_TEST_CASE("Layer parameters save to and load from .npy exactly",
                   "[layer][npy]" TEST_CATEGORY, float, double) {
  using Catch::Matchers::ContainsSubstring;
  const LayerConfig c{16, 2, {8, 16}, {1, 2}, Semantics::longnet, true};
  const auto saved = make_layer<dilated::Improved, TestType>(c, true, 1);
  auto loaded = make_layer<dilated::Original, TestType>(c, true, 2);
  const std::string dir = dilated::testing::scratch_directory("roundtrip");
  saved.save(dir);
  for (const char* name :
       {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
        "v_proj.bias", "norm.weight", "norm.bias", "out_proj.weight", "out_proj.bias"}) {
    CAPTURE(name);
    REQUIRE(std::filesystem::exists(dir + "/" + name + ".npy"));
  }
  const auto w = dilated::npy::read(dir + "/k_proj.weight.npy");
  CHECK(w.shape == std::vector<std::size_t>{16, 16});
  CHECK(w.dtype == (std::is_same_v<TestType, double> ? "<f8" : "<f4"));
  loaded.load(dir);
  const auto a = saved.parameters().named_tensors(), b = loaded.parameters().named_tensors();
  REQUIRE(a.size() == b.size());
  for (std::size_t t = 0; t < a.size(); ++t) {
    CAPTURE(a[t].name);
    const auto x = fetch_flat(a[t]), y = fetch_flat(b[t]);
    REQUIRE(std::memcmp(x.data(), y.data(), x.size() * sizeof(double)) == 0);
  }
  // The PyTorch layout: q_proj.weight[o][i] multiplies input feature i into output o.
  const auto qw = dilated::npy::read(dir + "/q_proj.weight.npy").to_double();
  const auto in = fetch_flat(a[0]);
  CHECK(qw[3 * 16 + 5] == in(3 * 16 + 5));

  // A layer without bias and layer norm reads only its own files.
  auto bare = Layer<dilated::Original, TestType>(16, 2, {8, 16}, {1, 2}, 0.0, false, false);
  bare.load(dir);
  CHECK(bare.parameters().named_tensors().size() == 4);
  // Wrong shapes and missing files are errors that name the file.
  auto wide = make_layer<dilated::Original, TestType>({32, 2, {8, 16}, {1, 2}, Semantics::longnet},
                                                      true, 3);
  REQUIRE_THROWS_WITH(wide.load(dir), ContainsSubstring("q_proj.weight.npy has shape (16, 16), "
                                                        "expected (32, 32)"));
  REQUIRE_THROWS_AS(loaded.load(dir + "/missing"), dilated::npy::FormatError);
  std::filesystem::remove_all(dir);
}

TEMPLATE_TEST_CASE("Layer: strided inputs and outputs give the dense result",
                   "[layer][layout]" TEST_CATEGORY, dilated::Original, dilated::Improved) {
  // query = key = value a LayoutStride subview of a wider buffer, out a subview too.
  const LayerConfig c{16, 2, {8, 16}, {1, 2}, Semantics::grouped, true};
  const auto layer = make_layer<TestType, double>(c, true, 4);
  const int b = 2, n = 20, e = 16;
  Host3 wide_h = random_tokens(b, n, 2 * e, 8);
  const auto wide = store<double>(wide_h);
  const auto x = Kokkos::subview(wide, Kokkos::ALL, Kokkos::ALL, Kokkos::make_pair(e, 2 * e));
  Tokens<double> dense("dense", b, n, e), out_wide("out_wide", b, n, 2 * e),
      expected("exp", b, n, e);
  Kokkos::deep_copy(dense, x);
  const auto out = Kokkos::subview(out_wide, Kokkos::ALL, Kokkos::ALL, Kokkos::make_pair(0, e));
  layer.forward(ExecSpace(), x, x, x, out, {false, false, 0});
  layer.forward(ExecSpace(), dense, dense, dense, expected, {false, false, 0});
  DILATED_CHECK_ALLCLOSE(fetch(out), fetch(expected), 1e-14, 1e-14);
  const auto g = layer.backward(ExecSpace(), x, x, x, out, {false, false, 0});
  const auto h = layer.backward(ExecSpace(), dense, dense, dense, expected, {false, false, 0});
  CHECK(g.self_attention);
  DILATED_CHECK_ALLCLOSE(fetch(g.query), fetch(h.query), 1e-14, 1e-14);
  // The seed's call: (output, no attention weights).
  const auto [result, weights] = layer(ExecSpace(), dense, dense, dense);
  static_assert(std::is_same_v<std::remove_const_t<decltype(weights)>, std::nullopt_t>);
  DILATED_CHECK_ALLCLOSE(fetch(result), fetch(expected), 0.0, 0.0);
}

TEMPLATE_TEST_CASE("Layer rejects bad arguments, naming them", "[layer][errors]" TEST_CATEGORY,
                   dilated::Original, dilated::Improved) {
  using Catch::Matchers::ContainsSubstring;
  using L = Layer<TestType, float>;
  REQUIRE_THROWS_WITH(L(10, 3, {8}, {1}), ContainsSubstring("embed_dim = 10 is not divisible by "
                                                            "num_heads = 3"));
  REQUIRE_THROWS_WITH(L(0, 1, {8}, {1}), ContainsSubstring("embed_dim = 0 must be >= 1"));
  REQUIRE_THROWS_WITH(L(8, 0, {8}, {1}), ContainsSubstring("num_heads = 0 must be >= 1"));
  REQUIRE_THROWS_WITH(L(16, 2, {8, 16}, {1}),
                      ContainsSubstring("segment_lengths has 2 entries but dilation_rates has 1"));
  REQUIRE_THROWS_WITH(L(16, 2, {8, 16}, {1, 0}), ContainsSubstring("dilation_rates[1] = 0"));
  REQUIRE_THROWS_WITH(L(16, 2, {8, 16, 32}, {1, 2, 4}),
                      ContainsSubstring("num_heads = 2 is less than the number of groups"));
  REQUIRE_THROWS_WITH(L(16, 2, {8}, {1}, 1.0), ContainsSubstring("dropout = 1 must be in [0, 1)"));
  REQUIRE_THROWS_WITH(L(16, 2, {8}, {1}, 0.0, true, true, 0.0),
                      ContainsSubstring("layer_norm_eps = 0 must be finite and > 0"));
  REQUIRE_THROWS_WITH(L(16, 2, {8, 16}, {1, 0}),
                      ContainsSubstring("dilated::MultiheadDilatedAttention: "));
  const L layer(16, 2, {8}, {1});
  Tokens<float> x("x", 1, 8, 16), narrow("narrow", 1, 8, 12), short_seq("short", 1, 7, 16),
      empty("empty", 0, 8, 16), out("out", 1, 8, 16), bad_out("bad_out", 2, 8, 16);
  REQUIRE_THROWS_WITH(layer.forward(ExecSpace(), narrow, narrow, narrow, out),
                      ContainsSubstring("query.extent(2) (embed_dim) = 12 does not match "
                                        "embed_dim = 16"));
  REQUIRE_THROWS_WITH(layer.forward(ExecSpace(), x, short_seq, x, out),
                      ContainsSubstring("key.extent(1) (sequence length) = 7 does not match"));
  REQUIRE_THROWS_WITH(layer.forward(ExecSpace(), x, x, narrow, out),
                      ContainsSubstring("value.extent(2) (embed_dim) = 12"));
  REQUIRE_THROWS_WITH(layer.forward(ExecSpace(), x, x, x, bad_out),
                      ContainsSubstring("out.extent(0) (batch) = 2 does not match"));
  REQUIRE_THROWS_WITH(layer.forward(ExecSpace(), empty, empty, empty, empty),
                      ContainsSubstring("query.extent(0) (batch) = 0 must be >= 1"));
  REQUIRE_THROWS_WITH(layer.backward(ExecSpace(), x, x, x, bad_out),
                      ContainsSubstring("MultiheadDilatedAttention::backward: dout.extent(0)"));
  typename L::Activations saved;
  layer.forward(ExecSpace(), x, x, x, out, saved);
  REQUIRE_THROWS_WITH(layer.backward(ExecSpace(), short_seq, short_seq, short_seq,
                                     Tokens<float>("d", 1, 7, 16), saved),
                      ContainsSubstring("saved activations are of a forward on (1, 8)"));
}
