// Shared by the benchmark drivers: comma-separated flag values, storage types by name, and
// deterministic inputs.
#ifndef DILATED_BENCHMARK_INPUTS_HPP
#define DILATED_BENCHMARK_INPUTS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_AlgorithmPolicies.hpp>
#include <Dilated_BenchmarkContext.hpp>
#include <Dilated_MemoryTracker.hpp>
#include <impl/Dilated_Dropout.hpp>

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <exception>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::bench {

// The value in `arg` when it starts with `flag` ("1,2" for "--lengths=" in "--lengths=1,2"),
// else null: the drivers' own --name=value flags, taken out of argv before Google Benchmark's.
inline const char* flag_value(const char* arg, const char* flag) {
  const std::size_t len = std::strlen(flag);
  return std::strncmp(arg, flag, len) == 0 ? arg + len : nullptr;
}

inline std::vector<std::string> split(const char* text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

inline std::vector<int> parse_list(const char* text) {
  std::vector<int> out;
  for (const auto& item : split(text))
    out.push_back(std::stoi(item));
  return out;
}

template <class T>
struct StorageTag {
  using type = T;
};

// The storage the benchmarks use unless --dtypes says otherwise: fp16 on CUDA (as the PyTorch
// peers are measured), fp32 on the host.
inline std::string default_storage() {
#if defined(KOKKOS_ENABLE_CUDA) && !DILATED_HALF_IS_FLOAT
  if (!Kokkos::SpaceAccessibility<Kokkos::DefaultExecutionSpace, Kokkos::HostSpace>::accessible) {
    return "fp16";
  }
#endif
  return "fp32";
}

// Calls f(StorageTag<T>{}, canonical name) for a storage name (fp16 or half, bf16, fp32 or float,
// fp64 or double); false when the name is unknown or, for fp16/bf16, when this Kokkos build has
// no 16-bit type (a host-only Kokkos aliases them to float).
template <class F>
bool with_storage(const std::string& name, F&& f) {
  if (name == "fp32" || name == "float") {
    f(StorageTag<float>{}, "fp32");
    return true;
  }
  if (name == "fp64" || name == "double") {
    f(StorageTag<double>{}, "fp64");
    return true;
  }
#if !DILATED_HALF_IS_FLOAT
  if (name == "fp16" || name == "half") {
    f(StorageTag<Kokkos::Experimental::half_t>{}, "fp16");
    return true;
  }
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
  if (name == "bf16") {
    f(StorageTag<Kokkos::Experimental::bhalf_t>{}, "bf16");
    return true;
  }
#endif
  return false;
}

// Fills a contiguous View with values in [-1, 1) from a hash of (seed, index), on its device:
// never zeros (they would hide unwritten outputs and run faster than real data).
template <class View>
void fill_uniform(const View& x, std::uint64_t seed) {
  using T = typename View::value_type;
  using Space = typename View::execution_space;
  T* data = x.data();
  Kokkos::parallel_for(
      "dilated::bench::fill", Kokkos::RangePolicy<Space>(0, x.size()), KOKKOS_LAMBDA(long i) {
        const auto bits = dilated::Impl::mix64(seed * 0x9e3779b97f4a7c15ULL + i);
        data[i] = static_cast<T>(static_cast<float>(bits >> 40) / 8388608.0f - 1.0f);
      });
  Space().fence();
}

// Calls f(ExecSpace()) for the backend named: "default" (the default device: CUDA in a CUDA
// build), "host" (the default host space: OpenMP when enabled) or "serial". False when the
// name is unknown or the backend is not enabled in this Kokkos.
template <class F>
bool with_backend(const std::string& name, F&& f) {
  if (name == "default") {
    f(Kokkos::DefaultExecutionSpace());
    return true;
  }
  if (name == "host") {
    f(Kokkos::DefaultHostExecutionSpace());
    return true;
  }
#if defined(KOKKOS_ENABLE_SERIAL)
  if (name == "serial") {
    f(Kokkos::Serial());
    return true;
  }
#endif
  return false;
}

// Everything a driver registers for one run: on the backend named (see with_backend), the
// memory tracker and the JSON context are set up, then add(space, algorithm, storage_tag,
// storage_name) is called for every algorithm ("original" -> dilated::Original, "improved" ->
// dilated::Improved) and dtype of the lists. Prints what is unknown and returns false.
template <class Add>
bool register_variants(const std::string& backend, const std::vector<std::string>& algorithms,
                       const std::vector<std::string>& dtypes, Add&& add) {
  bool algorithms_known = true, dtypes_known = true;
  const bool backend_known = with_backend(backend, [&](auto space) {
    using Space = decltype(space);
    dilated::tools::MemoryTracker::install(Space::memory_space::name());
    add_context(Space::name());
    for (const auto& algorithm : algorithms) {
      if (algorithm != "original" && algorithm != "improved") {
        std::fprintf(stderr, "unknown algorithm '%s' (original, improved)\n", algorithm.c_str());
        algorithms_known = false;
        continue;
      }
      for (const auto& dtype : dtypes) {
        dtypes_known = with_storage(dtype,
                                    [&](auto tag, const char* storage) {
                                      if (algorithm == "original") {
                                        add(space, dilated::Original(), tag, storage);
                                      } else {
                                        add(space, dilated::Improved(), tag, storage);
                                      }
                                    }) &&
                       dtypes_known;
      }
    }
  });
  if (!backend_known) {
    std::fprintf(stderr, "unknown or disabled backend '%s' (default, host, serial)\n",
                 backend.c_str());
  }
  if (!dtypes_known) {
    std::fprintf(stderr,
                 "unknown or unavailable dtype in --dtypes (fp16, bf16, fp32, fp64; a host-only "
                 "Kokkos has no 16-bit type)\n");
  }
  return backend_known && algorithms_known && dtypes_known;
}

inline bool listed(const std::vector<std::string>& list, const char* item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

// Registers one benchmark per (pass, mask, length) the lists select (`passes`: fwd, fwd_bwd;
// `masks`: full, causal), named name(with_backward, causal, n), running
// run(state, n, causal, with_backward) with manual time in milliseconds. A run that throws (an
// allocation that does not fit) is skipped with its message; the others still run.
template <class Name, class Run>
void register_runs(const std::vector<std::string>& passes, const std::vector<std::string>& masks,
                   const std::vector<int>& lengths, Name&& name, Run run) {
  for (bool with_backward : {false, true}) {
    if (!listed(passes, with_backward ? "fwd_bwd" : "fwd")) continue;
    for (bool causal : {false, true}) {
      if (!listed(masks, causal ? "causal" : "full")) continue;
      for (int n : lengths) {
        benchmark::RegisterBenchmark(name(with_backward, causal, n).c_str(),
                                     [=](benchmark::State& state) {
                                       try {
                                         run(state, n, causal, with_backward);
                                       } catch (const std::exception& e) {
                                         state.SkipWithError(e.what());
                                       }
                                     })
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
}

// The problem shape every benchmark JSON records beside the Kokkos configuration.
inline void add_shape_context(const std::vector<std::string>& dtypes, const std::string& semantics,
                              const std::vector<int>& segments, const std::vector<int>& dilations,
                              int batch, int heads) {
  const auto join = [](const auto& list) {
    std::string text;
    for (const auto& x : list) {
      if (!text.empty()) text += ",";
      if constexpr (std::is_same_v<std::decay_t<decltype(x)>, int>) {
        text += std::to_string(x);
      } else {
        text += x;
      }
    }
    return text;
  };
  benchmark::AddCustomContext("storage", join(dtypes));
  benchmark::AddCustomContext("semantics", semantics);
  benchmark::AddCustomContext("segment_lengths", join(segments));
  benchmark::AddCustomContext("dilation_rates", join(dilations));
  benchmark::AddCustomContext("batch", std::to_string(batch));
  benchmark::AddCustomContext("heads", std::to_string(heads));
}

}  // namespace dilated::bench

#endif  // DILATED_BENCHMARK_INPUTS_HPP
