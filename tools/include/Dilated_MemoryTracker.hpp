// Peak device memory of Kokkos allocations, measured (not estimated) through the Kokkos Tools
// allocate/deallocate callbacks: the benchmarks (perf_tests/), the demo (examples/dilated_demo)
// and the command-line tool (tools/dilated-attention) call reset() with their inputs and outputs
// allocated, run the library call, and report peak_extra() as the call's extra memory.
// Internal to this repository's programs (tools/include), not installed.
// Counts every View allocation in one memory space (by its Kokkos name, e.g. "Cuda", "Host");
// allocations the library makes outside Kokkos (cuBLAS's own workspace) are not seen.
#ifndef DILATED_MEMORY_TRACKER_HPP
#define DILATED_MEMORY_TRACKER_HPP

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>

namespace dilated::tools {

class MemoryTracker {
 public:
  // Installs the callbacks (once; before any allocation to be counted) for `space_name`.
  static void install(const std::string& space_name) {
    auto& s = state();
    s.space = space_name;
    Kokkos::Tools::Experimental::set_allocate_data_callback(&on_allocate);
    Kokkos::Tools::Experimental::set_deallocate_data_callback(&on_deallocate);
  }
  // Current bytes become the baseline and the peak.
  static void reset() {
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.baseline = s.peak = s.current;
  }
  // Largest bytes held above the baseline since reset().
  static std::int64_t peak_extra() {
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return s.peak - s.baseline;
  }

 private:
  struct State {
    std::mutex mutex;
    std::string space;
    std::int64_t current = 0, peak = 0, baseline = 0;
  };
  static State& state() {
    static State s;
    return s;
  }
  static bool counted(const Kokkos::Tools::SpaceHandle& handle) {
    return state().space == handle.name;
  }
  static void on_allocate(Kokkos::Tools::SpaceHandle handle, const char*, const void*,
                          std::uint64_t size) {
    if (!counted(handle)) return;
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.current += static_cast<std::int64_t>(size);
    if (s.current > s.peak) s.peak = s.current;
  }
  static void on_deallocate(Kokkos::Tools::SpaceHandle handle, const char*, const void*,
                            std::uint64_t size) {
    if (!counted(handle)) return;
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.current -= static_cast<std::int64_t>(size);
  }
};

}  // namespace dilated::tools

#endif  // DILATED_MEMORY_TRACKER_HPP
