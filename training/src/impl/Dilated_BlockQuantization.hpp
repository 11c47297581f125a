// 8-bit AdamW's moments: block-wise dynamic quantization (Dettmers et al., "8-bit Optimizers via
// Block-wise Quantization", ICLR 2022) and the kernel that dequantizes, updates and requantizes
// one tensor's state, a team per block.
//
// A block of block_size consecutive values keeps one fp32 scale, the largest magnitude in the
// block (absmax), and one byte per value: the index of the entry of a 256-value map nearest to
// value / absmax. The maps are the dynamic ("dynamic tree") data type of that paper, as
// bitsandbytes builds it: for the signed map (exp_avg) each decade 10^(k-7) .. 10^(k-6),
// k = 1..7, holds 2^(k-1) positive values, the means of 2^(k-1) equal pieces of [0.1, 1] times
// 10^(k-7), their negatives, and 0 and 1 (254 + 2 entries); the unsigned map (exp_avg_sq, never
// negative) holds 2^k values per decade and no negatives. Each decade has twice the values of
// the one below it: relative precision is finest near absmax and coarser for small values, over
// a range of 1e-6 .. 1 of absmax.
#ifndef DILATED_IMPL_BLOCK_QUANTIZATION_HPP
#define DILATED_IMPL_BLOCK_QUANTIZATION_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <Dilated_ParameterGradients.hpp>
#include <impl/Dilated_AdamWKernels.hpp>
#include <impl/Dilated_OptimizerState.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace dilated::training::Impl {

inline constexpr int quantization_block = 2048;
inline constexpr int map_entries = 256;

// The dynamic map, ascending (signed: -0.99297 .. 1; unsigned: 0 .. 1), computed in double and
// rounded to float.
inline std::array<float, map_entries> dynamic_map(bool is_signed) {
  std::vector<double> values;
  constexpr int decades = 7;
  for (int k = 0; k < decades; ++k) {
    const int pieces = is_signed ? (1 << k) : (2 << k);
    const double scale = std::pow(10.0, k - (decades - 1));
    for (int j = 0; j < pieces; ++j) {
      const double lower = 0.1 + 0.9 * j / pieces, upper = 0.1 + 0.9 * (j + 1) / pieces;
      values.push_back(scale * 0.5 * (lower + upper));
      if (is_signed) values.push_back(-values.back());
    }
  }
  values.push_back(0.0);
  values.push_back(1.0);
  std::sort(values.begin(), values.end());
  std::array<float, map_entries> map{};
  for (int i = 0; i < map_entries; ++i)
    map[i] = static_cast<float>(values[i]);
  return map;
}

// The index of the map entry nearest to x (ties to the lower entry; below the first entry: 0,
// above the last: 255). `map` is ascending. Zero is an entry, so rounding never changes the
// sign of a value.
KOKKOS_INLINE_FUNCTION std::uint8_t quantize(const float* map, float x) {
  int lower = 0;  // the largest index with map[lower] <= x, or 0
  for (int step = map_entries / 2; step > 0; step /= 2) {
    if (map[lower + step] <= x) lower += step;
  }
  if (lower < map_entries - 1 && map[lower + 1] - x < x - map[lower]) ++lower;
  return static_cast<std::uint8_t>(lower);
}

// One tensor's 8-bit state: the codes of exp_avg (signed map) and exp_avg_sq (unsigned map), the
// scale of each block, and the fp32 master weights for half/bf16 storage. Uninitialised: the
// first step reads none of it.
template <class Acc, class MemorySpace>
struct QuantizedState {
  Kokkos::View<std::uint8_t*, MemorySpace> state1, state2;
  Kokkos::View<float*, MemorySpace> absmax1, absmax2;
  Kokkos::View<Acc*, MemorySpace> master;

  QuantizedState() = default;
  QuantizedState(const std::string& label, std::size_t n, bool master_weights)
      : state1(dilated::Impl::allocate_view<decltype(state1)>(label + "::state1", false, n)),
        state2(dilated::Impl::allocate_view<decltype(state2)>(label + "::state2", false, n)),
        absmax1(
            dilated::Impl::allocate_view<decltype(absmax1)>(label + "::absmax1", false, blocks(n))),
        absmax2(
            dilated::Impl::allocate_view<decltype(absmax2)>(label + "::absmax2", false, blocks(n))),
        master(master_weights
                   ? dilated::Impl::allocate_view<decltype(master)>(label + "::master", false, n)
                   : decltype(master)()) {}

  static std::size_t blocks(std::size_t n) {
    return (n + quantization_block - 1) / quantization_block;
  }
  // The entries of QuantizedState(label, n, master_weights).
  static void plan(dilated::MemoryPlan& plan, const std::string& label, std::size_t n,
                   bool master_weights) {
    const auto kind = dilated::MemoryKind::optimizer_state;
    plan.add(label + "::state1", kind, decltype(state1)::required_allocation_size(n), 2);
    plan.add(label + "::absmax1", kind, decltype(absmax1)::required_allocation_size(blocks(n)), 2);
    if (master_weights)
      plan.add(label + "::master", dilated::MemoryKind::master_weights,
               decltype(master)::required_allocation_size(n));
  }
  std::size_t bytes() const {
    return state1.span() + state2.span() + (absmax1.span() + absmax2.span()) * sizeof(float) +
           master.span() * sizeof(Acc);
  }
};

