// AdamW's arithmetic, shared by the fp32-state kernel here and the 8-bit kernel
// (Dilated_BlockQuantization.hpp): the scalars of one step, computed on the host in double and
// rounded to the state type as PyTorch passes Python floats to its kernels, and the per-element
// update in the order of torch.optim.AdamW's single-tensor path:
//
//   param   *= 1 - lr weight_decay
//   exp_avg  = lerp(exp_avg, grad, 1 - beta1)
//   exp_avg_sq = exp_avg_sq beta2 + (1 - beta2) grad grad
//   denom    = sqrt(exp_avg_sq) / sqrt(1 - beta2^t) + eps
//   param   += (-lr / (1 - beta1^t)) exp_avg / denom
#ifndef DILATED_IMPL_ADAMW_KERNELS_HPP
#define DILATED_IMPL_ADAMW_KERNELS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <Dilated_ParameterGradients.hpp>
#include <impl/Dilated_IndexRange.hpp>
#include <impl/Dilated_OptimizerState.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <string>
#include <type_traits>

namespace dilated::training::Impl {

template <class Acc>
struct AdamWScalars {
  Acc decay;                  // 1 - lr weight_decay
  Acc ema1_weight;            // 1 - beta1, the lerp weight
  Acc beta2;                  //
  Acc ema2_weight;            // 1 - beta2
  Acc neg_step_size;          // -lr / (1 - beta1^t)
  Acc bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  Acc eps;
  bool first;  // no state yet: moments read as 0, the master copy as the storage parameter
  // A factor on every gradient as it is read (in the state type): 1 / the loss scale times the
  // clipping factor, so that scaled half gradients are unscaled in fp32, never in half where
  // small values would flush to zero. 1 (exact) for PyTorch's plain step.
  Acc grad_scale;
};

// The scalars of step t (1 for the first), as torch.optim.AdamW computes them in Python.
template <class Acc>
AdamWScalars<Acc> adamw_scalars(double lr, double beta1, double beta2, double eps,
                                double weight_decay, long t, bool first, double grad_scale = 1.0) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  return {static_cast<Acc>(1.0 - lr * weight_decay),
          static_cast<Acc>(1.0 - beta1),
          static_cast<Acc>(beta2),
          static_cast<Acc>(1.0 - beta2),
          static_cast<Acc>(-(lr / bias_correction1)),
          static_cast<Acc>(std::sqrt(bias_correction2)),
          static_cast<Acc>(eps),
          first,
          static_cast<Acc>(grad_scale)};
}

// torch.lerp(exp_avg, grad, w): start + w (end - start) for w < 0.5, else end - (end - start)
// (1 - w), exact at both ends.
template <class Acc>
KOKKOS_INLINE_FUNCTION Acc first_moment(const AdamWScalars<Acc>& s, Acc m, Acc g) {
  return s.ema1_weight < Acc(0.5) ? m + s.ema1_weight * (g - m)
                                  : g - (g - m) * (Acc(1) - s.ema1_weight);
}

template <class Acc>
KOKKOS_INLINE_FUNCTION Acc second_moment(const AdamWScalars<Acc>& s, Acc v, Acc g) {
  return v * s.beta2 + s.ema2_weight * g * g;
}

// The decayed parameter moved by the bias-corrected moments, from sqrt(v) (`root`).
template <class Acc>
KOKKOS_INLINE_FUNCTION Acc adamw_parameter_from_root(const AdamWScalars<Acc>& s, Acc p, Acc m,
                                                     Acc root) {
  p = p * s.decay;
  const Acc denom = root / s.bias_correction2_sqrt + s.eps;
  return p + s.neg_step_size * m / denom;
}

// The decayed parameter moved by the bias-corrected moments.
template <class Acc>
KOKKOS_INLINE_FUNCTION Acc adamw_parameter(const AdamWScalars<Acc>& s, Acc p, Acc m, Acc v) {
  return adamw_parameter_from_root(s, p, m, dilated::Impl::math::sqrt(v));
}

