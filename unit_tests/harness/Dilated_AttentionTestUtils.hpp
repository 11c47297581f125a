// Moving test data between the host double oracle and a backend's storage type.
#ifndef DILATED_ATTENTION_TEST_UTILS_HPP
#define DILATED_ATTENTION_TEST_UTILS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_DilatedAttention.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <Kokkos_Core.hpp>

#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

namespace dilated::testing {

// The storage types a backend's tests run over: double and float everywhere, and half / bf16
// where they are real 16-bit types (the CUDA build; on the host Kokkos makes them float).
using StorageTypes = std::tuple<double, float
#if !DILATED_HALF_IS_FLOAT
                                ,
                                Kokkos::Experimental::half_t
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
                                ,
                                Kokkos::Experimental::bhalf_t
#endif
                                >;

// The ways a backend computes attention, each test runs all of them: the Improved algorithm,
// and the Original one with each path it has (on CUDA the tensor-core forward, the default for
// half/bf16 where it applies, the cuBLAS products and the team kernel; elsewhere only the team
// kernel: the flags are ignored).
struct Variant {
  bool improved;
  bool vendor_gemm;
  bool tensor_cores = false;  // Original on CUDA: the tensor-core forward where it applies
  std::string name() const {
    return improved       ? "Improved"
           : tensor_cores ? "Original (tensor cores)"
           : vendor_gemm  ? "Original (vendor GEMM)"
                          : "Original";
  }
};

template <class ExecSpace>
std::vector<Variant> variants() {
#if defined(KOKKOS_ENABLE_CUDA)
  if (std::is_same_v<ExecSpace, Kokkos::Cuda>)
    return {{false, true, true}, {false, true, false}, {false, false, false}, {true, false}};
#endif
  return {{false, true}, {true, false}};
}

// Calls f(attention) with a DilatedAttention<Original or Improved> built from the arguments.
template <class F>
void with_attention(const Variant& variant, const std::vector<int>& segs,
                    const std::vector<int>& dils, AttentionOptions options, F&& f) {
  options.set_vendor_gemm(variant.vendor_gemm).set_original_tensor_cores(variant.tensor_cores);
  if (variant.improved) {
    f(DilatedAttention<Improved>(segs, dils, options));
  } else {
    f(DilatedAttention<Original>(segs, dils, options));
  }
}

// Sets an environment variable for a scope (DILATED_DISABLE_HOST_TILES: the generic team
// kernels on the host), restoring what it was.
class ScopedEnvironment {
 public:
  ScopedEnvironment(std::string name, const std::string& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    setenv(name_.c_str(), value.c_str(), 1);
  }
  ~ScopedEnvironment() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

template <class T, class MemSpace>
using Device4 = Kokkos::View<T****, Kokkos::LayoutRight, MemSpace>;

// `host` (double) stored as T in MemSpace.
template <class T, class MemSpace, class HostView>
Device4<T, MemSpace> to_storage(const HostView& host, const std::string& label) {
  Kokkos::View<T****, Kokkos::LayoutRight, Kokkos::HostSpace> staged(
      label, host.extent(0), host.extent(1), host.extent(2), host.extent(3));
  for (std::size_t i = 0; i < host.extent(0); ++i)
    for (std::size_t j = 0; j < host.extent(1); ++j)
      for (std::size_t k = 0; k < host.extent(2); ++k)
        for (std::size_t l = 0; l < host.extent(3); ++l)
          staged(i, j, k, l) = static_cast<T>(host(i, j, k, l));
  Device4<T, MemSpace> device(label, host.extent(0), host.extent(1), host.extent(2),
                              host.extent(3));
  Kokkos::deep_copy(device, staged);
  return device;
}

// A (b, n, h, d) View of any storage type, anywhere, as a host View of double.
template <class View>
Kokkos::View<double****, Kokkos::HostSpace> to_host_double(const View& view) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  Kokkos::View<double****, Kokkos::HostSpace> out("dilated::test::as_double", view.extent(0),
                                                  view.extent(1), view.extent(2), view.extent(3));
  for (std::size_t i = 0; i < view.extent(0); ++i)
    for (std::size_t j = 0; j < view.extent(1); ++j)
      for (std::size_t k = 0; k < view.extent(2); ++k)
        for (std::size_t l = 0; l < view.extent(3); ++l)
          out(i, j, k, l) = dilated::Impl::to_double(host(i, j, k, l));
  return out;
}

}  // namespace dilated::testing

#endif  // DILATED_ATTENTION_TEST_UTILS_HPP
