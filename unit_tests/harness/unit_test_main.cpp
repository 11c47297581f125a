// Catch2 main for every test executable: Kokkos lives for the whole run, and invalid
// floating-point operations (0/0, inf - inf, sqrt(-1)) trap instead of silently making NaN.
#include <catch2/catch_session.hpp>

#include <Kokkos_Core.hpp>

#if defined(__GLIBC__)
#include <cfenv>
#endif

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
#if defined(__GLIBC__)
  feenableexcept(FE_INVALID);
#endif
  return Catch::Session().run(argc, argv);
}
