// The seed's two transformer blocks (StandardTransformerBlock, CustomTransformerBlock) under both
// policies on every backend: forward against the host blocks in double (Dilated_BlockReference),
// every parameter's and the input's gradient against central finite differences of the host
// block (double), the checkpointed (recomputing) backward against the saved one, dx in place of
// dy, buffers reused across calls, and the errors for bad arguments. Both GELUs: the exact one
// and the tanh approximation (on CUDA in the products' epilogues, whose gradients in half, bf16
// and float are checked against the same block's in double).
#include <DilatedAttention.hpp>
#include <Dilated_Allclose.hpp>
#include <Dilated_TokenTestData.hpp>
#include <Dilated_BlockReference.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
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

template <class T>
using Tokens = Kokkos::View<T***, Kokkos::LayoutRight, MemSpace>;

template <class Policy>
struct Standard {
  template <class T>
  using Block = dilated::StandardTransformerBlock<Policy, T, MemSpace>;
  static constexpr bool custom = false;
};
template <class Policy>
struct Custom {
  template <class T>
  using Block = dilated::CustomTransformerBlock<Policy, T, MemSpace>;
  static constexpr bool custom = true;
};

// The shared token helpers (Dilated_TokenTestData.hpp) with this backend's memory space.
using dilated::testing::fetch;
using dilated::testing::fetch_flat;
using dilated::testing::random_tokens;
template <class T>
Tokens<T> store(Host3& x) {
  return dilated::testing::store<T, MemSpace>(x);
}

// Every parameter moved off its initial value (biases and LayerNorms too), so that a gradient
// path that ignores one of them cannot pass by the parameter being zero or one.
template <class Block>
void perturb_parameters(const Block& block) {
  int index = 0;
  for (const auto& t : block.parameters().named_tensors()) {
    auto host = Kokkos::create_mirror_view(t.values);
    Kokkos::deep_copy(host, t.values);
    for (std::size_t i = 0; i < host.extent(0); ++i)
      host(i) = static_cast<typename Block::value_type>(dilated::Impl::to_double(host(i)) +
                                                        0.1 * std::sin(1.7 * i + index));
    Kokkos::deep_copy(t.values, host);
    ++index;
  }
}

// Accuracy of a block against double (O(1) data, E <= 24): the layer's tolerance (two
// projections, the attention, a norm) plus the feed-forward's two products of 4E terms and two
// more LayerNorms, each a few roundings of T amplified by at most 1 / the rows' spread.
template <class T>
double block_tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-10;
  if constexpr (std::is_same_v<T, float>) return 2e-4;
  if constexpr (std::is_same_v<T, Kokkos::Experimental::half_t>) return 6e-2;
  return 3e-1;  // bf16: 8 bits of mantissa, 8x half's rounding
}

struct Case {
  LayerConfig config;
  int b, n;
  bool causal;
  dilated::GeluApproximation gelu = dilated::GeluApproximation::none;
};

constexpr bool is_tanh(const Case& c) {
  return c.gelu == dilated::GeluApproximation::tanh;
}

template <class Kind, class Policy, class T>
void check_forward(const Case& c, std::uint64_t seed) {
  using Block = typename Kind::template Block<T>;
  CAPTURE(Kind::custom, dilated::to_string(c.config.semantics), c.config.embed_dim, c.b, c.n,
          c.causal, dilated::to_string(c.gelu));
  Block block(c.config.embed_dim, c.config.num_heads, c.config.segs, c.config.dils,
              c.config.semantics, seed);
  block.set_gelu(c.gelu);
  perturb_parameters(block);
  const int e = c.config.embed_dim;
  Host3 hx = random_tokens(c.b, c.n, e, seed + 1);
  const auto x = store<T>(hx);
  Tokens<T> y("y", c.b, c.n, e);
  block.forward(ExecSpace(), x, y, {c.causal, false, 0});
  const auto expected = dilated::testing::host_block(
      Kind::custom, c.config, dilated::testing::host_tensors(block.parameters().named_tensors()),
      hx, c.causal, is_tanh(c));
  const double tol = block_tolerance<T>();
  DILATED_CHECK_ALLCLOSE(fetch(y), expected, tol, tol);
}

