// Google Benchmark of the layers' memory-bound kernels beside a plain copy of the same bytes on
// the same backend: LayerNorm forward and backward (Impl::layer_norm_forward / _backward, the
// multihead layer's sub-LayerNorm and the blocks' pre-LNs), the bias broadcast
// (Impl::broadcast_rows: the host layer's bias before its product) and a bias gradient's column
// sums (Impl::column_sums), the exact GELU forward and backward (Impl::gelu_forward /
// _backward: the feed-forward's activation), and a copy through a Kokkos kernel (kernel_copy). Each
// runs over a (rows, cols) matrix, as the layer does at rows = batch x sequence length and cols =
// the embedding width.
//
// Counters: GB_per_s of the kernel's least traffic (what it must read and write once: LayerNorm
// forward x and y; backward x, dy and dx; broadcast y; column sums dy; GELU forward h and g,
// backward h, dg and dh), copy_GB_per_s of a copy
// of one such matrix (Kokkos::deep_copy: memcpy on the host, the copy engine's path on CUDA)
// timed in the same iterations, and of_copy, their ratio: how close to the memory bound of this
// machine the kernel runs (issue 21: "the OpenMP layer at the CPU's memory bandwidth for its
// elementwise work").
//
//   dilated_bench_elementwise --rows=16384,65536 --cols=768 [--backend=default|host|serial]
//       [--dtypes=fp32]
//       [--kernels=layer_norm_forward,layer_norm_backward,broadcast,column_sums,gelu_forward,
//                  gelu_backward,kernel_copy]
//       --benchmark_out=elementwise.json --benchmark_out_format=json
#include <Dilated_BenchmarkContext.hpp>
#include <Dilated_BenchmarkInputs.hpp>
#include <Dilated_Gelu.hpp>
#include <Dilated_LayerNorm.hpp>
#include <Dilated_Linear.hpp>
#include <impl/Dilated_OriginalKernels.hpp>  // accumulation_t

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

const std::vector<std::string> all_kernels = {
    "layer_norm_forward", "layer_norm_backward", "broadcast",  "column_sums",
    "gelu_forward",       "gelu_backward",       "kernel_copy"};

struct Settings {
  std::vector<int> rows = {16384, 65536};
  int cols = 768;
  std::string backend = "default";
  std::vector<std::string> dtypes = {dilated::bench::default_storage()};
  std::vector<std::string> kernels = all_kernels;
};

Settings parse(int& argc, char* argv[]) {
  Settings s;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const auto value = [&](const char* flag) { return dilated::bench::flag_value(argv[i], flag); };
    if (const char* v = value("--rows="))
      s.rows = dilated::bench::parse_list(v);
    else if (const char* v = value("--cols="))
      s.cols = std::atoi(v);
    else if (const char* v = value("--backend="))
      s.backend = v;
    else if (const char* v = value("--dtypes="))
      s.dtypes = dilated::bench::split(v);
    else if (const char* v = value("--kernels="))
      s.kernels = dilated::bench::split(v);
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  return s;
}

// A bias gradient's term: the column sums of dy (a functor, not a lambda: CUDA's extended
// lambdas may not be defined inside the lambdas below).
template <class Acc, class Matrix>
struct ColumnTerm {
  Matrix dy;
  KOKKOS_INLINE_FUNCTION void operator()(long i, long j, Acc (&sums)[1]) const {
    sums[0] += static_cast<Acc>(dy(i, j));
  }
};

// y[e] = x[e] (a functor for the same reason as ColumnTerm).
template <class T, class MemorySpace>
struct CopyTerm {
  const T* x;
  T* y;
  KOKKOS_INLINE_FUNCTION void operator()(long e) const { y[e] = x[e]; }
};

