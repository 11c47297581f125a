// Global-norm gradient clipping, as torch.nn.utils.clip_grad_norm_: the L2 norm of all gradients
// together, and when it exceeds max_norm every gradient scaled in place by
// max_norm / (norm + 1e-6). A norm that is not finite (an overflowed half step, a NaN) is
// returned and not applied: the gradients are left as they are, and the caller skips the step.
//
// The norm is summed in float (double for double gradients) in an order fixed by the tensor
// list alone: each tensor's values i = j, j + P, j + 2P, ... into partial j (P = 1024), the
// partials in order into the tensor's sum, the tensors' sums in list order. Same tensors, same
// norm, bit for bit, however many threads run it.
#ifndef DILATED_GRADIENT_CLIPPING_HPP
#define DILATED_GRADIENT_CLIPPING_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <Dilated_ParameterGradients.hpp>
#include <impl/Dilated_IndexRange.hpp>
#include <impl/Dilated_OptimizerState.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::training {

// The partial sums grad_norm keeps between calls (reallocated only for another tensor count).
template <class Acc, class MemorySpace>
struct GradNormWorkspace {
  static constexpr long partials_per_tensor = 1024;
  Kokkos::View<Acc**, Kokkos::LayoutRight, MemorySpace> partials;  // (tensors, P)
  Kokkos::View<Acc*, MemorySpace> sums;                            // (tensors): sum of squares
  Kokkos::View<Acc, MemorySpace> total;
  // Every gradient's address and length on the device, for the one kernel over all tensors;
  // copied again only when the list changes (host_data / host_sizes: what they hold).
  Kokkos::View<std::uintptr_t*, MemorySpace> data;
  Kokkos::View<long*, MemorySpace> sizes;
  std::vector<std::uintptr_t> host_data;
  std::vector<long> host_sizes;
};

