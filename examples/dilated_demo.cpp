// dilated_demo: the seed's four variants on the default Kokkos device (CUDA when the build has
// it, else OpenMP), timed on one configuration, checked against the host, and printed as the
// seed's table: variant, time, tokens/s, peak extra device memory, max error, speed relative
// to DilatedAttention.
//
//   DilatedAttention                   dilated::DilatedAttention<Original>     (b, n, h, d) views
//   ImprovedDilatedAttention           dilated::DilatedAttention<Improved>
//   MultiheadDilatedAttention          dilated::MultiheadDilatedAttention<Original, T>  (b, n, E)
//   ImprovedMultiheadDilatedAttention  dilated::MultiheadDilatedAttention<Improved, T>
//
// Checks: the two attention variants against dilated::reference (exact, double, host); the two
// layers against one host run of the layer in double with the same weights, and against each
// other. Peak extra memory: the largest amount of device memory the calls allocated through
// Kokkos beyond their inputs, outputs and parameters (tools/include/Dilated_MemoryTracker.hpp).
//
//   dilated_demo                       # the default configuration (about a minute on 2 cores)
//   dilated_demo --length 65536 --dtype half --no-check --json demo.json
#include <DilatedAttention.hpp>
#include <Dilated_HostData.hpp>
#include <Dilated_MemoryTracker.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

using Device = Kokkos::DefaultExecutionSpace;
using DeviceMemory = Device::memory_space;
using HostSpace = Kokkos::DefaultHostExecutionSpace;
using dilated::tools::HostArray;

const std::vector<std::string> all_variants = {"DilatedAttention", "ImprovedDilatedAttention",
                                               "MultiheadDilatedAttention",
                                               "ImprovedMultiheadDilatedAttention"};

struct Config {
  int batch = 1, length = 8192, heads = 8, dim = 64;
  std::vector<int> segments = {2048, 4096, 8192}, dilations = {1, 2, 4};
  std::string semantics = "grouped", dtype = "auto";
  bool causal = false, check = true;
  int warmup = -1, repeats = -1;  // -1: automatic (time_calls)
  std::vector<std::string> variants = all_variants;
  std::uint64_t seed = 1;
  std::string json;
  int embed() const { return heads * dim; }
};

