// Google Benchmark of DilatedAttention on the default Kokkos device (--backend=host or serial for
// the host backends of the same build): both algorithms
// (Original, Improved), forward and forward+backward, causal and not, over sequence lengths.
// Manual time between fences; counters: tokens/s, TFLOP/s and GFLOP/s (useful attention
// FLOPs), GB/s of the q/k/v/out traffic. Built with OpenBLAS, the same binary times the host's
// cblas_sgemm (float, M = N = K) with the same FLOP counters, as a baseline on the same cores.
//
//   dilated_bench_attention --lengths=16384,65536 --semantics=grouped [--vendor_gemm=0]
//       [--algorithms=original,improved] [--backend=default|host|serial]
//       [--dtypes=fp16,bf16,fp32] [--causal=full,causal]
//       [--passes=fwd,fwd_bwd] [--sgemm_sizes=1024,2048]
//       --benchmark_out=attention.json --benchmark_out_format=json
// Storage is half on CUDA (fp16, as the PyTorch peers are measured) and float on the host unless
// --dtypes says otherwise. A size that does not fit in memory is reported as a skipped benchmark
// with the allocation error ("error_occurred" in the JSON), and the other sizes still run.
// sgemm runs by default only when the default device is a host space (--sgemm_sizes= to skip).
#include <DilatedAttention.hpp>
#include <Dilated_BenchmarkContext.hpp>
#include <Dilated_BenchmarkInputs.hpp>
#include <Dilated_MemoryTracker.hpp>
#include <impl/Dilated_Dropout.hpp>

#include <benchmark/benchmark.h>

#if defined(DILATED_BENCH_OPENBLAS)
#include <cblas.h>
#if defined(__linux__)
#include <sched.h>
#endif
#endif

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using Device = Kokkos::DefaultExecutionSpace;
template <class Storage, class Space>
using View4 = Kokkos::View<Storage****, Kokkos::LayoutRight, typename Space::memory_space>;

struct Settings {
  std::vector<int> lengths = {16384, 65536};
  std::vector<int> segments = {2048, 4096, 8192}, dilations = {1, 2, 4};
  int batch = 1, heads = 12, dim = 64;
  std::string semantics = "grouped";
  std::string backend = "default";  // default (device), host or serial
  bool vendor_gemm = true;          // Original on CUDA: cuBLAS products (1) or the team kernel (0)
  std::vector<std::string> algorithms = {"original", "improved"};
  std::vector<std::string> dtypes = {dilated::bench::default_storage()};
  std::vector<std::string> causal = {"full", "causal"};
  std::vector<std::string> passes = {"fwd", "fwd_bwd"};
  // Host sgemm baseline (M = N = K): by default on host devices only.
  std::vector<int> sgemm_sizes = Kokkos::SpaceAccessibility<Device, Kokkos::HostSpace>::accessible
                                     ? std::vector<int>{1024, 2048}
                                     : std::vector<int>{};
};

using dilated::bench::parse_list;
using dilated::bench::split;

// Takes our --name=value flags out of argv before Google Benchmark sees it.
Settings parse(int& argc, char* argv[]) {
  Settings s;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const auto value = [&](const char* flag) { return dilated::bench::flag_value(argv[i], flag); };
    if (const char* v = value("--lengths="))
      s.lengths = parse_list(v);
    else if (const char* v = value("--segments="))
      s.segments = parse_list(v);
    else if (const char* v = value("--dilations="))
      s.dilations = parse_list(v);
    else if (const char* v = value("--heads="))
      s.heads = std::atoi(v);
    else if (const char* v = value("--dim="))
      s.dim = std::atoi(v);
    else if (const char* v = value("--batch="))
      s.batch = std::atoi(v);
    else if (const char* v = value("--semantics="))
      s.semantics = v;
    else if (const char* v = value("--vendor_gemm="))
      s.vendor_gemm = std::atoi(v) != 0;
    else if (const char* v = value("--algorithms="))
      s.algorithms = split(v);
    else if (const char* v = value("--dtypes="))
      s.dtypes = split(v);
    else if (const char* v = value("--causal="))
      s.causal = split(v);
    else if (const char* v = value("--passes="))
      s.passes = split(v);
    else if (const char* v = value("--backend="))
      s.backend = v;
    else if (const char* v = value("--sgemm_sizes="))
      s.sgemm_sizes = parse_list(v);
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  return s;
}

template <class Storage, class Space>
View4<Storage, Space> random_input(const char* label, const Settings& s, int n,
                                   std::uint64_t seed) {
  View4<Storage, Space> x(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)),
                          s.batch, n, s.heads, s.dim);
  dilated::bench::fill_uniform(x, seed);
  return x;
}