namespace Impl {

template <class ExecSpace, class T, class MemorySpace>
constexpr void check_clip_types() {
  static_assert(dilated::Impl::is_execution_space_v<ExecSpace>,
                "dilated::training::grad_norm / clip_grad_norm: the first argument must be a "
                "Kokkos execution space");
  static_assert(Kokkos::SpaceAccessibility<ExecSpace, MemorySpace>::accessible,
                "dilated::training::grad_norm / clip_grad_norm: the gradients' memory space must "
                "be accessible from the execution space");
  static_assert(is_storage_type_v<T>,
                "dilated::training::grad_norm / clip_grad_norm: the storage type must be float, "
                "double, Kokkos::Experimental::half_t or bhalf_t");
}

// The partials on a host space: a thread per (tensor, block of W consecutive partials) walks the
// tensor's rows of P values in order, the block's W sums in one vectorised loop, so that
// partial j still sums x_j^2, x_{j+P}^2, ... in that order (the device's thread per partial
// gives the same bits). On the host the device's layout read one value per 64-byte line, lines
// 4 KiB apart, and handed each thread a contiguous run of (tensor, partial) whose work followed
// the tensors' sizes (768 to 2.4 M values): 117 ms for a 14 M-parameter model on one core of the
// 2-core guest (57 MB read), its slowest of 16 threads at 6x the mean (thread CPU time).
// Blocks are taken one at a time (dynamic) for the same reason.
template <class ExecSpace, class T, class Acc, class MemorySpace>
void host_partials(const ExecSpace& space, long count,
                   const GradNormWorkspace<Acc, MemorySpace>& workspace) {
  constexpr long P = GradNormWorkspace<Acc, MemorySpace>::partials_per_tensor;
  constexpr long W = 256, blocks = P / W;  // 1 KiB of each row of P floats
  static_assert(P % W == 0, "dilated::training::grad_norm: whole blocks of partials");
  const auto partials = workspace.partials;
  const auto data = workspace.data;
  const auto sizes = workspace.sizes;
  Kokkos::parallel_for("dilated::training::grad_norm::partials",
                       Kokkos::RangePolicy<ExecSpace, Kokkos::Schedule<Kokkos::Dynamic>>(
                           space, 0, count * blocks, Kokkos::ChunkSize(1)),
                       [=](long e) {
                         const long t = e / blocks, j0 = (e % blocks) * W;
                         const T* g = reinterpret_cast<const T*>(data(t));
                         const long n = sizes(t);
                         Acc sum[W] = {};
                         long i = j0;
                         for (; i + W <= n; i += P) {
                           DILATED_HOST_SIMD
                           for (long w = 0; w < W; ++w) {
                             const Acc x = static_cast<Acc>(g[i + w]);
                             sum[w] += x * x;
                           }
                         }
                         for (long w = 0; i + w < n; ++w) {  // the tensor's last, partial row
                           const Acc x = static_cast<Acc>(g[i + w]);
                           sum[w] += x * x;
                         }
                         for (long w = 0; w < W; ++w)
                           partials(t, j0 + w) = sum[w];
                       });
}

template <class ExecSpace, class T, class MemorySpace>
state_t<T> sum_of_squares(const ExecSpace& space, const char* fn,
                          const ParameterGradients<T, MemorySpace>& tensors,
                          GradNormWorkspace<state_t<T>, MemorySpace>& workspace) {
  using Acc = state_t<T>;
  using Workspace = GradNormWorkspace<Acc, MemorySpace>;
  constexpr long P = Workspace::partials_per_tensor;
  require(!tensors.empty(), fn, "tensors is empty");
  const long count = static_cast<long>(tensors.size());
  // Each pair of buffers is replaced whole: the one whose extent is tested is assigned last, so
  // an allocation that fails (DeviceOutOfMemory) leaves the next call to make both again.
  if (workspace.sums.extent(0) != tensors.size()) {
    workspace.sums = decltype(workspace.sums)();
    auto partials = dilated::Impl::allocate_view<decltype(workspace.partials)>(
        "dilated::training::grad_norm::partials", false, count, P);
    auto total = dilated::Impl::allocate_view<decltype(workspace.total)>(
        "dilated::training::grad_norm::total", false);
    auto sums = dilated::Impl::allocate_view<decltype(workspace.sums)>(
        "dilated::training::grad_norm::sums", false, count);
    workspace.partials = partials;
    workspace.total = total;
    workspace.sums = sums;
  }
  // The tensors' addresses and lengths, sent to the device when the list changed.
  std::vector<std::uintptr_t> addresses(count);
  std::vector<long> lengths(count);
  for (long t = 0; t < count; ++t) {
    addresses[t] = reinterpret_cast<std::uintptr_t>(tensors[t].gradient.data());
    lengths[t] = static_cast<long>(tensors[t].gradient.extent(0));
  }
  if (addresses != workspace.host_data || lengths != workspace.host_sizes) {
    if (workspace.data.extent(0) != static_cast<std::size_t>(count)) {
      workspace.data = decltype(workspace.data)();
      workspace.host_data.clear();  // the device copy of the list is gone with it
      auto sizes = dilated::Impl::allocate_view<decltype(workspace.sizes)>(
          "dilated::training::grad_norm::sizes", false, count);
      auto data = dilated::Impl::allocate_view<decltype(workspace.data)>(
          "dilated::training::grad_norm::data", false, count);
      workspace.sizes = sizes;
      workspace.data = data;
    }
    using Unmanaged = Kokkos::MemoryTraits<Kokkos::Unmanaged>;
    Kokkos::deep_copy(
        space, workspace.data,
        Kokkos::View<const std::uintptr_t*, Kokkos::HostSpace, Unmanaged>(addresses.data(), count));
    Kokkos::deep_copy(
        space, workspace.sizes,
        Kokkos::View<const long*, Kokkos::HostSpace, Unmanaged>(lengths.data(), count));
    dilated::Impl::fence(space, "dilated::training::grad_norm: the tensor list copied");
    workspace.host_data = std::move(addresses);
    workspace.host_sizes = std::move(lengths);
  }
  const auto partials = workspace.partials;
  const auto sums = workspace.sums;
  const auto total = workspace.total;
  const auto data = workspace.data;
  const auto sizes = workspace.sizes;
  if constexpr (std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>) {
    host_partials<ExecSpace, T>(space, count, workspace);
  } else {
    // Every tensor's P partials in one launch (one launch per tensor left the GPU latency-bound:
    // 1024 threads each; the H200 took 3.6 ms for the 85 M-parameter model's 150 tensors). The
    // sums and their order are those of the design above: the same bits.
    Kokkos::parallel_for(
        "dilated::training::grad_norm::partials",
        Kokkos::RangePolicy<ExecSpace>(space, 0, count * P), KOKKOS_LAMBDA(long e) {
          const long t = e / P, j = e % P;
          const T* g = reinterpret_cast<const T*>(data(t));
          const long n = sizes(t);
          Acc sum = 0;
          for (long i = j; i < n; i += P) {
            const Acc x = static_cast<Acc>(g[i]);
            sum += x * x;
          }
          partials(t, j) = sum;
        });
  }
  Kokkos::parallel_for(
      "dilated::training::grad_norm::tensor_sums", Kokkos::RangePolicy<ExecSpace>(space, 0, count),
      KOKKOS_LAMBDA(long t) {
        Acc sum = 0;
        for (long j = 0; j < P; ++j)
          sum += partials(t, j);
        sums(t) = sum;
      });
  Kokkos::parallel_for(
      "dilated::training::grad_norm::total", Kokkos::RangePolicy<ExecSpace>(space, 0, 1),
      KOKKOS_LAMBDA(long) {
        Acc sum = 0;
        for (long t = 0; t < count; ++t)
          sum += sums(t);
        total() = sum;
      });
  dilated::Impl::fence(space, fn);
  Acc result;
  Kokkos::deep_copy(result, total);
  return result;
}

}  // namespace Impl