// Seconds since the demo started, for the progress lines.
double elapsed() {
  static const auto start = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void progress(const std::string& what) {
  std::fprintf(stderr, "[demo %6.1f s] %s\n", elapsed(), what.c_str());
  std::fflush(stderr);
}

struct Result {
  std::string variant;
  double seconds = 0;  // mean over the timed calls
  int warmup = 0, repeats = 0;
  double extra_MiB = 0;    // peak device memory allocated by the calls beyond their arguments
  double max_error = NAN;  // max |out - expected|, NAN when not checked
  double tolerance = NAN;  // what max_error must not exceed
  std::string checked_against;
  HostArray output;  // for the cross-check of the two layers
};

// Calls `call` on the device, fenced: `warmup` untimed calls, then `repeats` timed ones (their mean
// is the result), and the peak extra device memory of all of them. Automatic (-1): the first
// call is a warm-up followed by 3 timed calls, unless it took longer than 2 s; then one-time
// costs are lost in it and it is the one timed call (the Original algorithm on a CPU).
void time_calls(const Config& c, const std::string& name, const std::function<void()>& call,
                Result& r) {
  Device().fence();
  dilated::tools::MemoryTracker::reset();
  int warmup = c.warmup, repeats = c.repeats;
  double total = 0;
  for (int i = 0; warmup < 0 || repeats < 0 || i < warmup + repeats; ++i) {
    const bool known = warmup >= 0 && repeats >= 0;
    progress(name + ": call " + std::to_string(i + 1) +
             (known ? " of " + std::to_string(warmup + repeats) +
                          (i < warmup ? " (warm-up)" : " (timed)")
                    : ""));
    Device().fence();
    Kokkos::Timer timer;
    call();
    Device().fence();
    const double seconds = timer.seconds();
    if (i == 0 && !known) {
      const bool slow = seconds > 2.0;
      if (warmup < 0) warmup = slow && repeats < 0 ? 0 : 1;
      if (repeats < 0) repeats = slow && warmup == 0 ? 1 : 3;
    }
    if (i >= warmup) total += seconds;
  }
  r.seconds = total / repeats;
  r.warmup = warmup;
  r.repeats = repeats;
  r.extra_MiB = dilated::tools::MemoryTracker::peak_extra() / (1024.0 * 1024.0);
}

// Tolerances per storage type, relative to the largest |expected| (at least 1): {attention,
// layer}. The attention's are unit_tests/harness/Dilated_Tolerances.hpp's; the layer adds two
// projections and a LayerNorm in T.
template <class T>
std::pair<double, double> tolerances() {
  if constexpr (std::is_same_v<T, double>) return {1e-10, 1e-9};
  if constexpr (std::is_same_v<T, float>) return {2e-5, 2e-4};
#if !DILATED_HALF_IS_FLOAT
  if constexpr (std::is_same_v<T, Kokkos::Experimental::half_t>) return {4e-3, 3e-2};
#endif
  return {3e-2, 1.5e-1};  // bf16
}

double max_abs(const HostArray& a) {
  double m = 0;
  for (const double x : a.values)
    m = std::max(m, std::abs(x));
  return m;
}

template <class T>
class Demo {
 public:
  using View4 = Kokkos::View<T****, Kokkos::LayoutRight, DeviceMemory>;
  using View3 = Kokkos::View<T***, Kokkos::LayoutRight, DeviceMemory>;
  template <class Policy>
  using Layer = dilated::MultiheadDilatedAttention<Policy, T, DeviceMemory>;

  explicit Demo(const Config& c) : c_(c) {}

  std::vector<Result> run() {
    std::vector<Result> results;
    for (const auto& name : c_.variants) {
      if (name == "DilatedAttention") results.push_back(core<dilated::Original>(name));
      if (name == "ImprovedDilatedAttention") results.push_back(core<dilated::Improved>(name));
      if (name == "MultiheadDilatedAttention") results.push_back(layer<dilated::Original>(name));
      if (name == "ImprovedMultiheadDilatedAttention") {
        results.push_back(layer<dilated::Improved>(name));
      }
    }
    return results;
  }

 private:
  dilated::AttentionOptions options() const {
    return dilated::AttentionOptions().set_semantics(dilated::semantics_from_string(c_.semantics));
  }
  dilated::ForwardOptions call() const { return {c_.causal, false, 0}; }

  // q, k, v on the device (and their rounded values on the host), made once.
  void make_core_inputs() {
    if (q_.size() > 0) return;
    progress("making q, k, v (" + std::to_string(c_.batch) + ", " + std::to_string(c_.length) +
             ", " + std::to_string(c_.heads) + ", " + std::to_string(c_.dim) + ")");
    const std::vector<std::size_t> shape = {std::size_t(c_.batch), std::size_t(c_.length),
                                            std::size_t(c_.heads), std::size_t(c_.dim)};
    qh_ = dilated::tools::random_normal(shape, c_.seed);
    kh_ = dilated::tools::random_normal(shape, c_.seed + 1);
    vh_ = dilated::tools::random_normal(shape, c_.seed + 2);
    q_ = dilated::tools::upload<View4>("dilated::demo::q", qh_);
    k_ = dilated::tools::upload<View4>("dilated::demo::k", kh_);
    v_ = dilated::tools::upload<View4>("dilated::demo::v", vh_);
  }

  // The exact reference, once (its cost grows as n^2 per head: minutes at n = 64K on 2 cores).
  const HostArray& reference() {
    if (!reference_.values.empty()) return reference_;
    progress("host reference (dilated::reference, double)");
    using Host4 = Kokkos::View<double****, Kokkos::LayoutRight, Kokkos::HostSpace,
                               Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    const auto wrap = [&](HostArray& a) {
      return Host4(a.values.data(), c_.batch, c_.length, c_.heads, c_.dim);
    };
    reference_ = HostArray{qh_.shape, std::vector<double>(qh_.size())};
    const dilated::DilatedAttention<dilated::Original> attention(c_.segments, c_.dilations,
                                                                 options());
    dilated::reference(attention.geometry(c_.heads), wrap(qh_), wrap(kh_), wrap(vh_),
                       wrap(reference_), {c_.causal, std::nullopt});
    return reference_;
  }

  template <class Algorithm>
  Result core(const std::string& name) {
    make_core_inputs();
    const dilated::DilatedAttention<Algorithm> attention(c_.segments, c_.dilations, options());
    View4 out("dilated::demo::out", c_.batch, c_.length, c_.heads, c_.dim);
    Result r;
    r.variant = name;
    time_calls(
        c_, name, [&] { attention.forward(Device(), q_, k_, v_, out, call()); }, r);
    if (c_.check) {
      const auto& expected = reference();
      r.max_error =
          dilated::tools::max_abs_difference(dilated::tools::download(out).values, expected.values);
      r.tolerance = tolerances<T>().first * (1 + max_abs(expected));
      r.checked_against = "dilated::reference (double)";
    }
    return r;
  }

  // x on the device (and its rounded values on the host), made once.
  void make_layer_input() {
    if (x_.size() > 0) return;
    progress("making the layer input (" + std::to_string(c_.batch) + ", " +
             std::to_string(c_.length) + ", " + std::to_string(c_.embed()) + ")");
    xh_ = dilated::tools::random_normal(
        {std::size_t(c_.batch), std::size_t(c_.length), std::size_t(c_.embed())}, c_.seed + 3);
    x_ = dilated::tools::upload<View3>("dilated::demo::x", xh_);
  }

  template <class Policy>
  Layer<Policy> make_layer() const {
    // The seed's defaults: bias, sub-LayerNorm, gamma_init 1; both policies get the same weights
    // from the same initialisation seed.
    return Layer<Policy>(c_.embed(), c_.heads, c_.segments, c_.dilations, 0.0, true, true, 1e-5,
                         1.0, dilated::semantics_from_string(c_.semantics), c_.seed + 4);
  }

  // The layer in double on the host with the device layer's weights (rounded to T), once.
  template <class Policy>
  const HostArray& layer_reference(const Layer<Policy>& device_layer) {
    if (!layer_reference_.values.empty()) return layer_reference_;
    progress("host layer in double (MultiheadDilatedAttention<Improved, double>)");
    dilated::MultiheadDilatedAttention<dilated::Improved, double, Kokkos::HostSpace> host_layer(
        c_.embed(), c_.heads, c_.segments, c_.dilations, 0.0, true, true, 1e-5, 1.0,
        dilated::semantics_from_string(c_.semantics));
    const auto from = device_layer.parameters().named_tensors();
    const auto to = host_layer.parameters().named_tensors();
    for (std::size_t i = 0; i < from.size(); ++i) {
      const auto values = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), from[i].values);
      for (std::size_t j = 0; j < values.extent(0); ++j)
        to[i].values(j) = dilated::Impl::to_double(values(j));
    }
    using Host3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace,
                               Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    const Host3 x(xh_.values.data(), c_.batch, c_.length, c_.embed());
    layer_reference_ = HostArray{xh_.shape, std::vector<double>(xh_.size())};
    const Host3 out(layer_reference_.values.data(), c_.batch, c_.length, c_.embed());
    host_layer.forward(HostSpace(), x, x, x, out, call());
    return layer_reference_;
  }

  template <class Policy>
  Result layer(const std::string& name) {
    make_layer_input();
    const auto layer = make_layer<Policy>();
    View3 out("dilated::demo::layer_out", c_.batch, c_.length, c_.embed());
    Result r;
    r.variant = name;
    time_calls(
        c_, name, [&] { layer.forward(Device(), x_, x_, x_, out, call()); }, r);
    if (c_.check) {
      r.output = dilated::tools::download(out);
      const auto& expected = layer_reference(layer);
      r.max_error = dilated::tools::max_abs_difference(r.output.values, expected.values);
      r.tolerance = tolerances<T>().second * std::max(1.0, max_abs(expected));
      r.checked_against = "host layer in double";
    }
    return r;
  }

  Config c_;
  View4 q_, k_, v_;
  View3 x_;
  HostArray qh_, kh_, vh_, xh_, reference_, layer_reference_;
};

