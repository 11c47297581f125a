// dilated_transformer_block: the seed's StandardTransformerBlock (pre-LN) built on
// dilated::MultiheadDilatedAttention, trained for a few SGD steps on the default Kokkos device:
//
//   x1 = x + MultiheadDilatedAttention(LN1(x), LN1(x), LN1(x))
//   y  = x1 + W2 GELU(W1 LN2(x1) + b1) + b2                  (MLP of width 4E)
//   loss = mean((y - target)^2) / 2
//
// Each step runs the forward, the backward through the whole block (the layer's backward for
// the attention), and p -= lr dL/dp for every parameter. It checks what the gradients promise:
// the loss falls at each step by lr |g|^2 to first order (measured within 10 %), and every
// output is finite. Exits non-zero otherwise.
//
//   dilated_transformer_block --algorithm improved --length 1024 --embed 128 --heads 8
#include <DilatedAttention.hpp>

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using Space = Kokkos::DefaultExecutionSpace;
using Memory = Space::memory_space;
using Matrix = Kokkos::View<float**, Kokkos::LayoutRight, Memory>;
using Vector = Kokkos::View<float*, Kokkos::LayoutRight, Memory>;
using Flat = Kokkos::View<float*, Memory, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
using Tokens = Kokkos::View<float***, Kokkos::LayoutRight, Memory>;
using Stats = Kokkos::View<float*, Kokkos::LayoutRight, Memory>;
// Loops over every element of a matrix take a 64-bit index: a RangePolicy's default is the
// space's size_type, 32-bit unsigned on CUDA, and (b n, 4E) passes 2^32 elements at lengths an
// H200 holds (the range's end would wrap and the tail go unwritten).
using Elements = Kokkos::RangePolicy<Space, Kokkos::IndexType<std::int64_t>>;

struct Config {
  std::string algorithm = "improved", semantics = "longnet";
  std::vector<int> segments = {64, 128}, dilations = {1, 2};
  int batch = 2, length = 256, embed = 64, heads = 4, steps = 3;
  double lr = 0.05;
  bool causal = true;
};

Matrix random_matrix(const char* label, long rows, long cols, double scale, std::uint64_t seed) {
  Matrix m(std::string(label), rows, cols);
  auto host = Kokkos::create_mirror_view(m);
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal(0.0, scale);
  for (std::size_t i = 0; i < host.size(); ++i)
    host.data()[i] = static_cast<float>(normal(engine));
  Kokkos::deep_copy(m, host);
  return m;
}

Tokens tokens_of(const Matrix& m, int batch, int length) {
  return Tokens(m.data(), batch, length, m.extent(1));
}

Flat flat(const Matrix& m) {
  return Flat(m.data(), m.size());
}
Flat flat(const Vector& v) {
  return Flat(v.data(), v.size());
}

// The GELU (tanh form) and its derivative, elementwise.
KOKKOS_INLINE_FUNCTION float gelu_tanh(float x) {
  const float u = 0.7978845608f * (x + 0.044715f * x * x * x);
  return 1.0f - 2.0f / (dilated::Impl::math::exp(2.0f * u) + 1.0f);
}

void gelu_forward(const Matrix& h, const Matrix& g) {
  Kokkos::parallel_for(
      "dilated::example::gelu", Elements(0, h.size()), KOKKOS_LAMBDA(long e) {
        const float x = h.data()[e];
        g.data()[e] = 0.5f * x * (1.0f + gelu_tanh(x));
      });
}

void gelu_backward(const Matrix& h, const Matrix& dg, const Matrix& dh) {
  Kokkos::parallel_for(
      "dilated::example::gelu_backward", Elements(0, h.size()), KOKKOS_LAMBDA(long e) {
        const float x = h.data()[e], t = gelu_tanh(x);
        const float du = 0.7978845608f * (1.0f + 3.0f * 0.044715f * x * x);
        dh.data()[e] = dg.data()[e] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
      });
}

// y = a + b, elementwise.
void add(const Matrix& a, const Matrix& b, const Matrix& y) {
  Kokkos::parallel_for(
      "dilated::example::add", Elements(0, y.size()),
      KOKKOS_LAMBDA(long e) { y.data()[e] = a.data()[e] + b.data()[e]; });
}

// p -= lr g; returns |g|^2.
double sgd(const Flat& p, const Flat& g, double lr) {
  double squares = 0;
  Kokkos::parallel_reduce(
      "dilated::example::sgd", Elements(0, p.size()),
      KOKKOS_LAMBDA(long i, double& s) {
        s += double(g(i)) * g(i);
        p(i) -= static_cast<float>(lr) * g(i);
      },
      squares);
  return squares;
}

// loss = mean((y - t)^2) / 2 and its gradient dy = (y - t) / size. A non-finite output makes
// the loss non-finite.
double mse(const Matrix& y, const Matrix& t, const Matrix& dy) {
  const double n = y.size();
  double sum = 0;
  Kokkos::parallel_reduce(
      "dilated::example::mse", Elements(0, y.size()),
      KOKKOS_LAMBDA(long e, double& s) {
        const float r = y.data()[e] - t.data()[e];
        s += 0.5 * double(r) * r;
        dy.data()[e] = static_cast<float>(r / n);
      },
      sum);
  return sum / n;
}