// The L2 norm of every gradient in `tensors` together (float accumulation, double for double).
// Waits for `space`. Throws std::invalid_argument for an empty list.
template <class ExecSpace, class T, class MemorySpace>
double grad_norm(const ExecSpace& space, const ParameterGradients<T, MemorySpace>& tensors,
                 GradNormWorkspace<Impl::state_t<T>, MemorySpace>& workspace) {
  constexpr const char* fn = "dilated::training::grad_norm";
  Impl::check_clip_types<ExecSpace, T, MemorySpace>();
  dilated::Impl::ScopedRegion region(fn);
  return static_cast<double>(std::sqrt(Impl::sum_of_squares(space, fn, tensors, workspace)));
}

template <class ExecSpace, class T, class MemorySpace>
double grad_norm(const ExecSpace& space, const ParameterGradients<T, MemorySpace>& tensors) {
  GradNormWorkspace<Impl::state_t<T>, MemorySpace> workspace;
  return grad_norm(space, tensors, workspace);
}

// Returns the global norm of the gradients (before clipping). When it is finite and above
// max_norm, scales every gradient by max_norm / (norm + 1e-6) (in float, double for double,
// rounded to the storage type); otherwise leaves them unchanged. Throws std::invalid_argument
// naming max_norm unless it is finite and > 0.
template <class ExecSpace, class T, class MemorySpace>
double clip_grad_norm(const ExecSpace& space, const ParameterGradients<T, MemorySpace>& tensors,
                      double max_norm,
                      GradNormWorkspace<Impl::state_t<T>, MemorySpace>& workspace) {
  using Acc = Impl::state_t<T>;
  constexpr const char* fn = "dilated::training::clip_grad_norm";
  Impl::check_clip_types<ExecSpace, T, MemorySpace>();
  dilated::Impl::ScopedRegion region(fn);
  dilated::Impl::require(std::isfinite(max_norm) && max_norm > 0, fn, "max_norm = ", max_norm,
                         " must be finite and > 0");
  const Acc norm = std::sqrt(Impl::sum_of_squares(space, fn, tensors, workspace));
  if (std::isfinite(norm) && static_cast<double>(norm) > max_norm) {
    const Acc coefficient = static_cast<Acc>(max_norm / (static_cast<double>(norm) + 1e-6));
    for (const auto& tensor : tensors) {
      const auto g = tensor.gradient;
      // A 64-bit index, as AdamW's: a tensor may be one flat buffer past 2^32 values.
      Kokkos::parallel_for(
          "dilated::training::clip_grad_norm::scale",
          dilated::Impl::index_range(space, 0, g.extent(0)),
          KOKKOS_LAMBDA(long i) { g(i) = static_cast<T>(static_cast<Acc>(g(i)) * coefficient); });
    }
  }
  return static_cast<double>(norm);
}

template <class ExecSpace, class T, class MemorySpace>
double clip_grad_norm(const ExecSpace& space, const ParameterGradients<T, MemorySpace>& tensors,
                      double max_norm) {
  GradNormWorkspace<Impl::state_t<T>, MemorySpace> workspace;
  return clip_grad_norm(space, tensors, max_norm, workspace);
}

}  // namespace dilated::training

#endif  // DILATED_GRADIENT_CLIPPING_HPP