std::string format_rate(double x) {
  char text[32];
  if (x >= 1e6) {
    std::snprintf(text, sizeof text, "%.2f M", x * 1e-6);
  } else if (x >= 1e3) {
    std::snprintf(text, sizeof text, "%.1f k", x * 1e-3);
  } else {
    std::snprintf(text, sizeof text, "%.1f", x);
  }
  return text;
}

// The seed's table, and PASS / FAIL per checked variant. Returns whether every check passed.
bool print_table(const Config& c, const std::string& dtype, const std::vector<Result>& results) {
  const double tokens = double(c.batch) * c.length;
  double base = NAN;
  for (const auto& r : results)
    if (r.variant == "DilatedAttention") base = r.seconds;
  std::printf(
      "\nDilatedAttention %s on %s: %s, %s semantics, batch %d, n = %d, %d heads x %d (E = %d), "
      "segments",
      DILATED_VERSION_STRING, Device::name(), dtype.c_str(), c.semantics.c_str(), c.batch, c.length,
      c.heads, c.dim, c.embed());
  for (const int s : c.segments)
    std::printf(" %d", s);
  std::printf(", dilations");
  for (const int r : c.dilations)
    std::printf(" %d", r);
  std::printf("%s; forward\n\n", c.causal ? ", causal" : "");
  std::printf("| %-33s | %10s | %5s | %10s | %16s | %10s | %7s | %5s |\n", "variant", "time (ms)",
              "calls", "tokens/s", "peak extra (MiB)", "max error", "speed", "check");
  std::printf(
      "|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(35, '-').c_str(), std::string(12, '-').c_str(),
      std::string(7, '-').c_str(), std::string(12, '-').c_str(), std::string(18, '-').c_str(),
      std::string(12, '-').c_str(), std::string(9, '-').c_str(), std::string(7, '-').c_str());
  bool ok = true;
  for (const auto& r : results) {
    char error[32] = "-", speed[32] = "-";
    const char* verdict = "-";
    if (!std::isnan(r.max_error)) {
      std::snprintf(error, sizeof error, "%.2e", r.max_error);
      const bool passed = r.max_error <= r.tolerance;
      verdict = passed ? "PASS" : "FAIL";
      ok = ok && passed;
    }
    if (!std::isnan(base)) std::snprintf(speed, sizeof speed, "%.2fx", base / r.seconds);
    const std::string calls = std::to_string(r.warmup) + "+" + std::to_string(r.repeats);
    std::printf("| %-33s | %10.2f | %5s | %10s | %16.1f | %10s | %7s | %5s |\n", r.variant.c_str(),
                1e3 * r.seconds, calls.c_str(), format_rate(tokens / r.seconds).c_str(),
                r.extra_MiB, error, speed, verdict);
  }
  std::printf(
      "\ntime: one forward call (the mean of the timed calls; calls: warm-up + timed); tokens/s:\n"
      "batch x n / time; peak extra: device memory the calls allocated through Kokkos beyond\n"
      "their inputs, outputs and parameters; speed: time of DilatedAttention / time of the\n"
      "variant; max error: max |out - expected| against dilated::reference in double\n"
      "(attention) or the layer run in double on the host with the same weights (layers).\n");
  return ok;
}

