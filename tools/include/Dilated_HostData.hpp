// Moving data between host arrays of double and dense Views of any storage type, for the demo and
// the command-line tool: random inputs, uploads that round to the storage type (so a host check
// sees exactly the values the device computes with), downloads back to double, and the largest
// difference of two arrays. Internal to this repository's programs (tools/include), not installed.
#ifndef DILATED_HOST_DATA_HPP
#define DILATED_HOST_DATA_HPP

#include <Dilated_DeviceMemory.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace dilated::tools {

// An array in C order, as double: what .npy files and host checks hold.
struct HostArray {
  std::vector<std::size_t> shape;
  std::vector<double> values;

  std::size_t size() const { return values.size(); }
};

inline std::size_t element_count(const std::vector<std::size_t>& shape) {
  std::size_t count = 1;
  for (const auto extent : shape)
    count *= extent;
  return count;
}

// Standard normal values from a 64-bit Mersenne twister seeded with `seed`.
inline HostArray random_normal(std::vector<std::size_t> shape, std::uint64_t seed) {
  HostArray a{std::move(shape), {}};
  a.values.resize(element_count(a.shape));
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  for (auto& x : a.values)
    x = normal(engine);
  return a;
}

// A dense (LayoutRight) View of a.shape holding a's values rounded to the View's storage type;
// a's values are replaced by the rounded ones.
template <class View>
View upload(const std::string& label, HostArray& a) {
  static_assert(View::rank == 3 || View::rank == 4, "dilated::tools::upload: rank 3 or 4");
  using T = typename View::non_const_value_type;
  View view;  // DeviceOutOfMemory (label, bytes, space) when it does not fit
  if constexpr (View::rank == 3) {
    view = dilated::Impl::allocate_view<View>(label, false, a.shape.at(0), a.shape.at(1),
                                              a.shape.at(2));
  } else {
    view = dilated::Impl::allocate_view<View>(label, false, a.shape.at(0), a.shape.at(1),
                                              a.shape.at(2), a.shape.at(3));
  }
  auto host = Kokkos::create_mirror_view(view);
  for (std::size_t i = 0; i < a.values.size(); ++i) {
    host.data()[i] = static_cast<T>(a.values[i]);
    a.values[i] = dilated::Impl::to_double(host.data()[i]);
  }
  Kokkos::deep_copy(view, host);
  return view;
}

// The values of a dense View, as double in C order.
template <class View>
HostArray download(const View& view) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  HostArray a;
  for (unsigned r = 0; r < View::rank; ++r)
    a.shape.push_back(view.extent(r));
  a.values.resize(view.size());
  for (std::size_t i = 0; i < a.values.size(); ++i)
    a.values[i] = dilated::Impl::to_double(host.data()[i]);
  return a;
}

// max |a - b| over the entries (infinity when a value is not finite or the sizes differ).
inline double max_abs_difference(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(a[i] - b[i]);
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
  }
  return worst;
}

}  // namespace dilated::tools

#endif  // DILATED_HOST_DATA_HPP