template <class Space, class Storage>
void run(benchmark::State& state, const std::string& kernel, int rows, int cols) {
  using MemorySpace = typename Space::memory_space;
  using Acc = dilated::Impl::accumulation_t<Storage>;
  using Matrix = Kokkos::View<Storage**, Kokkos::LayoutRight, MemorySpace>;
  using Vector = Kokkos::View<Storage*, Kokkos::LayoutRight, MemorySpace>;
  using Stat = Kokkos::View<Acc*, Kokkos::LayoutRight, MemorySpace>;
  const auto uninit = [](const std::string& label) {
    return Kokkos::view_alloc(Kokkos::WithoutInitializing, label);
  };
  Matrix x(uninit("dilated::bench::x"), rows, cols), dy(uninit("dilated::bench::dy"), rows, cols),
      y(uninit("dilated::bench::y"), rows, cols);
  Vector gamma(uninit("dilated::bench::gamma"), cols), beta(uninit("dilated::bench::beta"), cols),
      dgamma(uninit("dilated::bench::dgamma"), cols), dbeta(uninit("dilated::bench::dbeta"), cols);
  Stat mean(uninit("dilated::bench::mean"), rows), rstd(uninit("dilated::bench::rstd"), rows);
  const auto partials = dilated::Impl::column_sum_partials(2, rows, cols);
  dilated::Impl::ColumnPartials<Acc, MemorySpace> partial(uninit("dilated::bench::partial"),
                                                          partials.first, partials.second);
  dilated::bench::fill_uniform(x, 1);
  dilated::bench::fill_uniform(dy, 2);
  dilated::bench::fill_uniform(gamma, 3);
  dilated::bench::fill_uniform(beta, 4);
  const Space space;
  const double matrix_bytes = double(rows) * cols * sizeof(Storage);
  double least_bytes = 0;
  std::function<void()> call;
  if (kernel == "layer_norm_forward") {
    least_bytes = 2 * matrix_bytes;  // x read, y written
    call = [&] { dilated::Impl::layer_norm_forward(space, x, gamma, beta, 1e-5, y, mean, rstd); };
  } else if (kernel == "layer_norm_backward") {
    dilated::Impl::layer_norm_forward(space, x, gamma, beta, 1e-5, y, mean, rstd);
    least_bytes = 3 * matrix_bytes;  // x and dy read, dx written
    call = [&] {
      dilated::Impl::layer_norm_backward(space, x, gamma, mean, rstd, dy, y, dgamma, dbeta,
                                         partial);
    };
  } else if (kernel == "broadcast") {
    least_bytes = matrix_bytes;  // y written
    call = [&] { dilated::Impl::broadcast_rows(space, "dilated::bench::broadcast", beta, y); };
  } else if (kernel == "gelu_forward") {
    least_bytes = 2 * matrix_bytes;  // h read, g written
    call = [&] { dilated::Impl::gelu_forward(space, x, y); };
  } else if (kernel == "gelu_backward") {
    least_bytes = 3 * matrix_bytes;  // h and dg read, dh written
    call = [&] { dilated::Impl::gelu_backward(space, x, dy, y); };
  } else if (kernel == "kernel_copy") {
    // y = dy through a Kokkos kernel: ordinary (cacheable) stores, which read each line of y
    // before writing it, where deep_copy's memcpy may stream past the cache. The bound of a
    // kernel that writes what it reads.
    least_bytes = 2 * matrix_bytes;
    call = [&] {
      Kokkos::parallel_for("dilated::bench::kernel_copy",
                           Kokkos::RangePolicy<Space>(space, 0, long(rows) * cols),
                           CopyTerm<Storage, MemorySpace>{dy.data(), y.data()});
    };
  } else {
    least_bytes = matrix_bytes;  // dy read
    call = [&] {
      dilated::Impl::column_sums<Acc, 1>(space, "dilated::bench::column_sums", rows, cols,
                                         ColumnTerm<Acc, Matrix>{dy}, partial, dbeta);
    };
  }
  const auto timed = [&](const auto& f) {
    space.fence();
    Kokkos::Timer timer;
    f();
    space.fence();
    return timer.seconds();
  };
  const auto copy = [&] { Kokkos::deep_copy(space, y, dy); };
  timed(call);  // untimed: first-touch of the pages, kernel loading
  timed(copy);
  double copy_s = 0;
  for (auto _ : state) {
    state.SetIterationTime(timed(call));
    copy_s += timed(copy);
  }
  using benchmark::Counter;
  const double copy_rate = 2 * matrix_bytes * state.iterations() / copy_s * 1e-9;
  state.counters["GB_per_s"] = Counter(least_bytes * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["copy_GB_per_s"] = copy_rate;
  state.counters["rows"] = rows;
  state.counters["cols"] = cols;
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  const Settings s = parse(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  for (const auto& k : s.kernels) {
    if (!dilated::bench::listed(all_kernels, k.c_str())) {
      std::fprintf(stderr, "unknown kernel '%s' in --kernels\n", k.c_str());
      return 1;
    }
  }
  const bool known = dilated::bench::register_variants(
      s.backend, {"improved"}, s.dtypes, [&](auto space, auto, auto tag, const char* storage) {
        using Space = decltype(space);
        using Storage = typename decltype(tag)::type;
        for (const auto& kernel : s.kernels) {
          for (int rows : s.rows) {
            const std::string name = kernel + "/" + storage + "/rows:" + std::to_string(rows) +
                                     "/cols:" + std::to_string(s.cols);
            benchmark::RegisterBenchmark(name.c_str(),
                                         [kernel, rows, cols = s.cols](benchmark::State& state) {
                                           run<Space, Storage>(state, kernel, rows, cols);
                                         })
                ->UseManualTime()
                ->Unit(benchmark::kMillisecond);
          }
        }
      });
  if (!known) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
