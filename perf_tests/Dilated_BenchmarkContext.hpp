// What every benchmark JSON records besides the timings: the Kokkos configuration, the
// execution space and the commit.
#ifndef DILATED_BENCHMARK_CONTEXT_HPP
#define DILATED_BENCHMARK_CONTEXT_HPP

#include <Dilated_Config.hpp>
#include <Dilated_GitHash.hpp>

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>

#include <sstream>
#include <string>

namespace dilated::bench {

// `execution_space`: the backend the benchmarks of this run use (the default device unless a
// driver's --backend says otherwise).
inline void add_context(const char* execution_space = Kokkos::DefaultExecutionSpace::name()) {
  std::ostringstream config;
  Kokkos::print_configuration(config, false);
  benchmark::AddCustomContext("kokkos_configuration", config.str());
  benchmark::AddCustomContext("kokkos_version", std::to_string(KOKKOS_VERSION));
  benchmark::AddCustomContext("execution_space", execution_space);
  benchmark::AddCustomContext("dilated_version", DILATED_VERSION_STRING);
  benchmark::AddCustomContext("git_hash", DILATED_GIT_HASH);
}

}  // namespace dilated::bench

#endif  // DILATED_BENCHMARK_CONTEXT_HPP
