// Peak device memory of Kokkos allocations, measured (not estimated) through the Kokkos Tools
// allocate/deallocate callbacks: the benchmarks (perf_tests/), the demo (examples/dilated_demo)
// and the command-line tool (tools/dilated-attention) call reset() with their inputs and outputs
// allocated, run the library call, and report peak_extra() as the call's extra memory.
// Internal to this repository's programs (tools/include), not installed.
// Counts every View allocation in one memory space (by its Kokkos name, e.g. "Cuda", "Host");
// allocations the library makes outside Kokkos (cuBLAS's own workspace) are not seen.
// peak_labels() says what made the peak: the allocations since reset() live at that moment,
// summed by label (how a few MiB above a baseline were attributed to one buffer).
#ifndef DILATED_MEMORY_TRACKER_HPP
#define DILATED_MEMORY_TRACKER_HPP

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

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
    ++s.epoch;
    s.peak_live.clear();
  }
  // Largest bytes held above the baseline since reset().
  static std::int64_t peak_extra() {
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return s.peak - s.baseline;
  }
  // The allocations made since reset() and live at the peak, by label, largest first:
  // "label MiB; label MiB; ..." (MiB with three decimals).
  static std::string peak_labels() {
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    std::vector<std::pair<std::string, std::int64_t>> sorted(s.peak_live.begin(),
                                                             s.peak_live.end());
    std::sort(sorted.begin(), sorted.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string text;
    char mib[32];
    for (const auto& [label, bytes] : sorted) {
      std::snprintf(mib, sizeof(mib), " %.3f", bytes / (1024.0 * 1024.0));
      text += (text.empty() ? "" : "; ") + label + mib;
    }
    return text;
  }

 private:
  struct State {
    std::mutex mutex;
    std::string space;
    std::int64_t current = 0, peak = 0, baseline = 0;
    struct Live {
      std::string label;
      std::int64_t bytes;
      std::uint64_t epoch;
    };
    std::map<const void*, Live> live;
    std::uint64_t epoch = 0;
    std::map<std::string, std::int64_t> peak_live;  // by label, at the last peak
  };
  static State& state() {
    static State s;
    return s;
  }
  static bool counted(const Kokkos::Tools::SpaceHandle& handle) {
    return state().space == handle.name;
  }
  static void on_allocate(Kokkos::Tools::SpaceHandle handle, const char* label, const void* ptr,
                          std::uint64_t size) {
    if (!counted(handle)) return;
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.current += static_cast<std::int64_t>(size);
    s.live[ptr] = {label ? label : "", static_cast<std::int64_t>(size), s.epoch};
    if (s.current > s.peak) {
      s.peak = s.current;
      s.peak_live.clear();
      for (const auto& [p, a] : s.live)
        if (a.epoch == s.epoch) s.peak_live[a.label] += a.bytes;
    }
  }
  static void on_deallocate(Kokkos::Tools::SpaceHandle handle, const char*, const void* ptr,
                            std::uint64_t size) {
    if (!counted(handle)) return;
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.current -= static_cast<std::int64_t>(size);
    s.live.erase(ptr);
  }
};

}  // namespace dilated::tools

#endif  // DILATED_MEMORY_TRACKER_HPP
