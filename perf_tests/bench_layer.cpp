// Google Benchmark of MultiheadDilatedAttention (the whole layer: projections, dilated
// attention, sub-LayerNorm, out projection) on the default Kokkos device, self-attention, both
// policies, forward and forward+backward (gradients of the input and every parameter). Manual
// time between fences; counters: tokens/s, TFLOP/s (attention plus projection FLOPs), GB/s and the
// peak device memory the call allocates beyond its input, output and dout (measured from Kokkos
// allocations; for forward+backward it includes the saved activations and the returned
// gradients).
//
//   dilated_bench_layer --lengths=16384,65536,131072 --embed=768 --heads=12
//       [--policies=original,improved] [--backend=default|host|serial] [--dtypes=fp16,fp32]
//       [--causal=full,causal]
//       [--passes=fwd,fwd_bwd] --benchmark_out=layer.json --benchmark_out_format=json
// Storage is half on CUDA (fp16) and float on the host unless --dtypes says otherwise; causal
// runs get "/causal" in their names. A size that does not fit in memory is reported as a
// skipped benchmark with the allocation error, and the other sizes still run.
#include <DilatedAttention.hpp>
#include <Dilated_BenchmarkContext.hpp>
#include <Dilated_BenchmarkInputs.hpp>
#include <Dilated_MemoryTracker.hpp>
#include <Dilated_MultiheadDilatedAttention.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace {

struct Settings {
  std::vector<int> lengths = {16384, 65536, 131072};
  std::vector<int> segments = {2048, 4096, 8192}, dilations = {1, 2, 4};
  int batch = 1, embed = 768, heads = 12;
  std::string semantics = "grouped";
  std::string backend = "default";  // default (device), host or serial
  std::vector<std::string> policies = {"original", "improved"};
  std::vector<std::string> dtypes = {dilated::bench::default_storage()};
  std::vector<std::string> causal = {"full"};
  std::vector<std::string> passes = {"fwd", "fwd_bwd"};
};

Settings parse(int& argc, char* argv[]) {
  Settings s;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const auto value = [&](const char* flag) -> const char* {
      const std::size_t len = std::strlen(flag);
      return std::strncmp(argv[i], flag, len) == 0 ? argv[i] + len : nullptr;
    };
    if (const char* v = value("--lengths="))
      s.lengths = dilated::bench::parse_list(v);
    else if (const char* v = value("--segments="))
      s.segments = dilated::bench::parse_list(v);
    else if (const char* v = value("--dilations="))
      s.dilations = dilated::bench::parse_list(v);
    else if (const char* v = value("--embed="))
      s.embed = std::atoi(v);
    else if (const char* v = value("--heads="))
      s.heads = std::atoi(v);
    else if (const char* v = value("--batch="))
      s.batch = std::atoi(v);
    else if (const char* v = value("--semantics="))
      s.semantics = v;
    else if (const char* v = value("--backend="))
      s.backend = v;
    else if (const char* v = value("--policies="))
      s.policies = dilated::bench::split(v);
    else if (const char* v = value("--dtypes="))
      s.dtypes = dilated::bench::split(v);
    else if (const char* v = value("--causal="))
      s.causal = dilated::bench::split(v);
    else if (const char* v = value("--passes="))
      s.passes = dilated::bench::split(v);
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  return s;
}

// Useful FLOPs of one layer forward: the attention's 4 m^2 d per (batch, segment, head) of
// every branch, plus four (M x E) x (E x E) projections (q, k, v, out).
double layer_forward_flops(const dilated::Geometry& g, const Settings& s, int n, bool causal) {
  double flops = 8.0 * s.batch * n * double(s.embed) * s.embed;
  const int d = s.embed / s.heads;
  for (const auto& block : g.head_blocks()) {
    for (int j = 0; j < g.num_segments(block.branch, n); ++j) {
      const double m = g.kept(block.branch, j, block.offset, n).count;
      const double pairs = causal ? m * (m + 1) / 2 : m * m;
      flops += 4.0 * pairs * d * block.num_heads() * s.batch;
    }
  }
  return flops;
}