// An AdamW state in the state type: the moments and, for half/bf16 storage, the master copy.
// Allocated uninitialised: the first step writes every value without reading it.
template <class Acc, class MemorySpace>
struct MomentState {
  using View = Kokkos::View<Acc*, MemorySpace>;
  View exp_avg, exp_avg_sq, master;

  MomentState() = default;
  MomentState(const std::string& label, std::size_t n, bool master_weights)
      : exp_avg(dilated::Impl::allocate_view<View>(label + "::exp_avg", false, n)),
        exp_avg_sq(dilated::Impl::allocate_view<View>(label + "::exp_avg_sq", false, n)),
        master(master_weights ? dilated::Impl::allocate_view<View>(label + "::master", false, n)
                              : View()) {}

  std::size_t bytes() const {
    return (exp_avg.span() + exp_avg_sq.span() + master.span()) * sizeof(Acc);
  }
};

// The entries of MomentState(label, n, master_weights) for each n of `sizes`.
template <class Acc, class MemorySpace>
dilated::MemoryPlan plan_moment_states(const std::string& label,
                                       const std::vector<std::size_t>& sizes, bool master_weights) {
  using View = typename MomentState<Acc, MemorySpace>::View;
  dilated::MemoryPlan plan;
  for (std::size_t n : sizes) {
    plan.add(label + "::exp_avg", dilated::MemoryKind::optimizer_state,
             View::required_allocation_size(n), 2);
    if (master_weights)
      plan.add(label + "::master", dilated::MemoryKind::master_weights,
               View::required_allocation_size(n));
  }
  return plan;
}

// Elements per host thread's piece (16 KiB of floats) and per block of its loops.
inline constexpr long adamw_host_chunk = 4096;
inline constexpr long adamw_host_block = 64;

// adamw_tensor_step on a host space for float storage: a thread per chunk, each block of values
// in three loops, the moments and the parameter vectorised and the square roots between them
// in a scalar loop. In one loop the compiler vectorised nothing: std::sqrt keeps libm's errno
// path (a branch and a call) unless the build says -fno-math-errno, which the library does not,
// and the loop's two divisions ran scalar with it (46.5 ms for 14 M values on the 2-core guest,
// 4.6x the bytes' time; 47.6 ms for the 85 M-parameter model on 16 cores against ~24 ms).
// The same functions as the other kernels: the 8-bit step's first update equals this one bit for
// bit (tstOptimizers).
template <bool First, class ExecSpace>
void adamw_host_float_step(const ExecSpace& space, const char* label, float* param,
                           const float* grad, float* exp_avg, float* exp_avg_sq, long size,
                           const AdamWScalars<float>& s) {
  const long chunks = (size + adamw_host_chunk - 1) / adamw_host_chunk;
  Kokkos::parallel_for(label, Kokkos::RangePolicy<ExecSpace>(space, 0, chunks), [=](long c) {
    const long begin = c * adamw_host_chunk;
    const long end = begin + adamw_host_chunk < size ? begin + adamw_host_chunk : size;
    float root[adamw_host_block];
    for (long b0 = begin; b0 < end; b0 += adamw_host_block) {
      const long count = end - b0 < adamw_host_block ? end - b0 : adamw_host_block;
      float* m = exp_avg + b0;
      float* v = exp_avg_sq + b0;
      float* p = param + b0;
      const float* g = grad + b0;
      DILATED_HOST_SIMD
      for (long j = 0; j < count; ++j) {
        const float gj = g[j] * s.grad_scale;
        m[j] = first_moment(s, First ? 0.0f : m[j], gj);
        v[j] = second_moment(s, First ? 0.0f : v[j], gj);
      }
      for (long j = 0; j < count; ++j)
        root[j] = std::sqrt(v[j]);
      DILATED_HOST_SIMD
      for (long j = 0; j < count; ++j)
        p[j] = adamw_parameter_from_root(s, p[j], m[j], root[j]);
    }
  });
}