void write_json(const Config& c, const std::string& dtype, const std::vector<Result>& results,
                const std::string& path) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("dilated_demo: cannot write " + path);
  const auto list = [](const std::vector<int>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i)
      s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  };
  const auto number = [](double x) {
    if (!std::isfinite(x)) return std::string("null");
    char text[64];
    std::snprintf(text, sizeof text, "%.9g", x);
    return std::string(text);
  };
  out << "{\n  \"device\": \"" << Device::name() << "\",\n  \"dtype\": \"" << dtype
      << "\",\n  \"semantics\": \"" << c.semantics << "\",\n  \"batch\": " << c.batch
      << ",\n  \"n\": " << c.length << ",\n  \"heads\": " << c.heads
      << ",\n  \"head_dim\": " << c.dim << ",\n  \"segments\": " << list(c.segments)
      << ",\n  \"dilations\": " << list(c.dilations)
      << ",\n  \"causal\": " << (c.causal ? "true" : "false") << ",\n  \"results\": [\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    out << "    {\"variant\": \"" << r.variant << "\", \"time_ms\": " << number(1e3 * r.seconds)
        << ", \"tokens_per_s\": " << number(double(c.batch) * c.length / r.seconds)
        << ", \"extra_MiB\": " << number(r.extra_MiB) << ", \"max_error\": " << number(r.max_error)
        << ", \"tolerance\": " << number(r.tolerance) << ", \"warmup\": " << r.warmup
        << ", \"repeats\": " << r.repeats << "}" << (i + 1 < results.size() ? "," : "") << "\n";
  }
  out << "  ]\n}\n";
}

