// Token tensors for the layer, block and model tests: random (b, n, E) host data in double, the
// same values stored as T on a device (rounded to T on the host too, so that both sides see one
// input), and device Views (dense or strided, tokens or flat parameters) back in double.
#ifndef DILATED_TOKEN_TEST_DATA_HPP
#define DILATED_TOKEN_TEST_DATA_HPP

#include <Dilated_LayerReference.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <random>

namespace dilated::testing {

inline Host3 random_tokens(int b, int n, int e, std::uint64_t seed, double scale = 1.0) {
  Host3 x("dilated::test::tokens", b, n, e);
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  for (std::size_t i = 0; i < x.size(); ++i)
    x.data()[i] = scale * normal(engine);
  return x;
}

// x stored as T in MemSpace; x itself is rounded to T so the host sees the same values.
template <class T, class MemSpace>
Kokkos::View<T***, Kokkos::LayoutRight, MemSpace> store(Host3& x) {
  Kokkos::View<T***, Kokkos::LayoutRight, MemSpace> device("dilated::test::stored", x.extent(0),
                                                           x.extent(1), x.extent(2));
  auto staged = Kokkos::create_mirror_view(device);
  for (std::size_t i = 0; i < x.size(); ++i) {
    staged.data()[i] = static_cast<T>(x.data()[i]);
    x.data()[i] = dilated::Impl::to_double(staged.data()[i]);
  }
  Kokkos::deep_copy(device, staged);
  return device;
}

// A (b, n, E) device View, dense or strided, in double on the host.
template <class View>
Host3 fetch(const View& x) {
  // Dense first: a strided device View cannot be copied to the host directly.
  Kokkos::View<typename View::non_const_value_type***, Kokkos::LayoutRight,
               typename View::memory_space>
      dense("dilated::test::dense", x.extent(0), x.extent(1), x.extent(2));
  Kokkos::deep_copy(dense, x);
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dense);
  Host3 out("dilated::test::fetched", x.extent(0), x.extent(1), x.extent(2));
  for (std::size_t i = 0; i < x.extent(0); ++i)
    for (std::size_t j = 0; j < x.extent(1); ++j)
      for (std::size_t k = 0; k < x.extent(2); ++k)
        out(i, j, k) = dilated::Impl::to_double(host(i, j, k));
  return out;
}

// A flat parameter (or gradient) tensor (a NamedTensor) in double, for allclose.
template <class Tensor>
Kokkos::View<double*, Kokkos::HostSpace> fetch_flat(const Tensor& t) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), t.values);
  Kokkos::View<double*, Kokkos::HostSpace> out("dilated::test::flat", host.extent(0));
  for (std::size_t i = 0; i < host.extent(0); ++i)
    out(i) = dilated::Impl::to_double(host(i));
  return out;
}

}  // namespace dilated::testing

#endif  // DILATED_TOKEN_TEST_DATA_HPP