template <class Space, class Policy, class Storage>
void run(benchmark::State& state, const Settings& s, int n, bool causal, bool with_backward) {
  using MemorySpace = typename Space::memory_space;
  using Layer = dilated::MultiheadDilatedAttention<Policy, Storage, MemorySpace>;
  using View3 = Kokkos::View<Storage***, Kokkos::LayoutRight, MemorySpace>;
  const Layer layer(s.embed, s.heads, s.segments, s.dilations, 0.0, true, true, 1e-5, 1.0,
                    dilated::semantics_from_string(s.semantics));
  View3 x(Kokkos::view_alloc(Kokkos::WithoutInitializing, "dilated::bench::x"), s.batch, n,
          s.embed);
  View3 dout(Kokkos::view_alloc(Kokkos::WithoutInitializing, "dilated::bench::dout"), s.batch, n,
             s.embed);
  View3 out("dilated::bench::out", s.batch, n, s.embed);
  dilated::bench::fill_uniform(x, 1);
  dilated::bench::fill_uniform(dout, 2);
  const Space space;
  const dilated::ForwardOptions call{causal, false, 0};
  const auto step = [&] {
    if (with_backward) {
      typename Layer::Activations saved;
      layer.forward(space, x, x, x, out, saved, call);
      const auto grads = layer.backward(space, x, x, x, dout, saved, call);
    } else {
      layer.forward(space, x, x, x, out, call);
    }
    space.fence();
  };
  // One untimed call first: the first cuBLAS call of a process creates its handle and loads
  // kernels (seen on the H100: 229 ms for the first layer forward at 16K, 5 ms afterwards).
  step();
  dilated::tools::MemoryTracker::reset();  // the layer's parameters, x, dout and out exist
  for (auto _ : state) {
    space.fence();
    Kokkos::Timer timer;
    step();
    state.SetIterationTime(timer.seconds());
  }
  const double fwd = layer_forward_flops(layer.geometry(), s, n, causal);
  const double flops = with_backward ? 3.0 * fwd : fwd;  // backward ~2x the forward's products
  using benchmark::Counter;
  constexpr double MiB = 1024.0 * 1024.0;
  state.counters["tokens_per_s"] = Counter(double(s.batch) * n, Counter::kIsIterationInvariantRate);
  state.counters["TFLOP_per_s"] = Counter(flops * 1e-12, Counter::kIsIterationInvariantRate);
  // GB/s of the layer's unavoidable traffic: input and output (forward), plus dout and the input
  // gradient (backward), and the four E x E weights read once per pass.
  const double activation_bytes = double(x.size()) * sizeof(Storage);
  const double weight_bytes = 4.0 * s.embed * double(s.embed) * sizeof(Storage);
  const double bytes =
      with_backward ? 4 * activation_bytes + 2 * weight_bytes : 2 * activation_bytes + weight_bytes;
  state.counters["GB_per_s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["extra_MiB"] = dilated::tools::MemoryTracker::peak_extra() / MiB;
  state.counters["input_MiB"] = double(x.size()) * sizeof(Storage) / MiB;
  state.counters["n"] = n;
}

template <class Space, class Policy, class Storage>
void register_policy(const Settings& s, const std::string& prefix, const char* storage) {
  dilated::bench::register_runs(
      s.passes, s.causal, s.lengths,
      [&](bool with_backward, bool causal, int n) {
        return prefix + "/" + s.semantics + "/" + storage + "/E:" + std::to_string(s.embed) +
               "/h:" + std::to_string(s.heads) + (with_backward ? "/fwd_bwd" : "/fwd") +
               (causal ? "/causal" : "") + "/n:" + std::to_string(n);
      },
      [s](benchmark::State& state, int n, bool causal, bool with_backward) {
        run<Space, Policy, Storage>(state, s, n, causal, with_backward);
      });
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  const Settings s = parse(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const bool known = dilated::bench::register_variants(
      s.backend, s.policies, s.dtypes, [&](auto space, auto policy, auto tag, const char* storage) {
        using Policy = decltype(policy);
        constexpr bool original = std::is_same_v<Policy, dilated::Original>;
        register_policy<decltype(space), Policy, typename decltype(tag)::type>(
            s, original ? "MultiheadDilatedAttention" : "ImprovedMultiheadDilatedAttention",
            storage);
      });
  if (!known) return 1;
  dilated::bench::add_shape_context(s.dtypes, s.semantics, s.segments, s.dilations, s.batch,
                                    s.heads);
  benchmark::AddCustomContext("embed_dim", std::to_string(s.embed));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
