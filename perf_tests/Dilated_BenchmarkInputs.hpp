// Shared by the benchmark drivers: comma-separated flag values and deterministic inputs.
#ifndef DILATED_BENCHMARK_INPUTS_HPP
#define DILATED_BENCHMARK_INPUTS_HPP

#include <impl/Dilated_Dropout.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace dilated::bench {

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

}  // namespace dilated::bench

#endif  // DILATED_BENCHMARK_INPUTS_HPP