const std::vector<Case> forward_cases = {
    {{16, 2, {8, 16}, {1, 2}, Semantics::grouped}, 2, 24, true},
    {{24, 3, {8, 16, 32}, {1, 2, 4}, Semantics::longnet}, 1, 40, false},
    // embed_dim 12 with 3 heads: rows of no whole 16-byte pack in half (8 per pack).
    {{12, 3, {8, 16}, {1, 2}, Semantics::longnet}, 1, 21, true},
    // The tanh GELU (hidden widths 64 and 96: cuBLASLt's epilogue on CUDA).
    {{16, 2, {8, 16}, {1, 2}, Semantics::grouped}, 2, 24, true, dilated::GeluApproximation::tanh},
    {{24, 3, {8, 16, 32}, {1, 2, 4}, Semantics::longnet},
     1,
     40,
     false,
     dilated::GeluApproximation::tanh},
};

template <class Kind>
void forward_all_types() {
  std::uint64_t seed = 700;
  for (const auto& c : forward_cases) {
    check_forward<Kind, void, double>(c, seed += 10);
    check_forward<Kind, void, float>(c, seed += 10);
    check_forward<Kind, void, Kokkos::Experimental::half_t>(c, seed += 10);
#if DILATED_HAVE_BHALF
    check_forward<Kind, void, Kokkos::Experimental::bhalf_t>(c, seed += 10);
#endif
  }
}

// loss = sum y * r for fixed r: dL/dy = r.
template <class Kind>
void check_gradients(const Case& c, std::uint64_t seed) {
  using Block = typename Kind::template Block<double>;
  CAPTURE(Kind::custom, dilated::to_string(c.config.semantics), c.config.embed_dim, c.b, c.n,
          c.causal, dilated::to_string(c.gelu));
  Block block(c.config.embed_dim, c.config.num_heads, c.config.segs, c.config.dils,
              c.config.semantics, seed);
  block.set_gelu(c.gelu);
  perturb_parameters(block);
  const int e = c.config.embed_dim;
  Host3 hx = random_tokens(c.b, c.n, e, seed + 1);
  Host3 hr = random_tokens(c.b, c.n, e, seed + 2);
  const auto x = store<double>(hx);
  const auto r = store<double>(hr);
  const dilated::ForwardOptions call{c.causal, false, 0};
  typename Block::Activations saved;
  typename Block::Gradients grads;
  Tokens<double> y("y", c.b, c.n, e), dx("dx", c.b, c.n, e);
  block.forward(ExecSpace(), x, y, saved, call);
  block.backward(ExecSpace(), x, r, dx, saved, grads, call);

  HostParameters p = dilated::testing::host_tensors(block.parameters().named_tensors());
  const auto loss = [&](const Host3& input) {
    const Host3 out =
        dilated::testing::host_block(Kind::custom, c.config, p, input, c.causal, is_tanh(c));
    double sum = 0;
    for (std::size_t i = 0; i < out.size(); ++i)
      sum += out.data()[i] * hr.data()[i];
    return sum;
  };
  const double eps = 1e-6, rtol = 1e-6, atol = 1e-7;
  const auto diff = [&](double& v, const Host3& input) {
    const double v0 = v;
    v = v0 + eps;
    const double up = loss(input);
    v = v0 - eps;
    const double down = loss(input);
    v = v0;
    return (up - down) / (2 * eps);
  };
  const auto named = grads.parameters.named_tensors();
  REQUIRE(named.size() == block.parameters().named_tensors().size());
  for (const auto& t : named) {
    CAPTURE(t.name);
    Kokkos::View<double*, Kokkos::HostSpace> fd("fd", p[t.name].size());
    for (std::size_t i = 0; i < fd.extent(0); ++i)
      fd(i) = diff(p[t.name][i], hx);
    DILATED_CHECK_ALLCLOSE(fetch_flat(t), fd, rtol, atol);
  }
  Host3 fd("fd", c.b, c.n, e);
  for (std::size_t i = 0; i < hx.size(); ++i)
    fd.data()[i] = diff(hx.data()[i], hx);
  DILATED_CHECK_ALLCLOSE(fetch(dx), fd, rtol, atol);

  // Activation checkpointing: the backward that recomputes the forward gives the same gradients
  // (the same kernels on the same values: to rounding, 1e-12).
  typename Block::Gradients again;
  Tokens<double> dx_again("dx_again", c.b, c.n, e);
  block.backward(ExecSpace(), x, r, dx_again, again, call);
  DILATED_CHECK_ALLCLOSE(fetch(dx_again), fetch(dx), 1e-12, 1e-12);
  const auto again_named = again.parameters.named_tensors();
  for (std::size_t i = 0; i < named.size(); ++i) {
    CAPTURE(named[i].name);
    DILATED_CHECK_ALLCLOSE(fetch_flat(again_named[i]), fetch_flat(named[i]), 1e-12, 1e-12);
  }
  // dx in place of dy (a model's residual-stream gradient buffer).
  Tokens<double> inplace("inplace", c.b, c.n, e);
  Kokkos::deep_copy(inplace, r);
  block.backward(ExecSpace(), x, inplace, inplace, saved, grads, call);
  DILATED_CHECK_ALLCLOSE(fetch(inplace), fetch(dx), 1e-12, 1e-12);
}

}  // namespace