// One step of 8-bit AdamW over one tensor. A team per block: load both maps into scratch;
// dequantize each value's moments (code -> map entry times the block's old scale), update them
// in Acc and keep them in scratch; the block's new scales are the largest |exp_avg| and
// exp_avg_sq; update the parameter from the unquantized moments (as bitsandbytes does); write
// the codes of the moments over the new scales. `maps` holds the signed map, then the unsigned.
template <class ExecSpace, class T, class MemorySpace, class Maps>
void adamw8bit_tensor_step(const ExecSpace& space, const char* label,
                           const ParameterGradient<T, MemorySpace>& tensor,
                           const QuantizedState<state_t<T>, MemorySpace>& state, const Maps& maps,
                           const AdamWScalars<state_t<T>>& s) {
  using Acc = state_t<T>;
  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  using Member = typename Policy::member_type;
  using Scratch = typename ExecSpace::scratch_memory_space;
  using AccScratch = Kokkos::View<Acc*, Scratch, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  using MapScratch = Kokkos::View<float*, Scratch, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  // A plain `if` on it below, not `if constexpr`: nvcc's extended lambdas cannot first
  // capture a variable inside `if constexpr` (the dead branch folds away all the same).
  constexpr bool master_weights = needs_master_v<T>;
  constexpr int block = quantization_block;
  const long n = static_cast<long>(tensor.parameter.extent(0));
  if (n == 0) return;
  const long blocks = static_cast<long>(state.absmax1.extent(0));
  const int team_size = runs_on_host_v<ExecSpace> ? 1 : 256;
  const std::size_t scratch =
      2 * AccScratch::shmem_size(block) + MapScratch::shmem_size(2 * map_entries);
  const auto param = tensor.parameter;
  const auto grad = tensor.gradient;
  const auto state1 = state.state1, state2 = state.state2;
  const auto absmax1 = state.absmax1, absmax2 = state.absmax2;
  const auto master = state.master;
  Kokkos::parallel_for(
      label, Policy(space, blocks, team_size).set_scratch_size(0, Kokkos::PerTeam(scratch)),
      KOKKOS_LAMBDA(const Member& member) {
        const long b = member.league_rank();
        const long begin = b * block;
        const int length = static_cast<int>(n - begin < block ? n - begin : block);
        AccScratch m(member.team_scratch(0), block);
        AccScratch v(member.team_scratch(0), block);
        MapScratch map(member.team_scratch(0), 2 * map_entries);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, 2 * map_entries),
                             [&](int k) { map(k) = maps(k); });
        const Acc old_scale1 = s.first ? Acc(0) : static_cast<Acc>(absmax1(b));
        const Acc old_scale2 = s.first ? Acc(0) : static_cast<Acc>(absmax2(b));
        member.team_barrier();

        Acc max1 = 0, max2 = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, length),
            [&](int j, Acc& largest) {
              const long i = begin + j;
              const Acc g = static_cast<Acc>(grad(i)) * s.grad_scale;
              Acc m0 = 0, v0 = 0;
              if (!s.first) {
                m0 = static_cast<Acc>(map(state1(i))) * old_scale1;
                v0 = static_cast<Acc>(map(map_entries + state2(i))) * old_scale2;
              }
              const Acc m1 = first_moment(s, m0, g);
              m(j) = m1;
              v(j) = second_moment(s, v0, g);
              const Acc magnitude = m1 < Acc(0) ? -m1 : m1;
              if (magnitude > largest) largest = magnitude;
            },
            Kokkos::Max<Acc>(max1));
        member.team_barrier();
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, length),
            [&](int j, Acc& largest) {
              if (v(j) > largest) largest = v(j);
            },
            Kokkos::Max<Acc>(max2));
        member.team_barrier();

        const float scale1 = static_cast<float>(max1), scale2 = static_cast<float>(max2);
        Kokkos::single(Kokkos::PerTeam(member), [&]() {
          absmax1(b) = scale1;
          absmax2(b) = scale2;
        });
        const Acc inverse1 = scale1 > 0 ? Acc(1) / static_cast<Acc>(scale1) : Acc(0);
        const Acc inverse2 = scale2 > 0 ? Acc(1) / static_cast<Acc>(scale2) : Acc(0);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, length), [&](int j) {
          const long i = begin + j;
          const Acc m1 = m(j), v1 = v(j);
          Acc p;
          if (master_weights) {
            p = s.first ? static_cast<Acc>(param(i)) : master(i);
          } else {
            p = static_cast<Acc>(param(i));
          }
          p = adamw_parameter(s, p, m1, v1);
          if (master_weights) master(i) = p;
          param(i) = static_cast<T>(p);
          state1(i) = quantize(&map(0), static_cast<float>(m1 * inverse1));
          state2(i) = quantize(&map(map_entries), static_cast<float>(v1 * inverse2));
        });
      });
}

}  // namespace dilated::training::Impl

#endif  // DILATED_IMPL_BLOCK_QUANTIZATION_HPP