template <class Policy>
struct TransformerBlock {
  using Attention = dilated::MultiheadDilatedAttention<Policy, float, Memory>;
  int batch, length, embed;
  Attention attention;
  Vector ln1_weight, ln1_bias, ln2_weight, ln2_bias, fc1_bias, fc2_bias;
  Matrix fc1_weight, fc2_weight;

  // What the forward keeps for the backward.
  Matrix x, n1, x1, n2, h, g, y;
  Stats mean1, rstd1, mean2, rstd2;
  typename Attention::Activations saved;
  dilated::ForwardOptions call;

  TransformerBlock(const Config& c)
      : batch(c.batch),
        length(c.length),
        embed(c.embed),
        attention(c.embed, c.heads, c.segments, c.dilations, 0.0, true, true, 1e-5, 1.0,
                  dilated::semantics_from_string(c.semantics), 42),
        ln1_weight("dilated::example::ln1_weight", c.embed),
        ln1_bias("dilated::example::ln1_bias", c.embed),
        ln2_weight("dilated::example::ln2_weight", c.embed),
        ln2_bias("dilated::example::ln2_bias", c.embed),
        fc1_bias("dilated::example::fc1_bias", 4 * c.embed),
        fc2_bias("dilated::example::fc2_bias", c.embed),
        fc1_weight(random_matrix("dilated::example::fc1_weight", 4 * c.embed, c.embed,
                                 std::sqrt(2.0 / (5.0 * c.embed)), 7)),
        fc2_weight(random_matrix("dilated::example::fc2_weight", c.embed, 4 * c.embed,
                                 std::sqrt(2.0 / (5.0 * c.embed)), 8)),
        call{c.causal, false, 0} {
    Kokkos::deep_copy(ln1_weight, 1.0f);
    Kokkos::deep_copy(ln2_weight, 1.0f);
    const long m = long(batch) * length;
    const auto alloc = [](const char* label) { return std::string(label); };
    n1 = Matrix(alloc("dilated::example::n1"), m, embed);
    x1 = Matrix(alloc("dilated::example::x1"), m, embed);
    n2 = Matrix(alloc("dilated::example::n2"), m, embed);
    h = Matrix(alloc("dilated::example::h"), m, 4 * embed);
    g = Matrix(alloc("dilated::example::g"), m, 4 * embed);
    y = Matrix(alloc("dilated::example::y"), m, embed);
    mean1 = Stats("dilated::example::mean1", m);
    rstd1 = Stats("dilated::example::rstd1", m);
    mean2 = Stats("dilated::example::mean2", m);
    rstd2 = Stats("dilated::example::rstd2", m);
  }

  const Matrix& forward(const Matrix& input) {
    const Space space;
    x = input;
    dilated::Impl::layer_norm_forward(space, x, ln1_weight, ln1_bias, 1e-5, n1, mean1, rstd1);
    const Tokens n1_tokens = tokens_of(n1, batch, length);
    Matrix a("dilated::example::attention_out", x.extent(0), embed);
    attention.forward(space, n1_tokens, n1_tokens, n1_tokens, tokens_of(a, batch, length), saved,
                      call);
    add(x, a, x1);
    dilated::Impl::layer_norm_forward(space, x1, ln2_weight, ln2_bias, 1e-5, n2, mean2, rstd2);
    dilated::Impl::linear_forward(space, n2, fc1_weight, fc1_bias, h);
    gelu_forward(h, g);
    Matrix mlp("dilated::example::mlp_out", x.extent(0), embed);
    dilated::Impl::linear_forward(space, g, fc2_weight, fc2_bias, mlp);
    add(x1, mlp, y);
    space.fence();
    return y;
  }