TEMPLATE_TEST_CASE("Transformer blocks: forward equals the host block in double",
                   "[block]" TEST_CATEGORY, Standard<dilated::Original>,
                   Standard<dilated::Improved>, Custom<dilated::Original>,
                   Custom<dilated::Improved>) {
  forward_all_types<TestType>();
}

TEMPLATE_TEST_CASE("Transformer blocks: gradients equal finite differences (double)",
                   "[block][backward]" TEST_CATEGORY, Standard<dilated::Original>,
                   Standard<dilated::Improved>, Custom<dilated::Original>,
                   Custom<dilated::Improved>) {
  const Case cases[] = {
      {{8, 2, {4, 8}, {1, 2}, Semantics::grouped}, 2, 12, true},
      {{8, 2, {4, 8}, {1, 2}, Semantics::longnet}, 1, 11, false},
      // embed_dim 9: the one-element paths (double packs are 2 wide).
      {{9, 3, {4, 8}, {1, 2}, Semantics::longnet}, 1, 10, true},
      {{8, 2, {4, 8}, {1, 2}, Semantics::grouped}, 2, 12, true, dilated::GeluApproximation::tanh},
  };
  std::uint64_t seed = 900;
  for (const auto& c : cases)
    check_gradients<TestType>(c, seed += 10);
}