// Useful attention FLOPs of one forward: 4 m^2 d per (batch, segment, head) of every branch
// (q k^T and P v), halved (m(m+1)/2 pairs) when causal.
double forward_flops(const dilated::Geometry& g, int batch, int n, int d, bool causal) {
  double flops = 0;
  for (const auto& block : g.head_blocks()) {
    for (int j = 0; j < g.num_segments(block.branch, n); ++j) {
      const double m = g.kept(block.branch, j, block.offset, n).count;
      const double pairs = causal ? m * (m + 1) / 2 : m * m;
      flops += 4.0 * pairs * d * block.num_heads() * batch;
    }
  }
  return flops;
}

template <class Space, class Algorithm, class Storage>
void run(benchmark::State& state, const Settings& s, int n, bool causal, bool with_backward) {
  using View4 = ::View4<Storage, Space>;
  const dilated::DilatedAttention<Algorithm> attention(
      s.segments, s.dilations,
      dilated::AttentionOptions()
          .set_semantics(dilated::semantics_from_string(s.semantics))
          .set_vendor_gemm(s.vendor_gemm));
  const auto q = random_input<Storage, Space>("dilated::bench::q", s, n, 1);
  const auto k = random_input<Storage, Space>("dilated::bench::k", s, n, 2);
  const auto v = random_input<Storage, Space>("dilated::bench::v", s, n, 3);
  const auto dout = random_input<Storage, Space>("dilated::bench::dout", s, n, 4);
  View4 out("dilated::bench::out", s.batch, n, s.heads, s.dim);
  View4 dq, dk, dv;
  if (with_backward) {
    dq = View4("dilated::bench::dq", s.batch, n, s.heads, s.dim);
    dk = View4("dilated::bench::dk", s.batch, n, s.heads, s.dim);
    dv = View4("dilated::bench::dv", s.batch, n, s.heads, s.dim);
  }
  Kokkos::View<dilated::Impl::accumulation_t<Storage>***, typename Space::memory_space> lse(
      "dilated::bench::lse", s.batch, n, s.heads);
  const dilated::ForwardOptions call{causal, false, 0};
  const Space space;
  const auto step = [&] {
    attention.forward(space, q, k, v, out, lse, call);
    if (with_backward) attention.backward(space, q, k, v, out, lse, dout, dq, dk, dv, call);
    space.fence();
  };
  // From here on: inputs, outputs and lse are the caller's. Reset before the untimed call, not
  // after: the attention keeps its temporaries across calls (its scratch pool), so they are
  // allocated by the first call and would otherwise sit in the baseline (extra_MiB read 0).
  dilated::tools::MemoryTracker::reset();
  step();  // untimed: the first cuBLAS call of a process creates its handle
  for (auto _ : state) {
    space.fence();
    Kokkos::Timer timer;
    step();
    state.SetIterationTime(timer.seconds());
  }
  const double fwd = forward_flops(attention.geometry(s.heads), s.batch, n, s.dim, causal);
  // Backward: recompute S, then dP, dS->dq, dk, dv: the usual 2.5x the forward.
  const double flops = with_backward ? 3.5 * fwd : fwd;
  const double tensor_bytes = double(s.batch) * n * s.heads * s.dim * sizeof(Storage);
  const double bytes = (with_backward ? 9 : 4) * tensor_bytes;  // q,k,v,out (+dout,dq,dk,dv,out)
  using benchmark::Counter;
  state.counters["tokens_per_s"] = Counter(double(s.batch) * n, Counter::kIsIterationInvariantRate);
  state.counters["TFLOP_per_s"] = Counter(flops * 1e-12, Counter::kIsIterationInvariantRate);
  state.counters["GFLOP_per_s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["GB_per_s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["useful_GFLOP"] = flops * 1e-9;
  state.counters["n"] = n;
  // Device memory the calls allocated beyond the caller's views (peak, Kokkos allocations),
  // beside what the forward's own outputs take (out + lse) for comparison.
  constexpr double MiB = 1024.0 * 1024.0;
  state.counters["extra_MiB"] = dilated::tools::MemoryTracker::peak_extra() / MiB;
  state.counters["out_lse_MiB"] =
      (tensor_bytes + double(lse.size()) * sizeof(typename decltype(lse)::value_type)) / MiB;
}

#if defined(DILATED_BENCH_OPENBLAS)
// Gives OpenBLAS as many threads as the Kokkos host space, on the same cores. With
// OMP_PROC_BIND set, the OpenMP runtime binds this thread to one core when it loads, before
// OpenBLAS counts the cores it may use (it then counts one) and before any thread OpenBLAS
// starts inherits that binding. So on Linux this thread is widened to the union of the host
// space's threads' cores while OpenBLAS starts its threads, then bound back.
// OPENBLAS_NUM_THREADS, when set, is left to OpenBLAS.
void openblas_use_host_space_cores() {
  if (std::getenv("OPENBLAS_NUM_THREADS")) return;
  using Host = Kokkos::DefaultHostExecutionSpace;
  const int threads = Host().concurrency();
#if defined(__linux__)
  std::vector<cpu_set_t> masks(threads);
  Kokkos::parallel_for("dilated::bench::host_cores",
                       Kokkos::RangePolicy<Host, Kokkos::Schedule<Kokkos::Static>>(0, threads),
                       [&](int i) {
                         CPU_ZERO(&masks[i]);
                         sched_getaffinity(0, sizeof(cpu_set_t), &masks[i]);
                       });
  Host().fence();
  cpu_set_t all, mine;
  CPU_ZERO(&all);
  for (const auto& m : masks)
    CPU_OR(&all, &all, &m);
  const bool widened = sched_getaffinity(0, sizeof(cpu_set_t), &mine) == 0 &&
                       sched_setaffinity(0, sizeof(cpu_set_t), &all) == 0;
  openblas_set_num_threads(threads);
  if (widened) sched_setaffinity(0, sizeof(cpu_set_t), &mine);
#else
  openblas_set_num_threads(threads);
#endif
}

// C = A B, row-major float M = N = K = size through OpenBLAS on the host, with its own threads
// (OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS). One warm-up call outside the timing.
void run_sgemm(benchmark::State& state, int size) {
  const std::size_t count = std::size_t(size) * size;
  std::vector<float> a(count), b(count), c(count, 0.0f);
  for (std::size_t i = 0; i < count; ++i) {
    a[i] = static_cast<float>(dilated::Impl::mix64(i) >> 40) / 16777216.0f - 0.5f;
    b[i] = static_cast<float>(dilated::Impl::mix64(i + count) >> 40) / 16777216.0f - 0.5f;
  }
  const auto gemm = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, size, size, size, 1.0f, a.data(), size,
                b.data(), size, 0.0f, c.data(), size);
  };
  gemm();
  for (auto _ : state) {
    Kokkos::Timer timer;
    gemm();
    benchmark::ClobberMemory();
    state.SetIterationTime(timer.seconds());
  }
  const double flops = 2.0 * size * double(size) * size;
  using benchmark::Counter;
  state.counters["TFLOP_per_s"] = Counter(flops * 1e-12, Counter::kIsIterationInvariantRate);
  state.counters["GFLOP_per_s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["GB_per_s"] =
      Counter(3.0 * count * sizeof(float) * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["n"] = size;
  state.counters["threads"] = openblas_get_num_threads();
}
#endif

template <class Space, class Algorithm, class Storage>
void register_algorithm(const Settings& s, const std::string& prefix, const char* storage) {
  dilated::bench::register_runs(
      s.passes, s.causal, s.lengths,
      [&](bool with_backward, bool causal, int n) {
        return prefix + "/" + s.semantics + "/" + storage + (with_backward ? "/fwd_bwd" : "/fwd") +
               (causal ? "/causal" : "/full") + "/n:" + std::to_string(n);
      },
      [s](benchmark::State& state, int n, bool causal, bool with_backward) {
        run<Space, Algorithm, Storage>(state, s, n, causal, with_backward);
      });
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  const Settings s = parse(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const bool known = dilated::bench::register_variants(
      s.backend, s.algorithms, s.dtypes,
      [&](auto space, auto algorithm, auto tag, const char* storage) {
        using Algorithm = decltype(algorithm);
        const char* name = !std::is_same_v<Algorithm, dilated::Original> ? "Improved"
                           : s.vendor_gemm                               ? "Original"
                                                                         : "Original-team";
        register_algorithm<decltype(space), Algorithm, typename decltype(tag)::type>(s, name,
                                                                                     storage);
      });
  if (!known) return 1;
  dilated::bench::add_shape_context(s.dtypes, s.semantics, s.segments, s.dilations, s.batch,
                                    s.heads);
  benchmark::AddCustomContext("head_dim", std::to_string(s.dim));
  // The sgemm baseline last: OpenBLAS' threads spin a while after each call.
#if defined(DILATED_BENCH_OPENBLAS)
  if (!s.sgemm_sizes.empty()) openblas_use_host_space_cores();
  benchmark::AddCustomContext("openblas_config", openblas_get_config());
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
  benchmark::AddCustomContext("openblas_threads", std::to_string(openblas_get_num_threads()));
  for (int size : s.sgemm_sizes) {
    const std::string name = "OpenBLAS_sgemm/fp32/M=N=K:" + std::to_string(size);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { run_sgemm(st, size); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
#else
  if (!s.sgemm_sizes.empty()) benchmark::AddCustomContext("openblas", "not built in");
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