// One step of AdamW over one tensor, one element per thread (host float: the loops above).
template <class ExecSpace, class T, class MemorySpace>
void adamw_tensor_step(const ExecSpace& space, const char* label,
                       const ParameterGradient<T, MemorySpace>& tensor,
                       const MomentState<state_t<T>, MemorySpace>& state,
                       const AdamWScalars<state_t<T>>& s) {
  using Acc = state_t<T>;
  if constexpr (std::is_same_v<T, float> &&
                std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>) {
    const long size = static_cast<long>(tensor.parameter.extent(0));
    const auto run = [&](auto first) {
      adamw_host_float_step<decltype(first)::value>(space, label, tensor.parameter.data(),
                                                    tensor.gradient.data(), state.exp_avg.data(),
                                                    state.exp_avg_sq.data(), size, s);
    };
    if (s.first) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
    return;
  }
  // A plain `if` on it below, not `if constexpr`: nvcc's extended lambdas cannot first
  // capture a variable inside `if constexpr` (the dead branch folds away all the same).
  constexpr bool master_weights = needs_master_v<T>;
  const auto param = tensor.parameter;
  const auto grad = tensor.gradient;
  const auto exp_avg = state.exp_avg, exp_avg_sq = state.exp_avg_sq, master = state.master;
  // A 64-bit index: the optimizer steps whatever tensors it is handed, one flat buffer of every
  // parameter too, and past 2^32 values the default index on CUDA would wrap.
  Kokkos::parallel_for(
      label, dilated::Impl::index_range(space, 0, param.extent(0)), KOKKOS_LAMBDA(long i) {
        const Acc g = static_cast<Acc>(grad(i)) * s.grad_scale;
        Acc p;
        if (master_weights) {
          p = s.first ? static_cast<Acc>(param(i)) : master(i);
        } else {
          p = static_cast<Acc>(param(i));
        }
        const Acc m = first_moment(s, s.first ? Acc(0) : exp_avg(i), g);
        const Acc v = second_moment(s, s.first ? Acc(0) : exp_avg_sq(i), g);
        exp_avg(i) = m;
        exp_avg_sq(i) = v;
        p = adamw_parameter(s, p, m, v);
        if (master_weights) master(i) = p;
        param(i) = static_cast<T>(p);
      });
}

// Files of a MomentState, PyTorch's names: <name>.exp_avg.npy, <name>.exp_avg_sq.npy and, for
// half/bf16 storage, <name>.master.npy (the fp32 master weights).
template <class Acc, class MemorySpace>
void write_moment_state(StateWriter& writer, const TensorRecord& record,
                        const MomentState<Acc, MemorySpace>& state) {
  writer.write(record.name + ".exp_avg.npy", record.shape, host_values<Acc>(state.exp_avg));
  writer.write(record.name + ".exp_avg_sq.npy", record.shape, host_values<Acc>(state.exp_avg_sq));
  if (state.master.extent(0) > 0) {
    writer.write(record.name + ".master.npy", record.shape, host_values<Acc>(state.master));
  }
}

// The values of those files, read and checked (nothing is copied yet).
struct MomentFiles {
  std::vector<double> exp_avg, exp_avg_sq, master;
};

inline MomentFiles read_moment_state(const char* fn, const std::string& directory,
                                     const TensorRecord& record, bool master_weights) {
  MomentFiles files;
  files.exp_avg = read_state_file(fn, directory, record.name + ".exp_avg.npy", record.shape);
  files.exp_avg_sq = read_state_file(fn, directory, record.name + ".exp_avg_sq.npy", record.shape,
                                     StateValues::non_negative);
  if (master_weights) {
    files.master = read_state_file(fn, directory, record.name + ".master.npy", record.shape);
  }
  return files;
}

template <class Acc, class MemorySpace>
void copy_moment_state(const MomentFiles& files, const MomentState<Acc, MemorySpace>& state) {
  copy_to_view(files.exp_avg, state.exp_avg);
  copy_to_view(files.exp_avg_sq, state.exp_avg_sq);
  if (state.master.extent(0) > 0) copy_to_view(files.master, state.master);
}

}  // namespace dilated::training::Impl

#endif  // DILATED_IMPL_ADAMW_KERNELS_HPP