namespace {

// The same block in T and in double (T's parameter values, widened): forward and backward of
// both, every gradient compared per tensor, with the tolerance relative to the tensor's largest
// double value (sums over rows of rounded terms: an element's error follows its tensor's scale,
// not its own, which may be near zero).
template <class Kind, class T>
void check_against_double(const Case& c, std::uint64_t seed) {
  using Block = typename Kind::template Block<T>;
  using Wide = typename Kind::template Block<double>;
  CAPTURE(Kind::custom, c.config.embed_dim, c.b, c.n, dilated::to_string(c.gelu));
  Block block(c.config.embed_dim, c.config.num_heads, c.config.segs, c.config.dils,
              c.config.semantics, seed);
  block.set_gelu(c.gelu);
  perturb_parameters(block);
  Wide wide(c.config.embed_dim, c.config.num_heads, c.config.segs, c.config.dils,
            c.config.semantics, seed);
  wide.set_gelu(c.gelu);
  const auto from = block.parameters().named_tensors();
  const auto to = wide.parameters().named_tensors();
  REQUIRE(from.size() == to.size());
  for (std::size_t t = 0; t < from.size(); ++t) {
    const auto values = fetch_flat(from[t]);
    auto host = Kokkos::create_mirror_view(to[t].values);
    for (std::size_t i = 0; i < host.extent(0); ++i)
      host(i) = values(i);
    Kokkos::deep_copy(to[t].values, host);
  }
  const int e = c.config.embed_dim;
  Host3 hx = random_tokens(c.b, c.n, e, seed + 1), hr = random_tokens(c.b, c.n, e, seed + 2);
  const dilated::ForwardOptions call{c.causal, false, 0};
  // store() rounds hx and hr to T in place, so both blocks see the same values.
  const auto x = store<T>(hx), r = store<T>(hr);
  const auto xw = store<double>(hx), rw = store<double>(hr);
  typename Block::Activations saved;
  typename Block::Gradients grads;
  typename Wide::Activations saved_w;
  typename Wide::Gradients grads_w;
  Tokens<T> y("y", c.b, c.n, e), dx("dx", c.b, c.n, e);
  Tokens<double> yw("yw", c.b, c.n, e), dxw("dxw", c.b, c.n, e);
  block.forward(ExecSpace(), x, y, saved, call);
  block.backward(ExecSpace(), x, r, dx, saved, grads, call);
  wide.forward(ExecSpace(), xw, yw, saved_w, call);
  wide.backward(ExecSpace(), xw, rw, dxw, saved_w, grads_w, call);
  const double tol = block_tolerance<T>();
  const auto largest = [](const auto& v) {
    double m = 0;
    for (std::size_t i = 0; i < v.size(); ++i)
      m = std::max(m, std::abs(v.data()[i]));
    return m;
  };
  // The input gradient's scale is the floor: every gradient is a sum of the same per-row terms,
  // and one that vanishes in exact arithmetic (the key bias's, by the softmax's invariance) keeps
  // rounding at that scale.
  const Host3 dx_double = fetch(dxw);
  const double floor = largest(dx_double);
  const auto scaled = [&](const auto& got, const auto& want) {
    DILATED_CHECK_ALLCLOSE(got, want, tol, tol * std::max(floor, largest(want)));
  };
  scaled(fetch(y), fetch(yw));
  scaled(fetch(dx), dx_double);
  const auto got = grads.parameters.named_tensors();
  const auto want = grads_w.parameters.named_tensors();
  REQUIRE(got.size() == want.size());
  for (std::size_t t = 0; t < got.size(); ++t) {
    CAPTURE(got[t].name);
    scaled(fetch_flat(got[t]), fetch_flat(want[t]));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("Transformer blocks: gradients in half, bf16 and float equal double's",
                   "[block][backward]" TEST_CATEGORY, Standard<dilated::Improved>,
                   Custom<dilated::Original>) {
  // Hidden width 64 (E = 16): on CUDA the tanh GELU and its derivative run in cuBLASLt's
  // epilogues for the narrow types, the exact GELU in passes of its own; double runs neither.
  std::uint64_t seed = 1300;
  for (const auto gelu : {dilated::GeluApproximation::none, dilated::GeluApproximation::tanh}) {
    const Case c{{16, 2, {8, 16}, {1, 2}, Semantics::grouped}, 2, 32, true, gelu};
    check_against_double<TestType, float>(c, seed += 10);
    check_against_double<TestType, Kokkos::Experimental::half_t>(c, seed += 10);
#if DILATED_HAVE_BHALF
    check_against_double<TestType, Kokkos::Experimental::bhalf_t>(c, seed += 10);
#endif
  }
}

TEMPLATE_TEST_CASE("Transformer blocks: calls after the first reuse every buffer",
                   "[block]" TEST_CATEGORY, Standard<dilated::Improved>,
                   Custom<dilated::Original>) {
  using Block = typename TestType::template Block<float>;
  const Block block(16, 2, {8, 16}, {1, 2}, Semantics::longnet, 5);
  Host3 hx = random_tokens(1, 32, 16, 6);
  const auto x = store<float>(hx);
  Tokens<float> y("y", 1, 32, 16), dy("dy", 1, 32, 16);
  Kokkos::deep_copy(dy, 1.0f);
  typename Block::Activations saved;
  typename Block::Gradients grads;
  const dilated::ForwardOptions call{true, false, 0};
  block.forward(ExecSpace(), x, y, saved, call);
  block.backward(ExecSpace(), x, dy, dy, saved, grads, call);
  const auto* x1 = saved.x1.data();
  const auto* hidden = saved.hidden.data();
  const auto* gelu = block.workspace()->gelu.data();
  const auto* dnorm1 = grads.parameters.norm1_weight.data();
  const std::size_t bytes = block.workspace()->bytes();
  block.forward(ExecSpace(), x, y, saved, call);
  block.backward(ExecSpace(), x, dy, dy, saved, grads, call);
  CHECK(saved.x1.data() == x1);
  CHECK(saved.hidden.data() == hidden);
  CHECK(block.workspace()->gelu.data() == gelu);
  CHECK(grads.parameters.norm1_weight.data() == dnorm1);
  CHECK(block.workspace()->bytes() == bytes);
  // Blocks given one workspace share it.
  Block other(16, 2, {8, 16}, {1, 2}, Semantics::longnet, 7);
  other.set_workspace(block.workspace());
  other.forward(ExecSpace(), x, y, saved, call);
  CHECK(block.workspace()->bytes() == bytes);
}

// skip_init builds the same block without drawing (a model draws its blocks' values on several
// threads): every parameter zero until reset_parameters, which then gives the drawing
// constructor's values bit for bit.
TEMPLATE_TEST_CASE(
    "Transformer blocks: skip_init draws nothing; reset_parameters then equals "
    "the drawing constructor",
    "[block]" TEST_CATEGORY, Standard<dilated::Improved>, Custom<dilated::Original>) {
  using Block = typename TestType::template Block<float>;
  const Block drawn(16, 2, {8, 16}, {1, 2}, Semantics::longnet, 9);
  Block undrawn(dilated::skip_init, 16, 2, {8, 16}, {1, 2}, Semantics::longnet);
  const auto want = dilated::testing::host_tensors(drawn.parameters().named_tensors());
  auto got = dilated::testing::host_tensors(undrawn.parameters().named_tensors());
  REQUIRE(got.tensors.size() == want.tensors.size());
  std::size_t nonzero = 0;
  for (const auto& [name, values] : got.tensors)
    for (double v : values)
      nonzero += v != 0.0;
  CHECK(nonzero == 0);
  undrawn.reset_parameters(9);
  got = dilated::testing::host_tensors(undrawn.parameters().named_tensors());
  for (const auto& [name, values] : want.tensors) {
    INFO(name);
    REQUIRE(got.has(name));
    CHECK(got[name] == values);
  }
}

TEMPLATE_TEST_CASE("Transformer blocks reject bad arguments, naming them",
                   "[block][errors]" TEST_CATEGORY, Standard<dilated::Improved>,
                   Custom<dilated::Improved>) {
  using Catch::Matchers::ContainsSubstring;
  using Block = typename TestType::template Block<float>;
  CHECK_THROWS_WITH(Block(10, 3, {8}, {1}),
                    ContainsSubstring("embed_dim = 10") && ContainsSubstring("num_heads = 3"));
  CHECK_THROWS_WITH(Block(0, 1, {8}, {1}), ContainsSubstring("embed_dim = 0"));
  CHECK_THROWS_WITH(Block(8, 2, {8, 16}, {1}), ContainsSubstring("dilation"));
  const Block block(8, 2, {4, 8}, {1, 2});
  Tokens<float> x("x", 1, 8, 8), wide("wide", 1, 8, 16), y("y", 1, 8, 8), short_y("s", 1, 4, 8);
  CHECK_THROWS_WITH(block.forward(ExecSpace(), wide, y),
                    ContainsSubstring("x.extent(2) (embed_dim) = 16"));
  CHECK_THROWS_WITH(block.forward(ExecSpace(), x, short_y), ContainsSubstring("y is (1, 4, 8)"));
  CHECK_THROWS_WITH(block.forward(ExecSpace(), x, x), ContainsSubstring("y must not be x"));
  typename Block::Activations saved;
  typename Block::Gradients grads;
  block.forward(ExecSpace(), x, y, saved);
  Tokens<float> longer("longer", 1, 16, 8);
  CHECK_THROWS_WITH(block.backward(ExecSpace(), longer, longer, longer, saved, grads),
                    ContainsSubstring("saved activations are of a forward on (1, 8)"));
  CHECK_THROWS_WITH(block.backward(ExecSpace(), x, y, x, saved, grads),
                    ContainsSubstring("dx must not be x"));
}
