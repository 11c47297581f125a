// Seeded test inputs and the golden-file location shared by the unit tests.
#ifndef DILATED_TEST_DATA_HPP
#define DILATED_TEST_DATA_HPP

#include <Dilated_Npy.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace dilated::testing {

// A (b, n, h, d) View in MemorySpace filled with N(0, 1) values from a fixed seed, generated on
// the host so every backend sees the same numbers.
template <class T, class MemorySpace = Kokkos::HostSpace>
Kokkos::View<T****, Kokkos::LayoutRight, MemorySpace> random_bnhd(const std::string& label, int b,
                                                                  int n, int h, int d,
                                                                  std::uint64_t seed) {
  Kokkos::View<T****, Kokkos::LayoutRight, MemorySpace> view(label, b, n, h, d);
  auto host = Kokkos::create_mirror_view(view);
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int i = 0; i < b; ++i)
    for (int j = 0; j < n; ++j)
      for (int k = 0; k < h; ++k)
        for (int l = 0; l < d; ++l)
          host(i, j, k, l) = static_cast<T>(normal(engine));
  Kokkos::deep_copy(view, host);
  return view;
}

// A (b, n, h, d) host View of double holding a float64 .npy file of that rank.
inline Kokkos::View<double****, Kokkos::LayoutRight, Kokkos::HostSpace> load_bnhd(
    const std::string& path) {
  const npy::Array array = npy::read(path);
  if (array.shape.size() != 4) {
    throw npy::FormatError(path + ": expected a rank-4 (b, n, h, d) array");
  }
  Kokkos::View<double****, Kokkos::LayoutRight, Kokkos::HostSpace> view(
      "dilated::test::" + path, array.shape[0], array.shape[1], array.shape[2], array.shape[3]);
  const auto values = array.to_double();
  std::copy(values.begin(), values.end(), view.data());
  return view;
}

// Where ../shared/golden lives: the DILATED_GOLDEN_DIR environment variable (for binaries run
// on another machine), else what CMake was given (DilatedAttention_GOLDEN_DIR).
inline std::string golden_dir() {
  if (const char* env = std::getenv("DILATED_GOLDEN_DIR"); env && *env) return env;
#ifdef DILATED_GOLDEN_DIR
  return DILATED_GOLDEN_DIR;
#else
  return "";
#endif
}

// n values N(0, scale^2) from a fixed seed, generated on the host.
inline std::vector<double> normal_values(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  std::vector<double> values(n);
  for (auto& x : values)
    x = scale * normal(engine);
  return values;
}

}  // namespace dilated::testing

#endif  // DILATED_TEST_DATA_HPP