  // Backward of the last forward for dL/dy, then one SGD step; returns |dL/dp|^2 over every p.
  double backward_and_step(const Matrix& dy, double lr) {
    const Space space;
    const long m = x.extent(0);
    Matrix dg("dilated::example::dg", m, 4 * embed), dh("dilated::example::dh", m, 4 * embed),
        dn2("dilated::example::dn2", m, embed), dx1("dilated::example::dx1", m, embed),
        dx1_norm("dilated::example::dx1_norm", m, embed), dn1("dilated::example::dn1", m, embed);
    Matrix dfc1_weight("dilated::example::dfc1_weight", 4 * embed, embed),
        dfc2_weight("dilated::example::dfc2_weight", embed, 4 * embed);
    Vector dfc1_bias("dilated::example::dfc1_bias", 4 * embed),
        dfc2_bias("dilated::example::dfc2_bias", embed),
        dln1_weight("dilated::example::dln1_weight", embed),
        dln1_bias("dilated::example::dln1_bias", embed),
        dln2_weight("dilated::example::dln2_weight", embed),
        dln2_bias("dilated::example::dln2_bias", embed);
    // y = x1 + fc2(gelu(fc1(LN2(x1)))): the MLP branch, then LN2, then the residual.
    dilated::Impl::linear_backward(space, g, fc2_weight, dy, dg, false, dfc2_weight, dfc2_bias);
    gelu_backward(h, dg, dh);
    dilated::Impl::linear_backward(space, n2, fc1_weight, dh, dn2, false, dfc1_weight, dfc1_bias);
    dilated::Impl::layer_norm_backward(space, x1, ln2_weight, mean2, rstd2, dn2, dx1_norm,
                                       dln2_weight, dln2_bias);
    add(dy, dx1_norm, dx1);
    // x1 = x + attention(LN1(x)): the layer's backward (self-attention: one input gradient).
    const Tokens n1_tokens = tokens_of(n1, batch, length);
    const auto grads = attention.backward(space, n1_tokens, n1_tokens, n1_tokens,
                                          tokens_of(dx1, batch, length), saved, call);
    const Matrix dn1_from_attention(grads.query.data(), m, embed);
    dilated::Impl::layer_norm_backward(space, x, ln1_weight, mean1, rstd1, dn1_from_attention, dn1,
                                       dln1_weight, dln1_bias);
    space.fence();
    // The step, over every parameter (the layer's by name, in the same order as its gradients).
    double squares = 0;
    const auto params = attention.parameters().named_tensors();
    const auto param_grads = grads.parameters.named_tensors();
    for (std::size_t t = 0; t < params.size(); ++t)
      squares += sgd(params[t].values, param_grads[t].values, lr);
    squares += sgd(flat(fc1_weight), flat(dfc1_weight), lr);
    squares += sgd(flat(fc2_weight), flat(dfc2_weight), lr);
    squares += sgd(flat(fc1_bias), flat(dfc1_bias), lr);
    squares += sgd(flat(fc2_bias), flat(dfc2_bias), lr);
    squares += sgd(flat(ln1_weight), flat(dln1_weight), lr);
    squares += sgd(flat(ln1_bias), flat(dln1_bias), lr);
    squares += sgd(flat(ln2_weight), flat(dln2_weight), lr);
    squares += sgd(flat(ln2_bias), flat(dln2_bias), lr);
    return squares;
  }
};

template <class Policy>
int run(const Config& c) {
  TransformerBlock<Policy> block(c);
  const long m = long(c.batch) * c.length;
  const Matrix x = random_matrix("dilated::example::x", m, c.embed, 1.0, 1);
  const Matrix target = random_matrix("dilated::example::target", m, c.embed, 1.0, 2);
  Matrix dy("dilated::example::dy", m, c.embed);
  std::printf("device %s, %s, %s, b=%d n=%d E=%d h=%d, %d SGD steps of lr %g\n", Space::name(),
              c.algorithm.c_str(), c.semantics.c_str(), c.batch, c.length, c.embed, c.heads,
              c.steps, c.lr);
  double loss = mse(block.forward(x), target, dy);
  bool ok = std::isfinite(loss);
  for (int step = 0; step < c.steps && ok; ++step) {
    Kokkos::Timer timer;
    const double squares = block.backward_and_step(dy, c.lr);
    const double next = mse(block.forward(x), target, dy);
    const double predicted = c.lr * squares, actual = loss - next;
    const bool step_ok =
        std::isfinite(next) && actual > 0 && std::abs(actual / predicted - 1) < 0.1;
    std::printf("step %d: loss %.6f -> %.6f, decrease %.3e (first order %.3e)%s, %.1f ms\n", step,
                loss, next, actual, predicted, step_ok ? "" : "  <- not as the gradient says",
                1e3 * timer.seconds());
    ok = ok && step_ok;
    loss = next;
  }
  if (!std::isfinite(loss)) std::printf("non-finite output\n");
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  CLI::App app{"Train a pre-LN transformer block with MultiheadDilatedAttention for a few steps."};
  Config c;
  app.add_option("--algorithm", c.algorithm, "original or improved")
      ->check(CLI::IsMember({"original", "improved"}));
  app.add_option("--semantics", c.semantics, "grouped or longnet")
      ->check(CLI::IsMember({"grouped", "longnet"}));
  app.add_option("--segments", c.segments, "segment lengths")->delimiter(',');
  app.add_option("--dilations", c.dilations, "dilation rates")->delimiter(',');
  app.add_option("--batch", c.batch, "batch size")->check(CLI::PositiveNumber);
  app.add_option("--length", c.length, "sequence length")->check(CLI::PositiveNumber);
  app.add_option("--embed", c.embed, "embedding dimension E")->check(CLI::PositiveNumber);
  app.add_option("--heads", c.heads, "heads")->check(CLI::PositiveNumber);
  app.add_option("--steps", c.steps, "SGD steps")->check(CLI::NonNegativeNumber);
  app.add_option("--lr", c.lr, "learning rate")->check(CLI::PositiveNumber);
  app.add_flag("!--no-causal", c.causal, "attend to every position of the segment");
  CLI11_PARSE(app, argc, argv);
  try {
    return c.algorithm == "improved" ? run<dilated::Improved>(c) : run<dilated::Original>(c);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
