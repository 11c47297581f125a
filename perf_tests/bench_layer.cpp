// Google Benchmark of MultiheadDilatedAttention (the whole layer: projections, dilated
// attention, sub-LayerNorm, out projection) on the default Kokkos device, self-attention, both
// policies, forward and forward+backward (gradients of the input and every parameter). Manual
// time between fences; counters: tokens/s, TFLOP/s (attention plus projection FLOPs), GB/s, the
// time of the layer's attention alone and of its matrix products alone in the same iterations
// (attention_ms, gemm_ms), and the peak device memory the layer allocates beyond its input,
// output and dout (measured from Kokkos allocations: its workspace, and for forward+backward the
// saved activations and the gradients, all kept across steps as a training loop keeps them).
//
//   dilated_bench_layer --lengths=16384,65536,131072 --embed=768 --heads=12
//       [--policies=original,improved] [--backend=default|host|serial] [--dtypes=fp16,fp32]
//       [--causal=full,causal]
//       [--passes=fwd,fwd_bwd] [--memory_labels] --benchmark_out=layer.json
//       --benchmark_out_format=json
// --memory_labels: each run's label lists the buffers live at its memory peak (by Kokkos label,
// in MiB), to attribute extra_MiB.
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
  bool memory_labels = false;
};

Settings parse(int& argc, char* argv[]) {
  Settings s;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const auto value = [&](const char* flag) { return dilated::bench::flag_value(argv[i], flag); };
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
    else if (std::strcmp(argv[i], "--memory_labels") == 0)
      s.memory_labels = true;
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

// The layer's parts on their own, timed in the same iterations as the layer (so every run shows
// what the layer adds): the attention call the layer makes, on buffers of the layer's layout,
// and the layer's matrix products (the E -> 3E and E -> E projections and, with the backward,
// their input and weight gradients) through the library's GEMM.
template <class Space, class Policy, class Storage>
struct LayerParts {
  using MemorySpace = typename Space::memory_space;
  using Matrix = Kokkos::View<Storage**, Kokkos::LayoutRight, MemorySpace>;
  using Heads = Kokkos::View<Storage****, Kokkos::LayoutStride, MemorySpace>;
  using Lse =
      Kokkos::View<dilated::Impl::accumulation_t<Storage>***, Kokkos::LayoutRight, MemorySpace>;
  Matrix qkv, dqkv, attn, dattn, x, w_in, w_out, dw_in, dw_out;
  Lse lse;
  int batch, n, heads, d;

  LayerParts(int batch_, int n_, int e, int heads_)
      : batch(batch_), n(n_), heads(heads_), d(e / heads_) {
    const auto alloc = [](const char* label) {
      return Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label));
    };
    const long m = long(batch) * n;
    qkv = Matrix(alloc("dilated::bench::parts::qkv"), m, 3 * e);
    dqkv = Matrix(alloc("dilated::bench::parts::dqkv"), m, 3 * e);
    attn = Matrix(alloc("dilated::bench::parts::attention"), m, e);
    dattn = Matrix(alloc("dilated::bench::parts::d_attention"), m, e);
    x = Matrix(alloc("dilated::bench::parts::x"), m, e);
    w_in = Matrix(alloc("dilated::bench::parts::w_in"), 3 * e, e);
    w_out = Matrix(alloc("dilated::bench::parts::w_out"), e, e);
    dw_in = Matrix(alloc("dilated::bench::parts::dw_in"), 3 * e, e);
    dw_out = Matrix(alloc("dilated::bench::parts::dw_out"), e, e);
    lse = Lse(alloc("dilated::bench::parts::lse"), batch, n, heads);
    const auto fill = [](const Matrix& v) {
      dilated::bench::fill_uniform(Kokkos::View<Storage***, Kokkos::LayoutRight, MemorySpace>(
                                       v.data(), 1, v.extent(0), v.extent(1)),
                                   7);
    };
    fill(qkv);
    fill(dattn);
    fill(x);
    // Small weights keep the products' outputs in range for half.
    Kokkos::deep_copy(w_in, Storage(0.01));
    Kokkos::deep_copy(w_out, Storage(0.01));
  }
  Heads part(const Matrix& buffer, int which) const {
    const long row = buffer.extent(1), e = long(heads) * d;
    return Heads(buffer.data() + which * e,
                 Kokkos::LayoutStride(batch, long(n) * row, n, row, heads, d, d, 1));
  }
  using Merged = Kokkos::View<Storage****, Kokkos::LayoutRight, MemorySpace>;
  Merged merged(const Matrix& m) const { return Merged(m.data(), batch, n, heads, d); }
  void attention(const Space& space, const dilated::DilatedAttention<Policy>& a,
                 const dilated::ForwardOptions& call, bool with_backward) const {
    a.forward(space, part(qkv, 0), part(qkv, 1), part(qkv, 2), merged(attn), lse, call);
    if (with_backward)
      a.backward(space, part(qkv, 0), part(qkv, 1), part(qkv, 2), merged(attn), lse, merged(dattn),
                 part(dqkv, 0), part(dqkv, 1), part(dqkv, 2), call);
  }
  void gemms(const Space& space, bool with_backward) const {
    using dilated::Impl::gemm;
    using dilated::Impl::Op;
    gemm(space, Op::N, Op::T, 1.0, x, w_in, 0.0, qkv);    // q, k, v projections
    gemm(space, Op::N, Op::T, 1.0, attn, w_out, 0.0, x);  // out projection
    if (!with_backward) return;
    gemm(space, Op::N, Op::N, 1.0, x, w_out, 0.0, dattn);  // out projection: input gradient
    gemm(space, Op::T, Op::N, 1.0, x, attn, 0.0, dw_out);  // and weight gradient
    gemm(space, Op::N, Op::N, 1.0, dqkv, w_in, 0.0, x);    // in projections: input gradient
    gemm(space, Op::T, Op::N, 1.0, dqkv, x, 0.0, dw_in);   // and weight gradient
  }
};

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
  // As a training loop: one Activations and one Gradients kept across steps.
  typename Layer::Activations saved;
  typename Layer::Gradients grads;
  const auto step = [&] {
    if (with_backward) {
      layer.forward(space, x, x, x, out, saved, call);
      layer.backward(space, x, x, x, dout, saved, grads, call);
    } else {
      layer.forward(space, x, x, x, out, call);
    }
    space.fence();
  };
  // The layer's memory is counted from here: its workspace, saved activations and gradients
  // persist across steps, so they are allocated by the first (untimed) call and count as extra.
  dilated::tools::MemoryTracker::reset();
  // One untimed call first: the first cuBLAS call of a process creates its handle and loads
  // kernels (seen on the H100: 229 ms for the first layer forward at 16K, 5 ms afterwards).
  step();
  const double extra_bytes = dilated::tools::MemoryTracker::peak_extra();
  if (s.memory_labels) state.SetLabel(dilated::tools::MemoryTracker::peak_labels());
  double attention_s = 0, gemm_s = 0;
  {
    // The parts, on buffers of their own (allocated after the layer's memory was counted).
    const LayerParts<Space, Policy, Storage> parts(s.batch, n, s.embed, s.heads);
    const auto timed = [&](const auto& f) {
      space.fence();
      Kokkos::Timer timer;
      f();
      space.fence();
      return timer.seconds();
    };
    timed([&] { parts.attention(space, layer.attention(), call, with_backward); });
    timed([&] { parts.gemms(space, with_backward); });
    for (auto _ : state) {
      state.SetIterationTime(timed(step));
      attention_s += timed([&] { parts.attention(space, layer.attention(), call, with_backward); });
      gemm_s += timed([&] { parts.gemms(space, with_backward); });
    }
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
  // Per call, in ms: the attention alone, the layer's matrix products alone; the layer's own
  // time is the benchmark's (real_time); what it adds beyond the attention is compared with
  // gemm_ms in docs/performance.md.
  state.counters["attention_ms"] = Counter(attention_s * 1e3, Counter::kAvgIterations);
  state.counters["gemm_ms"] = Counter(gemm_s * 1e3, Counter::kAvgIterations);
  state.counters["extra_MiB"] = extra_bytes / MiB;
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