template <class T>
int run(const Config& c, const std::string& dtype) {
  const auto results = Demo<T>(c).run();
  bool ok = print_table(c, dtype, results);
  // The two layers, against each other (same weights, same input).
  const Result *original = nullptr, *improved = nullptr;
  for (const auto& r : results) {
    if (r.variant == "MultiheadDilatedAttention") original = &r;
    if (r.variant == "ImprovedMultiheadDilatedAttention") improved = &r;
  }
  if (original && improved && !original->output.values.empty()) {
    const double d =
        dilated::tools::max_abs_difference(original->output.values, improved->output.values);
    const bool agree = d <= 2 * std::max(original->tolerance, improved->tolerance);
    std::printf("layers: max |Multihead - ImprovedMultihead| = %.2e (%s)\n", d,
                agree ? "agree" : "DISAGREE");
    ok = ok && agree;
  }
  if (!c.json.empty()) write_json(c, dtype, results, c.json);
  std::printf("%s\n", !c.check ? "not checked (--no-check)" : ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char* argv[]) {
  // --kokkos-* arguments go to Kokkos, the rest to this parser, which runs first (so --help and
  // bad command lines end before Kokkos starts).
  std::vector<char*> kokkos_args = {argv[0]}, args = {argv[0]};
  for (int i = 1; i < argc; ++i)
    (std::string(argv[i]).rfind("--kokkos-", 0) == 0 ? kokkos_args : args).push_back(argv[i]);
  CLI::App app{
      "Runs the seed's four variants (DilatedAttention, ImprovedDilatedAttention,\n"
      "MultiheadDilatedAttention, ImprovedMultiheadDilatedAttention) on the default Kokkos "
      "device,\n"
      "checks each against the host and prints time, tokens/s, peak extra device memory, max\n"
      "error and speed relative to DilatedAttention. Arguments --kokkos-* (--kokkos-threads=N, "
      "...)\n"
      "go to Kokkos."};
  Config c;
  app.add_option("--length,-n", c.length, "sequence length n")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", c.batch, "batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--heads", c.heads, "attention heads h")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--dim", c.dim, "head dimension d (the layers' embed_dim is h x d)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--segments", c.segments, "segment lengths, comma separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--dilations", c.dilations, "dilation rates, one per segment length")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--semantics", c.semantics,
                 "grouped (the seed's PyTorch peers) or longnet (the paper, torchscale)")
      ->check(CLI::IsMember({"grouped", "longnet"}))
      ->capture_default_str();
  app.add_option("--dtype", c.dtype,
                 "storage type: auto (half on CUDA, float on the host), float, double, half, bf16")
      ->check(CLI::IsMember({"auto", "float", "double", "half", "bf16"}))
      ->capture_default_str();
  app.add_flag("--causal", c.causal, "causal mask");
  app.add_option("--warmup", c.warmup,
                 "untimed calls per variant before the timed ones (default: 1, or 0 when the\n"
                 "first call takes longer than 2 s: then it is the one timed call)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--repeats", c.repeats,
                 "timed calls per variant, the table shows their mean (default: 3, or 1 when\n"
                 "the first call takes longer than 2 s)")
      ->check(CLI::PositiveNumber);
  app.add_option("--variants", c.variants, "variants to run, comma separated (default: all four)")
      ->delimiter(',')
      ->check(CLI::IsMember(all_variants));
  app.add_flag("!--no-check", c.check,
               "skip the host checks (the reference costs O(n^2) per head on the host)");
  app.add_option("--seed", c.seed, "seed of the random inputs and weights")->capture_default_str();
  app.add_option("--json", c.json, "also write the results to this JSON file");
  try {
    app.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  int kokkos_argc = static_cast<int>(kokkos_args.size());
  Kokkos::ScopeGuard kokkos(kokkos_argc, kokkos_args.data());
  // Before any allocation: every View of the device's memory space is counted.
  dilated::tools::MemoryTracker::install(DeviceMemory::name());

  std::string dtype = c.dtype;
  if (dtype == "auto") {
#if defined(KOKKOS_ENABLE_CUDA) && !DILATED_HALF_IS_FLOAT
    dtype = std::is_same_v<Device, Kokkos::Cuda> ? "half" : "float";
#else
    dtype = "float";
#endif
  }
  try {
    progress(std::string("device ") + Device::name() + ", dtype " + dtype + ", n = " +
             std::to_string(c.length) + "; variants: " + std::to_string(c.variants.size()));
    if (dtype == "float") return run<float>(c, dtype);
    if (dtype == "double") return run<double>(c, dtype);
#if !DILATED_HALF_IS_FLOAT
    if (dtype == "half") return run<Kokkos::Experimental::half_t>(c, dtype);
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
    if (dtype == "bf16") return run<Kokkos::Experimental::bhalf_t>(c, dtype);
#endif
    std::fprintf(stderr,
                 "dilated_demo: dtype %s has no 16-bit type on this Kokkos build (host-only "
                 "Kokkos aliases it to float); use --dtype float\n",
                 dtype.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dilated_demo: %s\n", e.what());
    return 2;
  }
}
