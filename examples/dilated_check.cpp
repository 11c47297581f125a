// dilated_check: runs one configuration of DilatedAttention<Original | Improved> on the default
// Kokkos device and checks it against the host: the forward against the exact double reference, the
// backward against the same algorithm in double on the host. Prints the largest errors and
// exits non-zero when one exceeds the tolerance of the storage type.
//
//   dilated_check --algorithm improved --semantics longnet --length 4096 --dtype half --causal
#include <DilatedAttention.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using Host4 = Kokkos::View<double****, Kokkos::LayoutRight, Kokkos::HostSpace>;

struct Config {
  std::string algorithm = "original", semantics = "longnet", dtype = "float";
  std::vector<int> segments = {256, 512, 1024}, dilations = {1, 2, 4};
  int batch = 1, length = 2048, heads = 8, dim = 64;
  bool causal = false, backward = true;
  double dropout = 0.0;
  unsigned seed = 1;
};

Host4 random_host(const Config& c, unsigned seed) {
  Host4 x("dilated::check::input", c.batch, c.length, c.heads, c.dim);
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  for (std::size_t i = 0; i < x.size(); ++i)
    x.data()[i] = normal(engine);
  return x;
}

// x stored as T in Space (and rounded: the host sees the same values).
template <class T, class Space>
Kokkos::View<T****, Kokkos::LayoutRight, Space> store(Host4& x) {
  Kokkos::View<T****, Kokkos::LayoutRight, Kokkos::HostSpace> staged(
      "dilated::check::staged", x.extent(0), x.extent(1), x.extent(2), x.extent(3));
  for (std::size_t i = 0; i < x.size(); ++i) {
    staged.data()[i] = static_cast<T>(x.data()[i]);
    x.data()[i] = dilated::Impl::to_double(staged.data()[i]);
  }
  Kokkos::View<T****, Kokkos::LayoutRight, Space> device("dilated::check::device", x.extent(0),
                                                         x.extent(1), x.extent(2), x.extent(3));
  Kokkos::deep_copy(device, staged);
  return device;
}

template <class View>
Host4 fetch(const View& view) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  Host4 out("dilated::check::fetched", view.extent(0), view.extent(1), view.extent(2),
            view.extent(3));
  for (std::size_t i = 0; i < out.size(); ++i)
    out.data()[i] = dilated::Impl::to_double(host.data()[i]);
  return out;
}

// max |a - b| and the largest |a - b| / (atol + rtol |b|) (<= 1 passes).
std::pair<double, double> compare(const Host4& a, const Host4& b, double rtol, double atol) {
  double max_abs = 0, worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(a.data()[i] - b.data()[i]);
    max_abs = std::max(max_abs, e);
    worst = std::max(worst, e / (atol + rtol * std::abs(b.data()[i])));
  }
  return {max_abs, worst};
}

