// Google Benchmark of DilatedAttention on the default Kokkos device: forward and
// forward+backward, causal and not, over sequence lengths. Manual time between fences;
// counters: tokens/s, TFLOP/s (useful attention FLOPs), GB/s of the q/k/v/out traffic.
//
//   dilated_bench_attention --lengths=16384,65536 --semantics=grouped [--vendor_gemm=0]
//       --benchmark_out=original.json --benchmark_out_format=json
// Storage is half on CUDA (fp16, as the PyTorch peers are measured) and float on the host.
#include <DilatedAttention.hpp>
#include <Dilated_BenchmarkContext.hpp>
#include <impl/Dilated_Dropout.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Device = Kokkos::DefaultExecutionSpace;
#if defined(KOKKOS_ENABLE_CUDA) && !DILATED_HALF_IS_FLOAT
using Storage = Kokkos::Experimental::half_t;
const char* storage_name = "fp16";
#else
using Storage = float;
const char* storage_name = "fp32";
#endif
using View4 = Kokkos::View<Storage****, Kokkos::LayoutRight, Device::memory_space>;

struct Settings {
  std::vector<int> lengths = {16384, 65536};
  std::vector<int> segments = {2048, 4096, 8192}, dilations = {1, 2, 4};
  int batch = 1, heads = 12, dim = 64;
  std::string semantics = "grouped";
  bool vendor_gemm = true;  // Original on CUDA: cuBLAS products (1) or the team kernel (0)
};

std::vector<int> parse_list(const char* text) {
  std::vector<int> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    out.push_back(std::stoi(item));
  return out;
}

// Takes our --name=value flags out of argv before Google Benchmark sees it.
Settings parse(int& argc, char* argv[]) {
  Settings s;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const auto value = [&](const char* flag) -> const char* {
      const std::size_t len = std::strlen(flag);
      return std::strncmp(argv[i], flag, len) == 0 ? argv[i] + len : nullptr;
    };
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
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  return s;
}

// Deterministic inputs in [-1, 1), generated on the device.
View4 random_input(const char* label, const Settings& s, int n, std::uint64_t seed) {
  View4 x(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), s.batch, n, s.heads,
          s.dim);
  Storage* data = x.data();
  Kokkos::parallel_for(
      "dilated::bench::fill", Kokkos::RangePolicy<Device>(0, x.size()), KOKKOS_LAMBDA(long i) {
        const auto bits = dilated::Impl::mix64(seed * 0x9e3779b97f4a7c15ULL + i);
        data[i] = static_cast<Storage>(static_cast<float>(bits >> 40) / 8388608.0f - 1.0f);
      });
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

void run(benchmark::State& state, const Settings& s, int n, bool causal, bool with_backward) {
  const dilated::DilatedAttention<dilated::Original> attention(
      s.segments, s.dilations,
      dilated::AttentionOptions()
          .set_semantics(dilated::semantics_from_string(s.semantics))
          .set_vendor_gemm(s.vendor_gemm));
  const auto q = random_input("dilated::bench::q", s, n, 1);
  const auto k = random_input("dilated::bench::k", s, n, 2);
  const auto v = random_input("dilated::bench::v", s, n, 3);
  const auto dout = random_input("dilated::bench::dout", s, n, 4);
  View4 out("dilated::bench::out", s.batch, n, s.heads, s.dim);
  View4 dq, dk, dv;
  if (with_backward) {
    dq = View4("dilated::bench::dq", s.batch, n, s.heads, s.dim);
    dk = View4("dilated::bench::dk", s.batch, n, s.heads, s.dim);
    dv = View4("dilated::bench::dv", s.batch, n, s.heads, s.dim);
  }
  Kokkos::View<float***, Device::memory_space> lse("dilated::bench::lse", s.batch, n, s.heads);
  const dilated::ForwardOptions call{causal, false, 0};
  const Device space;
  for (auto _ : state) {
    space.fence();
    Kokkos::Timer timer;
    attention.forward(space, q, k, v, out, lse, call);
    if (with_backward) attention.backward(space, q, k, v, out, lse, dout, dq, dk, dv, call);
    space.fence();
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
  state.counters["GB_per_s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["useful_GFLOP"] = flops * 1e-9;
  state.counters["n"] = n;
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  const Settings s = parse(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  dilated::bench::add_context();
  benchmark::AddCustomContext("storage", storage_name);
  benchmark::AddCustomContext("semantics", s.semantics);
  for (bool with_backward : {false, true})
    for (bool causal : {false, true})
      for (int n : s.lengths) {
        const std::string name = std::string(s.vendor_gemm ? "Original/" : "Original-team/") +
                                 s.semantics + "/" + storage_name +
                                 (with_backward ? "/fwd_bwd" : "/fwd") +
                                 (causal ? "/causal" : "/full") + "/n:" + std::to_string(n);
        benchmark::RegisterBenchmark(
            name.c_str(), [=](benchmark::State& st) { run(st, s, n, causal, with_backward); })
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
      }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
