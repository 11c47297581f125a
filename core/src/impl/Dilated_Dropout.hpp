// Attention dropout from a counter-based generator: whether the probability of (query p,
// key q) of one head, batch and branch is kept is a pure function of (seed, branch, batch,
// head, p, q). So the mask is the same on every backend, for every tiling and algorithm, and
// the backward pass regenerates it instead of storing it.
//
// (A Kokkos::Random pool cannot give this: its streams depend on which thread draws.)
#ifndef DILATED_IMPL_DROPOUT_HPP
#define DILATED_IMPL_DROPOUT_HPP

#include <Kokkos_Core.hpp>

#include <cstdint>

namespace dilated::Impl {

// splitmix64's finaliser: a bijective mix with full avalanche.
KOKKOS_INLINE_FUNCTION std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

struct Dropout {
  double keep_scale = 1;        // 1 / (1 - p), p the drop probability
  std::uint32_t threshold = 0;  // drop when the 24-bit uniform draw is below it; 0: never
  std::uint64_t seed = 0;

  Dropout() = default;
  Dropout(double probability, std::uint64_t seed_)
      : keep_scale(1.0 / (1.0 - probability)),
        threshold(static_cast<std::uint32_t>(probability * 16777216.0)),
        seed(seed_) {}

  KOKKOS_INLINE_FUNCTION bool active() const { return threshold > 0; }

  // 0 (dropped) or 1 / (1 - p) (kept) for the probability of query p attending to key q.
  KOKKOS_INLINE_FUNCTION double factor(int branch, int batch, int head, int query, int key) const {
    if (threshold == 0) return 1.0;
    std::uint64_t h =
        mix64(seed ^ (0x9e3779b97f4a7c15ULL * (static_cast<std::uint64_t>(branch) + 1)));
    h = mix64(h ^ ((static_cast<std::uint64_t>(batch) << 32) | static_cast<std::uint32_t>(head)));
    h = mix64(h ^ ((static_cast<std::uint64_t>(query) << 32) | static_cast<std::uint32_t>(key)));
    return static_cast<std::uint32_t>(h >> 40) < threshold ? 0.0 : keep_scale;
  }
};

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_DROPOUT_HPP