template <class T, class Algorithm>
int run(const Config& c, double rtol, double atol) {
  using Device = Kokkos::DefaultExecutionSpace;
  using Space = Device::memory_space;
  const dilated::DilatedAttention<Algorithm> attention(
      c.segments, c.dilations,
      dilated::AttentionOptions()
          .set_semantics(dilated::semantics_from_string(c.semantics))
          .set_attention_dropout(c.dropout));
  Host4 qh = random_host(c, c.seed), kh = random_host(c, c.seed + 1),
        vh = random_host(c, c.seed + 2), gh = random_host(c, c.seed + 3);
  const auto q = store<T, Space>(qh), k = store<T, Space>(kh), v = store<T, Space>(vh),
             g = store<T, Space>(gh);
  Kokkos::View<T****, Kokkos::LayoutRight, Space> out("dilated::check::out", c.batch, c.length,
                                                      c.heads, c.dim);
  const dilated::ForwardOptions call{c.causal, c.dropout > 0, c.seed};
  Kokkos::Timer timer;
  attention.forward(Device(), q, k, v, out, call);
  Kokkos::fence();
  const double forward_seconds = timer.seconds();
  std::printf("device: %s, %s, dtype %s, %s, b=%d n=%d h=%d d=%d%s%s\n", Device::name(),
              c.algorithm.c_str(), c.dtype.c_str(), c.semantics.c_str(), c.batch, c.length, c.heads,
              c.dim, c.causal ? ", causal" : "", c.dropout > 0 ? ", dropout" : "");

  // Forward: the exact reference (no dropout), or the host run of the same algorithm.
  Host4 expected("dilated::check::expected", c.batch, c.length, c.heads, c.dim);
  using Host = Kokkos::DefaultHostExecutionSpace;
  if (c.dropout == 0) {
    dilated::reference(attention.geometry(c.heads), qh, kh, vh, expected, {c.causal, std::nullopt});
  } else {
    attention.forward(Host(), qh, kh, vh, expected, call);
  }
  const auto [fwd_abs, fwd_worst] = compare(fetch(out), expected, rtol, atol);
  std::printf("forward : max abs error %.3e (%.2f of tolerance), %.3f ms on the device\n", fwd_abs,
              fwd_worst, 1e3 * forward_seconds);
  bool ok = fwd_worst <= 1;
  if (c.backward) {
    Kokkos::View<T****, Kokkos::LayoutRight, Space> dq("dilated::check::dq", c.batch, c.length,
                                                       c.heads, c.dim),
        dk("dilated::check::dk", c.batch, c.length, c.heads, c.dim),
        dv("dilated::check::dv", c.batch, c.length, c.heads, c.dim);
    attention.backward(Device(), q, k, v, out, g, dq, dk, dv, call);
    Host4 out_h("out", c.batch, c.length, c.heads, c.dim),
        dqh("dq", c.batch, c.length, c.heads, c.dim), dkh("dk", c.batch, c.length, c.heads, c.dim),
        dvh("dv", c.batch, c.length, c.heads, c.dim);
    attention.forward(Host(), qh, kh, vh, out_h, call);
    attention.backward(Host(), qh, kh, vh, out_h, gh, dqh, dkh, dvh, call);
    const char* names[] = {"dq", "dk", "dv"};
    const Host4 expected_grads[] = {dqh, dkh, dvh};
    const Host4 got[] = {fetch(dq), fetch(dk), fetch(dv)};
    for (int i = 0; i < 3; ++i) {
      // Gradients sum over up to a segment of keys: allow 4x the forward tolerance.
      const auto [abs_err, worst] = compare(got[i], expected_grads[i], 4 * rtol, 4 * atol);
      std::printf("backward: %s max abs error %.3e (%.2f of tolerance)\n", names[i], abs_err,
                  worst);
      ok = ok && worst <= 1;
    }
  }
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

template <class T>
int run(const Config& c, double rtol, double atol) {
  return c.algorithm == "improved" ? run<T, dilated::Improved>(c, rtol, atol)
                                   : run<T, dilated::Original>(c, rtol, atol);
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  CLI::App app{"Check DilatedAttention on the default device against the host."};
  Config c;
  app.add_option("--algorithm", c.algorithm, "original or improved")
      ->check(CLI::IsMember({"original", "improved"}));
  app.add_option("--semantics", c.semantics, "grouped or longnet")
      ->check(CLI::IsMember({"grouped", "longnet"}));
  app.add_option("--segments", c.segments, "segment lengths")->delimiter(',');
  app.add_option("--dilations", c.dilations, "dilation rates")->delimiter(',');
  app.add_option("--batch", c.batch, "batch size")->check(CLI::PositiveNumber);
  app.add_option("--length", c.length, "sequence length")->check(CLI::PositiveNumber);
  app.add_option("--heads", c.heads, "heads")->check(CLI::PositiveNumber);
  app.add_option("--dim", c.dim, "head dimension")->check(CLI::PositiveNumber);
  app.add_option("--dtype", c.dtype, "storage: double, float, half, bf16")
      ->check(CLI::IsMember({"double", "float", "half", "bf16"}));
  app.add_option("--dropout", c.dropout, "attention dropout (training mode)");
  app.add_option("--seed", c.seed, "random seed of inputs and dropout");
  app.add_flag("--causal", c.causal, "causal mask");
  app.add_flag("!--no-backward", c.backward, "skip the backward check");
  CLI11_PARSE(app, argc, argv);
  try {
    // Tolerances of unit_tests/harness/Dilated_Tolerances.hpp.
    if (c.dtype == "double") return run<double>(c, 1e-10, 1e-10);
    if (c.dtype == "float") return run<float>(c, 2e-5, 2e-5);
#if !DILATED_HALF_IS_FLOAT
    if (c.dtype == "half") return run<Kokkos::Experimental::half_t>(c, 4e-3, 4e-3);
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
    if (c.dtype == "bf16") return run<Kokkos::Experimental::bhalf_t>(c, 3e-2, 3e-2);
#endif
    std::fprintf(stderr, "dtype %s is float on this Kokkos build (no device half type)\n",
                 c.dtype.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
